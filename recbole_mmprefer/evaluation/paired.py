"""Paired differences between systems scored on the same rows (the significance column of Tables 1-3, section 4.2).

Every system of an evaluation report is scored on exactly the same pairs, so
two systems are compared pair by pair: the mean of the per-pair differences of
a metric and its standard error (the sample std of the differences, ddof=1,
over the square root of the pairs both systems have a score for). A mean more
than two standard errors from zero is a difference the test rows support.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence

import numpy as np
import pandas as pd

from recbole_mmprefer.errors import InputError


@dataclass(frozen=True)
class PairedDifference:
    """``system`` minus ``reference`` on ``metric``: mean and standard error over ``pairs`` pairs."""

    system: str
    reference: str
    metric: str
    mean: float
    standard_error: float
    pairs: int

    def cell(self) -> str:
        return f"{self.mean:+.4f} +- {self.standard_error:.4f}"


def paired_difference(per_sample: pd.DataFrame, system: str, reference: str, metric: str) -> PairedDifference:
    """The paired difference of two systems' per-sample scores (a ``per_sample.csv`` frame of the evaluation)."""
    if metric not in per_sample.columns:
        raise InputError(f"no per-sample {metric!r} scores; the report has {sorted(per_sample.columns)}")
    scores = per_sample.pivot_table(index=["user_id", "item_id"], columns="system", values=metric, dropna=False)
    missing = [name for name in (system, reference) if name not in scores.columns]
    if missing:
        raise InputError(f"no system {missing} in the report; it has {sorted(scores.columns)}")
    differences = (scores[system] - scores[reference]).to_numpy(dtype=float)
    differences = differences[~np.isnan(differences)]
    if len(differences) < 2:
        raise InputError(f"{system} and {reference} share {len(differences)} scored pairs on {metric}: need 2")
    error = float(differences.std(ddof=1) / math.sqrt(len(differences)))
    return PairedDifference(system, reference, metric, float(differences.mean()), error, len(differences))


def paired_table(report_dir: Path, reference: str, systems: Sequence[str], metrics: Sequence[str]) -> str:
    """A markdown table of each system minus ``reference`` on each metric, from a report's ``per_sample.csv``."""
    per_sample = pd.read_csv(Path(report_dir) / "per_sample.csv", dtype={"user_id": str, "item_id": str})
    lines: List[str] = [f"| system - {reference} | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for system in systems:
        if system == reference:
            continue
        cells = [paired_difference(per_sample, system, reference, metric).cell() for metric in metrics]
        lines.append(f"| {system} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
