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
    text = Path(args.out).with_suffix(".json").read_text()
    assert sum('"tallrec|16|0"' in line for line in text.splitlines()) == 1 and len(text.splitlines()) < 10
    saved = json.loads(text)["runs"]["tallrec|16|0"]
    assert saved["labels"] == LABELS and saved["scores"] == SCORES["tallrec"] and saved["settings"] == "t1"
    digests["tallrec"] = "t2"
    module.measure(args, None, ledger, "tallrec", 16, 0)
    assert calls == ["tallrec", "tallrec"]


def test_a_system_with_the_settings_of_a_measured_run_takes_its_scores(table):
    module, args, calls, digests = table
    ledger = module.load_ledger(args)
    module.measure(args, None, ledger, "tallrec", 16, 0)
    digests["explainrec"] = "t1"  # e.g. a diagnostic's settings that have become ExplainRec's defaults
    module.measure(args, None, ledger, "explainrec", 16, 0)
    assert calls == ["tallrec"] and ledger["runs"]["explainrec|16|0"]["scores"] == SCORES["tallrec"]
    saved = json.loads(Path(args.out).with_suffix(".json").read_text())["runs"]
    assert saved["explainrec|16|0"] == saved["tallrec|16|0"]


def pair(module, ledger, shots=64):
    return module.bootstrap_if_due(ledger, f"{shots}|0", f"explainrec|{shots}|0", f"tallrec|{shots}|0", 50, 0)


def test_the_bootstrap_pairs_the_kept_scores_once_per_pair_of_runs(table, monkeypatch):
    module, args, calls, digests = table
    ledger = module.load_ledger(args)
    module.measure(args, None, ledger, "explainrec", 64, 0)
    assert not pair(module, ledger) and ledger["bootstrap"] == {}  # TALLRec not measured yet
    module.measure(args, None, ledger, "tallrec", 64, 0)
    assert pair(module, ledger)
    expected = module.paired_bootstrap(LABELS, SCORES["explainrec"], SCORES["tallrec"], 50, 0)
    first = ledger["bootstrap"]["64|0"]
    assert {key: first[key] for key in expected} == expected
    paired = []
    monkeypatch.setattr(module, "paired_bootstrap", lambda *a: paired.append(a) or dict(expected))
    assert not pair(module, ledger) and paired == []
    digests["explainrec"] = "e2"
    module.measure(args, None, ledger, "explainrec", 64, 0)
    assert pair(module, ledger) and len(paired) == 1 and ledger["bootstrap"]["64|0"]["runs"] != first["runs"]


def test_an_entry_without_scores_is_reused_but_not_paired(table):
    module, args, calls, digests = table
    ledger = module.load_ledger(args)
    ledger["runs"]["explainrec|64|0"] = {"auc": 0.61, "settings": "e1"}  # measured before scores were kept
    module.measure(args, None, ledger, "explainrec", 64, 0)
    module.measure(args, None, ledger, "tallrec", 64, 0)
    assert not pair(module, ledger) and calls == ["tallrec"] and ledger["bootstrap"] == {}


def test_runs_on_different_test_windows_are_not_paired(table):
    module, args, calls, digests = table
    ledger = module.load_ledger(args)
    module.measure(args, None, ledger, "explainrec", 64, 0)
    module.record_run(ledger, "tallrec|64|0", LABELS[::-1], SCORES["tallrec"], "t1")
    with pytest.raises(RuntimeError, match="different test windows"):
        pair(module, ledger)


def test_a_ledger_with_one_label_list_gives_it_to_each_run(table):
    module, args, calls, digests = table
    Path(args.out).with_suffix(".json").write_text(json.dumps({
        "test_samples": 8, "labels": LABELS, "bootstrap": {},
        "runs": {"tallrec|64|0": {"auc": 0.5, "settings": "t1", "scores": SCORES["tallrec"]},
                 "explainrec|64|0": {"auc": 0.61, "settings": "e1"}}}))
    ledger = module.load_ledger(args)
    assert ledger["runs"]["tallrec|64|0"]["labels"] == LABELS and "labels" not in ledger["runs"]["explainrec|64|0"]


def test_a_setting_added_later_leaves_the_digests_of_earlier_runs_alone(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "run_scripts"))
    import table_preference

    from recbole_mmprefer.preference.settings import PreferenceModelConfig, PreferenceTrainingSettings
    from recbole_mmprefer.utils import json_sha256

    args = argparse.Namespace(dataset="ml-100k")
    # a run made before the later settings existed: they held the values every earlier run had
    monkeypatch.setitem(table_preference.LLM_SYSTEMS, "earlier", (
        "earlier", {"preference_system": "explainrec", **table_preference.LATER_SETTINGS}))
    stage = table_preference.system_config(args, "earlier", 64, 0)
    keys = PreferenceModelConfig.from_config(stage).to_config()
    assert all(keys.pop(key) == value for key, value in table_preference.LATER_SETTINGS.items())
    before = json_sha256({"model": keys, "training": PreferenceTrainingSettings.from_config(stage).results_keys(),
                          "shots": 64, "seed": 0})  # its digest, without the later settings
    assert table_preference.settings_fingerprint(args, "earlier", 64, 0) == before
    assert table_preference.settings_fingerprint(args, "neutral_margin_fixed", 64, 0) != before
    assert table_preference.settings_fingerprint(args, "neutral_ordinal_fixed", 64, 0) != before
    # a setting whose switch is off is digested at one value, whatever it is set to
    off = {"explainrec_multimodal": False, "explainrec_soft_prompt_start": "neutral",
           "explainrec_multitask": False, "explainrec_rating_head": "margin", "explainrec_task_weighting": "fixed"}
    assert table_preference.digested_settings(off) == {"explainrec_multimodal": False, "explainrec_multitask": False,
                                                       "explainrec_task_weighting": "uncertainty"}
    on = {**off, "explainrec_multimodal": True, "explainrec_multitask": True}
    assert table_preference.digested_settings(on) == on
