"""XRec-style user and item profiles (paper section 4.1) for data sets that have none: `mmprefer profiles`.

The explainer's prompt holds an item profile (which users would enjoy the
item) and a user profile (what the user likes). XRec had GPT-3.5 write them
from reviews; a data set imported without them gets them here, from one of
two sources:

- ``template``: deterministic text from the ``.item`` metadata and the
  ``.inter`` history, e.g. ``"Toy Story (1995). Genres: Animation,
  Children's, Comedy."`` for an item and ``"9 interactions. Most frequent
  genres: ... Latest items: ... Mean rating: 3.80."`` for a user;
- ``llm``: a local Hugging Face causal LM (``profile_llm_path``) or an
  OpenAI-compatible endpoint (``profile_api_base``) asked to summarise the
  same material; replies are cached in ``<run_dir>/profile_cache.jsonl`` so
  a rerun generates nothing twice.

The data set's files are only read (the bundled ml-100k lives inside the
installed RecBole). The stage writes ``<run_dir>/profiles/``: copies of
``<name>.user`` and ``<name>.item`` with the ``profile`` / ``profile_source``
fields filled (every other column kept, header types included), of
``<name>.expl.jsonl`` when the data set has one, ``report.json`` and
``meta.json`` (the ``profiles`` artifact: a rerun on unchanged data and
settings is skipped); later stages read node profiles and the explanation
table from there (:func:`recbole_mmprefer.artifacts.node_profile_folder`,
:func:`~recbole_mmprefer.artifacts.explanation_table_file`). Sources
are never mixed silently: a node profiled by another source in the data set
stops the stage unless it is forced to rewrite everything.

Optional reviews come from ``<name>.reviews.jsonl``: one JSON object per line
with ``user_id``, ``item_id``, the text under ``review`` (or ``text`` /
``reviewText``) and optionally ``timestamp``.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
from tqdm import tqdm

from recbole_mmprefer.artifacts import (
    ARTIFACTS,
    cache_file,
    dataset_file,
    explanation_table_name,
    has_explanation_table,
)
from recbole_mmprefer.data.atomic import in_time_order, is_last_of_user, read_atomic_file
from recbole_mmprefer.data.explanations import (
    read_explanation_table,
    single_line,
    write_atomic_file,
    write_explanation_table,
)
from recbole_mmprefer.errors import InputError, MissingInputError
from recbole_mmprefer.llm import ApiLM, LocalLM, ReplyCache, model_name
from recbole_mmprefer.resources import properties_dir, stage_setting
from recbole_mmprefer.utils import file_sha256, json_sha256, read_json, write_json

logger = logging.getLogger(__name__)

SOURCES = ("template", "llm")
PROFILE_TYPES = {"profile": "token_seq", "profile_source": "token"}
TEXT_TYPES = ("token", "token_seq")
GROUP_FIELD_CANDIDATES = ("class", "genre", "genres", "category", "categories")
FIELD_DEFAULTS = {"USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "RATING_FIELD": "rating",
                  "TIME_FIELD": "timestamp"}
REVIEW_TEXT_KEYS = ("review", "text", "reviewText", "summary")  # the first non-empty one is the review's text
MEDIA_FIELD_HINTS = ("image", "url", "path")  # fields left out of the default item fields
_SENTENCE_END = re.compile(r"(?<=[.!?])\s")


# --------------------------------------------------------------------------- settings

def setting(config, key: str):
    """The config's value, else the stage default (RecBole's field names for a plain dict config)."""
    return stage_setting(config, key)


def _data_file(config, suffix: str) -> Path:
    return dataset_file(config, suffix)


def profiles_dir(config) -> Path:
    return ARTIFACTS["profiles"].dir(config)


# --------------------------------------------------------------------------- inputs

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


@dataclass
class History:
    """Each user's interactions in time order: item tokens and ratings (None without a rating field)."""

    items: Dict[str, List[str]]
    ratings: Optional[Dict[str, List[float]]]


