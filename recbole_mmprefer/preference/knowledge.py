"""The preference knowledge base K (ExplainRec, design section 4; issue 16): priors for users and items without
history, as files, and in words for the prompt.

Built from the **train split only** of a preference-sample set (so no
held-out user or item of a cold-start split can reach it): every distinct
(user, item, liked) the train samples show, as target or in a history. Three
parts, each a JSON file of the ``preference_knowledge`` artifact
``<run_dir>/preference_knowledge/<samples>/``:

``demographic.json``
    ``{"attributes": [...], "age_bounds": [...], "overall": C, "groups": {g: C},
    "values": {attribute: {value: {**C, "groups": {g: C}}}}}`` where ``C`` is
    ``{"interactions": n, "liked": k}``: like counts by user attribute value
    (``knowledge_user_attributes`` of ``.user``; ages as ``knowledge_age_bounds``
    buckets), overall and per item group (genre).
``temporal.json``
    ``{"recent_from": t, "overall": C, "items": {i: {**C, "recent": r}},
    "groups": {g: {**C, "recent": r}}}``: each item's and group's counts, and how
    many fall in the latest ``knowledge_recent_share`` of the train period
    (``recent``; the trend). Without timestamps ``recent_from`` is null.
``cross_domain.json``
    ``{"source": path or null, "overall": C, "groups": {g: C}, "items": {title: C}}``:
    like counts by group and by item title in another domain's preference
    samples (``knowledge_cross_domain``: a ``samples.jsonl``, e.g. TALLRec's
    books imported with ``mmprefer preferences --tallrec_json``); empty without
    one. A target whose title is close to one of them (cosine of the text
    encoder's embeddings at least ``knowledge_cross_domain_match``: a book and
    its film) is told that item's like rate: item-level correlation carried
    across domains.

A rate is always smoothed toward its parent: ``(liked + m p) / (n + m)`` with
``m = knowledge_smoothing`` and ``p`` the overall rate (a group's), so a value
seen twice says little. :func:`knowledge_text` puts a sample's priors in words
(a user attribute that is missing is said to be unknown and left out of the
prior, which then falls back to every user's). A train sample's own answer is
left out of its target's like rate: counted, it tells the model the label
(on ml-100k at 64 shots, TALLRec + K then reached a train loss of 0.22 and a
test AUC of 0.548).
"""

from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from recbole_mmprefer.artifacts import ARTIFACTS, dataset_file
from recbole_mmprefer.data.atomic import read_atomic_file
from recbole_mmprefer.errors import InputError
from recbole_mmprefer.jsonl import read_records
from recbole_mmprefer.resources import stage_setting
from recbole_mmprefer.settings import StageSettings, check_float, check_int, check_str_list
from recbole_mmprefer.utils import file_sha256, json_sha256, read_json, write_json

logger = logging.getLogger(__name__)

PARTS = ("demographic", "temporal", "cross_domain")
Counts = Dict[str, int]


@dataclass
class KnowledgeSettings(StageSettings):
    """The ``knowledge_*`` keys of properties/preference.yaml, checked."""

    PREFIX = "knowledge_"

    user_attributes: List[str]
    age_bounds: List[int]
    recent_share: float
    smoothing: float
    cross_domain: Optional[str]
    cross_domain_match: float
    source: Optional[str]

    def __post_init__(self):
        self.user_attributes = check_str_list("knowledge_user_attributes", self.user_attributes or [])
        self.age_bounds = sorted(check_int("knowledge_age_bounds", bound, 0) for bound in (self.age_bounds or []))
        self.recent_share = check_float("knowledge_recent_share", self.recent_share, 0.0)
        if not 0.0 < self.recent_share < 1.0:
            raise InputError(f"knowledge_recent_share must lie strictly between 0 and 1, got {self.recent_share}")
        self.smoothing = check_float("knowledge_smoothing", self.smoothing, 0.0)
        self.cross_domain_match = check_float("knowledge_cross_domain_match", self.cross_domain_match, 0.0, 1.0)


# -- counting ----------------------------------------------------------------------------------------------

def count(counts: Counts, liked: bool) -> None:
    counts["interactions"] = counts.get("interactions", 0) + 1
    counts["liked"] = counts.get("liked", 0) + int(bool(liked))


def empty() -> Counts:
    return {"interactions": 0, "liked": 0}


