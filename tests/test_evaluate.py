"""`mmprefer evaluate`: systems aligned by pair, scored on the same rows, reported like the paper's Table 1."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from recbole_mmprefer.cli import main as mmprefer
from recbole_mmprefer.data.explanations import explanation_table_path, write_explanation_table
from recbole_mmprefer.data.generations import read_generations, write_generations
from recbole_mmprefer.errors import InputError
from recbole_mmprefer.evaluation.baselines import item_template_explanations, nearest_neighbour_explanations
from recbole_mmprefer.evaluation.evaluate import evaluate
from recbole_mmprefer.evaluation.systems import align
from recbole_mmprefer.utils import read_json

EXPLANATIONS = [
    "The user would enjoy this book because it is a thrilling mystery with a clever detective.",
    "The user would like this novel because of its heartfelt romance and historical setting.",
    "The user would buy this cookbook because it offers quick and healthy family recipes.",
    "The user would enjoy this fantasy epic because of its rich world building and magic.",
    "The user would love this biography because it tells an inspiring story of courage.",
    "The user would enjoy this thriller because of its fast pace and surprising twists.",
]
TEXT_ONLY = ["bertscore", "bleu", "rouge_l", "usr"]


def write_table(folder, name="toy"):
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for n, explanation in enumerate(EXPLANATIONS):
        rows.append({"user_id": f"u{n}", "item_id": f"i{n}", "title": f"Book {n}",
                     "user_profile": f"Reader {n} likes {explanation.split('because ')[1]}",
                     "item_profile": f"Fans of {explanation.split('of ')[-1]}", "explanation": explanation,
                     "split": "test" if n >= 4 else "train", "profile_source": "xrec", "explanation_source": "xrec",
                     "baselines": {"xrec": "The user would buy the book because it is good."}})
    table = pd.DataFrame(rows)
    write_explanation_table(explanation_table_path(folder, name), table)
    return table


def config_for(tmp_path, **overrides):
    return {"data_path": str(tmp_path / "data" / "toy"), "dataset": "toy", "run_dir": str(tmp_path / "run"),
            "eval_metrics": TEXT_ONLY, "eval_bertscore_model": None, "eval_bertscore_layer": None,
            "eval_bertscore_baseline": None, "eval_text_batch_size": 8, "device": "cpu", **overrides}


def test_report_scores_every_system_on_the_same_rows(tmp_path):
    table = write_table(tmp_path / "data" / "toy")
    perfect = tmp_path / "perfect.jsonl"
    write_generations(perfect, table[table["split"] == "test"][["user_id", "item_id", "explanation"]])
    out = evaluate(config_for(tmp_path), {"oracle": perfect}, split="test")
    assert sorted(p.name for p in out.iterdir()) == ["distributions.png", "per_sample.csv", "scores.json", "table.md"]
    scores = read_json(out / "scores.json")
    systems = scores["systems"]
    assert set(systems) == {"oracle", "xrec (published)", "item-template", "nearest-neighbour"}
    assert systems["oracle"]["bertscore_f1"]["mean"] == pytest.approx(1.0, abs=1e-5)
    assert systems["oracle"]["bertscore_f1"]["std"] == pytest.approx(0.0, abs=1e-5)
    assert systems["oracle"]["bertscore_f1"]["mean"] > systems["xrec (published)"]["bertscore_f1"]["mean"]
    assert systems["xrec (published)"]["usr"]["mean"] == pytest.approx(0.5)  # one sentence repeated twice
    assert scores["context"]["rows"] == 2 and scores["context"]["split"] == "test"
    per_sample = pd.read_csv(out / "per_sample.csv")
    assert len(per_sample) == 4 * 2 and set(per_sample["user_id"]) == {"u4", "u5"}
    markdown = (out / "table.md").read_text()
    assert "# Explanation quality on toy (test split, 2 rows)" in markdown
    assert "| system | BERT P | BERT R | BERT F1 | USR | BLEU-1 | BLEU-4 | ROUGE-L | std BERT P |" in markdown
    assert "| oracle | 1.0000 | 1.0000 | 1.0000 |" in markdown
    assert "all-MiniLM" in markdown or "minilm" in markdown.lower()


def test_cheap_baselines():
    table = pd.DataFrame({"user_id": ["a", "b", "c"], "item_id": ["x", "y", "z"], "title": ["Dune", "", "Emma"],
                          "user_profile": ["likes space", "likes cooking", "likes space opera"],
                          "item_profile": ["Fans of desert planets.", "For cooks.", "Regency fans."],
                          "explanation": ["because sand", "because recipes", "because wit"],
                          "split": ["train", "train", "test"]})
    template = item_template_explanations(table)
    assert template["explanation"].tolist() == ['The user would enjoy "Dune". Fans of desert planets.',
                                                "The user would enjoy this item. For cooks.",
                                                'The user would enjoy "Emma". Regency fans.']
    nearest = nearest_neighbour_explanations(table, table)
    assert nearest["explanation"].tolist()[2] == "because sand"  # space opera is nearest to space
    assert nearest["explanation"].tolist()[0] == "because recipes"  # never the pair itself


def test_max_rows_scores_the_first_rows_of_the_split(tmp_path):
    table = write_table(tmp_path / "data" / "toy")
    first = tmp_path / "first.jsonl"
    write_generations(first, table[table["split"] == "test"].head(1)[["user_id", "item_id", "explanation"]])
    out = evaluate(config_for(tmp_path), {"oracle": first}, split="test", max_rows=1, baselines=False)
    scores = read_json(out / "scores.json")
    assert scores["context"]["rows"] == 1 and scores["context"]["rows scored"] == "the first 1 of the split's 2"
    assert "- rows scored: the first 1 of the split's 2" in (out / "table.md").read_text()
    assert set(pd.read_csv(out / "per_sample.csv")["user_id"]) == {"u4"}


def test_mismatched_systems_are_refused_with_both_sides_reported(tmp_path):
    table = write_table(tmp_path / "data" / "toy")
    partial = tmp_path / "partial.jsonl"
    write_generations(partial, table.iloc[[4]][["user_id", "item_id", "explanation"]])
    with pytest.raises(InputError, match=r"partial: 1 pair\(s\) to score missing \(e.g. \[\('u5', 'i5'\)\]\)"):
        evaluate(config_for(tmp_path), {"partial": partial}, split="test")
    stranger = pd.DataFrame({"user_id": ["u4", "u5", "zz"], "item_id": ["i4", "i5", "q"], "explanation": ["a"] * 3})
    with pytest.raises(InputError, match=r"1 pair\(s\) not in the explanation table"):
        align(table[table["split"] == "test"], {"s": stranger}, table)
    everything = table[["user_id", "item_id", "explanation"]]
    aligned, left_out = align(table[table["split"] == "test"], {"all": everything}, table)
    assert aligned["all"] == EXPLANATIONS[4:] and left_out == {"all": 4}


def test_generation_file_errors_name_the_line(tmp_path):
    path = tmp_path / "gen.jsonl"
    path.write_text('{"user_id": "u1", "item_id": "i1", "explanation": "ok"}\n{"user_id": "u2", "item_id": "i2"}\n')
    with pytest.raises(InputError, match=r"gen.jsonl, line 2: field 'explanation' missing"):
        read_generations(path)
    path.write_text('{"user_id": "u1", "item_id": "i1", "explanation": "ok"}\n{"user_id": "u1", "item_id": "i1", '
                    '"explanation": "again"}\n')
    with pytest.raises(InputError, match="more than one explanation"):
        read_generations(path)


def test_cli_evaluate_prints_the_table_and_rejects_bad_systems(tmp_path, capsys):
    table = write_table(tmp_path / "data" / "toy")
    generated = tmp_path / "ours.jsonl"
    write_generations(generated, table[table["split"] == "test"][["user_id", "item_id", "explanation"]],
                      extra=[{"paths": []}, {"paths": []}])
    assert json.loads(generated.read_text().splitlines()[0])["paths"] == []
    common = ["evaluate", "--dataset", "toy", f"--data_path={tmp_path / 'data'}", f"--run_dir={tmp_path / 'run'}",
              f"--eval_metrics={TEXT_ONLY}"]
    assert mmprefer([*common, "--system", f"ours={generated}", "--no_baselines", "--name", "mine"]) == 0
    out = capsys.readouterr().out
    assert "| ours | 1.0000 |" in out and "item-template" not in out
    assert (tmp_path / "run" / "evaluation" / "mine" / "table.md").is_file()
    assert mmprefer([*common, "--system", "ours"]) == 2
    assert "write it NAME=FILE" in capsys.readouterr().err
    assert mmprefer([*common[:-1], "--eval_metrics=['bertscore', 'meteor']"]) == 2
    assert "unknown eval_metrics ['meteor']" in capsys.readouterr().err


def test_model_metrics_join_the_report_and_bleurt_is_reported_absent(tmp_path):
    from tiny_models import write_tiny_llama

    write_table(tmp_path / "data" / "toy")
    llama = write_tiny_llama(tmp_path / "tiny-llama")
    config = config_for(tmp_path, eval_metrics=["bleu", "likelihood", "bleurt", "judge"], llm_path=str(llama),
                        eval_judge_max_new_tokens=4)
    out = evaluate(config, split="test", baselines=False)
    scores = read_json(out / "scores.json")
    metrics = scores["systems"]["xrec (published)"]
    assert {"bleu_1", "bleu_4", "lm_likelihood_f", "llm_judge"} <= set(metrics) and "bleurt" not in metrics
    assert metrics["lm_likelihood_f"]["mean"] < 0  # a mean log-probability
    assert scores["absent"] == ["BLEURT"] and "tiny-llama" in scores["context"]["likelihood model"]
    markdown = (out / "table.md").read_text()
    assert "| system | GPTScore | LM likelihood | BLEU-1 | BLEU-4 | std GPTScore | std LM likelihood | BLEURT |" \
        in markdown
    assert "absent |" in markdown
    assert (tmp_path / "run" / "evaluation" / "cache" / "judge_cache.jsonl").is_file()


def test_grounding_reports_the_references_own_grounding_as_the_bar(tmp_path):
    table = write_table(tmp_path / "data" / "toy")
    perfect = tmp_path / "perfect.jsonl"
    write_generations(perfect, table[table["split"] == "test"][["user_id", "item_id", "explanation"]])
    out = evaluate(config_for(tmp_path, eval_metrics=["usr", "grounding"]), {"oracle": perfect}, split="test")
    scores = read_json(out / "scores.json")
    oracle = scores["systems"]["oracle"]["grounding"]["mean"]
    assert 0 < oracle < 1  # "thriller", "fast", "pace" are in the profiles; "user", "enjoy" are scaffolding
    assert scores["context"]["grounding of the references"] == pytest.approx(oracle, abs=1e-4)
    assert scores["systems"]["xrec (published)"]["grounding"]["mean"] < oracle