def read_history(config, path: Path, held_out_pairs: Sequence[Tuple[str, str]] = ()) -> History:
    """Each user's interactions in time order; with ``profile_hold_out`` only those a profile may name.

    Held out are the rows outside ``split == train`` when the file has a split
    field, otherwise each user's last interaction (RecBole's leave-one-out test
    item, and the pair ``mmprefer run`` explains), and every pair in
    ``held_out_pairs`` (the explanation table's): a profile must not name the
    item it is asked to explain.
    """
    frame = read_atomic_file(path)
    user_field, item_field = setting(config, "USER_ID_FIELD"), setting(config, "ITEM_ID_FIELD")
    for column in (user_field, item_field):
        if column not in frame.columns:
            raise InputError(f"{path}: no {column!r} field; the file has {list(frame.columns)}")
    time_field, rating_field = setting(config, "TIME_FIELD"), setting(config, "RATING_FIELD")
    frame = in_time_order(frame, time_field)
    users = list(dict.fromkeys(frame[user_field]))  # a user whose interactions are all held out stays known
    if setting(config, "profile_hold_out"):
        frame = _without_held_out(frame, user_field, item_field, held_out_pairs)
    ratings = None
    if rating_field in frame.columns:
        frame = frame.assign(_rating=pd.to_numeric(frame[rating_field], errors="coerce"))
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
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                records.append(_review_record(path, number, line))
    records.sort(key=lambda record: record[0])
    for _, user, item, text in records:
        if keep is not None and not keep(user, item):
            continue
        reviews.by_user.setdefault(user, []).append((item, text))
        reviews.by_item.setdefault(item, []).append(text)
    return reviews


def _review_record(path: Path, number: int, line: str) -> Tuple[float, str, str, str]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise InputError(f"{path}, line {number}: not valid JSON ({error.msg})") from None
    texts = [record[key] for key in REVIEW_TEXT_KEYS if isinstance(record.get(key), str)]
    if "user_id" not in record or "item_id" not in record or not texts:
        raise InputError(f"{path}, line {number}: a review needs user_id, item_id and one of {list(REVIEW_TEXT_KEYS)}")
    text = next((text for text in texts if text.strip()), "")
    try:
        stamp = float(record.get("timestamp", 0) or 0)
    except (TypeError, ValueError):
        stamp = 0.0
    return stamp, str(record["user_id"]), str(record["item_id"]), text


def clip_words(text: str, max_words: int) -> str:
    """At most ``max_words`` words of ``text`` (`` ...`` marks a cut)."""
    words = text.split()
    return " ".join(words[:max_words]) + (" ..." if len(words) > max_words else "")


def review_summary(text: str, max_words: int) -> str:
    """A review's first sentence, at most ``max_words`` words."""
    return clip_words(_SENTENCE_END.split(single_line(text), maxsplit=1)[0], max_words)


# --------------------------------------------------------------------------- item fields

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
        kept = [self.title] + [name for name in self.fields[1:] if _is_year(name) or name == self.group]
        return ItemFields(kept, self.group, self.labels, self.max_words)


def _is_year(name: str) -> bool:
    return "year" in name.lower()


def resolve_item_fields(config, items: NodeTable) -> ItemFields:
    """The configured item fields and group field, checked against the ``.item`` header."""
    available = list(items.frame.columns)
    configured = setting(config, "profile_item_fields")
    fields = list(configured) if configured else [
        name for name, kind in items.types.items()
        if name != items.id_field and name not in PROFILE_TYPES and kind in TEXT_TYPES
        and not any(hint in name.lower() for hint in MEDIA_FIELD_HINTS)]
    group = setting(config, "profile_user_group_field")
    for name in fields + ([group] if group else []):
        if name not in available:
            raise InputError(f"{items.path}: profile field {name!r} not found; the file has {available}")
    if not fields:
        raise InputError(f"{items.path} has no text field for item profiles; set profile_item_fields")
    if not group:
        group = next((name for name in GROUP_FIELD_CANDIDATES if name in available), None)
    labels = dict(setting(config, "profile_field_labels") or {})
    return ItemFields(fields, group, labels, int(setting(config, "profile_max_field_words")))


