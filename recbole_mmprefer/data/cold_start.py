"""Cold-start preference samples (ExplainRec, design section 4; issue 16): `mmprefer preferences --cold users|items`.

Two splits beside TALLRec's windows (:mod:`.preferences`), each the
``preferences`` artifact ``cold-users`` or ``cold-items``:

**New users.** A seeded ``coldstart_share`` of the users with more than
``coldstart_support`` interactions is held out entirely. Their first
``coldstart_support`` interactions (in time order) are the *support set*: the
history every one of their test samples shows (and what a test-time adaptation
may tune on); each later interaction is a test sample. Train and valid samples
are TALLRec's windows of the other users only.

**New items.** A seeded ``coldstart_share`` of the items with at least
``coldstart_min_item_interactions`` interactions is held out entirely. A
window whose target is a held-out item is a test sample, its history the
user's previous ``preference_history_length`` interactions without any
held-out item; every other window that mentions a held-out item (as target or
in its history) is dropped, so train and valid never show one.

Train and valid are TALLRec's last ``preference_windows`` windows of the warm
users (new users), or of everyone less those that mention a held-out item (new
items), cut in order in the ``preference_split_ratios`` train : valid
proportion, with few-shot ranks as for the windows; test is at most ``coldstart_test_samples`` cold samples (a seeded
choice, then in data order). Each sample carries ``"cold": "user"`` or
``"item"`` (null for train and valid) and ``support_size``. ``report.json``
lists the held-out users or items (``held_out``) and the dropped windows.
Whoever adapts to a support set takes it through :func:`support_set`: one
larger than ``coldstart_support`` is cut to its first items, and the cut is
counted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import pandas as pd

from recbole_mmprefer.artifacts import ARTIFACTS, dataset_file
from recbole_mmprefer.data.preferences import (
    PreferenceSettings,
    build_windows,
    item_groups,
    item_titles,
    rank_shots,
    rating_frame,
    review_reasons,
    write_preferences,
)
from recbole_mmprefer.errors import InputError
from recbole_mmprefer.resources import stage_setting
from recbole_mmprefer.settings import StageSettings, check_choice, check_float, check_int
from recbole_mmprefer.utils import file_sha256, json_sha256

logger = logging.getLogger(__name__)

COLD_KINDS = ("users", "items")


def cold_name(kind: str) -> str:
    """The preferences artifact name of a cold-start split: ``cold-users`` or ``cold-items``."""
    return f"cold-{check_choice('--cold', kind, COLD_KINDS)}"


@dataclass
class ColdStartSettings(StageSettings):
    """The ``coldstart_*`` keys of properties/preference.yaml, checked."""

    PREFIX = "coldstart_"

    share: float
    support: int
    min_item_interactions: int
    test_samples: int
    seed: Optional[int]

    def __post_init__(self):
        self.share = check_float("coldstart_share", self.share, 0.0)
        if not 0.0 < self.share < 1.0:
            raise InputError(f"coldstart_share must lie strictly between 0 and 1, got {self.share}")
        self.support = check_int("coldstart_support", self.support, 1)
        self.min_item_interactions = check_int("coldstart_min_item_interactions", self.min_item_interactions, 1)
        self.test_samples = check_int("coldstart_test_samples", self.test_samples, 1)
        self.seed = None if self.seed is None else check_int("coldstart_seed", self.seed, 0)


def support_set(entries: Sequence[dict], size: int) -> Tuple[List[dict], int]:
    """(the first ``size`` entries, how many were cut): a new user's support set, never larger than configured."""
    entries = list(entries)
    return entries[:size], max(len(entries) - size, 0)


def choose(tokens: Sequence[str], share: float, seed: int) -> Set[str]:
    """A seeded ``share`` of ``tokens`` (at least one)."""
    tokens = sorted(set(tokens), key=lambda token: (len(token), token))
    count = max(1, int(round(share * len(tokens))))
    return set(np.random.default_rng(seed).choice(tokens, size=min(count, len(tokens)), replace=False).tolist())


def history_entry(item: str, rating: float, settings: PreferenceSettings, titles, groups, reviews, user) -> dict:
    return {"item_id": item, "title": titles.get(item, ""), "groups": groups.get(item, []),
            "liked": bool(rating > settings.like_threshold), "rating": float(rating),
            "reason": reviews.get((user, item), "")}


def target_fields(user: str, item: str, rating: float, time, settings: PreferenceSettings, titles, groups,
                  reviews) -> dict:
    return {"user_id": user, "item_id": item, "title": titles.get(item, ""), "groups": groups.get(item, []),
            "label": int(rating > settings.like_threshold), "rating": float(rating),
            "timestamp": None if pd.isna(time) else int(time), "review": reviews.get((user, item), "")}


def new_user_samples(frame: pd.DataFrame, users: Set[str], settings: PreferenceSettings,
                     cold: ColdStartSettings, texts: tuple) -> List[dict]:
    """Test samples of the held-out users: each interaction after the support set, shown the support set."""
    samples = []
    for user, rows in frame[frame["user_id"].isin(users)].groupby("user_id", sort=False):
        interactions = list(zip(rows["item_id"], rows["rating"], rows["timestamp"]))
        support = [history_entry(item, rating, settings, *texts, user) for item, rating, _ in
                   interactions[:cold.support]]
        for item, rating, time in interactions[cold.support:]:
            samples.append({**target_fields(user, item, rating, time, settings, *texts),
                            "history": [dict(entry) for entry in support], "cold": "user",
                            "support_size": len(support)})
    return samples


