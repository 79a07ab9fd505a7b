"""run_scripts/table_preference.py's ledger: per-window scores kept, runs reused by settings, bootstraps paired."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

LABELS = [1, 0, 1, 1, 0, 0, 1, 0]
SCORES = {"tallrec": [0.9, 0.2, 0.4, 0.7, 0.5, 0.1, 0.6, 0.3], "explainrec": [0.8, 0.1, 0.9, 0.6, 0.2, 0.3, 0.7, 0.4]}


@pytest.fixture
def table(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "run_scripts"))
    monkeypatch.setattr(sys, "argv", ["table_preference.py"])
    import table_preference

    calls = []
    digests = {"tallrec": "t1", "explainrec": "e1"}

    def fake_scores(args, config, system, shots, seed):
        calls.append(system)
        return list(LABELS), list(SCORES[system])

    monkeypatch.setattr(table_preference, "llm_scores", fake_scores)
    monkeypatch.setattr(table_preference, "settings_fingerprint", lambda args, system, shots, seed: digests[system])
    args = argparse.Namespace(out=str(tmp_path / "preference_toy.md"), dataset="toy", test_samples=8, bootstrap=50)
    return table_preference, args, calls, digests


def test_scores_are_kept_and_a_run_with_the_same_settings_is_reused(table):
    module, args, calls, digests = table
    ledger = module.load_ledger(args)
    for _ in range(2):
        module.measure(args, None, ledger, "tallrec", 16, 0)
    assert calls == ["tallrec"]
    saved = json.loads(Path(args.out).with_suffix(".json").read_text())
    assert saved["labels"] == LABELS and saved["runs"]["tallrec|16|0"]["scores"] == SCORES["tallrec"]
    digests["tallrec"] = "t2"
    module.measure(args, None, ledger, "tallrec", 16, 0)
    assert calls == ["tallrec", "tallrec"]


def test_the_bootstrap_pairs_the_kept_scores_once_per_pair_of_settings(table, monkeypatch):
    module, args, calls, digests = table
    ledger = module.load_ledger(args)
    module.measure(args, None, ledger, "explainrec", 64, 0)
    module.bootstrap_if_due(args, ledger, 64, 0)
    assert ledger["bootstrap"] == {}  # TALLRec not measured yet
    module.measure(args, None, ledger, "tallrec", 64, 0)
    module.bootstrap_if_due(args, ledger, 64, 0)
    expected = module.paired_bootstrap(LABELS, SCORES["explainrec"], SCORES["tallrec"], 50, 0)
    assert ledger["bootstrap"]["64|0"] == {**expected, "settings": ["e1", "t1"]}
    paired = []
    monkeypatch.setattr(module, "paired_bootstrap", lambda *a: paired.append(a) or dict(expected))
    module.bootstrap_if_due(args, ledger, 64, 0)
    assert paired == []
    digests["explainrec"] = "e2"
    module.measure(args, None, ledger, "explainrec", 64, 0)
    module.bootstrap_if_due(args, ledger, 64, 0)
    assert len(paired) == 1 and ledger["bootstrap"]["64|0"]["settings"] == ["e2", "t1"]


def test_an_entry_without_scores_is_reused_but_not_paired(table):
    module, args, calls, digests = table
    ledger = module.load_ledger(args)
    ledger["runs"]["explainrec|64|0"] = {"auc": 0.61, "settings": "e1"}  # measured before scores were kept
    module.measure(args, None, ledger, "explainrec", 64, 0)
    module.measure(args, None, ledger, "tallrec", 64, 0)
    module.bootstrap_if_due(args, ledger, 64, 0)
    assert calls == ["tallrec"] and ledger["bootstrap"] == {}


def test_scores_on_other_test_windows_are_refused(table):
    module, args, calls, digests = table
    ledger = module.load_ledger(args)
    ledger["labels"] = LABELS[::-1]
    with pytest.raises(RuntimeError, match="other test windows"):
        module.measure(args, None, ledger, "tallrec", 16, 0)
