"""Systems' generation files aligned with the explanation table (paper section 4.2 protocol).

A system's output is a generation file (:mod:`recbole_mmprefer.data.generations`).
Every system is scored on exactly the same rows: the explanation table's pairs
of one split (or all). A pair that a system lacks, or one it has that the table does not,
stops the evaluation with a report of both, so no system is silently scored
on an easier subset.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import pandas as pd

from recbole_mmprefer.data.explanations import SPLITS
from recbole_mmprefer.data.generations import GENERATION_FIELDS
from recbole_mmprefer.errors import InputError


def reference_rows(table: pd.DataFrame, split: Optional[str]) -> pd.DataFrame:
    """The table rows a report scores: one split, or all rows when ``split`` is None or "all"."""
    if split in (None, "all"):
        return table.reset_index(drop=True)
    if split not in SPLITS:
        raise InputError(f"split must be one of {SPLITS} or 'all', got {split!r}")
    rows = table[table["split"] == split].reset_index(drop=True)
    if rows.empty:
        raise InputError(f"the explanation table has no {split!r} rows")
    return rows


def published_baselines(table: pd.DataFrame) -> Dict[str, pd.DataFrame]:
    """Published outputs kept in the table's ``baselines`` column, one generation frame per system."""
    if "baselines" not in table.columns:
        return {}
    systems: Dict[str, list] = {}
    for user, item, baselines in zip(table["user_id"], table["item_id"], table["baselines"]):
        for system, text in (baselines or {}).items():
            systems.setdefault(system, []).append({"user_id": user, "item_id": item, "explanation": text})
    return {system: pd.DataFrame.from_records(rows, columns=list(GENERATION_FIELDS))
            for system, rows in systems.items()}


def align(references: pd.DataFrame, systems: Dict[str, pd.DataFrame],
          table: Optional[pd.DataFrame] = None) -> Tuple[Dict[str, List[str]], Dict[str, int]]:
    """Each system's candidates in the order of ``references``, and per system the pairs left out.

    A pair of ``references`` that a system lacks, or a system pair that is not
    in ``table`` at all, is an InputError listing every mismatch; pairs of the
    table outside ``references`` (another split) are left out and counted.
    """
    keys = list(zip(references["user_id"], references["item_id"]))
    wanted = set(keys)
    known = set(zip(table["user_id"], table["item_id"])) if table is not None else wanted
    aligned, left_out, problems = {}, {}, []
    for name, frame in systems.items():
        texts = dict(zip(zip(frame["user_id"], frame["item_id"]), frame["explanation"]))
        missing = [key for key in keys if key not in texts]
        unknown = [key for key in texts if key not in known]
        if missing or unknown:
            problems.append(f"{name}: {len(missing)} pair(s) to score missing (e.g. {missing[:3]}), "
                            f"{len(unknown)} pair(s) not in the explanation table (e.g. {unknown[:3]})")
            continue
        aligned[name] = [texts[key] for key in keys]
        left_out[name] = sum(key not in wanted for key in texts)
    if problems:
        raise InputError(f"systems do not cover the same {len(keys)} rows: " + "; ".join(problems))
    return aligned, left_out