def rate(counts: Optional[Counts], prior: float, smoothing: float) -> float:
    """The like rate of ``counts`` smoothed toward ``prior``."""
    counts = counts or empty()
    return (counts["liked"] + smoothing * prior) / (counts["interactions"] + smoothing) if (
        counts["interactions"] + smoothing) > 0 else prior


def age_bucket(value: str, bounds: Sequence[int]) -> Optional[str]:
    """``"25-34"`` for 30 with bounds [18, 25, 35, ...]; ``"under 18"``, ``"56+"`` at the ends; None if not a number."""
    try:
        age = float(value)
    except (TypeError, ValueError):
        return None
    if not bounds:
        return str(int(age))
    place = bisect.bisect_right(list(bounds), age)
    if place == 0:
        return f"under {bounds[0]}"
    if place == len(bounds):
        return f"{bounds[-1]}+"
    return f"{bounds[place - 1]}-{bounds[place] - 1}"


def user_attributes(config, settings: KnowledgeSettings) -> Dict[str, Dict[str, str]]:
    """Each user's attribute values (ages bucketed) from ``.user``; empty values left out; {} without the file."""
    path = dataset_file(config, "user")
    if not path.is_file() or not settings.user_attributes:
        return {}
    frame = read_atomic_file(path)
    user_field = stage_setting(config, "USER_ID_FIELD")
    present = [name for name in settings.user_attributes if name in frame.columns]
    missing = [name for name in settings.user_attributes if name not in frame.columns]
    if missing:
        logger.warning("%s has no field %s: that part of the demographic prior is left out", path, missing)
    out: Dict[str, Dict[str, str]] = {}
    for row in frame[[user_field, *present]].itertuples(index=False, name=None):
        values = {}
        for name, value in zip(present, row[1:]):
            value = age_bucket(value, settings.age_bounds) if name == "age" else str(value).strip()
            if value:
                values[name] = value
        out[str(row[0])] = values
    return out


def interactions(samples: Sequence[dict]) -> List[Tuple[str, str, bool, List[str], Optional[int]]]:
    """Distinct (user, item, liked, groups, time) of the train samples, targets and history entries alike."""
    seen: Dict[Tuple[str, str], tuple] = {}
    for sample in samples:
        if sample.get("split") != "train":
            continue
        user = str(sample.get("user_id"))
        seen.setdefault((user, str(sample["item_id"])), (bool(sample["label"]), list(sample.get("groups") or []),
                                                          sample.get("timestamp")))
        for entry in sample["history"]:
            seen.setdefault((user, str(entry["item_id"])), (bool(entry["liked"]), list(entry.get("groups") or []),
                                                            None))
    return [(user, item, liked, groups, time) for (user, item), (liked, groups, time) in seen.items()]


def demographic_part(rows, attributes: Dict[str, Dict[str, str]], settings: KnowledgeSettings) -> dict:
    part = {"attributes": settings.user_attributes, "age_bounds": settings.age_bounds, "overall": empty(),
            "groups": {}, "values": {name: {} for name in settings.user_attributes}}
    for user, _, liked, groups, _ in rows:
        count(part["overall"], liked)
        for group in groups:
            count(part["groups"].setdefault(group, empty()), liked)
        for name, value in attributes.get(user, {}).items():
            cell = part["values"][name].setdefault(value, {**empty(), "groups": {}})
            count(cell, liked)
            for group in groups:
                count(cell["groups"].setdefault(group, empty()), liked)
    return part


def temporal_part(rows, settings: KnowledgeSettings) -> dict:
    times = [time for *_, time in rows if time is not None]
    recent_from = float(np.quantile(times, 1.0 - settings.recent_share)) if times else None
    part = {"recent_from": recent_from, "overall": {**empty(), "recent": 0}, "items": {}, "groups": {}}
    for _, item, liked, groups, time in rows:
        recent = int(recent_from is not None and time is not None and time >= recent_from)
        for cell in [part["overall"], part["items"].setdefault(item, {**empty(), "recent": 0}),
                     *(part["groups"].setdefault(group, {**empty(), "recent": 0}) for group in groups)]:
            count(cell, liked)
            cell["recent"] += recent
    return part


def cross_domain_part(source: Optional[str]) -> dict:
    part = {"source": source, "overall": empty(), "groups": {}, "items": {}}
    if not source:
        return part
    for sample in read_records(Path(source)):
        for liked, groups, title in [(sample["label"], sample.get("groups") or [], sample.get("title"))] + [
                (entry["liked"], entry.get("groups") or [], entry.get("title")) for entry in sample["history"]]:
            count(part["overall"], liked)
            for group in groups:
                count(part["groups"].setdefault(group, empty()), liked)
            if title:
                count(part["items"].setdefault(" ".join(str(title).split()), empty()), liked)
    return part


