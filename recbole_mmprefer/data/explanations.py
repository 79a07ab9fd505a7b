"""The explanation table and node profiles: the one format every importer writes (paper section 4.1).

An imported data set is a folder ``<root>/<name>/`` that RecBole reads as usual
plus the text the explainer needs:

- ``<name>.inter``: interactions (``user_id``, ``item_id``, an order or time
  field, ``split`` = train/valid/test where the source says so);
- ``<name>.item`` / ``<name>.user``: one row per graph node with its text
  (``title``, ``profile``) and ``profile_source`` (who wrote the profile:
  ``xrec`` for the published GPT-3.5 profiles, ``template`` or ``llm:<model>``
  for ``mmprefer profiles``, empty where a node has none);
- ``<name>.expl.jsonl``: the explanation table, one JSON object per
  (user, item) pair with :data:`EXPLANATION_COLUMNS` and optionally
  ``baselines`` (published outputs keyed by system name).

The table is JSON lines, not TSV, so that explanations keep their exact text
(tabs, newlines and quotes included): metrics are computed on these strings.
Atomic files hold text with its whitespace runs collapsed to one space, since
RecBole splits fields on tabs and rows on newlines (see :func:`single_line`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, Iterable, Mapping, Sequence, Tuple

import numpy as np
import pandas as pd

from recbole_mmprefer.artifacts import explanation_table_name
from recbole_mmprefer.data.atomic import read_atomic_file
from recbole_mmprefer.errors import InputError, MissingInputError
from recbole_mmprefer.jsonl import read_jsonl

EXPLANATION_COLUMNS = ["user_id", "item_id", "title", "user_profile", "item_profile", "explanation", "split",
                       "profile_source", "explanation_source"]
SPLITS = ("train", "valid", "test")
_WHITESPACE = re.compile(r"\s+")
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")  # control characters that are not whitespace


def explanation_table_path(data_dir: Path, name: str) -> Path:
    """The table in a data set's folder (a run reads :func:`recbole_mmprefer.artifacts.explanation_table_file`)."""
    return Path(data_dir) / explanation_table_name(name)


def single_line(text: str) -> str:
    """Text fit for an atomic-file field: whitespace runs (tabs, newlines) become one space.

    A leading straight double quote becomes a typographic one: RecBole reads
    atomic files with pandas' default CSV quoting, which would otherwise take
    it for the start of a quoted field and fail on the row.
    """
    text = _WHITESPACE.sub(" ", _CONTROL.sub(" ", text)).strip()
    return "\u201c" + text[1:] if text.startswith('"') else text


def write_atomic_file(path: Path, frame: pd.DataFrame, field_types: Mapping[str, str]) -> None:
    """Write ``frame`` as a RecBole atomic file with a ``name:type`` header, text made single-line."""
    missing = [column for column in field_types if column not in frame.columns]
    if missing:
        raise ValueError(f"columns {missing} not in the frame written to {path}")
    columns = list(field_types)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\t".join(f"{column}:{field_types[column]}" for column in columns) + "\n")
        for values in frame[columns].itertuples(index=False, name=None):
            handle.write("\t".join(_atomic_value(value) for value in values) + "\n")


