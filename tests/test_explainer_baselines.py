"""The field's explanation baselines (issue 14): NRT, Att2Seq, PETER, PEPLER and CER as explainer plugins."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
import torch

from recbole_mmprefer.artifacts import ARTIFACTS
from recbole_mmprefer.cli import main as mmprefer
from recbole_mmprefer.data.explanations import explanation_table_path, write_explanation_table
from recbole_mmprefer.data.generations import read_generations
from recbole_mmprefer.errors import MissingInputError
from recbole_mmprefer.explainer.baselines import generate_with_model, load_trained, train_explainer_model
from recbole_mmprefer.explainer.models.peter import peter_mask
from recbole_mmprefer.explainer.vocabulary import Vocabulary, words_of
from recbole_mmprefer.registry import UnknownModelError, explainer_names, get_explainer_model, our_model_names
from recbole_mmprefer.utils import read_json
from tests.tiny_models import write_tiny_llama

GENRE_OF_USER = ["drama", "comedy", "horror"]
THING_OF_ITEM = ["story", "movie"]
WORD_MODELS = ["NRT", "Att2Seq", "PETER", "CER"]
SMALL = {"baseline_optimizer": "adam",  # the papers' SGD at lr 1.0 stalls on 36 pairs
         "baseline_embedding_size": 16, "baseline_hidden_size": 32, "baseline_layers": 1, "baseline_heads": 2,
         "baseline_dropout": 0.0, "baseline_batch_size": 8, "baseline_learning_rate": 0.01,
         "baseline_checkpoint_steps": 3}


def explanation(user: int, item: int) -> str:
    """The user's genre and the item's kind: a model that ignores the user cannot get it right."""
    return f"the user would enjoy this {GENRE_OF_USER[user % 3]} {THING_OF_ITEM[item % 2]} ."


def write_dataset(root, name="toy", ratings=True, empty_train=0, published=False):
    """``published``: each pair also carries a published XRec prediction (one fixed sentence)."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    rows, inter = [], ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    for user in range(6):
        for item in range(8):
            split = {7: "test", 6: "valid"}.get((user + item) % 8, "train")  # every id also occurs in train
            rows.append({"user_id": f"u{user}", "item_id": f"i{item}", "title": f"Item {item}", "user_profile": "",
                         "item_profile": "", "explanation": explanation(user, item), "split": split,
                         "profile_source": "", "explanation_source": "test",
                         **({"baselines": {"xrec": "The user would buy it for its plot."}} if published else {})})
            inter.append(f"u{user}\ti{item}\t{1 + (user + item) % 5}\t{user * 10 + item}")
    for row in rows[:empty_train]:
        row["explanation"] = "  "
    write_explanation_table(explanation_table_path(folder, name), pd.DataFrame(rows))
    lines = inter if ratings else [line.rsplit("\t", 2)[0] + "\t" + line.rsplit("\t", 1)[1] for line in inter]
    if not ratings:
        lines[0] = "user_id:token\titem_id:token\ttimestamp:float"
    (folder / f"{name}.inter").write_text("\n".join(lines) + "\n")
    return folder


def config_for(tmp_path, model, **overrides):
    from recbole_mmprefer.config import Config

    return Config(model="MMPSASRec", dataset="toy", explainer_model=model, config_dict={
        "data_path": str(tmp_path / "data"), "run_dir": str(tmp_path / "run"), "seed": 3, **SMALL, **overrides})