def split_values(value: str) -> List[str]:
    """Group values of one field: comma-separated when there is a comma, else space-separated."""
    parts = value.split(",") if "," in value else value.split()
    return [part.strip() for part in parts if part.strip()]


# --------------------------------------------------------------------------- template profiles

def _sentence(text: str) -> str:
    return text if text.endswith((".", "!", "?")) else text + "."


def _quoted(texts: Sequence[str]) -> str:
    return "; ".join(f'"{text}"' for text in texts)


def item_description(row: Dict[str, str], spec: ItemFields) -> str:
    """``"Title (year). Label: values."`` from the item fields; fields with "year" in their name go in brackets.

    The group field's values are listed with commas; other values keep at most ``spec.max_words`` words.
    """
    others = spec.fields[1:]
    years = [row[name].strip() for name in others if _is_year(name) and row[name].strip()]
    title = clip_words(row[spec.title], spec.max_words)
    head = " ".join([title] + [f"({year})" for year in years]).strip()
    sentences = [head] if head else []
    for name in others:
        value = row[name].strip()
        if value and not _is_year(name):
            text = ", ".join(split_values(value)) if name == spec.group else clip_words(value, spec.max_words)
            sentences.append(f"{spec.label(name)}: {text}")
    return " ".join(_sentence(sentence) for sentence in sentences)


@dataclass
class ProfileInputs:
    """Everything a profile is written from."""

    items: NodeTable
    users: NodeTable
    history: History
    reviews: Reviews
    spec: ItemFields
    descriptions: Dict[str, str]  # item token -> item_description
    brief: Dict[str, str]  # item token -> title, year and group values only
    titles: Dict[str, str]
    groups: Dict[str, List[str]]
    explained: Optional[pd.DataFrame] = None  # the data set's explanation table, where it has one


def load_inputs(config) -> ProfileInputs:
    item_path, inter_path = _data_file(config, "item"), _data_file(config, "inter")
    for path, what in ((item_path, "item metadata"), (inter_path, "interactions")):
        if not path.is_file():
            raise MissingInputError(f"{path} not found: profiles are written from the data set's {what}")
    items = read_node_table(item_path, setting(config, "ITEM_ID_FIELD"))
    explained = read_explanation_table(_data_file(config, "expl.jsonl")) if has_explanation_table(config) else None
    history = read_history(config, inter_path, [] if explained is None else
                           list(zip(explained["user_id"], explained["item_id"])))
    # A held-out pair's review would leak its explanation: keep only reviews of pairs in the history.
    keep = _in_history(history) if setting(config, "profile_hold_out") else None
    users = read_user_table(_data_file(config, "user"), setting(config, "USER_ID_FIELD"), list(history.items))
    spec = resolve_item_fields(config, items)
    rows = items.frame.to_dict(orient="records")
    tokens, brief = items.frame[items.id_field].tolist(), spec.brief()
    return ProfileInputs(
        items=items, users=users, history=history, reviews=read_reviews(_data_file(config, "reviews.jsonl"), keep),
        spec=spec, descriptions={token: item_description(row, spec) for token, row in zip(tokens, rows)},
        brief={token: item_description(row, brief) for token, row in zip(tokens, rows)},
        titles={token: row[spec.title].strip() or token for token, row in zip(tokens, rows)},
        groups={token: split_values(row[spec.group]) if spec.group else [] for token, row in zip(tokens, rows)},
        explained=explained)


def _in_history(history: History) -> Callable[[str, str], bool]:
    pairs = {(user, item) for user, items in history.items.items() for item in items}
    return lambda user, item: (user, item) in pairs


def _review_texts(config, reviews: Sequence[str]) -> List[str]:
    count, words = int(setting(config, "profile_review_count")), int(setting(config, "profile_review_words"))
    summaries = [review_summary(text, words) for text in reviews[-count:] if text.strip()] if count > 0 else []
    return [summary for summary in summaries if summary]


