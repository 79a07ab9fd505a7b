"""Side-by-side reports in the shape of the paper's Table 1 (section 4.2): explainability, then stability.

Given every system's :class:`~recbole_mmprefer.evaluation.metrics.MetricResult`
dict, writes ``scores.json`` (means, population stds, notes), ``per_sample.csv``
(one row per system and pair), ``table.md`` (a markdown table naming the data
set, split, rows and every encoder) and ``distributions.png`` (per-sample
score distributions per system).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np
import pandas as pd

from recbole_mmprefer.utils import write_json

# (result key, column label). The first group is the paper's explainability block.
EXPLAINABILITY: List[Tuple[str, str]] = [
    ("llm_judge", "GPTScore"), ("bertscore_precision", "BERT P"), ("bertscore_recall", "BERT R"),
    ("bertscore_f1", "BERT F1"), ("bartscore_f", "BARTScore"), ("lm_likelihood_f", "LM likelihood"),
    ("bleurt", "BLEURT"), ("usr", "USR"), ("grounding", "Grounding"), ("bleu_1", "BLEU-1"), ("bleu_4", "BLEU-4"),
    ("rouge_l", "ROUGE-L"),
]
STABILITY_KEYS = ["llm_judge", "bertscore_precision", "bertscore_recall", "bertscore_f1", "bartscore_f",
                  "lm_likelihood_f", "bleurt"]
LABELS = dict(EXPLAINABILITY)


def _cell(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def present_keys(results: Mapping[str, Mapping[str, object]], keys: Sequence[str]) -> List[str]:
    """The metric keys that at least one system has, in the table's order."""
    return [key for key in keys if any(key in metrics for metrics in results.values())]


def markdown_table(results: Mapping[str, Mapping[str, object]], absent: Sequence[str] = ()) -> str:
    """Explainability columns (means), then stability columns (population stds); "absent" for unavailable ones."""
    shown = present_keys(results, [key for key, _ in EXPLAINABILITY])
    stable = present_keys(results, STABILITY_KEYS)
    header = ["system"] + [LABELS[key] for key in shown] + [f"std {LABELS[key]}" for key in stable]
    header += [f"{LABELS.get(name, name)}" for name in absent]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for system, metrics in results.items():
        means = [_cell(metrics[key].mean) if key in metrics else "n/a" for key in shown]
        stds = [_cell(metrics[key].std) if key in metrics else "n/a" for key in stable]
        lines.append("| " + " | ".join([system, *means, *stds, *["absent"] * len(absent)]) + " |")
    return "\n".join(lines)


def per_sample_frame(results: Mapping[str, Mapping[str, object]], pairs: pd.DataFrame) -> pd.DataFrame:
    frames = []
    for system, metrics in results.items():
        frame = pairs[["user_id", "item_id"]].copy()
        frame.insert(0, "system", system)
        for key, result in metrics.items():
            frame[key] = result.per_sample
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def distribution_figure(results: Mapping[str, Mapping[str, object]], path: Path) -> None:
    """Box plots of the per-sample scores, one panel per metric, one box per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [key for key in present_keys(results, [k for k, _ in EXPLAINABILITY]) if key != "usr"]
    columns = min(4, max(len(keys), 1))
    rows = math.ceil(len(keys) / columns) if keys else 1
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.6 * rows), squeeze=False)
    systems = list(results)
    for axis, key in zip(axes.flat, keys):
        data = [_finite(results[s][key].per_sample) if key in results[s] else np.array([]) for s in systems]
        axis.boxplot(data, showfliers=False)
        axis.set_xticks(range(1, len(systems) + 1), systems, rotation=30, ha="right", fontsize=7)
        axis.set_title(LABELS.get(key, key), fontsize=9)
        axis.tick_params(axis="y", labelsize=7)
    for axis in list(axes.flat)[len(keys):]:
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def _finite(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    return values[np.isfinite(values)]


def write_report(out_dir: Path, results: Dict[str, Dict[str, object]], pairs: pd.DataFrame,
                 context: Dict[str, object], absent: Sequence[str] = ()) -> Path:
    """scores.json, per_sample.csv, table.md and distributions.png in ``out_dir`` (which must exist)."""
    scores = {system: {key: result.summary() for key, result in metrics.items()}
              for system, metrics in results.items()}
    write_json(out_dir / "scores.json", {"context": context, "absent": list(absent), "systems": scores})
    per_sample_frame(results, pairs).to_csv(out_dir / "per_sample.csv", index=False)
    scope = f"all {context['rows']} rows" if context["split"] == "all" else \
        f"{context['split']} split, {context['rows']} rows"
    lines = [f"# Explanation quality on {context['dataset']} ({scope})", ""]
    lines += [f"- {key}: {value}" for key, value in context.items() if key not in ("dataset", "split", "rows")]
    lines += ["", "Explainability (means), then stability (population std of the per-sample scores; lower is "
              "more stable). BLEU on sacrebleu's 0-100 scale; others as their metric defines.", "",
              markdown_table(results, absent), "", "Per-sample distributions: distributions.png", ""]
    (out_dir / "table.md").write_text("\n".join(lines), encoding="utf-8")
    distribution_figure(results, out_dir / "distributions.png")
    return out_dir
