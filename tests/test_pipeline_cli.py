"""The stages chained through the `mmprefer` command on a tiny XRec-layout data set: import, paths, train,
generate, evaluate; each stage reads only the files the previous one wrote."""

from __future__ import annotations

import json

from test_import_xrec import write_random_xrec_folder
from tiny_models import write_tiny_llama

from recbole_mmprefer.cli import main as mmprefer
from recbole_mmprefer.data.generations import read_generations
from recbole_mmprefer.utils import read_json


def test_import_paths_train_generate_evaluate(tmp_path, capsys):
    source = write_random_xrec_folder(tmp_path / "src")
    llama = write_tiny_llama(tmp_path / "tiny-llama")
    assert mmprefer(["import", "xrec", str(source), "--name", "toy", "--out", str(tmp_path / "data")]) == 0
    common = ["--dataset", "toy", f"--data_path={tmp_path / 'data'}", f"--run_dir={tmp_path / 'run'}"]
    assert mmprefer(["paths", *common, "--path_weight=degree"]) == 0
    paths = [json.loads(line) for line in (tmp_path / "run" / "paths" / "paths.jsonl").read_text().splitlines()]
    assert len(paths) == 10 and all(record["status"] in ("ok", "no_path") for record in paths)

    explainer = [f"--llm_path={llama}", "--explainer_graph_level=False", "--explainer_epochs=1",
                 "--explainer_max_length=160", "--explainer_max_new_tokens=6", "--path_weight=degree"]
    assert mmprefer(["train", *common, *explainer]) == 0
    model_dir = tmp_path / "run" / "explainer"
    assert (model_dir / "meta.json").is_file()
    out_file = tmp_path / "ours.jsonl"
    assert mmprefer(["generate", *common, *explainer, "--model_dir", str(model_dir), "--split", "test",
                     "--out_file", str(out_file)]) == 0
    generations = read_generations(out_file)
    test_pairs = [r for r in map(json.loads, (tmp_path / "data" / "toy" / "toy.expl.jsonl").read_text().splitlines())
                  if r["split"] == "test"]
    assert list(zip(generations["user_id"], generations["item_id"])) == [(r["user_id"], r["item_id"])
                                                                         for r in test_pairs]
    capsys.readouterr()
    assert mmprefer(["evaluate", *common, "--system", f"ours={out_file}", "--no_baselines",
                     "--eval_metrics=['bleu', 'rouge_l', 'usr']"]) == 0
    assert "| ours |" in capsys.readouterr().out
    scores = read_json(tmp_path / "run" / "evaluation" / "test" / "scores.json")
    assert scores["context"]["rows"] == len(test_pairs) and "ours" in scores["systems"]


def test_mmprefer_run_on_a_data_set_without_explanations_goes_zero_shot(tmp_path, tiny_encoder):
    from conftest import tiny_config, write_config_file, write_tiny_dataset

    root = tmp_path / "data"
    write_tiny_dataset(root)
    llama = write_tiny_llama(tmp_path / "tiny-llama")
    config = tiny_config(root, text_encoder=str(tiny_encoder), run_dir=str(tmp_path / "run"), llm_path=str(llama),
                         pipeline_pairs=4, pipeline_report_pairs=2, explainer_max_length=160,
                         explainer_max_new_tokens=5, profile_item_fields=["title", "genre"],
                         pipeline_explainer="zero-shot")
    config_file = write_config_file(tmp_path / "tiny.yaml", config)
    assert mmprefer(["run", "--dataset", "tiny", "--config_files", str(config_file)]) == 0
    run = tmp_path / "run"
    for stage_file in ("features/text/meta.json", "quantizer/meta.json", "recommender/meta.json",
                       "profiles/report.json", "paths/paths.jsonl", "report/report.md", "report/report.html"):
        assert (run / stage_file).is_file(), stage_file
    generations = read_generations(next((run / "generations").glob("mmprefer-zeroshot-*.jsonl")))
    assert list(generations["user_id"]) == ["u0", "u1", "u2", "u3"]
    report = (run / "report" / "report.md").read_text()
    assert "No reference explanations" in report and report.count("## user ") == 2
    assert "Explained by the frozen LLM, zero-shot" in report
    page = (run / "report" / "report.html").read_text()
    assert page.count("<svg") == 2 and page.count('class="legend"') == 2  # each drawing with its key
    assert "main.report { display: block; max-width: 1000px; }" in page and "white-space: pre-wrap" in page


def test_mmprefer_run_trains_with_the_graph_soft_prompt_and_scores(tmp_path, tiny_encoder):
    from conftest import tiny_config, write_config_file

    source = write_random_xrec_folder(tmp_path / "src")
    assert mmprefer(["import", "xrec", str(source), "--name", "xrec-amazon", "--out", str(tmp_path / "data")]) == 0
    llama = write_tiny_llama(tmp_path / "tiny-llama")
    config = tiny_config(tmp_path / "data", text_encoder=str(tiny_encoder), run_dir=str(tmp_path / "run"),
                         llm_path=str(llama), explainer_epochs=1, explainer_max_length=160,
                         explainer_max_new_tokens=5, explainer_gnn_hidden=8,
                         eval_metrics=["bertscore", "bleu", "usr"])
    del config["text_fields"], config["load_col"]
    config_file = write_config_file(tmp_path / "run.yaml", config)
    assert mmprefer(["run", "--dataset", "xrec-amazon", "--config_files", str(config_file)]) == 0
    run = tmp_path / "run"
    meta = read_json(run / "explainer" / "meta.json")
    assert meta["settings"]["explainer_graph_level"] is True and meta["settings"]["explainer_lora"] is True
    assert len(meta["history"]) == 1 and meta["history"][0]["valid_loss"] > 0
    scores = read_json(run / "evaluation" / "test" / "scores.json")
    assert {"mmp-refer", "item-template", "nearest-neighbour"} <= set(scores["systems"])
    assert "**Reference:**" in (run / "report" / "report.md").read_text()
