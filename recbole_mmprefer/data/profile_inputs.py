"""What XRec-style profiles (paper section 4.1) are written from: the data set's files and the profile settings.

:func:`load_inputs` reads ``<name>.item``, ``<name>.user`` (rows added for
users with history but none in the file), ``<name>.inter`` (each user's
history in time order, held-out interactions left out with
``profile_hold_out``), the optional ``<name>.reviews.jsonl`` (one JSON object
per line with ``user_id``, ``item_id``, the text under ``review``, ``text``,
``reviewText`` or ``summary`` and optionally ``timestamp``) and the optional
explanation table. :class:`ProfileSettings` holds the ``profile_*`` keys of
``properties/profiles.yaml``, RecBole's field names and the LLM backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from recbole_mmprefer.artifacts import dataset_file, has_explanation_table
from recbole_mmprefer.data.atomic import in_time_order, is_last_of_user, read_atomic_file
from recbole_mmprefer.data.explanations import read_explanation_table
from recbole_mmprefer.errors import InputError, MissingInputError
from recbole_mmprefer.jsonl import read_jsonl
from recbole_mmprefer.llm_backends import BackendSettings
from recbole_mmprefer.settings import StageSettings, check_bool, check_choice, check_int, check_str_list

SOURCES = ("template", "llm")
PROFILE_TYPES = {"profile": "token_seq", "profile_source": "token"}
TEXT_TYPES = ("token", "token_seq")
GROUP_FIELD_CANDIDATES = ("class", "genre", "genres", "category", "categories")
REVIEW_TEXT_KEYS = ("review", "text", "reviewText", "summary")  # the first non-empty one is the review's text
MEDIA_FIELD_HINTS = ("image", "url", "path")  # fields left out of the default item fields


# --------------------------------------------------------------------------- settings

@dataclass
class ProfileSettings(StageSettings):
    """The ``profile_*`` keys, RecBole's field names (``USER_ID_FIELD``, ...) and the profiles' LLM backend."""

    PREFIX = "profile_"
    KEYS = {"user_field": "USER_ID_FIELD", "item_field": "ITEM_ID_FIELD", "rating_field": "RATING_FIELD",
            "time_field": "TIME_FIELD"}
    COUNTS = ("top_groups", "history_length", "review_count", "llm_history_length")
    WORD_LIMITS = ("max_field_words", "review_words")

    method: str
    item_fields: List[str]  # empty: the .item file's text fields
    user_group_field: Optional[str]
    field_labels: Dict[str, str]
    max_field_words: int
    top_groups: int
    history_length: int
    hold_out: bool
    review_count: int
    review_words: int
    llm_history_length: int
    user_field: str
    item_field: str
    rating_field: str
    time_field: str
    backend: BackendSettings

    def __post_init__(self):
        self.method = check_choice("profile_method", self.method, SOURCES)
        self.item_fields = check_str_list("profile_item_fields", self.item_fields or [])
        self.user_group_field = str(self.user_group_field) if self.user_group_field else None
        labels = self.field_labels or {}
        if not isinstance(labels, dict):
            raise InputError(f"profile_field_labels must map field names to labels, got {labels!r}")
        self.field_labels = {str(name): str(label) for name, label in labels.items()}
        for name in self.COUNTS:
            setattr(self, name, check_int(self.key(name), getattr(self, name), 0))
        for name in self.WORD_LIMITS:
            setattr(self, name, check_int(self.key(name), getattr(self, name), 1))
        self.hold_out = check_bool("profile_hold_out", self.hold_out)
        for name in self.KEYS:
            setattr(self, name, str(getattr(self, name)))

    @classmethod
    def from_config(cls, config=None, **overrides) -> "ProfileSettings":
        overrides.setdefault("backend", BackendSettings.for_profiles(config))
        return super().from_config(config, **overrides)

    def to_config(self) -> Dict[str, object]:
        keys = {key: value for key, value in super().to_config().items() if key != self.key("backend")}
        return {**keys, **self.backend.to_config()}


# --------------------------------------------------------------------------- node tables

@dataclass
class NodeTable:
    """One atomic node file (``.user`` or ``.item``): rows as strings and the header's field types."""

    path: Path
    frame: pd.DataFrame
    types: Dict[str, str]
    id_field: str

    def profile_mask(self) -> pd.Series:
        return self.frame["profile"].str.strip() != ""


def header_types(path: Path) -> Dict[str, str]:
    """Field name -> RecBole type from the first line of an atomic file (``token`` when untyped)."""
    with open(path, encoding="utf-8") as handle:
        header = handle.readline().rstrip("\r\n")
    pairs = [column.split(":", 1) for column in header.split("\t")]
    return {pair[0]: (pair[1] if len(pair) > 1 else "token") for pair in pairs}