def template_item_profile(config, inputs: ProfileInputs, item: str) -> str:
    text = inputs.descriptions[item]
    reviews = _review_texts(config, inputs.reviews.by_item.get(item, []))
    return f"{text} Reviews: {_quoted(reviews)}." if reviews else text


def template_user_profile(config, inputs: ProfileInputs, user: str) -> str:
    """Interaction count, most frequent group values, latest titles, mean rating and review summaries."""
    items = inputs.history.items.get(user, [])
    if not items:
        return ""
    sentences = [f"{len(items)} interaction{'s' if len(items) != 1 else ''}"]
    counts = Counter(value for item in items for value in inputs.groups.get(item, []))
    top = sorted(counts.items(), key=lambda pair: (-pair[1], pair[0]))[:int(setting(config, "profile_top_groups"))]
    if top:
        label = inputs.spec.label(inputs.spec.group).lower()
        sentences.append(f"Most frequent {label}: " + ", ".join(f"{value} ({count})" for value, count in top))
    length = int(setting(config, "profile_history_length"))
    latest = items[-length:][::-1] if length > 0 else []
    if latest:
        sentences.append("Latest items: " + "; ".join(inputs.titles.get(item, item) for item in latest))
    ratings = inputs.history.ratings.get(user, []) if inputs.history.ratings is not None else []
    if ratings:
        sentences.append(f"Mean rating: {np.mean(ratings):.2f}")
    reviews = _review_texts(config, [text for _, text in inputs.reviews.by_user.get(user, [])])
    if reviews:
        sentences.append(f"Reviews: {_quoted(reviews)}")
    return " ".join(_sentence(sentence) for sentence in sentences)


# --------------------------------------------------------------------------- LLM prompts

ITEM_INSTRUCTION = (
    "You help a recommender system describe its catalogue. Below is an item with its details{reviews}. "
    "In two or three sentences, say what kind of user would enjoy this item and why. "
    "Write plain prose about the audience, without a heading or a list.")
USER_INSTRUCTION = (
    "You help a recommender system understand its users. Below are the items a user interacted with, "
    "oldest first{reviews}. In two or three sentences, describe what this user likes and looks for. "
    "Write plain prose about the user's tastes, without a heading or a list.")


def item_prompt(config, inputs: ProfileInputs, item: str) -> str:
    reviews = _review_texts(config, inputs.reviews.by_item.get(item, []))
    lines = [ITEM_INSTRUCTION.format(reviews=", and what reviewers wrote" if reviews else ""), "",
             f"Item: {inputs.descriptions[item]}"]
    lines += ["Reviews:"] + [f"- {review}" for review in reviews] if reviews else []
    return "\n".join(lines)


def user_prompt(config, inputs: ProfileInputs, user: str) -> str:
    items = inputs.history.items.get(user, [])
    ratings = inputs.history.ratings.get(user) if inputs.history.ratings is not None else None
    rated = ratings if ratings is not None and len(ratings) == len(items) else None
    length = int(setting(config, "profile_llm_history_length"))
    start = max(len(items) - length, 0)
    lines = []
    for position in range(start, len(items)):
        item = items[position]
        text = inputs.brief.get(item) or _sentence(item)
        lines.append(f"- {text}" + (f" Rated {rated[position]:g}." if rated is not None else ""))
    reviews = inputs.reviews.by_user.get(user, [])[-int(setting(config, "profile_review_count")):]
    summaries = [(item, review_summary(text, int(setting(config, "profile_review_words")))) for item, text in reviews]
    review_lines = [f'- On {inputs.titles.get(item, item)}: "{summary}"' for item, summary in summaries if summary]
    head = USER_INSTRUCTION.format(reviews=", and reviews the user wrote" if review_lines else "")
    return "\n".join([head, "", "Items:"] + lines + (["Reviews:"] + review_lines if review_lines else []))


# --------------------------------------------------------------------------- LLM backends