def cross_domain_matches(targets: Sequence[str], knowledge: "KnowledgeBase", encoder,
                         min_similarity: float) -> Dict[str, Tuple[str, float]]:
    """For each target title, the other domain's closest title by ``encoder`` (unit rows) when its cosine is at
    least ``min_similarity``: item-level correlation carried across domains, e.g. a book and its film."""
    others = sorted(knowledge.cross_domain.get("items") or {})
    targets = sorted({" ".join(str(t).split()) for t in targets if t})
    if not others or not targets or min_similarity <= 0:
        return {}
    other_rows, target_rows = encoder.encode(others), encoder.encode(targets)
    similarity = target_rows @ other_rows.T
    best = similarity.argmax(axis=1)
    return {title: (others[b], float(similarity[n, b])) for n, (title, b) in enumerate(zip(targets, best))
            if similarity[n, b] >= min_similarity}


def build_knowledge(config, samples_name: str, samples: Sequence[dict], force: bool = False) -> Path:
    """The ``preference_knowledge`` artifact of a sample set (its train split only); skipped when up to date."""
    settings = KnowledgeSettings.from_config(config)
    user_file = dataset_file(config, "user")
    rows = interactions(samples)
    input_hash = json_sha256({"settings": settings.to_config(), "interactions": json_sha256(rows),
                              "users": file_sha256(user_file) if user_file.is_file() else None,
                              "cross_domain": file_sha256(Path(settings.cross_domain)) if settings.cross_domain
                              else None})
    artifact = ARTIFACTS["preference_knowledge"]
    if not force and artifact.is_fresh(config, input_hash, name=samples_name):
        return artifact.dir(config, name=samples_name)
    attributes = user_attributes(config, settings)
    parts = {"demographic": demographic_part(rows, attributes, settings), "temporal": temporal_part(rows, settings),
             "cross_domain": cross_domain_part(settings.cross_domain)}
    meta = {"train_interactions": len(rows), "users_with_attributes": len(attributes)}
    with artifact.writing(config, input_hash, meta, name=samples_name) as staging:
        for name, part in parts.items():
            write_json(staging / f"{name}.json", part)
    logger.info("Preference knowledge from %d train interactions in %s", len(rows),
                artifact.dir(config, name=samples_name))
    return artifact.dir(config, name=samples_name)


# -- reading and words -------------------------------------------------------------------------------------

@dataclass
class KnowledgeBase:
    demographic: dict
    temporal: dict
    cross_domain: dict
    attributes: Dict[str, Dict[str, str]]
    smoothing: float

    @classmethod
    def load(cls, config, folder: Path) -> "KnowledgeBase":
        settings = KnowledgeSettings.from_config(config)
        parts = {name: read_json(Path(folder) / f"{name}.json") for name in PARTS}
        return cls(**parts, attributes=user_attributes(config, settings), smoothing=settings.smoothing)

    @property
    def overall_rate(self) -> float:
        return rate(self.demographic["overall"], 0.5, self.smoothing)

    def group_rate(self, groups: Sequence[str]) -> float:
        """Every user's like rate of items in ``groups`` (the mean over the groups; the overall rate without any)."""
        if not groups:
            return self.overall_rate
        return float(np.mean([rate(self.demographic["groups"].get(g), self.overall_rate, self.smoothing)
                              for g in groups]))

    def demographic_prior(self, user: Optional[str], groups: Sequence[str]) -> Tuple[float, Dict[str, float],
                                                                                      List[str]]:
        """(the prior, each known attribute's rate, the attributes unknown for this user). The prior is the mean
        of the known attributes' rates for the target's groups, each smoothed toward every user's group rate; with
        no attribute known it is every user's group rate."""
        known = self.attributes.get(str(user), {}) if user is not None else {}
        base = self.group_rate(groups)
        rates, unknown = {}, []
        for name in self.demographic["attributes"]:
            value = known.get(name)
            cell = self.demographic["values"].get(name, {}).get(value) if value is not None else None
            if cell is None:
                unknown.append(name)
                continue
            if groups:
                rates[f"{name}={value}"] = float(np.mean([
                    rate(cell["groups"].get(g), rate(self.demographic["groups"].get(g), self.overall_rate,
                                                     self.smoothing), self.smoothing) for g in groups]))
            else:
                rates[f"{name}={value}"] = rate(cell, self.overall_rate, self.smoothing)
        return (float(np.mean(list(rates.values()))) if rates else base), rates, unknown

    def item_prior(self, item: str, groups: Sequence[str],
                   leave_out: Optional[bool] = None) -> Tuple[float, Optional[Counts]]:
        """(the item's like rate smoothed toward its groups', its counts or None for an item never seen), with one
        interaction liked as ``leave_out`` taken out of the counts when it is given."""
        counts = self.temporal["items"].get(str(item))
        if counts is not None and leave_out is not None:
            counts = {"interactions": counts["interactions"] - 1, "liked": counts["liked"] - int(leave_out)}
            counts = counts if counts["interactions"] > 0 else None
        return rate(counts, self.group_rate(groups), self.smoothing), counts