def read_node_table(path: Path, id_field: str) -> NodeTable:
    """An atomic node file with ``profile`` / ``profile_source`` columns (added empty when missing)."""
    frame = read_atomic_file(path)
    types = header_types(path)
    if id_field not in frame.columns:
        raise InputError(f"{path}: no {id_field!r} field; the file has {list(frame.columns)}")
    duplicated = frame[id_field].duplicated()
    if duplicated.any():
        row = int(np.flatnonzero(duplicated.to_numpy())[0])
        raise InputError(f"{path}, line {row + 2}: {id_field} {frame[id_field].iloc[row]!r} is listed twice")
    return _with_profile_columns(NodeTable(path, frame, types, id_field))


def _with_profile_columns(table: NodeTable) -> NodeTable:
    for column, field_type in PROFILE_TYPES.items():
        if column not in table.frame.columns:
            table.frame[column] = ""
        table.types.setdefault(column, field_type)
    return table


def read_user_table(path: Path, id_field: str, users: Sequence[str]) -> NodeTable:
    """The ``.user`` file with a row for every user of ``users`` (a bare file when there is none)."""
    if path.is_file():
        table = read_node_table(path, id_field)
    else:
        table = _with_profile_columns(NodeTable(path, pd.DataFrame({id_field: []}, dtype=object), {id_field: "token"},
                                                id_field))
    known = set(table.frame[id_field])
    missing = [user for user in users if user not in known]
    if missing:
        extra = pd.DataFrame({column: [""] * len(missing) for column in table.frame.columns})
        extra[id_field] = missing
        table.frame = pd.concat([table.frame, extra], ignore_index=True)
    return table


# --------------------------------------------------------------------------- history and reviews

@dataclass
class History:
    """Each user's interactions in time order: item tokens and ratings (None without a rating field)."""

    items: Dict[str, List[str]]
    ratings: Optional[Dict[str, List[float]]]


def read_history(settings: ProfileSettings, path: Path, held_out_pairs: Sequence[Tuple[str, str]] = ()) -> History:
    """Each user's interactions in time order; with ``profile_hold_out`` only those a profile may name.

    Held out are the rows outside ``split == train`` when the file has a split
    field, otherwise each user's last interaction (RecBole's leave-one-out test
    item, and the pair ``mmprefer run`` explains), and every pair in
    ``held_out_pairs`` (the explanation table's): a profile must not name the
    item it is asked to explain.
    """
    frame = read_atomic_file(path)
    user_field, item_field = settings.user_field, settings.item_field
    for column in (user_field, item_field):
        if column not in frame.columns:
            raise InputError(f"{path}: no {column!r} field; the file has {list(frame.columns)}")
    frame = in_time_order(frame, settings.time_field)
    users = list(dict.fromkeys(frame[user_field]))  # a user whose interactions are all held out stays known
    if settings.hold_out:
        frame = _without_held_out(frame, user_field, item_field, held_out_pairs)
    ratings = None
    if settings.rating_field in frame.columns:
        frame = frame.assign(_rating=pd.to_numeric(frame[settings.rating_field], errors="coerce"))
        ratings = {user: [r for r in group if not np.isnan(r)] for user, group in
                   frame.groupby(user_field, sort=False)["_rating"]}
    kept = {user: list(group) for user, group in frame.groupby(user_field, sort=False)[item_field]}
    return History({user: kept.get(user, []) for user in users}, ratings)


def _without_held_out(frame: pd.DataFrame, user_field: str, item_field: str,
                      held_out_pairs: Sequence[Tuple[str, str]]) -> pd.DataFrame:
    if "split" in frame.columns:
        frame = frame[frame["split"] == "train"]
    else:
        frame = frame[~is_last_of_user(frame, user_field)]
    if len(held_out_pairs):
        pairs = pd.MultiIndex.from_tuples(list(held_out_pairs))
        frame = frame[~pd.MultiIndex.from_arrays([frame[user_field], frame[item_field]]).isin(pairs)]
    return frame


@dataclass
class Reviews:
    """Review texts per user and per item, oldest first."""

    by_user: Dict[str, List[Tuple[str, str]]] = field(default_factory=dict)  # user -> [(item, text)]
    by_item: Dict[str, List[str]] = field(default_factory=dict)


def read_reviews(path: Path, keep: Optional[Callable[[str, str], bool]] = None) -> Reviews:
    """``<name>.reviews.jsonl`` when present (empty otherwise); a bad line is an error naming it.

    ``keep(user, item)`` selects the reviews used (all by default).
    """
    reviews = Reviews()
    if not path.is_file():
        return reviews
    records = sorted((_review(path, number, record) for number, record in read_jsonl(path)),
                     key=lambda review: review[0])
    for _, user, item, text in records:
        if keep is not None and not keep(user, item):
            continue
        reviews.by_user.setdefault(user, []).append((item, text))
        reviews.by_item.setdefault(item, []).append(text)
    return reviews