def llm_model_name(config) -> str:
    """The name that marks LLM profiles (``llm:<name>``); checks that exactly one backend is configured."""
    path, base = setting(config, "profile_llm_path"), setting(config, "profile_api_base")
    if bool(path) == bool(base):
        raise InputError("--source llm needs exactly one of profile_llm_path (a local causal LM) and "
                         f"profile_api_base (an OpenAI-compatible endpoint); got {path!r} and {base!r}")
    if base:
        name = setting(config, "profile_api_model")
        if not name:
            raise InputError("profile_api_base is set but profile_api_model is not: name the model to call")
        return str(name)
    return model_name(path)


def make_backend(config):
    max_new_tokens = int(setting(config, "profile_max_new_tokens"))
    if setting(config, "profile_api_base"):
        return ApiLM(setting(config, "profile_api_base"), llm_model_name(config), max_new_tokens,
                     key_env=setting(config, "profile_api_key_env"), timeout=setting(config, "profile_api_timeout"),
                     retries=setting(config, "profile_api_retries"),
                     retry_wait=setting(config, "profile_api_retry_wait"))
    return LocalLM(str(setting(config, "profile_llm_path")), max_new_tokens)


@dataclass
class LlmStats:
    generated: int = 0
    cached: int = 0
    empty: int = 0
    calls: int = 0


def generate_replies(prompts: Sequence[str], make: Callable[[], object], cache: ReplyCache,
                     batch_size: int, stats: LlmStats, description: str = "LLM profiles") -> List[str]:
    """One reply per prompt: cached ones reused, the rest generated in batches; an empty reply is retried once."""
    replies = [cache.get(prompt) for prompt in prompts]
    todo = [index for index, reply in enumerate(replies) if reply is None]
    stats.cached += len(prompts) - len(todo)
    backend = make() if todo else None
    with tqdm(total=len(todo), desc=description, unit="node", disable=not todo) as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            texts = _generate_with_retry(backend, [prompts[index] for index in batch], stats)
            for index, text in zip(batch, texts):
                replies[index] = text
                if text:
                    cache.put(prompts[index], text)
            bar.update(len(batch))
    return [reply or "" for reply in replies]


def _generate_with_retry(backend, prompts: List[str], stats: LlmStats) -> List[str]:
    texts = [single_line(text) for text in backend.generate(prompts)]
    stats.calls += 1
    empty = [index for index, text in enumerate(texts) if not text]
    if empty:
        stats.calls += 1
        again = backend.generate([prompts[index] for index in empty])
        for index, text in zip(empty, again):
            texts[index] = single_line(text)
    stats.generated += len(prompts)
    stats.empty += sum(1 for text in texts if not text)
    return texts


# --------------------------------------------------------------------------- sources and writing

def _source_counts(table: NodeTable) -> Dict[str, int]:
    sources = table.frame.loc[table.profile_mask(), "profile_source"].replace("", "(unknown)")
    return {str(key): int(count) for key, count in sources.value_counts().sort_index().items()}


def check_sources(inputs: ProfileInputs, source: str, force: bool) -> None:
    """Refuse to mix sources: nodes profiled by another source need ``force``."""
    if force:
        return
    foreign = {}
    for kind, table in (("user", inputs.users), ("item", inputs.items)):
        counts = {name: count for name, count in _source_counts(table).items() if name != source}
        if counts:
            foreign[kind] = counts
    if foreign:
        described = "; ".join(f"{sum(c.values())} {kind} profile(s) from " + ", ".join(
            f"{name!r} ({count})" for name, count in c.items()) for kind, c in foreign.items())
        raise InputError(f"The data set already has {described}, not from {source!r}; profiles are never mixed: "
                         f"rerun with --force (force=True) to rewrite every profile from {source!r}")


def nodes_to_write(table: NodeTable, force: bool) -> List[int]:
    """Row positions to (re)write: every row when forced, else those with an empty profile."""
    mask = np.ones(len(table.frame), dtype=bool) if force else ~table.profile_mask().to_numpy()
    return np.flatnonzero(mask).tolist()


