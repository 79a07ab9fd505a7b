"""The pairs the explainer trains on and explains (paper section 3.4): table rows joined with their paths.

Training and generation read the same inputs through this module: the run's
explanation table (:func:`~recbole_mmprefer.artifacts.explanation_table_file`:
the profiles stage's copy once it ran, so regenerated profiles reach the
prompt), the ``paths`` artifact, and the node text. A row's own title and
profiles win over the node profiles; a pair without a paths record has no
paths (its prompt has no path lines, its soft prompt is the learned "no path"
vectors).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import pandas as pd

from recbole_mmprefer.artifacts import explanation_table_file, has_explanation_table
from recbole_mmprefer.data.explanations import SPLITS, read_explanation_table
from recbole_mmprefer.data.node_text import NodeText
from recbole_mmprefer.errors import InputError, MissingInputError
from recbole_mmprefer.explainer.settings import ExplainerConfig, LlmSettings, PromptSettings
from recbole_mmprefer.explainer.tokens import Example, build_example, collate
from recbole_mmprefer.retrieval.collect import read_run_paths

logger = logging.getLogger(__name__)

ROW_COLUMNS = ["user_id", "item_id", "title", "user_profile", "item_profile"]


def load_table(config) -> pd.DataFrame:
    """The run's explanation table (the profiled copy once `mmprefer profiles` ran)."""
    return read_explanation_table(explanation_table_file(config))


def load_optional_table(config) -> Optional[pd.DataFrame]:
    """The run's explanation table, or None for a data set without one (then every paths record is a pair)."""
    if config is None or "data_path" not in config or "dataset" not in config or not config["data_path"]:
        return None
    if not has_explanation_table(config):
        logger.info("No explanation table %s: explaining the pairs of the paths records",
                    explanation_table_file(config))
        return None
    return load_table(config)


def load_path_records(config) -> List[dict]:
    """The records of the run's ``paths`` artifact; [] (every pair without paths) when there is none."""
    try:
        return read_run_paths(config)
    except MissingInputError as error:
        logger.warning("%s: every pair is explained without retrieval paths", error)
        return []


@dataclass
class RunInputs:
    """What both training and generation read from a run (each may be given instead: tests, benchmarks)."""

    records: List[dict]
    node_text: NodeText
    builder: Optional[object]  # a PathSubgraphBuilder where the explainer has a soft prompt

    @classmethod
    def load(cls, config, settings: ExplainerConfig, records=None, node_text=None, builder=None) -> "RunInputs":
        from recbole_mmprefer.explainer.path_graphs import PathSubgraphBuilder

        records = load_path_records(config) if records is None else list(records)
        node_text = NodeText.from_config(config) if node_text is None else node_text
        if settings.soft_tokens == 0:
            builder = None
        elif builder is None:
            builder = PathSubgraphBuilder.from_config(config, settings=settings.graph)
        return cls(records, node_text, builder)


def join_records(rows: pd.DataFrame, records: Sequence[dict]) -> List[dict]:
    """One prompt record per table row: its paths.jsonl record (or no paths) with the row's title and profiles."""
    by_pair = {(str(record["user_id"]), str(record["item_id"])): record for record in records}
    joined = []
    for row in rows.to_dict(orient="records"):
        pair = (str(row["user_id"]), str(row["item_id"]))
        record = dict(by_pair.get(pair, {"status": "no_record", "paths": []}))
        record.update(user_id=pair[0], item_id=pair[1])
        for key in ("title", "user_profile", "item_profile"):
            if row.get(key):
                record[key] = row[key]
        joined.append(record)
    return joined


def select_rows(table: Optional[pd.DataFrame], records: Sequence[dict], split: Optional[str],
                pairs: Optional[Sequence[Tuple[str, str]]]) -> pd.DataFrame:
    """The rows to explain: the given pairs (table rows where known), one split, all rows, or every paths record
    when there is no table."""
    if table is None:
        source = pairs if pairs is not None else [(record["user_id"], record["item_id"]) for record in records]
        rows = pd.DataFrame([_bare_row(u, i) for u, i in source], columns=ROW_COLUMNS)
    elif pairs is not None:
        known = table.set_index(["user_id", "item_id"])
        rows = pd.DataFrame([{"user_id": str(u), "item_id": str(i),
                              **({key: known.loc[(str(u), str(i)), key] for key in ROW_COLUMNS[2:]}
                                 if (str(u), str(i)) in known.index else dict.fromkeys(ROW_COLUMNS[2:], ""))}
                             for u, i in pairs], columns=ROW_COLUMNS)
    elif split in (None, "all"):
        rows = table[ROW_COLUMNS]
    else:
        if split not in SPLITS:
            raise InputError(f"split must be one of {SPLITS} or 'all', got {split!r}")
        rows = table.loc[table["split"] == split, ROW_COLUMNS]
    rows = rows.reset_index(drop=True)
    if rows.empty:
        raise InputError(f"no pairs to explain (split {split!r})")
    if rows.duplicated(["user_id", "item_id"]).any():
        raise InputError("some (user, item) pairs to explain are listed more than once")
    return rows


def _bare_row(user, item) -> Dict[str, str]:
    return {"user_id": str(user), "item_id": str(item), "title": "", "user_profile": "", "item_profile": ""}


def llm_identity(settings: LlmSettings) -> Dict[str, object]:
    """The LLM's folder and the hash of its config.json (a retrained or replaced model changes it)."""
    from recbole_mmprefer.llm import resolve_llm_path
    from recbole_mmprefer.utils import file_sha256

    if settings.path is None:
        return {"path": None}
    folder = Path(resolve_llm_path(settings.path, settings.cache_dir))
    config_file = folder / "config.json"
    return {"path": str(folder), "config": file_sha256(config_file) if config_file.is_file() else None}


class PairData:
    """Prompt records, tokenised examples and path subgraphs of a list of pairs."""

    def __init__(self, records: List[dict], node_text: NodeText, tokenizer, settings: PromptSettings, builder=None,
                 explanations: Optional[Sequence[str]] = None):
        self.records, self.builder, self.settings = records, builder, settings
        self.examples: List[Example] = [
            build_example(record, node_text, tokenizer, settings,
                          explanation=None if explanations is None else explanations[n])
            for n, record in enumerate(records)]
        overflow = sum(example.truncation["overflow_tokens"] > 0 for example in self.examples)
        if overflow:
            logger.warning("%d of %d prompts exceed explainer_max_length even after truncation", overflow,
                           len(self.examples))

    def __len__(self) -> int:
        return len(self.examples)

    def batch(self, indices: Sequence[int], pad_id: int, left_pad: bool, with_graphs: bool):
        """A collated batch and, when ``with_graphs``, the path subgraphs of its pairs."""
        tensors = collate([self.examples[n] for n in indices], pad_id, left_pad)
        graphs = None
        if with_graphs:
            if self.builder is None:
                raise InputError("the graph soft prompt needs a path subgraph builder (graph and node vectors)")
            graphs = [self.builder.pair(self.records[n], k=self.settings.paths) for n in indices]
        return tensors, graphs

    def truncation_summary(self) -> Dict[str, int]:
        """Per kind of truncation, how many examples it touched."""
        summary: Dict[str, int] = {}
        for example in self.examples:
            for key, value in example.truncation.items():
                summary[key] = summary.get(key, 0) + int(value > 0)
        return summary