def knowledge_text(sample: dict, knowledge: KnowledgeBase, kind: str = "movie",
                   matches: Optional[Dict[str, Tuple[str, float]]] = None, counted: bool = False) -> str:
    """A sample's priors in words, e.g. for the prompt of a user or item without history; ``matches``
    (:func:`cross_domain_matches`) adds the other domain's closest item. ``counted``: K counted this sample's own
    answer (a train sample of the set K was built from), which the target's like rate then leaves out, so that no
    prompt tells a sample its own label."""
    groups = list(sample.get("groups") or [])
    genre = ", ".join(groups) if groups else f"{kind}s"
    prior, rates, unknown = knowledge.demographic_prior(sample.get("user_id"), groups)
    parts = []
    if rates:
        said = "; ".join(f"{label.split('=', 1)[1]} ({label.split('=', 1)[0]}) {value:.0%}"
                         for label, value in rates.items())
        parts.append(f"Users like this one liked {genre} {kind}s at these rates: {said}.")
    if unknown:
        parts.append(f"Unknown for this user: {', '.join(unknown)}" + (
            " (the prior is every user's)." if not rates else "."))
    item_rate, counts = knowledge.item_prior(sample["item_id"], groups,
                                             bool(sample["label"]) if counted else None)
    if counts is None:
        parts.append(f"This {kind} has no ratings yet; {genre} {kind}s were liked {knowledge.group_rate(groups):.0%} "
                     "of the time.")
    else:
        parts.append(f"This {kind} was liked by {item_rate:.0%} of its {counts['interactions']} raters.")
    cross = knowledge.cross_domain
    if cross.get("source") and groups and any(g in cross["groups"] for g in groups):
        other = float(np.mean([rate(cross["groups"].get(g), rate(cross["overall"], 0.5, knowledge.smoothing),
                                    knowledge.smoothing) for g in groups]))
        parts.append(f"In the other domain, {genre} items were liked {other:.0%} of the time.")
    match = (matches or {}).get(" ".join(str(sample.get("title") or "").split()))
    if match is not None:
        title, similarity = match
        counts = cross["items"][title]
        parts.append(f'In the other domain, "{title}" (a close title) was liked by '
                     f"{rate(counts, rate(cross['overall'], 0.5, knowledge.smoothing), knowledge.smoothing):.0%} "
                     f"of its {counts['interactions']} raters.")
    return " ".join(parts)


def attach_knowledge(config, samples_name: str, samples: Sequence[dict], kind: str) -> List[dict]:
    """The samples, each with its priors in words (``knowledge``, shown by the prompt), K built from their train
    split (:func:`build_knowledge`), or from ``knowledge_source``'s (e.g. the training domain's windows when
    scoring another domain's samples, which have no train split)."""
    source = KnowledgeSettings.from_config(config).source
    counted = not source or source == samples_name  # K is built from these samples: it holds each train answer
    if not counted:
        from recbole_mmprefer.data.preferences import read_preferences

        samples_name, built_from = source, read_preferences(config, source)
    else:
        built_from = samples
    knowledge = KnowledgeBase.load(config, build_knowledge(config, samples_name, built_from))
    settings, matches = KnowledgeSettings.from_config(config), {}
    if knowledge.cross_domain.get("items") and settings.cross_domain_match > 0:
        from recbole_mmprefer.data.features import TextEncoder

        encoder = TextEncoder(stage_setting(config, "text_encoder"))
        matches = cross_domain_matches([s.get("title") for s in samples], knowledge, encoder,
                                       settings.cross_domain_match)
    return [{**sample, "knowledge": knowledge_text(sample, knowledge, kind, matches,
                                                   counted and sample.get("split") == "train")}
            for sample in samples]