def new_item_samples(frame: pd.DataFrame, items: Set[str], settings: PreferenceSettings, texts: tuple) -> List[dict]:
    """Test samples whose target is a held-out item; histories never show one."""
    samples = []
    length = settings.history_length
    for user, rows in frame.groupby("user_id", sort=False):
        entries = list(zip(rows["item_id"].astype(str), rows["rating"], rows["timestamp"]))
        for at, (item, rating, time) in enumerate(entries):
            if item not in items:
                continue
            earlier = [(i, r) for i, r, _ in entries[:at] if i not in items][-length:]
            if len(earlier) < length:
                continue
            samples.append({**target_fields(str(user), item, rating, time, settings, *texts),
                            "history": [history_entry(i, r, settings, *texts, str(user)) for i, r in earlier],
                            "cold": "item", "support_size": 0})
    return samples


def mentions(sample: dict, items: Set[str]) -> bool:
    return sample["item_id"] in items or any(entry["item_id"] in items for entry in sample["history"])


def warm_windows(frame: pd.DataFrame, settings: PreferenceSettings, texts: tuple) -> List[dict]:
    """TALLRec's windows of ``frame``, cut train : valid in order in the configured proportion (no test)."""
    windows = build_windows(frame, settings, *texts)
    train_end = int(len(windows) * settings.split_ratios[0] / (settings.split_ratios[0] + settings.split_ratios[1]))
    for position, sample in enumerate(windows):
        sample["split"] = "train" if position < train_end else "valid"
    return windows


def build_cold_start(config, kind: str, force: bool = False):
    """The ``cold-users`` / ``cold-items`` preference samples (see the module docstring); skipped when up to
    date."""
    name = cold_name(kind)
    settings, cold = PreferenceSettings.from_config(config), ColdStartSettings.from_config(config)
    seed = cold.seed if cold.seed is not None else int(stage_setting(config, "seed"))
    files = {suffix: file_sha256(dataset_file(config, suffix)) for suffix in ("inter", "item", "reviews.jsonl")
             if dataset_file(config, suffix).is_file()}
    input_hash = json_sha256({"kind": kind, "settings": settings.to_config(), "cold": cold.to_config(), "seed": seed,
                              "files": files, "fields": [stage_setting(config, key) for key in (
                                  "USER_ID_FIELD", "ITEM_ID_FIELD", "RATING_FIELD", "TIME_FIELD", "text_fields",
                                  "profile_user_group_field")]})
    artifact = ARTIFACTS["preferences"]
    if not force and artifact.is_fresh(config, input_hash, name=name):
        logger.info("Cold-start samples are up to date in %s", artifact.dir(config, name=name))
        return artifact.dir(config, name=name)
    frame = rating_frame(config)
    frame["user_id"], frame["item_id"] = frame["user_id"].astype(str), frame["item_id"].astype(str)
    texts = (item_titles(config), item_groups(config), review_reasons(config))
    if kind == "users":
        counts = frame.groupby("user_id").size()
        held_out = choose(counts.index[counts > cold.support].tolist(), cold.share, seed)
        test = new_user_samples(frame, held_out, settings, cold, texts)
        warm, dropped = warm_windows(frame[~frame["user_id"].isin(held_out)], settings, texts), 0
    else:
        counts = frame.groupby("item_id").size()
        held_out = choose(counts.index[counts >= cold.min_item_interactions].tolist(), cold.share, seed)
        test = new_item_samples(frame, held_out, settings, texts)
        windows = warm_windows(frame, settings, texts)
        warm = [sample for sample in windows if not mentions(sample, held_out)]
        dropped = len(windows) - len(warm)
    if not test:
        raise InputError(f"no cold-start {kind[:-1]} test sample: raise coldstart_share or lower coldstart_support")
    if len(test) > cold.test_samples:
        keep = set(np.random.default_rng(seed).choice(len(test), size=cold.test_samples, replace=False).tolist())
        test = [sample for n, sample in enumerate(test) if n in keep]
    samples = reindex(warm, test)
    rank_shots(samples, seed)
    report = {"source": name, "held_out": sorted(held_out, key=lambda token: (len(token), token)),
              "held_out_count": len(held_out), "dropped_windows": dropped,
              "support": cold.support if kind == "users" else 0, "seed": seed}
    return write_preferences(config, name, samples, input_hash, report)


def reindex(warm: List[dict], test: List[dict]) -> List[dict]:
    """Warm train and valid samples then the cold test samples, indexed in that order."""
    for sample in warm:
        sample.setdefault("cold", None)
        sample.setdefault("support_size", len(sample["history"]))
    for sample in test:
        sample["split"], sample["shot_rank"] = "test", None
    samples = [s for s in warm if s["split"] == "train"] + [s for s in warm if s["split"] == "valid"] + test
    for index, sample in enumerate(samples):
        sample["index"] = index
    return samples


def cold_samples(samples: Sequence[dict]) -> Dict[str, List[dict]]:
    """The samples of a cold-start split by split name."""
    out: Dict[str, List[dict]] = {"train": [], "valid": [], "test": []}
    for sample in samples:
        out[sample["split"]].append(sample)
    return out