def _set_profiles(table: NodeTable, rows: List[int], texts: List[str], source: str) -> None:
    if not rows:
        return
    profile_at, source_at = table.frame.columns.get_loc("profile"), table.frame.columns.get_loc("profile_source")
    table.frame.iloc[rows, profile_at] = texts
    table.frame.iloc[rows, source_at] = [source if text else "" for text in texts]


def _pair_source(user_source: str, item_source: str) -> str:
    if user_source == item_source:
        return user_source
    return f"user:{user_source};item:{item_source}"


def updated_explanation_table(table: pd.DataFrame, inputs: ProfileInputs) -> pd.DataFrame:
    """The table with each pair's profiles and profile_source taken from the node files."""
    def lookup(node: NodeTable, column: str) -> Dict[str, str]:
        return dict(zip(node.frame[node.id_field], node.frame[column]))

    users, items = lookup(inputs.users, "profile"), lookup(inputs.items, "profile")
    user_sources, item_sources = lookup(inputs.users, "profile_source"), lookup(inputs.items, "profile_source")
    table = table.copy()
    table["user_profile"] = [users.get(user, "") for user in table["user_id"]]
    table["item_profile"] = [items.get(item, "") for item in table["item_id"]]
    table["profile_source"] = [_pair_source(user_sources.get(user, ""), item_sources.get(item, ""))
                               for user, item in zip(table["user_id"], table["item_id"])]
    return table


def _node_writer(table: NodeTable) -> Tuple[str, Callable[[Path], None]]:
    return table.path.name, lambda target: write_atomic_file(target, table.frame, table.types)


# --------------------------------------------------------------------------- the stage

def _profile_texts(config, inputs: ProfileInputs, kind: str, tokens: List[str], method: str,
                   generate: Optional[Callable[[List[str], str], List[str]]]) -> List[str]:
    """One profile per token; a user without history gets an empty one (nothing to summarise)."""
    if method == "template":
        write = template_user_profile if kind == "user" else template_item_profile
        return [write(config, inputs, token) for token in tokens]
    if kind == "item":
        return generate([item_prompt(config, inputs, token) for token in tokens], "LLM item profiles")
    active = [token for token in tokens if inputs.history.items.get(token)]
    prompts = [user_prompt(config, inputs, token) for token in active]
    replies = dict(zip(active, generate(prompts, "LLM user profiles")))
    return [replies.get(token, "") for token in tokens]


def _llm_generator(config, source: str, stats: LlmStats) -> Callable[[List[str], str], List[str]]:
    max_new_tokens = int(setting(config, "profile_max_new_tokens"))
    cache_path = cache_file(config, "profiles")
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    cache = ReplyCache(cache_path, source, max_new_tokens)
    backend: List[object] = []

    def make():
        if not backend:
            backend.append(make_backend(config))
        return backend[0]

    batch_size = max(int(setting(config, "profile_llm_batch_size")), 1)
    return lambda prompts, description: generate_replies(prompts, make, cache, batch_size, stats, description)


def _fill(config, inputs: ProfileInputs, method: str, source: str, force: bool,
          generate: Optional[Callable]) -> Dict[str, Dict[str, int]]:
    counts = {}
    for kind, table in (("users", inputs.users), ("items", inputs.items)):
        rows = nodes_to_write(table, force)
        texts = _profile_texts(config, inputs, kind[:-1], table.frame[table.id_field].iloc[rows].tolist(), method,
                               generate)
        _set_profiles(table, rows, texts, source)
        written = sum(1 for text in texts if text)
        counts[kind] = {"nodes": len(table.frame), "written": written, "empty": len(texts) - written,
                        "kept": len(table.frame) - len(rows)}
    return counts


