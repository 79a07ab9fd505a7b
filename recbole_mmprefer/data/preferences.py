"""Preference samples (ExplainRec, design section 4; TALLRec's protocol): `mmprefer preferences`.

**From a data set with ratings** (``build_preferences``): each user's
interactions in time order (ties keep file order), users in the order they
first appear in ``.inter``; an item is liked when its rating is above
``preference_like_threshold`` (ml-100k: > 3). Every window of
``preference_history_length`` (10) consecutive items is a history, the next
item its target and whether the target is liked its label (Yes / No). The last
``preference_windows`` (10,000) windows of that list are kept and split
``preference_split_ratios`` (8:1:1) in order. Train samples carry a
``shot_rank``, their place in an order shuffled by ``preference_shot_seed``
(default ``seed``): the few-shot training set of n samples is the train
samples with ``shot_rank < n``, so the 16-shot set lies inside the 64-shot set.

**From TALLRec's published JSON** (``import_tallrec_json``): ``instruction``,
``input`` ("User Preference: "A", "B"\\nUser Unpreference: ...\\nWhether the
user will like the target movie "T"?") and ``output`` ("Yes." / "No.") read as
they are; titles (without their quotes) are mapped to the data set's item ids
where one is given (``"<title> (<year>)"``, the form TALLRec writes ml-100k
titles in), and the unmatched are counted and named. More than half unmatched is an error (the
titles are not from this data set), never a silent drop.

Both write the ``preferences`` artifact: ``<run_dir>/preferences/<name>/samples.jsonl``,
one sample per line::

    {"index": 0, "split": "train", "user_id": "196", "item_id": "257", "title": "Men in Black (1997)",
     "groups": ["Action", "Adventure", "Comedy", "Sci-Fi"], "label": 1, "rating": 4.0, "timestamp": 881251577,
     "history": [{"item_id": "242", "title": "Kolya (1996)", "groups": ["Comedy"], "liked": true,
                  "rating": 3.0}, ...], "shot_rank": 17}

(``groups``: the item's genres or categories, ``profile_user_group_field`` or
the usual group field of ``.item``; ``review`` (the target's) and each history
item's ``reason``: the first sentence of the user's review of it where the data
set has ``<dataset>.reviews.jsonl``, else ""; ``user_id``, ``rating``,
``timestamp`` and ``shot_rank`` are null where unknown) and ``report.json``:
counts per split and label, histories with no liked or no disliked item,
unmatched titles.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from recbole_mmprefer.artifacts import ARTIFACTS, dataset_file
from recbole_mmprefer.data.atomic import in_time_order, read_atomic_file
from recbole_mmprefer.data.explanations import SPLITS
from recbole_mmprefer.data.profile_inputs import GROUP_FIELD_CANDIDATES, split_values
from recbole_mmprefer.errors import InputError, MissingInputError
from recbole_mmprefer.jsonl import read_records, write_jsonl
from recbole_mmprefer.resources import stage_setting
from recbole_mmprefer.settings import StageSettings, check_float, check_int
from recbole_mmprefer.utils import file_sha256, json_sha256, read_text, write_json

logger = logging.getLogger(__name__)

WINDOWS = "windows"  # the artifact name of the samples built from the data set
LABELS = {"Yes.": 1, "No.": 0}
ENTRY_BOUNDARY = re.compile(r', (?=")')  # between two quoted entries of a list
TALLREC_INPUT = re.compile(r"^User Preference: (?P<liked>.*)\nUser Unpreference: (?P<disliked>.*)\n"
                       r"Whether the user will like the target (?P<kind>\w+) \"(?P<target>.*)\"\?$", re.S)


@dataclass
class PreferenceSettings(StageSettings):
    """The ``preference_*`` keys of properties/preference.yaml, checked."""

    PREFIX = "preference_"

    like_threshold: float
    history_length: int
    windows: int
    split_ratios: List[float]
    shot_seed: Optional[int]

    def __post_init__(self):
        self.like_threshold = check_float("preference_like_threshold", self.like_threshold)
        self.history_length = check_int("preference_history_length", self.history_length, 1)
        self.windows = check_int("preference_windows", self.windows, 1)
        ratios = [float(value) for value in (self.split_ratios or [])]
        if len(ratios) != 3 or min(ratios) < 0 or not np.isclose(sum(ratios), 1.0):
            raise InputError(f"preference_split_ratios must be three shares (train, valid, test) summing to 1, got "
                             f"{self.split_ratios!r}")
        self.split_ratios = ratios
        self.shot_seed = None if self.shot_seed is None else check_int("preference_shot_seed", self.shot_seed, 0)


# -- titles ----------------------------------------------------------------------------------------------


def item_groups(config) -> Dict[str, List[str]]:
    """Group values (genres, categories) by item token: ``profile_user_group_field``, else the first of the
    usual group fields in ``.item`` ({} without one)."""
    path = dataset_file(config, "item")
    if not path.is_file():
        return {}
    items = read_atomic_file(path)
    field = stage_setting(config, "profile_user_group_field") or next(
        (name for name in GROUP_FIELD_CANDIDATES if name in items.columns), None)
    if field is None or field not in items.columns:
        return {}
    return {token: split_values(value) for token, value in zip(items[stage_setting(config, "ITEM_ID_FIELD")],
                                                               items[field])}


def review_reasons(config) -> Dict[Tuple[str, str], str]:
    """The first sentence (``profile_review_words`` words at most) of each (user, item) review in
    ``<dataset>.reviews.jsonl``; {} without that file."""
    from recbole_mmprefer.data.profile_inputs import read_reviews
    from recbole_mmprefer.data.profile_templates import review_summary

    reviews = read_reviews(dataset_file(config, "reviews.jsonl"))
    words = int(stage_setting(config, "profile_review_words"))
    return {(user, item): review_summary(text, words) for user, pairs in reviews.by_user.items()
            for item, text in pairs if text.strip()}


def item_titles(config) -> Dict[str, str]:
    """``"<title> (<year>)"`` by item token: the first ``text_fields`` field and the first year field among them
    (ml-100k: ``movie_title``, ``release_year``); {} without a ``.item`` file."""
    path = dataset_file(config, "item")
    fields = list(stage_setting(config, "text_fields") or [])
    if not path.is_file() or not fields:
        return {}
    items = read_atomic_file(path)
    item_field = stage_setting(config, "ITEM_ID_FIELD")
    if fields[0] not in items.columns:
        raise InputError(f"{path}: text_fields names {fields[0]!r} as the title, but the file has the fields "
                         f"{list(items.columns)}")
    years = [name for name in fields[1:] if "year" in name.lower() and name in items.columns]
    titles = items[fields[0]].str.strip()
    if years:
        year = items[years[0]].str.strip()
        titles = titles.where(year == "", titles + " (" + year + ")")
    return dict(zip(items[item_field], titles))


# -- windows ---------------------------------------------------------------------------------------------


def rating_frame(config) -> pd.DataFrame:
    """The data set's interactions (user, item, rating, time) in TALLRec's order; InputError naming the field and
    the config key when there is no rating."""
    path = dataset_file(config, "inter")
    frame = read_atomic_file(path)
    fields = {key: stage_setting(config, key) for key in ("USER_ID_FIELD", "ITEM_ID_FIELD", "RATING_FIELD",
                                                         "TIME_FIELD")}
    if fields["RATING_FIELD"] not in frame.columns:
        raise InputError(f"{path} has no rating field {fields['RATING_FIELD']!r} (config key RATING_FIELD; its "
                         f"fields are {list(frame.columns)}): preference samples need ratings to tell liked from "
                         "disliked items")
    ratings = pd.to_numeric(frame[fields["RATING_FIELD"]], errors="coerce")
    if ratings.isna().any():
        row = int(np.flatnonzero(ratings.isna().to_numpy())[0])
        raise InputError(f"{path}, line {row + 2}, field {fields['RATING_FIELD']!r}: "
                         f"{frame[fields['RATING_FIELD']].iloc[row]!r} is not a number")
    out = pd.DataFrame({"user_id": frame[fields["USER_ID_FIELD"]], "item_id": frame[fields["ITEM_ID_FIELD"]],
                        "rating": ratings})
    out["timestamp"] = (pd.to_numeric(frame[fields["TIME_FIELD"]], errors="coerce")
                        if fields["TIME_FIELD"] in frame.columns else np.nan)
    return in_time_order(out, "timestamp")


def build_windows(frame: pd.DataFrame, settings: PreferenceSettings, titles: Dict[str, str],
                  groups: Optional[Dict[str, List[str]]] = None,
                  reviews: Optional[Dict[Tuple[str, str], str]] = None) -> List[dict]:
    """Every history window of every user (users in order of first appearance), the last ``settings.windows``
    of them, split in order; see the module docstring."""
    first_seen = {user: n for n, user in enumerate(pd.unique(frame.sort_index()["user_id"]))}
    length, samples, groups, reviews = settings.history_length, [], groups or {}, reviews or {}
    for user, rows in sorted(frame.groupby("user_id", sort=False), key=lambda group: first_seen[group[0]]):
        items, ratings = list(rows["item_id"]), list(rows["rating"])
        liked = [rating > settings.like_threshold for rating in ratings]
        times = list(rows["timestamp"])
        for at in range(length, len(items)):
            samples.append({
                "user_id": str(user), "item_id": str(items[at]), "title": titles.get(str(items[at]), ""),
                "groups": groups.get(str(items[at]), []), "label": int(liked[at]), "rating": float(ratings[at]),
                "timestamp": None if pd.isna(times[at]) else int(times[at]),
                "review": reviews.get((str(user), str(items[at])), ""),
                "history": [{"item_id": str(item), "title": titles.get(str(item), ""),
                             "groups": groups.get(str(item), []), "liked": bool(flag), "rating": float(rating),
                             "reason": reviews.get((str(user), str(item)), "")}
                            for item, flag, rating in zip(items[at - length:at], liked[at - length:at],
                                                          ratings[at - length:at])]})
    samples = samples[-settings.windows:]
    return assign_splits(samples, settings.split_ratios)


def assign_splits(samples: List[dict], ratios: Sequence[float]) -> List[dict]:
    """Index and split (train, valid, test in order, TALLRec's int() cuts) every sample."""
    train_end = int(len(samples) * ratios[0])
    valid_end = int(len(samples) * (ratios[0] + ratios[1]))
    for index, sample in enumerate(samples):
        sample["index"] = index
        sample["split"] = "train" if index < train_end else "valid" if index < valid_end else "test"
        sample.setdefault("shot_rank", None)
    return samples


def rank_shots(samples: List[dict], seed: int) -> None:
    """``shot_rank`` of each train sample: its place in the train samples shuffled by ``seed``."""
    train = [sample for sample in samples if sample["split"] == "train"]
    order = np.random.default_rng(seed).permutation(len(train))
    for rank, position in enumerate(order):
        train[position]["shot_rank"] = rank


def few_shot(samples: Sequence[dict], shots: Optional[int]) -> List[dict]:
    """The few-shot training set of ``shots`` samples (None: every train sample)."""
    train = [sample for sample in samples if sample["split"] == "train"]
    if shots is None:
        return train
    if shots > len(train):
        raise InputError(f"{shots} shots asked, but there are only {len(train)} train samples")
    return sorted((s for s in train if s["shot_rank"] is not None and s["shot_rank"] < shots),
                  key=lambda sample: sample["shot_rank"])


# -- TALLRec's published JSON ----------------------------------------------------------------------------


def split_titles(text: str) -> List[str]:
    """TALLRec's list of quoted entries -> their titles: ``"A (1995)", "B (1996)"`` -> [A (1995), B (1996)];
    a book's ``"T" written by W`` -> ``T written by W``. A title is its entry with the double quotes taken out
    (:func:`canonical_title`): entries quote their titles, and some titles hold quotes of their own."""
    text = text.strip()
    if not text:
        return []
    if not text.startswith('"'):
        raise ValueError(f"not a list of quoted titles: {text[:80]!r}")
    return [canonical_title(entry) for entry in ENTRY_BOUNDARY.split(text)]


def canonical_title(text: str) -> str:
    """A title as TALLRec's files and the data set are compared: double quotes removed, spaces collapsed."""
    return " ".join(str(text).replace('"', " ").split())


def parse_tallrec_sample(record: object, where: str) -> Tuple[List[str], List[str], str, int]:
    """(liked titles, disliked titles, target title, label) of one published sample; InputError naming it."""
    if not isinstance(record, dict) or not {"input", "output"} <= set(record):
        raise InputError(f"{where}: a TALLRec sample is an object with 'instruction', 'input' and 'output'")
    match = TALLREC_INPUT.match(str(record["input"]).strip())
    if match is None:
        raise InputError(f"{where}: 'input' is not TALLRec's \"User Preference: ...\\nUser Unpreference: ...\\n"
                         f"Whether the user will like the target ... ?\": {str(record['input'])[:120]!r}")
    output = str(record["output"]).strip()
    if output not in LABELS:
        raise InputError(f"{where}: 'output' must be \"Yes.\" or \"No.\", got {output!r}")
    try:
        liked, disliked = split_titles(match["liked"]), split_titles(match["disliked"])
    except ValueError as error:
        raise InputError(f"{where}: {error}") from None
    return liked, disliked, canonical_title(match["target"]), LABELS[output]


def import_tallrec_json(path: Path, titles: Optional[Dict[str, str]], split: str, max_unmatched: float = 0.5,
                        groups: Optional[Dict[str, List[str]]] = None) -> Tuple[List[dict], Dict[str, object]]:
    """(samples, report) of a published TALLRec JSON file; ``titles`` (item token -> title) maps titles to ids
    (None: the title is the id, as for a domain with no data set here); ``groups`` gives matched items their
    genres."""
    if split not in SPLITS:
        raise InputError(f"split must be one of {SPLITS}, got {split!r}")
    try:
        records = json.loads(read_text(Path(path), "TALLRec JSON files"))
    except json.JSONDecodeError as error:
        raise InputError(f"{path}, line {error.lineno}: not valid JSON ({error.msg})") from None
    if not isinstance(records, list):
        raise InputError(f"{path}: a TALLRec file is a JSON list of samples")
    by_title: Dict[str, str] = {}
    for token, title in (titles or {}).items():
        by_title.setdefault(canonical_title(title), token)
    unmatched: Counter = Counter()
    groups = groups or {}

    def item(title: str) -> Optional[str]:
        if titles is None:
            return title
        if title not in by_title:
            unmatched[title] += 1
        return by_title.get(title)

    samples = []
    for number, record in enumerate(records):
        liked, disliked, target, label = parse_tallrec_sample(record, f"{path}, sample {number}")
        history = [{"item_id": token, "title": t, "groups": groups.get(token, []), "liked": flag, "rating": None,
                    "reason": ""}
                   for t, flag in [(t, True) for t in liked] + [(t, False) for t in disliked] for token in [item(t)]]
        token = item(target)
        samples.append({"user_id": None, "item_id": token, "title": target, "groups": groups.get(token, []),
                        "label": label, "rating": None, "timestamp": None, "review": "", "history": history,
                        "index": number, "split": split, "shot_rank": None})
    mentions = sum(len(sample["history"]) + 1 for sample in samples)
    missed = sum(unmatched.values())
    report = {"source": str(path), "samples": len(samples), "title_mentions": mentions,
              "unmatched_mentions": missed, "unmatched_titles": len(unmatched),
              "first_unmatched": [title for title, _ in unmatched.most_common(10)]}
    if titles is not None and mentions and missed / mentions > max_unmatched:
        raise InputError(f"{path}: {missed} of {mentions} title mentions ({len(unmatched)} distinct titles) match no "
                         f"item of the data set, e.g. {report['first_unmatched'][:3]}: these samples are not from "
                         "this data set (import them without --dataset titles, or fix the titles)")
    if missed:
        logger.warning("%s: %d of %d title mentions match no item of the data set (kept with item_id null), e.g. "
                       "%s", path, missed, mentions, report["first_unmatched"][:3])
    return samples, report


# -- the stage -------------------------------------------------------------------------------------------


def summarise(samples: Sequence[dict]) -> Dict[str, object]:
    """Counts per split and label, and histories with no liked / no disliked item."""
    counts = Counter((sample["split"], sample["label"]) for sample in samples)
    return {"samples": len(samples),
            "per_split": {split: {"yes": counts[(split, 1)], "no": counts[(split, 0)]} for split in SPLITS},
            "histories_without_liked": sum(not any(h["liked"] for h in s["history"]) for s in samples),
            "histories_without_disliked": sum(all(h["liked"] for h in s["history"]) for s in samples)}


def write_preferences(config, name: str, samples: List[dict], input_hash: str, report: Dict[str, object]) -> Path:
    """The ``preferences`` artifact ``name``: samples.jsonl and report.json, swapped in whole."""
    report = {**report, **summarise(samples)}
    for key in ("histories_without_liked", "histories_without_disliked"):
        if report[key]:
            logger.warning("%d of %d preference samples have a history %s (kept: the prompt lists none)",
                           report[key], len(samples), key.replace("histories_", "").replace("_", " "))
    with ARTIFACTS["preferences"].writing(config, input_hash, {"report": report}, name=name) as staging:
        write_jsonl(staging / "samples.jsonl", samples)
        write_json(staging / "report.json", report)
    out = ARTIFACTS["preferences"].dir(config, name=name)
    logger.info("Wrote %d preference samples (%s) to %s", len(samples),
                ", ".join(f"{split} {sum(v.values())}" for split, v in report["per_split"].items()), out)
    return out


def build_preferences(config, force: bool = False) -> Path:
    """TALLRec-protocol windows of the data set (see the module docstring); skipped when up to date."""
    settings = PreferenceSettings.from_config(config)
    seed = settings.shot_seed if settings.shot_seed is not None else int(stage_setting(config, "seed"))
    files = {suffix: file_sha256(dataset_file(config, suffix)) for suffix in ("inter", "item", "reviews.jsonl")
             if dataset_file(config, suffix).is_file()}
    input_hash = json_sha256({"settings": settings.to_config(), "seed": seed, "files": files,
                              "fields": [stage_setting(config, key) for key in
                                         ("USER_ID_FIELD", "ITEM_ID_FIELD", "RATING_FIELD", "TIME_FIELD",
                                          "text_fields", "profile_user_group_field")]})
    if not force and ARTIFACTS["preferences"].is_fresh(config, input_hash, name=WINDOWS):
        logger.info("Preference samples are up to date in %s", ARTIFACTS["preferences"].dir(config, name=WINDOWS))
        return ARTIFACTS["preferences"].dir(config, name=WINDOWS)
    samples = build_windows(rating_frame(config), settings, item_titles(config), item_groups(config),
                            review_reasons(config))
    if not samples:
        raise InputError(f"no user of {dataset_file(config, 'inter')} has more than {settings.history_length} "
                         "interactions: there is no preference window (lower preference_history_length)")
    rank_shots(samples, seed)
    return write_preferences(config, WINDOWS, samples, input_hash, {"source": "windows", "shot_seed": seed})


def import_preferences(config, path: Path, split: str = "test", name: Optional[str] = None,
                       match_titles: bool = True) -> Path:
    """A published TALLRec JSON as the ``preferences`` artifact ``name`` (default ``tallrec-<file stem>``)."""
    name = name or f"tallrec-{Path(path).stem}"
    titles = item_titles(config) if match_titles else None
    samples, report = import_tallrec_json(Path(path), titles, split, groups=item_groups(config))
    input_hash = json_sha256({"file": file_sha256(Path(path)), "titles": titles, "split": split})
    return write_preferences(config, name, samples, input_hash, report)


def read_preferences(config, name: str = WINDOWS) -> List[dict]:
    """The samples of the ``preferences`` artifact ``name``; MissingInputError naming the command."""
    folder = ARTIFACTS["preferences"].dir(config, name=name)
    if not (folder / "samples.jsonl").is_file():
        raise MissingInputError(f"No preference samples in {folder}: run `mmprefer preferences --dataset "
                                f"{config['dataset']}` first")
    return read_records(folder / "samples.jsonl")