def _review(path: Path, number: int, record: dict) -> Tuple[float, str, str, str]:
    texts = [record[key] for key in REVIEW_TEXT_KEYS if isinstance(record.get(key), str)]
    if "user_id" not in record or "item_id" not in record or not texts:
        raise InputError(f"{path}, line {number}: a review needs user_id, item_id and one of {list(REVIEW_TEXT_KEYS)}")
    text = next((text for text in texts if text.strip()), "")
    try:
        stamp = float(record.get("timestamp", 0) or 0)
    except (TypeError, ValueError):
        stamp = 0.0
    return stamp, str(record["user_id"]), str(record["item_id"]), text


# --------------------------------------------------------------------------- item fields

def is_year_field(name: str) -> bool:
    return "year" in name.lower()


@dataclass
class ItemFields:
    """Which ``.item`` fields make an item's text: the first is its title; ``group`` describes users."""

    fields: List[str]
    group: Optional[str]
    labels: Dict[str, str]
    max_words: int

    @property
    def title(self) -> str:
        return self.fields[0]

    def label(self, name: str) -> str:
        return self.labels.get(name) or name.replace("_", " ").capitalize()

    def brief(self) -> "ItemFields":
        """Only the title, year and group fields: how an item is named in a user's history."""
        kept = [self.title] + [name for name in self.fields[1:] if is_year_field(name) or name == self.group]
        return ItemFields(kept, self.group, self.labels, self.max_words)


def resolve_item_fields(settings: ProfileSettings, items: NodeTable) -> ItemFields:
    """The configured item fields and group field, checked against the ``.item`` header."""
    available = list(items.frame.columns)
    fields = list(settings.item_fields) or [
        name for name, kind in items.types.items()
        if name != items.id_field and name not in PROFILE_TYPES and kind in TEXT_TYPES
        and not any(hint in name.lower() for hint in MEDIA_FIELD_HINTS)]
    group = settings.user_group_field
    for name in fields + ([group] if group else []):
        if name not in available:
            raise InputError(f"{items.path}: profile field {name!r} not found; the file has {available}")
    if not fields:
        raise InputError(f"{items.path} has no text field for item profiles; set profile_item_fields")
    if not group:
        group = next((name for name in GROUP_FIELD_CANDIDATES if name in available), None)
    return ItemFields(fields, group, dict(settings.field_labels), settings.max_field_words)


def split_values(value: str) -> List[str]:
    """Group values of one field: comma-separated when there is a comma, else space-separated."""
    parts = value.split(",") if "," in value else value.split()
    return [part.strip() for part in parts if part.strip()]


# --------------------------------------------------------------------------- everything together

@dataclass
class ProfileInputs:
    """Everything a profile is written from."""

    items: NodeTable
    users: NodeTable
    history: History
    reviews: Reviews
    spec: ItemFields
    rows: Dict[str, Dict[str, str]]  # item token -> its .item row
    titles: Dict[str, str]
    groups: Dict[str, List[str]]
    explained: Optional[pd.DataFrame] = None  # the data set's explanation table, where it has one


def load_inputs(config, settings: ProfileSettings) -> ProfileInputs:
    """The data set's files of ``config`` (``data_path``, ``dataset``), read as ``settings`` say."""
    item_path, inter_path = dataset_file(config, "item"), dataset_file(config, "inter")
    for path, what in ((item_path, "item metadata"), (inter_path, "interactions")):
        if not path.is_file():
            raise MissingInputError(f"{path} not found: profiles are written from the data set's {what}")
    items = read_node_table(item_path, settings.item_field)
    explained = read_explanation_table(dataset_file(config, "expl.jsonl")) if has_explanation_table(config) else None
    history = read_history(settings, inter_path, [] if explained is None else
                           list(zip(explained["user_id"], explained["item_id"])))
    # A held-out pair's review would leak its explanation: keep only reviews of pairs in the history.
    keep = _in_history(history) if settings.hold_out else None
    users = read_user_table(dataset_file(config, "user"), settings.user_field, list(history.items))
    spec = resolve_item_fields(settings, items)
    rows = dict(zip(items.frame[items.id_field], items.frame.to_dict(orient="records")))
    return ProfileInputs(
        items=items, users=users, history=history, reviews=read_reviews(dataset_file(config, "reviews.jsonl"), keep),
        spec=spec, rows=rows, titles={token: row[spec.title].strip() or token for token, row in rows.items()},
        groups={token: split_values(row[spec.group]) if spec.group else [] for token, row in rows.items()},
        explained=explained)


def _in_history(history: History) -> Callable[[str, str], bool]:
    pairs = {(user, item) for user, items in history.items.items() for item in items}
    return lambda user, item: (user, item) in pairs
