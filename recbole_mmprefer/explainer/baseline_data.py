"""What the explanation baselines learn from (issue 14): the explanation table's pairs, as index tensors.

Users and items get an embedding index from the whole explanation table (all
splits; index 0 is the unknown user or item, for pairs outside it). Ratings
come from the data set's ``.inter`` file (``RATING_FIELD``, the mean where a
pair occurs more than once) when it has one and ``baseline_use_ratings`` is
on; the XRec releases have none, and then every rating part of a model is off.
An empty explanation in the train or valid split is skipped and counted.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch

from recbole_mmprefer.artifacts import dataset_file
from recbole_mmprefer.data.atomic import read_atomic_file
from recbole_mmprefer.errors import InputError
from recbole_mmprefer.resources import stage_setting

logger = logging.getLogger(__name__)

UNKNOWN = "<unknown>"


@dataclass(frozen=True)
class IdIndex:
    """Raw ids -> embedding rows (0: an id the model never saw)."""

    ids: Tuple[str, ...]

    @classmethod
    def of(cls, values: Sequence[str]) -> "IdIndex":
        return cls((UNKNOWN, *sorted(set(map(str, values)))))

    def rows(self, values: Sequence[str]) -> List[int]:
        positions = {value: row for row, value in enumerate(self.ids)}
        return [positions.get(str(value), 0) for value in values]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class RatingScale:
    """The data set's rating range; None where it has no ratings."""

    low: float
    high: float

    def to_json(self) -> Dict[str, float]:
        return {"low": self.low, "high": self.high}


def pair_ratings(config, use_ratings: bool) -> Optional[Dict[Tuple[str, str], float]]:
    """(user, item) -> rating from ``<dataset>.inter``, or None where it has no rating field (or ratings are off)."""
    if not use_ratings:
        return None
    path = dataset_file(config, "inter")
    if not path.is_file():
        return None
    field = stage_setting(config, "RATING_FIELD")
    frame = read_atomic_file(path)
    if field not in frame.columns:
        return None
    user, item = stage_setting(config, "USER_ID_FIELD"), stage_setting(config, "ITEM_ID_FIELD")
    values = pd.to_numeric(frame[field], errors="coerce")
    if values.isna().any():
        line = int(np.flatnonzero(values.isna().to_numpy())[0]) + 2
        raise InputError(f"{path}, line {line}: field {field!r} is not a number ({frame[field].iloc[line - 2]!r})")
    means = values.groupby([frame[user], frame[item]]).mean()
    return {(str(u), str(i)): float(value) for (u, i), value in means.items()}


@dataclass
class ExplanationPairs:
    """Rows of one split: embedding rows, ratings (NaN where unknown) and the explanations' token ids."""

    user_ids: List[str]
    item_ids: List[str]
    users: torch.Tensor
    items: torch.Tensor
    ratings: torch.Tensor
    tokens: List[List[int]]

    def __len__(self) -> int:
        return len(self.user_ids)

    def batch(self, indices: Sequence[int], bos_id: int, eos_id: int, pad_id: int) -> Dict[str, torch.Tensor]:
        """Users, items, ratings and ``tokens`` = [bos, w1..wn, eos] padded on the right with ``pad_id``."""
        sequences = [[bos_id, *self.tokens[index], eos_id] for index in indices]
        width = max(map(len, sequences))
        tokens = torch.full((len(sequences), width), pad_id, dtype=torch.long)
        for row, sequence in enumerate(sequences):
            tokens[row, :len(sequence)] = torch.tensor(sequence)
        picked = torch.as_tensor(list(indices), dtype=torch.long)
        lengths = torch.tensor([len(sequence) for sequence in sequences])
        mask = torch.arange(width)[None, :] < lengths[:, None]
        return {"users": self.users[picked], "items": self.items[picked], "ratings": self.ratings[picked],
                "tokens": tokens, "token_mask": mask}


def pairs_of(rows: pd.DataFrame, users: IdIndex, items: IdIndex, ratings: Optional[Dict[Tuple[str, str], float]],
             codec, max_words: int) -> ExplanationPairs:
    """Index tensors of ``rows`` (their explanations encoded by ``codec``; "" where a row has none)."""
    user_ids = [str(user) for user in rows["user_id"]]
    item_ids = [str(item) for item in rows["item_id"]]
    rating_values = [ratings.get(pair, np.nan) if ratings else np.nan for pair in zip(user_ids, item_ids)]
    texts = rows["explanation"].tolist() if "explanation" in rows else [""] * len(rows)
    return ExplanationPairs(user_ids, item_ids, torch.tensor(users.rows(user_ids)), torch.tensor(items.rows(item_ids)),
                            torch.tensor(rating_values, dtype=torch.float32),
                            [codec.encode(text or "", max_words) for text in texts])


def with_explanations(rows: pd.DataFrame, split: str) -> pd.DataFrame:
    """The rows whose explanation is not blank; the count left out is logged."""
    has_text = rows["explanation"].fillna("").astype(str).str.strip() != ""
    if (~has_text).any():
        logger.warning("%d %s pairs have an empty explanation: skipped", int((~has_text).sum()), split)
    return rows[has_text]


def save_indices(folder: Path, users: IdIndex, items: IdIndex, scale: Optional[RatingScale]) -> None:
    payload = {"users": list(users.ids[1:]), "items": list(items.ids[1:]),
               "ratings": scale.to_json() if scale else None}
    (Path(folder) / "indices.json").write_text(json.dumps(payload) + "\n", encoding="utf-8")


def load_indices(folder: Path) -> Tuple[IdIndex, IdIndex, Optional[RatingScale]]:
    payload = json.loads((Path(folder) / "indices.json").read_text(encoding="utf-8"))
    scale = RatingScale(**payload["ratings"]) if payload["ratings"] else None
    return IdIndex((UNKNOWN, *payload["users"])), IdIndex((UNKNOWN, *payload["items"])), scale
