"""The explainer (paper section 3.4): LoRA + graph soft prompt model, training with resume, batched generation."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from tiny_models import write_tiny_llama

from recbole_mmprefer.data.explanations import EXPLANATION_COLUMNS, write_explanation_table
from recbole_mmprefer.data.generations import read_generations
from recbole_mmprefer.data.node_text import NodeText
from recbole_mmprefer.errors import InputError, TrainingDiverged
from recbole_mmprefer.explainer.checkpoints import ADAPTER_FILE, load_explainer
from recbole_mmprefer.explainer.generate import generate_explanations
from recbole_mmprefer.explainer.model import ExplainerModel
from recbole_mmprefer.explainer.pair_data import PairData, join_records
from recbole_mmprefer.explainer.path_graphs import PathSubgraphBuilder
from recbole_mmprefer.explainer.settings import PromptSettings, TrainingSettings
from recbole_mmprefer.explainer.train import train_explainer
from recbole_mmprefer.retrieval.graph import InteractionGraph
from recbole_mmprefer.utils import read_json

# users u0..u3 are nodes 0..3, items i0..i4 nodes 4..8 (the graph of test_graph_encoder)
EDGES = [("u0", "i0"), ("u0", "i1"), ("u0", "i2"), ("u0", "i3"), ("u0", "i4"), ("u1", "i0"), ("u1", "i1"),
         ("u1", "i3"), ("u2", "i1"), ("u2", "i2"), ("u2", "i4"), ("u3", "i3"), ("u3", "i4")]
DIM = 4
NAMES = ["u0", "u1", "u2", "u3", "i0", "i1", "i2", "i3", "i4"]
# (user, item, split, path nodes or None = no paths record)
PAIRS = [("u0", "i0", "train", [0, 5, 1, 4]), ("u1", "i2", "train", [1, 5, 2, 6]),
         ("u2", "i0", "train", [2, 5, 1, 4]), ("u3", "i1", "train", None),
         ("u1", "i4", "valid", [1, 7, 3, 8]), ("u3", "i2", "valid", [3, 8, 2, 6]),
         ("u0", "i1", "test", [0, 6, 2, 5]), ("u2", "i3", "test", None), ("u3", "i0", "test", [3, 7, 1, 4]),
         ("u1", "i1", "test", [1, 4, 0, 5])]
EXPLANATIONS = ["the user would enjoy this drama movie .", "a story of the night , the user likes horror .",
                "the user who likes action would enjoy this movie .", "this comedy and a story ."]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp("llm") / "llama")


def make_graph():
    users, items = zip(*EDGES)
    return InteractionGraph.from_edges(users, items, [f"u{n}" for n in range(4)], [f"i{n}" for n in range(5)])


def make_builder():
    rng = np.random.default_rng(0)
    return PathSubgraphBuilder(make_graph(), rng.normal(size=(4, DIM)).astype(np.float32),
                               rng.normal(size=(5, DIM)).astype(np.float32), neighbours=2, seed=3)


def make_table() -> pd.DataFrame:
    rows = []
    for n, (user, item, split, _) in enumerate(PAIRS):
        rows.append({"user_id": user, "item_id": item, "title": f"movie {item}", "user_profile": "likes drama",
                     "item_profile": "a story of the night", "explanation": EXPLANATIONS[n % len(EXPLANATIONS)],
                     "split": split, "profile_source": "xrec", "explanation_source": "xrec"})
    return pd.DataFrame(rows, columns=EXPLANATION_COLUMNS)


def make_records():
    records = []
    for user, item, _, nodes in PAIRS:
        if nodes is None:
            continue
        records.append({"user_id": user, "item_id": item, "status": "ok",
                        "paths": [{"nodes": nodes, "types": ["user" if node < 4 else "item" for node in nodes],
                                   "tokens": [NAMES[node] for node in nodes], "cost": 1.0}]})
    return records


def node_text():
    return NodeText(user_profiles={"u1": "likes horror", "u2": "likes comedy"},
                    item_profiles={"i1": "an action movie"}, titles={"i1": "movie one"})


def config(llama, **overrides):
    keys = {"llm_path": str(llama), "seed": 0, "explainer_max_length": 200, "explainer_max_new_tokens": 6,
            "explainer_bf16": False,  # exact comparisons below; bf16 is tested on its own
            "explainer_epochs": 2, "explainer_batch_size": 2, "explainer_learning_rate": 1e-2,
            "explainer_gnn_hidden": 8, "explainer_neighbours": 2, "explainer_experts": 2, "explainer_paths": 2,
            "explainer_generation_batch_size": 8, "explainer_min_new_tokens": 6,
            # in the tiny tokenizer's words, so that prompts are not mostly [UNK]
            "explainer_instruction": "{title} : {item_profile} , {user_profile} .\n{paths}the user would enjoy :",
            "explainer_paths_intro": "a story of the user :"}
    keys.update(overrides)
    return keys


def inputs(**extra):
    return {"table": make_table(), "records": make_records(), "node_text": node_text(), "builder": make_builder(),
            **extra}


def train_data(model, cfg):
    table = make_table()
    rows = table[table["split"] == "train"].reset_index(drop=True)
    return PairData(join_records(rows, make_records()), node_text(), model.tokenizer, PromptSettings.from_config(cfg),
                    make_builder(), list(rows["explanation"]))


def batch_loss(model, data, indices=(0, 1, 2, 3)):
    batch, graphs = data.batch(list(indices), model.tokenizer.pad_token_id, False, model.soft_tokens > 0)
    return model(batch, graphs)


def eval_loss(model, data) -> float:
    with torch.no_grad():
        return float(batch_loss(model, data))


def test_only_lora_gnn_and_adapter_are_trainable(llama):
    model = ExplainerModel.from_config(config(llama), DIM)
    names = model.trainable_names()
    assert any("lora_A" in name for name in names) and any(name.startswith("soft_prompt.") for name in names)
    assert all("lora_" in name or name.startswith("soft_prompt.") for name in names)
    assert all(("q_proj" in name or "v_proj" in name) for name in names if "lora_" in name)
    frozen = [name for name, parameter in model.named_parameters() if not parameter.requires_grad]
    assert any("embed_tokens" in name for name in frozen) and any("base_layer" in name for name in frozen)
    assert set(model.trainable_state_dict()) == set(names)

    no_lora = ExplainerModel.from_config(config(llama, explainer_lora=False), DIM)
    assert no_lora.trainable_names() and all(name.startswith("soft_prompt.") for name in no_lora.trainable_names())
    no_graph = ExplainerModel.from_config(config(llama, explainer_graph_level=False), DIM)
    assert no_graph.soft_prompt is None and all("lora_" in name for name in no_graph.trainable_names())
    with pytest.raises(InputError, match="name no module"):
        ExplainerModel.from_config(config(llama, explainer_lora_targets=["nope"]), DIM)


@pytest.mark.parametrize("lora", [True, False])
def test_the_loss_equals_the_lms_own_loss_on_the_labels(llama, lora):
    cfg = config(llama, explainer_lora=lora)
    model = ExplainerModel.from_config(cfg, DIM).eval()
    data = train_data(model, cfg)
    batch, graphs = data.batch([0, 1, 2, 3], model.tokenizer.pad_token_id, False, True)
    with torch.no_grad():
        ours = model(batch, graphs)
        embeds = model.embed(batch["input_ids"], batch["soft_positions"], graphs)
        theirs = model.llm(inputs_embeds=embeds, attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    assert float(ours) == pytest.approx(float(theirs), rel=1e-5)


def test_loss_falls_over_a_few_steps(llama):
    cfg = config(llama)
    model = ExplainerModel.from_config(cfg, DIM)
    data = train_data(model, cfg)
    assert data.examples[0].soft_positions and data.records[3]["paths"] == []  # (u3, i1) has no paths record
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    model.train()
    losses = []
    for _ in range(10):
        loss = batch_loss(model, data)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    model.eval()
    final = eval_loss(model, data)
    assert final < losses[0] - 0.03 and all(b < a for a, b in zip(losses, losses[1:])), (losses, final)
    grads = [p.grad for p in model.llm.parameters() if not p.requires_grad]
    assert all(grad is None for grad in grads)


def repeated_ngrams(tokens, size):
    grams = [tuple(tokens[n:n + size]) for n in range(len(tokens) - size + 1)]
    return len(grams) - len(set(grams))


def test_no_repeat_ngram_size_stops_greedy_loops(llama):
    cfg = config(llama)
    model = ExplainerModel.from_config(cfg, DIM)
    model.eval()
    batch, graphs = train_data(model, cfg).batch([0, 1, 2], model.tokenizer.pad_token_id, True, True)
    with torch.no_grad():
        looping = model.generate(batch, graphs, max_new_tokens=40, min_new_tokens=40)
        fixed = model.generate(batch, graphs, max_new_tokens=40, min_new_tokens=40, no_repeat_ngram_size=2)
    assert sum(repeated_ngrams(row, 2) for row in looping) > 0  # the untrained model loops under greedy decoding
    assert [repeated_ngrams(row, 2) for row in fixed] == [0, 0, 0] and all(len(row) == 40 for row in fixed)


def test_train_checkpoints_reload_and_resume(llama, tmp_path):
    cfg = config(llama)
    out = train_explainer(cfg, tmp_path / "full", **inputs())
    meta = read_json(out / "meta.json")
    assert [entry["epoch"] for entry in meta["history"]] == [1, 2]
    assert all(np.isfinite(entry["train_loss"]) and np.isfinite(entry["valid_loss"]) for entry in meta["history"])
    assert meta["train_pairs"] == 4 and meta["valid_pairs"] == 2 and meta["resumed_after_epoch"] == 0
    assert (out / "checkpoint-epoch1" / "optimizer.pt").is_file() and (out / "checkpoint-epoch2").is_dir()

    # the checkpoint holds the trainable weights only, and reloading gives the same loss
    model = ExplainerModel.from_config(cfg, DIM).eval()
    state = torch.load(out / ADAPTER_FILE, weights_only=True)
    assert set(state) == set(model.trainable_names())
    assert sum(value.numel() for value in state.values()) < 0.5 * sum(p.numel() for p in model.parameters())
    data = train_data(model, cfg)
    before = eval_loss(model, data)
    loaded, _ = load_explainer(cfg, out, DIM)
    after = eval_loss(loaded, data)
    assert after != pytest.approx(before)
    loaded_again, _ = load_explainer(cfg, out, DIM)
    assert eval_loss(loaded_again, data) == pytest.approx(after, abs=1e-6)

    # up to date: nothing is trained again
    stamp = (out / ADAPTER_FILE).stat().st_mtime_ns
    train_explainer(cfg, out, **inputs())
    assert (out / ADAPTER_FILE).stat().st_mtime_ns == stamp

    # interrupted in epoch 2: the rerun resumes after epoch 1 and ends where the uninterrupted run did
    def interrupt(epoch, step, loss):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_explainer(cfg, tmp_path / "resumed", step_callback=interrupt, **inputs())
    assert (tmp_path / "resumed" / "checkpoint-epoch1").is_dir() and not (tmp_path / "resumed" / "meta.json").exists()
    resumed = train_explainer(cfg, tmp_path / "resumed", **inputs())
    assert read_json(resumed / "meta.json")["resumed_after_epoch"] == 1
    again = torch.load(resumed / ADAPTER_FILE, weights_only=True)
    for name, value in state.items():
        torch.testing.assert_close(again[name], value, rtol=1e-5, atol=1e-6)
    losses = [(entry["train_loss"], entry["valid_loss"]) for entry in read_json(resumed / "meta.json")["history"]]
    assert np.allclose(losses, [(entry["train_loss"], entry["valid_loss"]) for entry in meta["history"]])


def test_a_nan_loss_stops_training_naming_the_step_and_keeps_the_last_checkpoint(llama, tmp_path, monkeypatch):
    cfg = config(llama)
    forward = ExplainerModel.forward
    calls = []

    def poisoned(self, batch, graphs=None):
        loss = forward(self, batch, graphs)
        calls.append(self.training)
        return loss * float("nan") if calls.count(True) == 4 else loss  # epoch 2 (2 steps per epoch), step 2

    monkeypatch.setattr(ExplainerModel, "forward", poisoned)
    with pytest.raises(TrainingDiverged, match=r"explainer loss is nan at epoch 2, step 2, batch of pairs "
                                               r"\(u\d, i\d\), \(u\d, i\d\): .*checkpoint-epoch1, is intact"):
        train_explainer(cfg, tmp_path / "model", **inputs())
    assert (tmp_path / "model" / "checkpoint-epoch1").is_dir()
    assert not (tmp_path / "model" / "checkpoint-epoch2").exists() and not (tmp_path / "model" / ADAPTER_FILE).exists()
    monkeypatch.setattr(ExplainerModel, "forward", forward)
    resumed = train_explainer(cfg, tmp_path / "model", **inputs())
    assert read_json(resumed / "meta.json")["resumed_after_epoch"] == 1


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_generation_one_per_pair_and_batched_equals_one_by_one(llama, tmp_path):
    cfg = config(llama, explainer_epochs=1)
    model_dir = train_explainer(cfg, tmp_path / "model", **inputs())
    batched = generate_explanations(cfg, model_dir, "test", tmp_path / "batched.jsonl", **inputs())
    single = generate_explanations(config(llama, explainer_epochs=1, explainer_generation_batch_size=1), model_dir,
                                   "test", tmp_path / "single.jsonl", **inputs())
    lines = read_lines(batched)
    test_pairs = [(user, item) for user, item, split, _ in PAIRS if split == "test"]
    assert [(line["user_id"], line["item_id"]) for line in lines] == test_pairs
    assert all(isinstance(line["explanation"], str) for line in lines)
    assert sum(len(line["explanation"].split()) >= 2 for line in lines) >= 2, lines  # not just empty strings
    assert lines[0]["paths"][0]["tokens"] == ["u0", "i2", "u2", "i1"] and lines[1]["paths"] == []
    assert read_lines(single) == lines
    frame = read_generations(batched)  # the evaluation reads it
    assert list(frame["user_id"]) == [user for user, _ in test_pairs]
    assert read_json(tmp_path / "batched.jsonl.meta.json")["soft_tokens"] == 2
    for decoding in ("beam", "sample"):
        out = generate_explanations(config(llama, explainer_decoding=decoding), model_dir, "test",
                                    tmp_path / f"{decoding}.jsonl", **inputs())
        assert len(read_lines(out)) == len(test_pairs)


def test_ablations_and_zero_shot(llama, tmp_path):
    for name, overrides in (("no_lora", {"explainer_lora": False}), ("no_graph", {"explainer_graph_level": False})):
        cfg = config(llama, explainer_epochs=1, **overrides)
        model_dir = train_explainer(cfg, tmp_path / name, **inputs())
        meta = read_json(model_dir / "meta.json")
        assert meta["soft_tokens"] == (0 if name == "no_graph" else 2)
        out = generate_explanations(cfg, model_dir, "test", tmp_path / f"{name}.jsonl", **inputs())
        assert len(read_lines(out)) == 4
    options = config(llama, explainer_epochs=1, explainer_bf16=True, explainer_grad_accumulation=2)
    assert read_json(train_explainer(options, tmp_path / "bf16", **inputs()) / "meta.json")["training"][
        "explainer_bf16"] is True
    with pytest.raises(InputError, match="nothing to train"):
        train_explainer(config(llama, explainer_lora=False, explainer_graph_level=False), tmp_path / "none",
                        **inputs())
    zero = generate_explanations(config(llama), None, "all", tmp_path / "zero.jsonl", table=make_table(),
                                 records=make_records(), node_text=node_text())
    assert len(read_lines(zero)) == len(PAIRS)
    assert read_json(tmp_path / "zero.jsonl.meta.json")["zero_shot"] is True


def test_two_ranks_under_torchrun_equal_one_process(llama, tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    (data / "toy").mkdir(parents=True)
    (run / "paths").mkdir(parents=True)
    write_explanation_table(data / "toy" / "toy.expl.jsonl", make_table())
    with open(run / "paths" / "paths.jsonl", "w") as handle:
        handle.writelines(json.dumps(record) + "\n" for record in make_records())
    cfg = config(llama, data_path=str(data / "toy"), dataset="toy", run_dir=str(run),
                 explainer_graph_level=False, explainer_epochs=1, explainer_generation_batch_size=2)
    model_dir = train_explainer(cfg, run / "explainer")  # everything read from the run's files
    one = generate_explanations(cfg, model_dir, "all", tmp_path / "one.jsonl")
    config_file = tmp_path / "config.yaml"  # a RecBole config file: data_path is the root of the data sets
    config_file.write_text(yaml.safe_dump({**cfg, "data_path": str(data)}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "recbole_mmprefer.explainer.generate", str(config_file), "--model_dir", str(model_dir),
               "--split", "all", "--out_file", str(tmp_path / "two.jsonl")]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert (tmp_path / "two.jsonl").read_bytes() == one.read_bytes()
    assert read_json(tmp_path / "two.jsonl.meta.json")["world_size"] == 2

    # training runs under 2 ranks too (DDP over gloo); its adapter loads
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "recbole_mmprefer.explainer.train", str(config_file), "--out_dir", str(tmp_path / "ddp")]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert read_json(tmp_path / "ddp" / "meta.json")["world_size"] == 2
    load_explainer(cfg, tmp_path / "ddp")


def test_a_trained_explainer_reloads_from_its_saved_config_alone_in_a_fresh_process(llama, tmp_path):
    """The model, prompt and graph settings come from explainer_config.json, not from the config that generates."""
    data, run = tmp_path / "data", tmp_path / "run"
    (data / "toy").mkdir(parents=True)
    write_explanation_table(data / "toy" / "toy.expl.jsonl", make_table())
    (data / "toy" / "toy.inter").write_text("user_id:token\titem_id:token\n" +
                                            "".join(f"{user}\t{item}\n" for user, item in EDGES))
    (run / "paths").mkdir(parents=True)
    (run / "paths" / "paths.jsonl").write_text("".join(json.dumps(record) + "\n" for record in make_records()))
    rng = np.random.default_rng(0)
    (run / "recommender").mkdir()
    for kind, tokens in (("user", NAMES[:4]), ("item", NAMES[4:])):
        np.save(run / "recommender" / f"{kind}_embeddings.npy", rng.normal(size=(len(tokens), DIM)).astype(np.float32))
        (run / "recommender" / f"{kind}_tokens.txt").write_text("".join(f"{token}\n" for token in tokens))
    (run / "recommender" / "meta.json").write_text("{}")
    decoding = {"explainer_max_new_tokens": 6, "explainer_min_new_tokens": 6, "explainer_generation_batch_size": 8,
                "explainer_bf16": False}
    cfg = config(llama, data_path=str(data / "toy"), dataset="toy", run_dir=str(run), explainer_epochs=1,
                 explainer_gnn="gcn", explainer_soft_tokens=3, explainer_lora_r=4, **decoding)
    model_dir = train_explainer(cfg, run / "explainer")
    saved = json.loads((model_dir / "explainer_config.json").read_text())
    assert saved["explainer_gnn"] == "gcn" and saved["explainer_soft_tokens"] == 3 and saved["llm_path"] == str(llama)
    here = generate_explanations(cfg, model_dir, "test", tmp_path / "here.jsonl")

    config_file = tmp_path / "bare.yaml"  # no model, prompt or graph keys: only where the run is and how to decode
    config_file.write_text(yaml.safe_dump({"dataset": "toy", "data_path": str(data), "run_dir": str(run), **decoding}))
    command = [sys.executable, "-m", "recbole_mmprefer.explainer.generate", str(config_file), "--model_dir",
               str(model_dir), "--split", "test", "--out_file", str(tmp_path / "there.jsonl")]
    completed = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                               timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert (tmp_path / "there.jsonl").read_bytes() == here.read_bytes()
    assert read_json(tmp_path / "there.jsonl.meta.json")["soft_tokens"] == 3


def test_a_run_stopped_inside_an_epoch_resumes_at_its_last_step_checkpoint(llama, tmp_path):
    cfg = config(llama, explainer_checkpoint_steps=1)  # 4 train pairs, batch 2: 2 steps per epoch
    full = train_explainer(cfg, tmp_path / "full", **inputs())
    assert not list(full.glob("checkpoint-epoch*-step*"))  # an epoch's step checkpoints go when it ends
    steps = []

    def stop_in_epoch_2_step_2(epoch, step, loss):
        steps.append((epoch, step))
        if (epoch, step) == (2, 2):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_explainer(cfg, tmp_path / "stopped", step_callback=stop_in_epoch_2_step_2, **inputs())
    assert sorted(p.name for p in (tmp_path / "stopped").glob("checkpoint-*")) == ["checkpoint-epoch1",
                                                                                 "checkpoint-epoch2-step1"]
    steps.clear()
    resumed = train_explainer(cfg, tmp_path / "stopped", step_callback=lambda *step: steps.append(step[:2]),
                              **inputs())
    assert steps == [(2, 2)]  # only the step after the checkpoint is trained again
    meta = read_json(resumed / "meta.json")
    assert (meta["resumed_after_epoch"], meta["resumed_at_step"]) == (1, 1)
    expected = torch.load(full / ADAPTER_FILE, weights_only=True)
    for name, value in torch.load(resumed / ADAPTER_FILE, weights_only=True).items():
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-6)
    assert np.allclose([entry["train_loss"] for entry in meta["history"]],
                       [entry["train_loss"] for entry in read_json(full / "meta.json")["history"]])


def test_length_buckets_batch_similar_lengths_and_cover_every_pair_once_per_epoch():
    from recbole_mmprefer.explainer.train import EpochBatches

    lengths = np.random.default_rng(0).integers(50, 500, size=400)

    def padding(batches):
        return sum(int(lengths[batch].max() * len(batch) - lengths[batch].sum()) for batch in batches)

    bucketed, plain = EpochBatches(lengths, 8, seed=1, bucket_batches=10), EpochBatches(lengths, 8, seed=1)
    for sampler in (bucketed, plain):
        sampler.set_epoch(3)
        batches = list(sampler)
        assert sorted(i for batch in batches for i in batch) == list(range(400)) and len(batches) == len(sampler)
        assert list(sampler) == batches  # seeded by (seed, epoch) alone
    assert padding(list(bucketed)) < 0.25 * padding(list(plain))
    first = list(bucketed)
    bucketed.set_epoch(4)
    assert list(bucketed) != first


def test_an_adapter_is_refused_with_another_llm_or_other_node_vectors(llama, tmp_path):
    cfg = config(llama, explainer_epochs=1, dataset="toy")
    model_dir = train_explainer(cfg, tmp_path / "model", **inputs())
    other_llm = tmp_path / "other-llama"
    write_tiny_llama(other_llm)
    with pytest.raises(InputError, match=rf"trained on the LLM {llama}, but llm_path is {other_llm}"):
        generate_explanations({**cfg, "llm_path": str(other_llm)}, model_dir, "test", tmp_path / "a.jsonl",
                              **inputs())
    rng = np.random.default_rng(5)
    other_vectors = PathSubgraphBuilder(make_graph(), rng.normal(size=(4, DIM)).astype(np.float32),
                                        rng.normal(size=(5, DIM)).astype(np.float32), neighbours=2, seed=3)
    with pytest.raises(InputError, match="graph soft prompt was trained on the graph and MMPSASRec vectors of 'toy'"):
        generate_explanations(cfg, model_dir, "test", tmp_path / "b.jsonl", **inputs(builder=other_vectors))
    assert len(read_lines(generate_explanations(cfg, model_dir, "test", tmp_path / "c.jsonl", **inputs()))) == 4


def test_copy_bias_steers_generation_into_the_prompts_own_tokens(llama):
    from recbole_mmprefer.explainer.generate import decoding_options
    from recbole_mmprefer.explainer.model import PromptCopyBias
    from recbole_mmprefer.explainer.settings import DecodingSettings
    from recbole_mmprefer.explainer.tokens import template_token_ids, wordless_token_ids

    cfg = config(llama)
    model = ExplainerModel.from_config(cfg, DIM).eval()
    data = PairData(inputs()["records"][:3], node_text(), model.tokenizer,
                    PromptSettings.from_config(cfg), inputs()["builder"])
    batch, graphs = data.batch([0, 1, 2], model.tokenizer.pad_token_id, True, True)
    plain = model.generate(batch, graphs, max_new_tokens=8, min_new_tokens=8)
    assert model.generate(batch, graphs, max_new_tokens=8, min_new_tokens=8, copy_bias=0.0) == plain
    copied = model.generate(batch, graphs, max_new_tokens=8, min_new_tokens=8, copy_bias=1000.0)
    special = set(model.tokenizer.all_special_ids)
    for row, tokens in enumerate(copied):
        own = {int(t) for t, m in zip(batch["input_ids"][row], batch["attention_mask"][row]) if m} - special
        assert tokens and set(tokens) <= own, (tokens, own)
    assert copied != plain
    skeleton = set(template_token_ids(PromptSettings.from_config(cfg), model.tokenizer))
    assert {model.tokenizer.convert_tokens_to_ids(word) for word in ("would", "enjoy", "story")} <= skeleton
    grounded = model.generate(batch, graphs, max_new_tokens=8, min_new_tokens=8, copy_bias=1000.0,
                              copy_exclude=sorted(skeleton))
    for row, tokens in enumerate(grounded):  # the pair's own words only, never the instruction's
        own = {int(t) for t, m in zip(batch["input_ids"][row], batch["attention_mask"][row]) if m}
        assert tokens and set(tokens) <= own - special - skeleton, (tokens, own - skeleton)
    wordless = set(wordless_token_ids(model.tokenizer))
    assert {model.tokenizer.convert_tokens_to_ids(p) for p in (".", ",", ":")} <= wordless
    assert model.tokenizer.convert_tokens_to_ids("movie") not in wordless
    options = decoding_options(DecodingSettings.from_config({**cfg, "explainer_copy_bias": 2.0}),
                               PromptSettings.from_config(cfg), model.tokenizer)
    assert set(options["copy_exclude"]) == skeleton | wordless and options["copy_bias"] == 2.0
    assert "copy_exclude" not in decoding_options(DecodingSettings.from_config(cfg), PromptSettings.from_config(cfg),
                                                  model.tokenizer)
    bias = PromptCopyBias(torch.tensor([[0, 5, 6], [7, 7, 2]]), torch.tensor([[0, 1, 1], [1, 1, 1]]), 2.0, [2], 2)
    scores = bias(torch.zeros(4, 10), torch.zeros(4, 10))
    assert scores[0].nonzero().flatten().tolist() == [5, 6] == scores[1].nonzero().flatten().tolist()
    assert scores[2].nonzero().flatten().tolist() == [7] and float(scores[2, 7]) == 2.0


def test_graph_warmup_trains_the_graph_soft_prompt_alone_then_lora_joins(llama, tmp_path):
    start = ExplainerModel.from_config(config(llama), DIM).trainable_state_dict()
    lora = [name for name in start if "lora_" in name]
    graph = [name for name in start if name.startswith("soft_prompt.")]
    assert lora and graph and len(lora) + len(graph) == len(start)

    def trained(name, **overrides):  # 4 train pairs, batch 2: 2 steps per epoch
        out = train_explainer(config(llama, **overrides), tmp_path / name, **inputs())
        return torch.load(out / ADAPTER_FILE, weights_only=True), read_json(out / "meta.json")

    warm, _ = trained("warm", explainer_epochs=1, explainer_graph_warmup_steps=2)
    assert all(torch.equal(warm[name], start[name]) for name in lora)  # LoRA held through the warm-up
    assert any(not torch.equal(warm[name], start[name]) for name in graph)
    joined, meta = trained("joined", explainer_epochs=2, explainer_graph_warmup_steps=2)
    assert any(not torch.equal(joined[name], start[name]) for name in lora)  # and trains after it
    assert meta["training"]["explainer_graph_warmup_steps"] == 2
    joint, _ = trained("joint", explainer_epochs=1)
    assert any(not torch.equal(joint[name], start[name]) for name in lora)
    assert not all(torch.equal(joint[name], warm[name]) for name in graph)  # the warm-up changes what the graph learns


def test_graph_warmup_is_left_out_of_the_training_hash_when_off(llama):
    off = TrainingSettings.from_config(config(llama))
    assert off.graph_warmup_steps == 0 and "explainer_graph_warmup_steps" not in off.results_keys()
    on = TrainingSettings.from_config(config(llama, explainer_graph_warmup_steps=5))
    assert on.results_keys()["explainer_graph_warmup_steps"] == 5
    with pytest.raises(InputError, match="explainer_graph_warmup_steps"):
        TrainingSettings.from_config(config(llama, explainer_graph_warmup_steps=-1))
