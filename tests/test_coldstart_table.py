"""run_scripts/table_coldstart.py's ledger: each run's settings digest decides what is measured again and shown."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest


@pytest.fixture
def table(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "run_scripts"))
    monkeypatch.setattr(sys, "argv", ["table_coldstart.py"])
    import table_coldstart

    args = argparse.Namespace(dataset="ml-100k", shots=64, test_samples=8, book="valid.json",
                              out=str(tmp_path / "coldstart_toy.md"))
    return table_coldstart, args


def test_a_tuned_run_is_digested_with_its_budget_and_a_baseline_without_it(table, monkeypatch):
    module, args = table
    tallrec = module.run_fingerprint(args, "new_users", "tallrec", 0)
    content = module.run_fingerprint(args, "new_users", "content", 0)
    monkeypatch.setattr(sys, "argv", ["table_coldstart.py", "--preference_epochs=2"])  # RecBole reads overrides here
    assert module.run_fingerprint(args, "new_users", "tallrec", 0) != tallrec
    assert module.run_fingerprint(args, "new_users", "content", 0) == content
    monkeypatch.setattr(sys, "argv", ["table_coldstart.py", "--coldstart_share=0.2"])
    assert module.run_fingerprint(args, "new_users", "content", 0) != content
    assert module.run_fingerprint(args, "new_users", "content", 1) != content


def test_the_unadapted_meta_row_scores_the_meta_model_under_its_own_digest(table):
    module, args = table
    trained, scored = module.llm_configs(args, "new_users", "explainrec_k_meta_0", 0)
    meta, _ = module.llm_configs(args, "new_users", "explainrec_k_meta", 0)
    assert trained["coldstart_adaptation_steps"] == meta["coldstart_adaptation_steps"] == 3
    assert scored["coldstart_adaptation_steps"] == 0 and trained["coldstart_meta_steps"] == 32
    assert (module.run_fingerprint(args, "new_users", "explainrec_k_meta_0", 0)
            != module.run_fingerprint(args, "new_users", "explainrec_k_meta", 0))


def test_entries_from_before_digests_keep_a_baseline_and_measure_a_tuned_run_again(table):
    module, args = table
    ledger = {"settings": {"shots": 64, "test_samples": 8}, "bootstrap": {}, "runs": {
        "new_users|tallrec|0": {"auc": 0.53}, "new_users|content|0": {"auc": 0.55}}}
    assert not module.is_measured(ledger, "new_users|tallrec|0", "tallrec",
                                  module.run_fingerprint(args, "new_users", "tallrec", 0))
    assert module.is_measured(ledger, "new_users|content|0", "content",
                              module.run_fingerprint(args, "new_users", "content", 0))
    assert module.stale_runs(args, ledger) == ["new_users|tallrec|0"]
    ledger["runs"]["new_users|demographic|0"] = {"auc": 0.66, "settings": "another digest"}
    assert module.stale_runs(args, ledger) == ["new_users|tallrec|0", "new_users|demographic|0"]

    module.write_report(args, "python run_scripts/table_coldstart.py", ledger)
    report = Path(args.out).read_text(encoding="utf-8")
    assert "| content-based | 0.5500 ± 0.0000 |" in report
    assert "| TALLRec |" not in report and "| demographic popularity |" not in report
    assert "again): new_users|tallrec|0, new_users|demographic|0." in report
