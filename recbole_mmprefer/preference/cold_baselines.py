"""Baselines that score preference samples without any training on them (issue 16: ExplainRec's Table III
compares against content-based recommendation; issue 13: the bar a tuned LLM must clear in TALLRec's Table 1).

They apply to new users (a support set for history) and new items (never
rated) alike:

* **content-based**: the cosine of the target's feature (the feature store's
  text features, MiniLM by default) with the mean of the history's liked
  items, minus its cosine with the mean of the disliked ones (a side with no
  item counts 0; an item without a feature is left out);
* **demographic popularity**: the knowledge base's prior
  (:class:`~recbole_mmprefer.preference.knowledge.KnowledgeBase`): the item's
  own like rate where train saw it, smoothed toward the like rate of its
  groups among users of the same age, gender and occupation (every user's
  where an attribute is unknown);
* **history like share**: the share of the history's items the user liked.
  It reads only the two lists an LLM is shown, so it is the bar a tuned LLM
  must clear (on ml-100k's test windows it ranks at AUC 0.726).
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np

from recbole_mmprefer.preference.knowledge import KnowledgeBase, rate

BASELINES = ("content", "demographic", "like_share")


def unit_rows(features: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    return {token: vector / max(float(np.linalg.norm(vector)), 1e-12) for token, vector in features.items()}


def content_scores(samples: Sequence[dict], features: Dict[str, np.ndarray]) -> List[float]:
    """cos(target, mean liked) - cos(target, mean disliked) per sample (0 where the target has no feature)."""
    features = unit_rows(features)
    scores = []
    for sample in samples:
        target = features.get(str(sample["item_id"]))
        if target is None:
            scores.append(0.0)
            continue
        score = 0.0
        for liked, sign in ((True, 1.0), (False, -1.0)):
            rows = [features[str(e["item_id"])] for e in sample["history"]
                    if bool(e["liked"]) == liked and str(e["item_id"]) in features]
            if rows:
                mean = np.mean(rows, axis=0)
                score += sign * float(target @ mean) / max(float(np.linalg.norm(mean)), 1e-12)
        scores.append(score)
    return scores


def demographic_scores(samples: Sequence[dict], knowledge: KnowledgeBase) -> List[float]:
    """The item's like rate smoothed toward its groups' rate among the user's demographic peers."""
    scores = []
    for sample in samples:
        groups = list(sample.get("groups") or [])
        prior, _, _ = knowledge.demographic_prior(sample.get("user_id"), groups)
        counts = knowledge.temporal["items"].get(str(sample["item_id"]))
        scores.append(rate(counts, prior, knowledge.smoothing))
    return scores


def like_share_scores(samples: Sequence[dict]) -> List[float]:
    """The share of liked items in each sample's history (0.5 for an empty history)."""
    return [float(np.mean([bool(entry["liked"]) for entry in sample["history"]])) if sample["history"] else 0.5
            for sample in samples]


def feature_table(config) -> Dict[str, np.ndarray]:
    """The run's text features by item token (the feature store's ``features`` artifact)."""
    from recbole_mmprefer.artifacts import ARTIFACTS
    from recbole_mmprefer.utils import read_lines

    folder = ARTIFACTS["features"].require(config, modality="text")
    matrix = np.load(folder / "features.npy")
    return dict(zip(read_lines(folder / "items.txt"), matrix))
