"""Paired differences between systems scored on the same rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recbole_mmprefer.errors import InputError
from recbole_mmprefer.evaluation.paired import paired_difference, paired_table


def per_sample(rows: dict) -> pd.DataFrame:
    frames = [pd.DataFrame({"system": name, "user_id": [f"u{n}" for n in range(len(values))],
                            "item_id": "i", "bertscore_f1": values}) for name, values in rows.items()]
    return pd.concat(frames, ignore_index=True)


def test_mean_and_standard_error_of_the_per_pair_differences(tmp_path):
    frame = per_sample({"ours": [0.6, 0.7, 0.8, np.nan], "xrec": [0.5, 0.5, 0.9, 0.4]})
    result = paired_difference(frame, "ours", "xrec", "bertscore_f1")
    differences = np.array([0.1, 0.2, -0.1])  # the pair ours has no score for is left out
    assert result.pairs == 3 and result.mean == pytest.approx(differences.mean())
    assert result.standard_error == pytest.approx(differences.std(ddof=1) / np.sqrt(3))
    frame.to_csv(tmp_path / "per_sample.csv", index=False)
    table = paired_table(tmp_path, "xrec", ["ours", "xrec"], ["bertscore_f1"])
    assert table.splitlines()[2] == f"| ours | {result.mean:+.4f} +- {result.standard_error:.4f} |"
    with pytest.raises(InputError, match="no system \\['peter'\\]"):
        paired_difference(frame, "peter", "xrec", "bertscore_f1")
