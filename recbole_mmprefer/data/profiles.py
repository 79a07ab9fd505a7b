"""XRec-style user and item profiles (paper section 4.1) for data sets that have none: `mmprefer profiles`.

The explainer's prompt holds an item profile (which users would enjoy the
item) and a user profile (what the user likes). XRec had GPT-3.5 write them
from reviews; a data set imported without them gets them here, from one of
two sources:

- ``template``: deterministic text from the ``.item`` metadata, the
  ``.inter`` history and reviews (:mod:`recbole_mmprefer.data.profile_templates`);
- ``llm``: a local Hugging Face causal LM (``profile_llm_path``) or an
  OpenAI-compatible endpoint (``profile_api_base``) asked to summarise the
  same material (:mod:`recbole_mmprefer.data.profile_llm`); replies are
  cached in ``<run_dir>/profile_cache.jsonl`` so a rerun generates nothing
  twice.

What they are written from, and the settings, are read by
:mod:`recbole_mmprefer.data.profile_inputs`. The data set's files are only
read (the bundled ml-100k lives inside the installed RecBole). The stage
writes ``<run_dir>/profiles/``: copies of ``<name>.user`` and ``<name>.item``
with the ``profile`` / ``profile_source`` fields filled (every other column
kept, header types included), of ``<name>.expl.jsonl`` when the data set has
one, ``report.json`` and ``meta.json`` (the ``profiles`` artifact: a rerun on
unchanged data and settings is skipped); later stages read node profiles and
the explanation table from there
(:func:`recbole_mmprefer.artifacts.node_profile_folder`,
:func:`~recbole_mmprefer.artifacts.explanation_table_file`). Sources are
never mixed silently: a node profiled by another source in the data set stops
the stage unless it is forced to rewrite everything.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import pandas as pd

from recbole_mmprefer.artifacts import ARTIFACTS, dataset_file, explanation_table_name
from recbole_mmprefer.data.explanations import write_atomic_file, write_explanation_table
from recbole_mmprefer.data.profile_inputs import (
    SOURCES,
    NodeTable,
    ProfileInputs,
    ProfileSettings,
    load_inputs,
)
from recbole_mmprefer.data.profile_llm import llm_model_name, llm_profiles, profile_batcher
from recbole_mmprefer.data.profile_templates import template_profiles
from recbole_mmprefer.errors import InputError
from recbole_mmprefer.llm_backends import ReplyBatcher
from recbole_mmprefer.utils import file_sha256, json_sha256, read_json, write_json

logger = logging.getLogger(__name__)

PROFILE_INPUT_FILES = ("item", "user", "inter", "expl.jsonl", "reviews.jsonl")

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

def _fill(settings: ProfileSettings, inputs: ProfileInputs, source: str, force: bool,
          batcher: Optional[ReplyBatcher]) -> Dict[str, Dict[str, int]]:
    """Write the profiles of the nodes to (re)write: templates without a batcher, else the LLM's replies."""
    counts = {}
    for kind, table in (("users", inputs.users), ("items", inputs.items)):
        rows = nodes_to_write(table, force)
        tokens = table.frame[table.id_field].iloc[rows].tolist()
        texts = (template_profiles(settings, inputs, kind[:-1], tokens) if batcher is None
                 else llm_profiles(batcher, settings, inputs, kind[:-1], tokens))
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
    settings = ProfileSettings.from_config(config)
    method = source or settings.method
    if method not in SOURCES:
        raise InputError(f"Unknown profile source {method!r}; known sources: {list(SOURCES)}")
    source_name = "template" if method == "template" else f"llm:{llm_model_name(settings.backend)}"
    input_hash = profiles_input_hash(config, settings, source_name, force)
    if ARTIFACTS["profiles"].is_fresh(config, input_hash):
        logger.info("Profiles are up to date in %s", ARTIFACTS["profiles"].dir(config))
        return read_json(ARTIFACTS["profiles"].file(config))
    inputs = load_inputs(config, settings)
    check_sources(inputs, source_name, force)
    batcher = profile_batcher(config, settings, source_name) if method == "llm" else None
    counts = _fill(settings, inputs, source_name, force, batcher)
    report = {"dataset": config["dataset"], "source": source_name, "force": bool(force), **counts,
              "profile_sources": {"users": _source_counts(inputs.users), "items": _source_counts(inputs.items)}}
    if batcher is not None:
        report["llm"] = batcher.stats.as_dict()
    report["files"] = [str(path) for path in _write_outputs(config, inputs, report, input_hash)]
    _log_report(report)
    return report


def profiles_input_hash(config, settings: ProfileSettings, source_name: str, force: bool) -> str:
    """A hash of the data set's files the profiles are written from, the profile settings and the source."""
    paths = {suffix: dataset_file(config, suffix) for suffix in PROFILE_INPUT_FILES}
    files = {suffix: file_sha256(path) for suffix, path in paths.items() if path.is_file()}
    return json_sha256({"files": files, "settings": settings.to_config(), "source": source_name,
                        "force": bool(force)})


def recorded_run(config) -> Optional[Tuple[str, bool]]:
    """(source name, forced) of the profiles stage's last run for this run directory, else None."""
    meta = ARTIFACTS["profiles"].read_meta(config)
    return None if meta is None else (str(meta.get("source", "")), bool(meta.get("force")))


def _write_outputs(config, inputs: ProfileInputs, report: Dict[str, object], input_hash: str) -> List[Path]:
    """The profiled node files (and explanation table) in the ``profiles`` artifact, all or none of them."""
    writers = [_node_writer(inputs.users), _node_writer(inputs.items)]
    if inputs.explained is not None:
        table = updated_explanation_table(inputs.explained, inputs)
        writers.append((explanation_table_name(config["dataset"]),
                        lambda target: write_explanation_table(target, table)))
    out_dir = ARTIFACTS["profiles"].dir(config)
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