def build_profiles(config, source: Optional[str] = None, force: bool = False) -> Dict[str, object]:
    """Write the data set's user and item profiles to ``<run_dir>/profiles/``; returns a report.

    ``source`` is ``template`` or ``llm`` (default: ``profile_method``). Without
    ``force`` only nodes with an empty profile in the data set are written, and
    a node profiled there by another source is an error; with ``force`` every
    profile is rewritten. The report has per-kind counts, profiles per source,
    LLM calls and the files written.
    """
    method = source or setting(config, "profile_method") or "template"
    if method not in SOURCES:
        raise InputError(f"Unknown profile source {method!r}; known sources: {list(SOURCES)}")
    source_name = "template" if method == "template" else f"llm:{llm_model_name(config)}"
    input_hash = profiles_input_hash(config, source_name, force)
    if ARTIFACTS["profiles"].is_fresh(config, input_hash):
        logger.info("Profiles are up to date in %s", profiles_dir(config))
        return read_json(ARTIFACTS["profiles"].file(config))
    inputs = load_inputs(config)
    check_sources(inputs, source_name, force)
    stats = LlmStats()
    generate = _llm_generator(config, source_name, stats) if method == "llm" else None
    counts = _fill(config, inputs, method, source_name, force, generate)
    report = {"dataset": config["dataset"], "source": source_name, "force": bool(force), **counts,
              "profile_sources": {"users": _source_counts(inputs.users), "items": _source_counts(inputs.items)}}
    if method == "llm":
        report["llm"] = vars(stats)
    report["files"] = [str(path) for path in _write_outputs(config, inputs, report, input_hash)]
    _log_report(report)
    return report


def profiles_input_hash(config, source_name: str, force: bool) -> str:
    """A hash of the data set's files the profiles are written from, the profile settings and the source."""
    files = {suffix: file_sha256(_data_file(config, suffix)) for suffix in PROFILE_INPUT_FILES
             if _data_file(config, suffix).is_file()}
    settings = {key: setting(config, key) for key in _profile_keys()}
    fields = {key: setting(config, key) for key in FIELD_DEFAULTS}
    return json_sha256({"files": files, "settings": settings, "fields": fields, "source": source_name,
                        "force": bool(force)})


PROFILE_INPUT_FILES = ("item", "user", "inter", "expl.jsonl", "reviews.jsonl")


def _profile_keys() -> List[str]:
    import yaml

    with open(properties_dir() / "profiles.yaml", encoding="utf-8") as handle:
        return sorted(yaml.safe_load(handle))


def recorded_run(config) -> Optional[Tuple[str, bool]]:
    """(source name, forced) of the profiles stage's last run for this run directory, else None."""
    meta = ARTIFACTS["profiles"].read_meta(config)
    return None if meta is None else (str(meta.get("source", "")), bool(meta.get("force")))


def _write_outputs(config, inputs: ProfileInputs, report: Dict[str, object], input_hash: str) -> List[Path]:
    """The profiled node files (and explanation table) in ``profiles_dir``, all or none of them."""
    writers = [_node_writer(inputs.users), _node_writer(inputs.items)]
    if inputs.explained is not None:
        table = updated_explanation_table(inputs.explained, inputs)
        writers.append((explanation_table_name(config["dataset"]),
                        lambda target: write_explanation_table(target, table)))
    out_dir = profiles_dir(config)
    meta = {"source": report["source"], "force": report["force"]}
    with ARTIFACTS["profiles"].writing(config, input_hash, meta) as staging:
        for name, write in writers:
            write(staging / name)
        write_json(staging / "report.json", report)
    return [out_dir / name for name, _ in writers]


def _log_report(report: Dict[str, object]) -> None:
    for kind in ("users", "items"):
        counts = report[kind]
        logger.info("%s profiles (%s): %d written, %d empty, %d kept of %d; by source %s", kind[:-1],
                    report["source"], counts["written"], counts["empty"], counts["kept"], counts["nodes"],
                    report["profile_sources"][kind])
    if "llm" in report:
        logger.info("LLM replies: %(generated)d generated in %(calls)d calls, %(cached)d cached, %(empty)d empty",
                    report["llm"])
    logger.info("Wrote %s", ", ".join(report["files"]))