def test_peter_mask_blocks_exactly_the_positions_of_the_papers_figure():
    blocked = peter_mask(5)  # user, item, <bos>, w1, w2
    expected = torch.tensor([[0, 0, 1, 1, 1],   # the user sees itself and the item, no word
                             [0, 0, 1, 1, 1],   # the item sees the user and itself
                             [0, 0, 0, 1, 1],   # each word sees the ids and the words before it
                             [0, 0, 0, 0, 1],
                             [0, 0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(blocked, expected)


def test_vocabulary_maps_unseen_words_to_unk_and_round_trips(tmp_path):
    vocabulary = Vocabulary.build(["great story, great cast", "a story"], size=2)
    assert vocabulary.words[4:] == ("great", "story")  # most frequent first, ties alphabetical
    ids = vocabulary.encode("Great plot, story!", 10)
    assert ids == [4, vocabulary.unk_id, vocabulary.unk_id, 5, vocabulary.unk_id]
    assert vocabulary.decode([4, 5, vocabulary.eos_id, 4]) == "great story"
    vocabulary.save(tmp_path / "v.json")
    assert Vocabulary.load(tmp_path / "v.json") == vocabulary
    assert words_of("It's 5/5!") == ["it's", "5", "/", "5", "!"]


def test_explainers_resolve_by_name_and_an_unknown_one_lists_them(tmp_path, capsys):
    assert explainer_names() == ["MMPRefer", "Att2Seq", "CER", "NRT", "PEPLER", "PETER"]
    assert our_model_names() == ["MMPSASRec"]  # the baselines are not recommenders
    assert get_explainer_model("PETER").__name__ == "PETER"
    with pytest.raises(UnknownModelError, match="Available explainers: MMPRefer, Att2Seq, CER"):
        get_explainer_model("Peter")
    write_dataset(tmp_path / "data")
    assert mmprefer(["train", "--dataset", "toy", "--model", "GPT4Rec", f"--data_path={tmp_path / 'data'}"]) == 2
    assert "Unknown explainer 'GPT4Rec'. Available explainers: MMPRefer, Att2Seq" in capsys.readouterr().err


def valid_losses(model_dir, part="loss"):
    log = (model_dir / "training_log.jsonl").read_text().splitlines()
    return [json.loads(line)["valid_parts"][part] for line in log]


@pytest.mark.parametrize("name", WORD_MODELS)
def test_word_baseline_learns_depends_on_the_user_and_reloads_exactly(tmp_path, name):
    write_dataset(tmp_path / "data")
    epochs = 80 if name == "NRT" else 25  # NRT's GRU sees the ids only in its first state: it learns them slower
    config = config_for(tmp_path, name, baseline_epochs=epochs)
    model_dir = train_explainer_model(config, name)
    losses = valid_losses(model_dir, "text")  # the explanation's NLL (context NLL has a floor: word order is lost)
    assert len(losses) == epochs and min(losses) < 0.5 * losses[0]
    meta = read_json(model_dir / "meta.json")
    assert meta["has_ratings"] is True and meta["skipped_empty"] == {"train": 0, "valid": 0}
    out = generate_with_model(config, name)
    generated = read_generations(out).set_index(["user_id", "item_id"])["explanation"]
    assert len(generated) == 6  # the test split: one pair of every user
    by_user = {user: generated[(f"u{user}", f"i{(7 - user) % 8}")] for user in range(6)}
    assert len(set(by_user.values())) >= 2, by_user
    right = sum(GENRE_OF_USER[user % 3] in text for user, text in by_user.items())
    assert right >= 4, by_user
    first, second = load_trained(model_dir), load_trained(model_dir)
    for key, value in first.model.state_dict().items():  # every weight comes from the file, none from init
        assert torch.equal(value, second.model.state_dict()[key]), key
    again = generate_with_model(config, name, out_file=tmp_path / "again.jsonl", force=True)
    assert read_generations(again).equals(read_generations(out))


def test_training_resumes_from_a_step_checkpoint_to_the_same_model(tmp_path, monkeypatch):
    from recbole_mmprefer.explainer import baselines

    write_dataset(tmp_path / "data")
    whole = train_explainer_model(config_for(tmp_path, "PETER", baseline_epochs=3), "PETER",
                                  out_dir=tmp_path / "whole")
    calls = {"n": 0}
    original = baselines.BaselineRun.step

    def stop_at_seventh(self, *args):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        return original(self, *args)

    monkeypatch.setattr(baselines.BaselineRun, "step", stop_at_seventh)
    with pytest.raises(KeyboardInterrupt, match="resumes from"):
        train_explainer_model(config_for(tmp_path, "PETER", baseline_epochs=3), "PETER", out_dir=tmp_path / "cut")
    assert (tmp_path / "cut" / "checkpoint.pt").is_file() and not (tmp_path / "cut" / "meta.json").exists()
    monkeypatch.setattr(baselines.BaselineRun, "step", original)
    resumed = train_explainer_model(config_for(tmp_path, "PETER", baseline_epochs=3), "PETER",
                                    out_dir=tmp_path / "cut")
    assert not (resumed / "checkpoint.pt").exists()
    from safetensors.torch import load_file

    a, b = load_file(str(whole / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_empty_explanations_are_skipped_and_counted_and_ratings_switch_off_without_a_rating_field(tmp_path):
    write_dataset(tmp_path / "data", ratings=False, empty_train=2)
    config = config_for(tmp_path, "NRT", baseline_epochs=1)
    model_dir = train_explainer_model(config, "NRT")
    meta = read_json(model_dir / "meta.json")
    assert meta["skipped_empty"] == {"train": 2, "valid": 0}
    assert meta["train_pairs"] == 6 * 6 - 2 and meta["has_ratings"] is False
    assert read_json(model_dir / "indices.json")["ratings"] is None
    assert train_explainer_model(config, "NRT") == model_dir  # up to date: not retrained
    assert (model_dir / "training_log.jsonl").read_text().count("\n") == 1


def test_cer_coherence_loss_ties_the_explanations_rating_to_the_predicted_one(tmp_path):
    write_dataset(tmp_path / "data")
    config = config_for(tmp_path, "CER", baseline_epochs=1)
    parts = load_trained(train_explainer_model(config, "CER"))
    from recbole_mmprefer.explainer.baseline_data import pairs_of

    table = pd.read_json(explanation_table_path(tmp_path / "data" / "toy", "toy"), lines=True).head(4)
    data = pairs_of(table, parts.users, parts.items, {("u0", "i0"): 3.0}, parts.codec, 20)
    batch = data.batch(range(4), 1, 2, 0)
    parts.model.train()
    losses = parts.model.calculate_loss(batch)
    assert set(losses) == {"loss", "text", "context", "rating", "coherence"}
    assert float(losses["coherence"]) > 0


def test_pepler_tunes_the_prompt_first_then_lora_and_generates_from_the_llm(tmp_path):
    write_dataset(tmp_path / "data")
    llm = write_tiny_llama(tmp_path / "llm")
    config = config_for(tmp_path, "PEPLER", llm_path=str(llm), baseline_epochs=4, baseline_prompt_epochs=1,
                        baseline_learning_rate=0.01, baseline_prompt_learning_rate=0.05, baseline_max_words=12)
    model_dir = train_explainer_model(config, "PEPLER")
    log = [json.loads(line) for line in (model_dir / "training_log.jsonl").read_text().splitlines()]
    assert [entry["stage"] for entry in log] == ["prompt", "joint", "joint", "joint"]
    assert log[-1]["valid_loss"] < log[0]["valid_loss"]
    parts = load_trained(model_dir)
    saved = set(parts.model.saved_names())
    assert {"user_embedding.weight", "item_embedding.weight"} <= saved
    assert all(name.startswith(("user_", "item_")) or "lora_" in name for name in saved)
    out = generate_with_model(config, "PEPLER")
    generated = read_generations(out)
    assert len(generated) == 6 and all(isinstance(text, str) for text in generated["explanation"])
    assert generated["explanation"].nunique() >= 2  # the prompt vectors differ per user: so does the text
    with pytest.raises(MissingInputError, match="mmprefer train --model NAME"):
        ARTIFACTS["explainer_model"].require(config, name="NRT")


def small_flags(**extra):
    return [f"--{key}={value}" for key, value in {**SMALL, **extra}.items()]


def test_cli_trains_and_generates_a_baseline_into_the_run_folders(tmp_path, capsys):
    write_dataset(tmp_path / "data")
    common = ["--dataset", "toy", f"--data_path={tmp_path / 'data'}", f"--run_dir={tmp_path / 'run'}"]
    assert mmprefer(["train", "--model", "Att2Seq", *common, *small_flags(baseline_epochs=2)]) == 0
    model_dir = tmp_path / "run" / "explainer_models" / "Att2Seq"
    assert sorted(path.name for path in model_dir.iterdir()) == [
        "indices.json", "meta.json", "model.safetensors", "model_config.json", "training_log.jsonl",
        "vocabulary.json"]
    assert read_json(model_dir / "model_config.json")["baseline_embedding_size"] == 16  # the flag beat Att2Seq.yaml
    assert mmprefer(["generate", "--model", "Att2Seq", *common, *small_flags(baseline_epochs=2)]) == 0
    out = tmp_path / "run" / "generations" / "Att2Seq-test.jsonl"
    assert f"Generations: {out}" in capsys.readouterr().out
    assert len(read_generations(out)) == 6
    assert mmprefer(["generate", "--model", "Att2Seq", "--model_dir", "bundled", *common]) == 2
    assert "--model_dir is the folder of our explainer" in capsys.readouterr().err


def test_a_models_yaml_sets_its_paper_defaults_under_the_users_flags(tmp_path):
    peter = config_for(tmp_path, "PETER")
    assert peter["baseline_optimizer"] == "adam" and peter["baseline_lr_decay"] == 0.25  # SMALL, then PETER.yaml
    from recbole_mmprefer.config import Config

    plain = Config(model="MMPSASRec", dataset="toy", explainer_model="NRT", config_dict={"data_path": str(tmp_path)})
    assert plain["baseline_embedding_size"] == 300 and plain["baseline_context_weight"] == 0.0
    assert Config(model="MMPSASRec", dataset="toy", config_dict={})["baseline_embedding_size"] == 512


def test_table1_script_scores_baselines_on_the_same_test_rows(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from recbole_mmprefer.data.generations import write_generations
    from recbole_mmprefer.explainer.pair_data import load_table

    write_dataset(tmp_path / "data", published=True)
    script = Path(__file__).resolve().parents[1] / "run_scripts" / "table1.py"
    out, kept = tmp_path / "table.md", tmp_path / "kept" / "full.jsonl"  # an earlier run's generations: the references
    kept.parent.mkdir()
    write_generations(kept, load_table(config_for(tmp_path, "NRT")).query("split == 'test'"))
    command = [sys.executable, str(script), "--dataset", "toy", "--data_path", str(tmp_path / "data"),
               "--systems", "NRT", "PETER", "--train_pairs", "0", "--test_pairs", "0", "--metrics", "bleu", "usr",
               "grounding", "--generations", f"full={kept}",
               "--out", str(out), f"--run_dir={tmp_path / 'run'}", *small_flags(baseline_epochs=2)]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "TQDM_DISABLE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    table = out.read_text()
    assert "| NRT |" in table and "| PETER |" in table and "(test split, 6 rows)" in table
    assert "| NRT | " in table.split("| system | training | generation |")[1]
    paired = table.split("## Each system minus xrec (published)")[1].split("## Each system minus MMP-Refer")[0]
    assert "| system - xrec (published) | grounding |" in paired
    assert re.search(r"\| PETER \| [+-]\d\.\d{4} \+- \d\.\d{4} \|", paired)
    ours = next(line for line in table.splitlines() if line.startswith("| MMP-Refer (ours) | "))
    assert "| 100.0000 |" in ours  # the kept file (the references) is scored ...
    assert f"| MMP-Refer (ours) | kept: {kept} | kept |" in table  # ... and not trained again
    assert not (tmp_path / "run" / "table1" / "full").exists()
    assert "| MMP-Refer (ours) |" in paired
    against_ours = table.split("## Each system minus MMP-Refer (ours)")[1]
    assert re.search(r"\| NRT \| [+-]\d\.\d{4} \+- \d\.\d{4} \|", against_ours)


def test_table1_refuses_kept_generations_of_an_unknown_system_or_a_missing_file(tmp_path, monkeypatch):
    import argparse
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "run_scripts"))
    import table1

    for given, says in ((["nope=x.jsonl"], "SYSTEM one of"), ([f"full={tmp_path / 'absent.jsonl'}"], "no file"),
                        (["full"], "SYSTEM=FILE")):
        with pytest.raises(SystemExit, match=says):
            table1.kept_generations(argparse.Namespace(generations=given), list(table1.SYSTEMS))


def test_table1_full_warmup_warms_up_for_a_sixth_of_an_epochs_steps(tmp_path, monkeypatch):
    import argparse
    import sys
    from pathlib import Path

    write_dataset(tmp_path / "data")  # 36 train pairs
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "run_scripts"))
    monkeypatch.setattr(sys, "argv", ["table1.py", "--explainer_batch_size=1"])  # RecBole's Config reads argv
    import table1

    args = argparse.Namespace(dataset="toy", data_path=str(tmp_path / "data"), train_pairs=None, valid_pairs=2,
                              epochs=1, metrics=["bleu"])
    assert table1.graph_warmup_steps(args) == 6
    args.train_pairs = 12
    assert table1.graph_warmup_steps(args) == 2
    args.train_pairs = 3
    assert table1.graph_warmup_steps(args) == 1


def test_table2_scores_kept_generations_and_pairs_them_against_the_full_model(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from recbole_mmprefer.data.generations import write_generations
    from recbole_mmprefer.explainer.pair_data import load_table

    write_dataset(tmp_path / "data")
    test = load_table(config_for(tmp_path, "NRT")).query("split == 'test'")
    full, no_graph = tmp_path / "full.jsonl", tmp_path / "no_graph.jsonl"
    write_generations(full, test)  # the references themselves: BERT-F1 1
    write_generations(no_graph, test.assign(explanation="a plain sentence ."))
    script = Path(__file__).resolve().parents[1] / "run_scripts" / "table2.py"
    out = tmp_path / "table2.md"
    done = subprocess.run([sys.executable, str(script), "--dataset", "toy", "--data_path", str(tmp_path / "data"),
                           "--systems", "full", "no_graph", "--metrics", "bertscore", "--out", str(out),
                           "--generations", f"full={full}", f"no_graph={no_graph}", f"--run_dir={tmp_path / 'run'}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "TQDM_DISABLE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    table = out.read_text()
    assert not (tmp_path / "run" / "table2").exists()  # nothing trained
    assert "| w/o graph level |" in table and "(test split, 6 rows)" in table
    paired = table.split("## Each system minus MMP-Refer (ours)")[1]
    assert re.search(r"\| w/o graph level \| -0\.\d{4} \+- \d\.\d{4} \| -0\.\d{4} \+- \d\.\d{4} \| -0\.\d{4}", paired)
