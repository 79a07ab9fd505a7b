"""`mmprefer paths`: the collector over pairs (resume, process pool, 2-rank sharding) on a seeded random graph."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recbole_mmprefer.data.explanations import explanation_table_path, write_explanation_table
from recbole_mmprefer.errors import InputError, MissingInputError
from recbole_mmprefer.retrieval import collect
from recbole_mmprefer.retrieval.collect import collect_paths, read_paths
from recbole_mmprefer.retrieval.graph import InteractionGraph
from recbole_mmprefer.retrieval.paths import find_paths
from recbole_mmprefer.utils import read_json

N_USERS, N_ITEMS = 12, 10


def write_data_set(root: Path, name: str = "toy", seed: int = 0) -> list:
    """A random bipartite graph (train edges plus a few test edges), 8 explained pairs, an isolated pair."""
    rng = np.random.default_rng(seed)
    folder = root / name
    folder.mkdir(parents=True)
    rows = sorted({(f"u{u}", f"i{i}") for u in range(N_USERS) for i in rng.choice(N_ITEMS, size=3, replace=False)})
    lines = ["user_id:token\titem_id:token\tsplit:token"]
    lines += [f"{u}\t{i}\ttrain" for u, i in rows]
    lines += ["u0\ti9\ttest", "lonely\tfar\ttrain"]
    (folder / f"{name}.inter").write_text("\n".join(lines) + "\n")
    pairs = [(u, i) for u, i in rows[::4]][:7] + [("lonely", "i9")]
    table = pd.DataFrame([{"user_id": u, "item_id": i, "title": "", "user_profile": "", "item_profile": "",
                           "explanation": f"because {u} {i}", "split": "test" if n % 2 else "train",
                           "profile_source": "", "explanation_source": "test"} for n, (u, i) in enumerate(pairs)])
    write_explanation_table(explanation_table_path(folder, name), table)
    return pairs


def write_vectors(run: Path, users, items, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    folder = run / "recommender"
    folder.mkdir(parents=True)
    np.save(folder / "user_embeddings.npy", rng.normal(size=(len(users), 4)).astype(np.float32))
    np.save(folder / "item_embeddings.npy", rng.normal(size=(len(items), 4)).astype(np.float32))
    (folder / "user_tokens.txt").write_text("".join(f"{token}\n" for token in users))
    (folder / "item_tokens.txt").write_text("".join(f"{token}\n" for token in items))
    (folder / "meta.json").write_text(json.dumps({"model": "test"}))


def config_for(root: Path, run: Path, **overrides) -> dict:
    return {"data_path": str(root / "toy"), "dataset": "toy", "run_dir": str(run), "USER_ID_FIELD": "user_id",
            "ITEM_ID_FIELD": "item_id", "path_hops": 3, "path_core": 2, "path_k": 3, "path_weight": "multimodal",
            "path_workers": 1, "path_pairs_split": None, "path_max_subgraph_nodes": None, **overrides}


@pytest.fixture
def setup(tmp_path):
    pairs = write_data_set(tmp_path / "data")
    run = tmp_path / "run"
    # vectors for every user but u3 (its similarity counts as 0); item order differs from the graph's
    write_vectors(run, [f"u{u}" for u in range(N_USERS) if u != 3] + ["lonely"],
                  [f"i{i}" for i in reversed(range(N_ITEMS))] + ["far"])
    return tmp_path / "data", run, pairs


def expected_records(data: Path, run: Path, pairs) -> list:
    graph = InteractionGraph.from_atomic(data / "toy" / "toy.inter")
    vectors = {kind: dict(zip((run / "recommender" / f"{kind}_tokens.txt").read_text().split(),
                              np.load(run / "recommender" / f"{kind}_embeddings.npy"))) for kind in ("user", "item")}
    users = np.stack([vectors["user"].get(t, np.zeros(4, np.float32)) for t in graph.user_tokens])
    items = np.stack([vectors["item"][t] for t in graph.item_tokens])
    records = []
    for user, item in pairs:
        record = json.loads(json.dumps(find_paths(graph, user, item, users, items).to_dict()))
        records.append({"user_id": record.pop("user"), "item_id": record.pop("item"), **record})
    return records


def test_paths_for_every_pair_in_order_and_skipped_when_up_to_date(setup, monkeypatch):
    data, run, pairs = setup
    out = collect_paths(config_for(data, run))
    records = read_paths(out)
    assert records == expected_records(data, run, pairs)
    assert [(r["user_id"], r["item_id"]) for r in records] == pairs
    assert records[-1]["status"] == "no_path" and records[0]["status"] == "ok"
    assert all(len(path["nodes"]) > 2 for record in records for path in record["paths"])  # never the direct edge
    meta = read_json(out / "meta.json")
    assert meta["status_counts"]["no_path"] == 1 and meta["vectors"]["users_without_vector"] == 1
    assert not list(run.glob(".paths-partial-*"))

    calls = []
    monkeypatch.setattr(collect, "_pair_record", lambda pair: calls.append(pair))
    collect_paths(config_for(data, run))
    assert calls == []  # up to date: nothing recomputed


def test_split_and_pair_file_select_pairs(setup, tmp_path):
    data, run, pairs = setup
    out = collect_paths(config_for(data, run, path_pairs_split="test"))
    assert [(r["user_id"], r["item_id"]) for r in read_paths(out)] == pairs[1::2]
    pair_file = tmp_path / "pairs.tsv"
    pair_file.write_text("user_id:token\titem_id:token\nu1\ti2\nu0\ti9\n")
    out = collect_paths(config_for(data, run), pairs_file=pair_file)
    assert [(r["user_id"], r["item_id"]) for r in read_paths(out)] == [("u1", "i2"), ("u0", "i9")]


def test_resume_after_a_killed_run_computes_only_the_rest(setup, monkeypatch):
    data, run, pairs = setup
    original, calls = collect._pair_record, []

    def dies_after_three(pair):
        if len(calls) == 3:
            raise KeyboardInterrupt  # the run is killed here
        calls.append(pair)
        return original(pair)

    monkeypatch.setattr(collect, "_pair_record", dies_after_three)
    with pytest.raises(KeyboardInterrupt):
        collect_paths(config_for(data, run))
    assert not (run / "paths").exists()
    partial = next(run.glob(".paths-partial-*/rank0-of-1.jsonl"))
    assert len(partial.read_text().splitlines()) == 3
    with open(partial, "a") as handle:
        handle.write('{"user_id": "u9", "item_')  # a line cut short by the kill

    calls.clear()
    monkeypatch.setattr(collect, "_pair_record", lambda pair: calls.append(pair) or original(pair))
    out = collect_paths(config_for(data, run))
    assert calls == pairs[3:]
    assert read_paths(out) == expected_records(data, run, pairs)


def test_process_pool_gives_the_same_file(setup, tmp_path):
    data, run, pairs = setup
    one = (collect_paths(config_for(data, run)) / "paths.jsonl").read_bytes()
    pooled_run = tmp_path / "pooled"
    pooled_run.mkdir()
    (pooled_run / "recommender").symlink_to(run / "recommender")
    two = (collect_paths(config_for(data, pooled_run, path_workers=2)) / "paths.jsonl").read_bytes()
    assert two == one


def test_two_ranks_under_torchrun_equal_one_process(setup):
    data, run, pairs = setup
    one = (collect_paths(config_for(data, run)) / "paths.jsonl").read_bytes()
    sharded_run = data.parent / "sharded"
    sharded_run.mkdir()
    (sharded_run / "recommender").symlink_to(run / "recommender")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "recbole_mmprefer.cli", "paths", "--dataset", "toy", f"--data_path={data}",
               f"--run_dir={sharded_run}", "--path_workers=1"]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert (sharded_run / "paths" / "paths.jsonl").read_bytes() == one
    assert read_json(sharded_run / "paths" / "meta.json")["world_size"] == 2


def test_bad_inputs_are_named(setup, tmp_path):
    data, run, pairs = setup
    bad_file = tmp_path / "bad.tsv"
    bad_file.write_text("u1\tnobody\n")
    with pytest.raises(InputError, match=r"not in the data set's graph, e.g. pair 1: \(u1, nobody\)"):
        collect_paths(config_for(data, run), pairs_file=bad_file)
    bad_file.write_text("u1 i2\n")
    with pytest.raises(InputError, match=r"bad.tsv, line 1: expected user_id<TAB>item_id"):
        collect_paths(config_for(data, run), pairs_file=bad_file)
    with pytest.raises(MissingInputError, match="run `run_recbole --model=MMPSASRec --dataset=toy` first"):
        collect_paths(config_for(data, tmp_path / "no-vectors"))
    with pytest.raises(InputError, match="path_hops must be an integer in 1..5"):
        collect_paths(config_for(data, run, path_hops=0))
    out = collect_paths(config_for(data, tmp_path / "no-vectors", path_weight="degree"))
    assert read_json(out / "meta.json")["status_counts"]["ok"] >= 1


def test_show_prints_paths_with_profiles_and_draws_them(setup, tmp_path, capsys):
    from recbole_mmprefer.cli import main as mmprefer

    data, run, pairs = setup
    folder = data / "toy"
    (folder / "toy.item").write_text("item_id:token\ttitle:token_seq\tprofile:token_seq\tprofile_source:token\n"
                                     + "".join(f"i{i}\tBook {i}\tFor readers of {i}.\txrec\n" for i in range(10)))
    (folder / "toy.user").write_text("user_id:token\tprofile:token_seq\tprofile_source:token\n"
                                     "u0\tLikes long novels.\txrec\n")
    user, item = pairs[0]
    expected = expected_records(data, run, [pairs[0]])[0]
    drawing = tmp_path / "pair.html"
    assert mmprefer(["paths", "--dataset", "toy", f"--data_path={data}", f"--run_dir={run}",
                     "--text_fields=['title']", "--show", user, item, "--draw", str(drawing)]) == 0
    out = capsys.readouterr().out
    first = expected["paths"][0]
    assert f"path 1 (cost {first['cost']:.3f}):" in out
    assert f"  user {user}" in out and f'-> buys -> item {first["tokens"][1]} "Book {first["tokens"][1][1:]}": ' \
        f'For readers of {first["tokens"][1][1:]}.' in out
    assert "-> bought by -> user" in out
    assert len([line for line in out.splitlines() if line.startswith("path ")]) == len(expected["paths"])
    page = drawing.read_text()
    assert page.count("<line") >= sum(len(p["nodes"]) - 1 for p in expected["paths"]) and "<svg" in page
    assert 'stroke="#d62728" stroke-width="3"' in page  # the first path highlighted
    assert mmprefer(["paths", "--dataset", "toy", f"--data_path={data}", f"--run_dir={run}",
                     "--show", user, "nobody"]) == 2
    assert "nobody" in capsys.readouterr().err