def _atomic_value(value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return single_line(str(value))


def assign_splits(pairs: pd.DataFrame, ratios: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 2020,
                  group_by: str = "pair") -> np.ndarray:
    """A seeded train/valid/test label per row of ``pairs`` (columns user_id, item_id).

    ``group_by="pair"`` shuffles the (unique) pairs; ``"user"`` keeps all pairs
    of a user in one split, so no user profile seen in training reappears at
    test time. Split sizes are ``floor(ratio * n)`` for train and valid, the
    rest for test; the same pairs, ratios and seed always give the same labels.
    """
    if len(ratios) != 3 or any(r < 0 for r in ratios) or not np.isclose(sum(ratios), 1.0):
        raise InputError(f"split ratios must be three non-negative numbers that sum to 1, got {list(ratios)}")
    if group_by not in ("pair", "user"):
        raise InputError(f"split group_by must be 'pair' or 'user', got {group_by!r}")
    if pairs.duplicated(["user_id", "item_id"]).any():
        raise InputError("pairs to split contain duplicates; each (user, item) pair must appear once")
    keys = pairs["user_id"].astype(str) if group_by == "user" else (
        pairs["user_id"].astype(str) + "\x1f" + pairs["item_id"].astype(str))
    groups = np.array(sorted(keys.unique()))  # sorted: labels do not depend on the input row order
    order = np.random.default_rng(seed).permutation(len(groups))
    n_train, n_valid = int(ratios[0] * len(groups)), int(ratios[1] * len(groups))
    labels = np.empty(len(groups), dtype=object)
    labels[order[:n_train]] = "train"
    labels[order[n_train:n_train + n_valid]] = "valid"
    labels[order[n_train + n_valid:]] = "test"
    group_label = dict(zip(groups, labels))
    return keys.map(group_label).to_numpy()


def write_explanation_table(path: Path, table: pd.DataFrame) -> None:
    """Write the table as JSON lines after checking its columns, ids, splits and uniqueness."""
    _check_table(table, str(path))
    columns = EXPLANATION_COLUMNS + (["baselines"] if "baselines" in table.columns else [])
    with open(path, "w", encoding="utf-8") as handle:
        for record in table[columns].to_dict(orient="records"):
            if "baselines" in record and not isinstance(record["baselines"], dict):
                record["baselines"] = {}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def read_explanation_table(path: Path) -> pd.DataFrame:
    """Read and check a table written by :func:`write_explanation_table`; errors name the line."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"Explanation table {path} not found: `mmprefer import` writes it")
    records = []
    for line_number, record in read_jsonl(path):
        missing = [column for column in EXPLANATION_COLUMNS if column not in record]
        if missing:
            raise InputError(f"{path}, line {line_number}: missing field(s) {missing}")
        records.append(record)
    table = pd.DataFrame.from_records(records, columns=EXPLANATION_COLUMNS + (
        ["baselines"] if any("baselines" in r for r in records) else []))
    _check_table(table, str(path))
    return table


def _check_table(table: pd.DataFrame, source: str) -> None:
    missing = [column for column in EXPLANATION_COLUMNS if column not in table.columns]
    if missing:
        raise InputError(f"{source}: explanation table lacks column(s) {missing}")
    for column in EXPLANATION_COLUMNS:
        bad = table[column].map(lambda value: not isinstance(value, str))
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputError(f"{source}, row {row + 1}: field {column!r} must be a string, "
                             f"got {table[column].iloc[row]!r}")
    bad_split = ~table["split"].isin(SPLITS)
    if bad_split.any():
        row = int(np.flatnonzero(bad_split.to_numpy())[0])
        raise InputError(f"{source}, row {row + 1}: split {table['split'].iloc[row]!r} is not one of {SPLITS}")
    duplicated = table.duplicated(["user_id", "item_id"])
    if duplicated.any():
        row = int(np.flatnonzero(duplicated.to_numpy())[0])
        raise InputError(f"{source}, row {row + 1}: pair ({table['user_id'].iloc[row]}, "
                         f"{table['item_id'].iloc[row]}) appears twice")


def read_node_profiles(data_dir: Path, name: str) -> Tuple[Dict[str, str], Dict[str, str]]:
    """User and item profiles by token, from ``<name>.user`` / ``<name>.item`` (empty ones left out)."""
    profiles = []
    for suffix, id_field in (("user", "user_id"), ("item", "item_id")):
        path = Path(data_dir) / f"{name}.{suffix}"
        if not path.is_file():
            profiles.append({})
            continue
        frame = read_atomic_file(path)
        if "profile" not in frame.columns:
            profiles.append({})
            continue
        frame = frame[frame["profile"].str.strip() != ""]
        profiles.append(dict(zip(frame[id_field], frame["profile"])))
    return profiles[0], profiles[1]


def count_by(values: Iterable[str]) -> Dict[str, int]:
    return {str(key): int(count) for key, count in pd.Series(list(values), dtype=object).value_counts().items()}


def table_summary(table: pd.DataFrame) -> Dict[str, object]:
    """What a report says about an explanation table: rows per split and profile coverage."""
    return {
        "pairs": len(table),
        "splits": count_by(table["split"]),
        "users": int(table["user_id"].nunique()),
        "items": int(table["item_id"].nunique()),
        "pairs_with_user_profile": int((table["user_profile"].str.strip() != "").sum()),
        "pairs_with_item_profile": int((table["item_profile"].str.strip() != "").sum()),
        "profile_sources": count_by(table["profile_source"]),
    }

