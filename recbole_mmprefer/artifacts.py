"""The artifact layer: every file between stages declared once, with one owner (design section 2).

Stages talk through files under the run directory (``run_dir``, default
``<checkpoint_dir>/<dataset>``). Each output is an :class:`Artifact` in
:data:`ARTIFACTS`: where it lives, the files it holds, the stage that writes
it and the command that makes it (for "missing input" errors). No other
module builds a path under the run directory.

**Freshness** has one rule: an artifact is up to date when its meta file
(``meta.json`` in a folder artifact, ``<file>.meta.json`` beside a file
artifact) records the ``input_hash`` of the inputs and settings it was made
from, and all its files exist. Stages compute the hash; the layer compares
and writes it, last, so a crash never leaves a fresh-looking artifact.

**Writing**: :meth:`Artifact.writing` stages a whole folder and swaps it in
atomically with its meta (features, quantizer, graph, paths, profiles,
report); a folder filled step by step (the explainer's checkpoints) calls
:func:`write_meta` when its last file is in place. JSON-lines files are read
and written through :mod:`recbole_mmprefer.jsonl`.

A new stage declares its output here (one line in :data:`ARTIFACTS`), then
``ARTIFACTS["name"].writing(config, input_hash)`` to write it and
``.require(config)`` / ``.file(config)`` in the stages that read it.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

from recbole_mmprefer.errors import MissingInputError
from recbole_mmprefer.resources import stage_setting
from recbole_mmprefer.utils import atomic_directory, read_json, write_json

META = "meta.json"


def run_dir(config) -> Path:
    """Root of this data set's stage outputs: ``run_dir`` or ``<checkpoint_dir>/<dataset>``."""
    configured = stage_setting(config, "run_dir")
    if configured:
        return Path(configured)
    return Path(stage_setting(config, "checkpoint_dir")) / config["dataset"]


def dataset_file(config, suffix: str) -> Path:
    """``<data_path>/<dataset>.<suffix>``: a file of the data set itself (never written by a stage)."""
    return Path(config["data_path"]) / f"{config['dataset']}.{suffix}"


# -- freshness -------------------------------------------------------------------------------------------

def meta_path(target: Path, is_file: bool) -> Path:
    target = Path(target)
    return target.with_name(target.name + ".meta.json") if is_file else target / META


def read_meta_at(target: Path, is_file: bool = False) -> Optional[dict]:
    path = meta_path(target, is_file)
    return read_json(path) if path.is_file() else None


def is_fresh_at(target: Path, input_hash: str, files: Tuple[str, ...] = (), is_file: bool = False) -> bool:
    """The one freshness rule: the meta records ``input_hash`` and every file exists."""
    meta = read_meta_at(target, is_file)
    if meta is None or meta.get("input_hash") != input_hash:
        return False
    if is_file:
        return Path(target).is_file()
    return all((Path(target) / name).exists() for name in files)


