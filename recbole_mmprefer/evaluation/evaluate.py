"""`mmprefer evaluate`: every system scored on the same rows with the field's metrics (paper section 4.2).

Systems are generation files given by the user, the published outputs kept
in the explanation table (e.g. XRec's, as ``xrec (published)``) and the two
cheap baselines of :mod:`.baselines`. The metrics are those of
``eval_metrics``: the text metrics of :mod:`.metrics` and, where available,
the likelihood, BLEURT and LLM-judge scores of :mod:`.likelihood` and
:mod:`.judge`. The report goes to ``<run_dir>/evaluation/<name>/``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pandas as pd

from recbole_mmprefer.artifacts import ARTIFACTS, cache_file, explanation_table_file
from recbole_mmprefer.data.explanations import read_explanation_table
from recbole_mmprefer.data.generations import read_generations
from recbole_mmprefer.data.node_text import NodeText
from recbole_mmprefer.errors import InputError
from recbole_mmprefer.evaluation.baselines import item_template_explanations, nearest_neighbour_explanations
from recbole_mmprefer.evaluation.grounding import grounding_scores, pair_inputs
from recbole_mmprefer.evaluation.metrics import TEXT_METRICS, BERTScoreEvaluator, TextMetricSettings, text_metrics
from recbole_mmprefer.evaluation.report import write_report
from recbole_mmprefer.evaluation.systems import align, published_baselines, reference_rows
from recbole_mmprefer.explainer.pair_data import load_path_records

logger = logging.getLogger(__name__)

MODEL_METRICS = ("likelihood", "bleurt", "judge")
INPUT_METRICS = ("grounding",)  # scored against the pair's inputs, not the reference


def collect_systems(config, table: pd.DataFrame, rows: pd.DataFrame, generation_files: Dict[str, Path],
                    published: bool, baselines: bool) -> Tuple[Dict[str, pd.DataFrame], Dict[str, str]]:
    """The systems to score (name -> generation frame) and where each came from.

    The given files are read and aligned first, so a missing pair is reported before any encoder loads."""
    systems, sources = {}, {}
    for name, path in generation_files.items():
        systems[name], sources[name] = read_generations(path), str(path)
    align(rows, systems, table)
    if published:
        for name, frame in published_baselines(table).items():
            systems[f"{name} (published)"] = frame
            sources[f"{name} (published)"] = "explanation table, baselines column"
    if baselines:
        systems["item-template"] = item_template_explanations(rows)
        sources["item-template"] = "baselines.item_template_explanations"
        encoder = TextMetricSettings.from_config(config).bertscore_model
        systems["nearest-neighbour"] = nearest_neighbour_explanations(rows, table, encoder)
        sources["nearest-neighbour"] = "baselines.nearest_neighbour_explanations (train-split pairs, MiniLM)"
    if not systems:
        raise InputError("nothing to evaluate: give generation files (--system NAME=FILE) or keep the "
                         "published and cheap baselines")
    return systems, sources


def requested_metrics(config) -> List[str]:
    metrics = list(TextMetricSettings.from_config(config).metrics)
    known = [*TEXT_METRICS, *INPUT_METRICS, *MODEL_METRICS]
    unknown = [name for name in metrics if name not in known]
    if unknown:
        raise InputError(f"unknown eval_metrics {unknown}; known: {known}")
    return metrics


def score_systems(config, candidates: Dict[str, List[str]], references: List[str], metrics: List[str],
                  cache_dir: Path, inputs: Optional[List[List[str]]] = None
                  ) -> Tuple[Dict[str, dict], List[str], Dict[str, object]]:
    """Per system the MetricResults; the metrics reported absent; what was used (encoders, models).
    ``inputs``: per row, the texts its explainer was shown (for ``grounding``)."""
    settings = TextMetricSettings.from_config(config)
    settings.metrics = tuple(name for name in metrics if name in TEXT_METRICS)
    bertscore = BERTScoreEvaluator.from_settings(settings) if "bertscore" in metrics else None
    scorers, absent, used = model_scorers(config, metrics, cache_dir)
    results = {}
    for system, texts in candidates.items():
        logger.info("Scoring %s on %d rows", system, len(references))
        results[system] = text_metrics(texts, references, settings, bertscore=bertscore)
        if "grounding" in metrics:
            results[system]["grounding"] = grounding_scores(texts, inputs)
        for scorer in scorers:
            results[system].update(scorer(texts, references))
    if "grounding" in metrics:  # the bar a system trained to imitate the references is held to
        used["grounding of the references"] = round(grounding_scores(references, inputs).mean, 4)
    if bertscore is not None:
        used["BERTScore encoder"] = {key: bertscore.notes.get(key) for key in ("encoder", "layer", "max_length")}
    return results, absent, used


def model_scorers(config, metrics: List[str], cache_dir: Path):
    """Callables (candidates, references) -> {name: MetricResult} for the model-based metrics asked for."""
    wanted = [name for name in metrics if name in MODEL_METRICS]
    if not wanted:
        return [], [], {}
    from recbole_mmprefer.evaluation.model_metrics import build_model_scorers

    return build_model_scorers(config, wanted, cache_dir)


def evaluate(config, generation_files: Optional[Dict[str, Path]] = None, split: Optional[str] = "test",
             published: bool = True, baselines: bool = True, name: Optional[str] = None,
             max_rows: Optional[int] = None) -> Path:
    """Score every system on the same rows of the explanation table; write the report and return its folder.

    ``max_rows`` keeps the first rows of the split only (a CPU budget); the report says so.
    """
    table = read_explanation_table(explanation_table_file(config))
    rows = reference_rows(table, split)
    subset = {}
    if max_rows is not None and max_rows < len(rows):
        subset = {"rows scored": f"the first {int(max_rows)} of the split's {len(rows)}"}
        rows = rows.head(int(max_rows)).reset_index(drop=True)
    metrics = requested_metrics(config)
    systems, sources = collect_systems(config, table, rows, dict(generation_files or {}), published, baselines)
    candidates, left_out = align(rows, systems, table)
    report_name = name or (split or "all")
    out_dir = ARTIFACTS["evaluation"].dir(config, name=report_name)
    cache_dir = cache_file(config, "judge").parent
    cache_dir.mkdir(parents=True, exist_ok=True)
    inputs = pair_inputs(rows, load_path_records(config), NodeText.from_config(config)) \
        if "grounding" in metrics else None
    results, absent, used = score_systems(config, candidates, rows["explanation"].tolist(), metrics, cache_dir,
                                          inputs)
    context = {"dataset": config["dataset"], "split": split or "all", "rows": len(rows), **subset, "systems": sources,
               "pairs left out (other splits)": {k: v for k, v in left_out.items() if v},
               "metrics": metrics, **used}
    with ARTIFACTS["evaluation"].writing(config, name=report_name) as staging:
        write_report(staging, results, rows, context, absent)
    logger.info("Evaluated %d systems on %d rows: %s", len(results), len(rows), out_dir / "table.md")
    return out_dir