def write_meta(target: Path, input_hash: str, meta: Dict[str, object], is_file: bool = False) -> Path:
    """Write the meta (``input_hash`` first) atomically; call it after every file of the artifact is in place."""
    path = meta_path(target, is_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write_json(temporary, {"input_hash": input_hash, **meta})
    os.replace(temporary, path)
    return path


# -- artifacts -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Artifact:
    """One stage output under the run directory; ``folder`` and ``files`` may hold ``{placeholders}``."""

    name: str
    folder: str
    files: Tuple[str, ...]
    command: str
    what: str
    is_file: bool = False  # a single file (files[0]) with a side-car meta, in a folder shared with others
    recorded: bool = True  # False: made anew on every call, so no meta (the evaluation report)

    def dir(self, config, **parts: str) -> Path:
        return run_dir(config) / self.folder.format(**parts)

    def file(self, config, filename: Optional[str] = None, **parts: str) -> Path:
        """A file of the artifact (default its first)."""
        return self.dir(config, **parts) / (filename or self.files[0]).format(**parts)

    def target(self, config, **parts: str) -> Path:
        """What the meta describes: the folder, or the file of a file artifact."""
        return self.file(config, **parts) if self.is_file else self.dir(config, **parts)

    def read_meta(self, config, **parts: str) -> Optional[dict]:
        return read_meta_at(self.target(config, **parts), self.is_file)

    def exists(self, config, **parts: str) -> bool:
        return self.read_meta(config, **parts) is not None

    def is_fresh(self, config, input_hash: str, **parts: str) -> bool:
        return is_fresh_at(self.target(config, **parts), input_hash, self._files(parts), self.is_file)

    def input_hash(self, config, **parts: str) -> Optional[str]:
        """The hash recorded in the meta (a fingerprint of this artifact for stages that read it)."""
        meta = self.read_meta(config, **parts)
        return None if meta is None else meta.get("input_hash")

    def require(self, config, **parts: str) -> Path:
        """The folder (or file) once its files exist; MissingInputError naming the command that makes it."""
        target = self.target(config, **parts)
        if not all((self.dir(config, **parts) / name).exists() for name in self._files(parts)):
            raise self.missing(target, config["dataset"])
        return target

    def missing(self, target: Path, dataset: str = "NAME") -> MissingInputError:
        """The error for an artifact that was never written, naming the command that writes it."""
        return MissingInputError(f"No {self.what} in {target}: run `{self.command.format(dataset=dataset)}` first")

    @contextlib.contextmanager
    def writing(self, config, input_hash: Optional[str] = None, meta: Optional[Dict[str, object]] = None,
                **parts: str) -> Iterator[Path]:
        """A staging folder that replaces the artifact's folder, with its meta (``input_hash``; none for an
        artifact that is not ``recorded``), only when the block succeeds; the block may add to ``meta``."""
        meta = {} if meta is None else meta
        with atomic_directory(self.dir(config, **parts)) as staging:
            yield staging
            if self.recorded:
                write_meta(staging, input_hash, meta)

    def _files(self, parts: Dict[str, str]) -> Tuple[str, ...]:
        return tuple(name.format(**parts) for name in self.files)


def _declare(*artifacts: Artifact) -> Dict[str, Artifact]:
    return {artifact.name: artifact for artifact in artifacts}


ARTIFACTS: Dict[str, Artifact] = _declare(
    Artifact("features", "features/{modality}", ("features.npy", "items.txt"),
             "mmprefer features --dataset {dataset}", "item features"),
    Artifact("quantizer", "quantizer", ("report.json",), "mmprefer quantize --dataset {dataset}", "semantic IDs"),
    Artifact("recommender", "recommender", ("user_embeddings.npy", "user_tokens.txt", "item_embeddings.npy",
                                            "item_tokens.txt"),
             "run_recbole --model=MMPSASRec --dataset={dataset}", "MMPSASRec user/item vectors"),
    Artifact("profiles", "profiles", ("report.json",), "mmprefer profiles --dataset {dataset}", "node profiles"),
    Artifact("graph", "graph", ("graph.npz",), "mmprefer paths --dataset {dataset}", "training graph"),
    Artifact("link_predictor", "link_predictor", ("model.safetensors",),
             "mmprefer paths --path_retriever=pagelink --dataset {dataset}", "PaGE-Link link predictor"),
    Artifact("profile_embeddings", "profile_embeddings", ("users.npy", "items.npy"),
             "mmprefer paths --path_node_retrieval=True --dataset {dataset}", "profile embeddings (node retrieval)"),
    Artifact("paths", "paths", ("paths.jsonl",), "mmprefer paths --dataset {dataset}", "retrieval paths"),
    Artifact("explainer", "explainer", ("adapter.safetensors", "explainer_config.json"),
             "mmprefer train --dataset {dataset}", "trained explainer"),
    Artifact("explainer_model", "explainer_models/{name}", ("model.safetensors", "model_config.json", "indices.json"),
             "mmprefer train --model NAME --dataset {dataset}", "trained explanation baseline"),
    Artifact("generations", "generations", ("{name}.jsonl",), "mmprefer generate --dataset {dataset}",
             "generated explanations", is_file=True),
    Artifact("evaluation", "evaluation/{name}", ("table.md", "scores.json"),
             "mmprefer evaluate --dataset {dataset}", "evaluation report", recorded=False),
    Artifact("pipeline_pairs", "pipeline", ("pairs.tsv",), "mmprefer run --dataset {dataset}",
             "pairs chosen by mmprefer run"),
    Artifact("report", "report", ("report.md", "report.html"), "mmprefer run --dataset {dataset}",
             "pipeline report"),
    Artifact("preferences", "preferences/{name}", ("samples.jsonl", "report.json"),
             "mmprefer preferences --dataset {dataset}", "preference samples"),
    Artifact("preference_model", "preference_models/{name}", ("adapter.safetensors", "preference_config.json"),
             "mmprefer preference-train --dataset {dataset}", "tuned preference model"),
    Artifact("preference_knowledge", "preference_knowledge/{name}", ("demographic.json", "temporal.json",
                                                                     "cross_domain.json"),
             "mmprefer preferences --cold users --dataset {dataset}", "preference knowledge base"),
    Artifact("preference_report", "preference_report", ("preference.md",),
             "mmprefer run --task preference --dataset {dataset}", "preference report"),
    Artifact("preference_scores", "preference_scores", ("{name}.jsonl",),
             "mmprefer preference-score --dataset {dataset}", "preference scores (P(Yes) per sample)", is_file=True),
)

# Reply caches: append-only JSON lines, kept across runs, never stale (keyed by model and prompt).
CACHES = {"profiles": "profile_cache.jsonl", "judge": "evaluation/cache/judge_cache.jsonl"}


def cache_file(config, name: str) -> Path:
    return run_dir(config) / CACHES[name]


# -- node profiles and the explanation table of a run ------------------------------------------------------

def explanation_table_name(dataset: str) -> str:
    return f"{dataset}.expl.jsonl"


def profiles_written(config) -> bool:
    """Whether ``mmprefer profiles`` wrote this run's node profiles."""
    return ARTIFACTS["profiles"].exists(config)


def node_profile_folder(config) -> Path:
    """Where the run's ``.user`` / ``.item`` files with profiles are: the profiles stage's folder once it ran,
    else the data set's folder."""
    return ARTIFACTS["profiles"].dir(config) if profiles_written(config) else Path(config["data_path"])


def explanation_table_file(config) -> Path:
    """The run's explanation table: the profiles stage's copy (with its profiles) once it ran, else the data
    set's own. Every stage that reads the table reads this one."""
    name = explanation_table_name(config["dataset"])
    if profiles_written(config):
        profiled = ARTIFACTS["profiles"].dir(config) / name
        if profiled.is_file():
            return profiled
    return Path(config["data_path"]) / name


def has_explanation_table(config) -> bool:
    return (Path(config["data_path"]) / explanation_table_name(config["dataset"])).is_file()
