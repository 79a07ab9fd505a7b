"""G-Refer's node-level retrieval (issue 15): ranking on a hand-built graph, the paths records, the prompt."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_collect_paths import config_for, write_data_set
from test_prompts import EXPLANATION, node_text, record, settings, tokenizer

from recbole_mmprefer.errors import InputError
from recbole_mmprefer.explainer.tokens import build_example
from recbole_mmprefer.retrieval.collect import collect_paths, read_paths
from recbole_mmprefer.retrieval.graph import InteractionGraph
from recbole_mmprefer.retrieval.node_retrieval import NodeRetriever, embed_texts, item_profile_text


def star_graph() -> InteractionGraph:
    """u0 bought i0..i3; i0 was bought by u0..u4."""
    edges = [("u0", f"i{n}") for n in range(4)] + [(f"u{n}", "i0") for n in range(1, 5)]
    return InteractionGraph.from_edges(*zip(*edges))


def unit(*values) -> np.ndarray:
    vector = np.asarray(values, dtype=np.float32)
    return vector / np.linalg.norm(vector)


def test_neighbours_ranked_by_profile_similarity_without_negatives_or_text_less_nodes():
    graph = star_graph()
    users = {"u0": unit(1, 0), "u1": unit(1, 0), "u2": unit(-1, 0), "u3": unit(0.6, 0.8), "u4": np.zeros(2)}
    items = {"i0": unit(0, 1), "i1": unit(0.6, 0.8), "i2": unit(0, 1), "i3": np.zeros(2)}
    user_rows = np.stack([users[token] for token in graph.user_tokens]).astype(np.float32)
    item_rows = np.stack([items[token] for token in graph.item_tokens]).astype(np.float32)
    retriever = NodeRetriever(graph, user_rows, item_rows, k=5)
    # u2 is opposite (cosine -1) and u4 has no text; i3 has no text; the pair's own ends are never retrieved
    assert retriever("u0", "i0") == {"users": ["u1", "u3"], "items": ["i2", "i1"]}
    assert NodeRetriever(graph, user_rows, item_rows, k=1)("u0", "i0") == {"users": ["u1"], "items": ["i2"]}
    # u3 bought nothing else; u0 and u1 tie (the same profile vector) and keep the graph's order
    assert retriever("u3", "i0") == {"users": ["u0", "u1"], "items": []}


class CountingEncoder:
    fingerprint = {"path": "counting"}

    def __init__(self):
        self.seen = []

    def encode(self, texts):
        self.seen.append(list(texts))
        return np.stack([unit(len(text), 1) for text in texts])


def test_text_less_nodes_get_zero_rows_and_are_not_encoded():
    encoder = CountingEncoder()
    rows = embed_texts(["a", "", "abc"], encoder)
    assert encoder.seen == [["a", "abc"]]
    assert rows.shape == (3, 2) and not rows[1].any() and np.allclose(np.linalg.norm(rows[[0, 2]], axis=1), 1)
    assert embed_texts(["", ""], encoder).shape == (2, 0)
    assert item_profile_text(node_text(), "i1") == "Book one: a story of the night"
    assert item_profile_text(node_text(), "i9") == "Movie nine: an action movie"


def write_profiles(folder, name: str, users, items) -> None:
    (folder / f"{name}.user").write_text("user_id:token\tprofile:token_seq\n"
                                         + "".join(f"{token}\t{text}\n" for token, text in users.items()))
    (folder / f"{name}.item").write_text("item_id:token\tprofile:token_seq\n"
                                         + "".join(f"{token}\t{text}\n" for token, text in items.items()))


def test_the_switch_adds_related_nodes_to_the_records_and_changes_nothing_else(tmp_path):
    pairs = write_data_set(tmp_path)
    graph = InteractionGraph.from_atomic(tmp_path / "toy" / "toy.inter")
    write_profiles(tmp_path / "toy", "toy", {token: f"reads {token} books" for token in graph.user_tokens[::2]},
                   {token: f"a novel {token}" for token in graph.item_tokens})
    plain = read_paths(collect_paths(config_for(tmp_path, tmp_path / "plain", path_weight="degree")))
    config = config_for(tmp_path, tmp_path / "nodes", path_weight="degree", path_node_retrieval=True, path_node_k=2)
    with_nodes = read_paths(collect_paths(config))
    assert [{k: v for k, v in line.items() if k != "related"} for line in with_nodes] == plain
    assert all("related" not in line for line in plain)
    profiled = set(graph.user_tokens[::2])
    for (user, item), line in zip(pairs, with_nodes):
        related = line["related"]
        if user == "lonely":
            continue
        neighbours = {graph.node_token(int(n)) for n in graph.neighbours(graph.user_node(user))}
        buyers = {graph.node_token(int(n)) for n in graph.neighbours(graph.item_node(item))}
        assert len(related["users"]) <= 2 and len(related["items"]) <= 2
        assert set(related["items"]) <= neighbours - {item}
        assert set(related["users"]) <= (buyers - {user}) & profiled  # users without a profile never come back
    assert any(line["related"]["users"] for line in with_nodes)
    assert any(line["related"]["items"] for line in with_nodes)
    assert (tmp_path / "nodes" / "profile_embeddings" / "users.npy").is_file()
    assert read_paths(collect_paths(config)) == with_nodes  # up to date


def test_the_prompt_shows_the_first_related_nodes_and_nothing_without_them():
    text = node_text()
    plain = build_example(record(), text, tokenizer(), settings(), explanation=EXPLANATION)
    related = {**record(), "related": {"users": ["u5", "u6", "u0"], "items": ["i1", "i2"]}}
    shown = build_example(related, text, tokenizer(), settings(related_nodes=1), explanation=EXPLANATION)
    assert "Similar users who also bought this item: likes horror\n" in shown.prompt_text
    assert "Similar items this user also bought: Book one: a story of the night\n" in shown.prompt_text
    assert shown.prompt_text.index("Path 2:") < shown.prompt_text.index("Similar users")
    assert shown.prompt_text.replace(
        "Similar users who also bought this item: likes horror\n"
        "Similar items this user also bought: Book one: a story of the night\n", "") == plain.prompt_text
    off = build_example(related, text, tokenizer(), settings(related_nodes=0), explanation=EXPLANATION)
    assert off.prompt_text == plain.prompt_text
    only_items = build_example({**record(), "related": {"users": [], "items": ["i2"]}}, text, tokenizer(),
                               settings())
    assert "Similar users who also bought this item: none\n" in only_items.prompt_text


def test_an_intro_without_its_placeholders_is_refused():
    with pytest.raises(InputError, match="must hold {users} and {items}"):
        settings(related_intro="Related: {users}")
    assert settings(related_intro="Related: {users}", related_nodes=0).related_nodes == 0


def test_table1_grefer_row_collects_pagelink_paths_with_related_nodes_in_a_run_of_its_own(tmp_path, monkeypatch):
    import argparse
    import sys

    from test_import_xrec import write_random_xrec_folder

    from recbole_mmprefer.cli import main as mmprefer

    source = write_random_xrec_folder(tmp_path / "src")
    assert mmprefer(["import", "xrec", str(source), "--name", "toy", "--out", str(tmp_path / "data")]) == 0
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "run_scripts"))
    monkeypatch.setattr(sys, "argv", ["table1.py", "--pagelink_predictor_epochs=5", f"--run_dir={tmp_path / 'main'}"])
    import table1

    args = argparse.Namespace(dataset="toy", data_path=str(tmp_path / "data"), train_pairs=None, valid_pairs=5,
                              epochs=1, metrics=["bleu"])
    config = table1.own_run_config(args, "grefer", tmp_path / "main" / "table1", table1.OWN_RUNS["grefer"])
    run = tmp_path / "main" / "table1" / "grefer" / "run"
    assert str(config["run_dir"]) == str(run) and config["explainer_graph_level"] is False
    records = read_paths(run / "paths")
    assert records and all("related" in record for record in records)
    assert json.loads((run / "paths" / "meta.json").read_text())["retriever"] == "pagelink"
    assert (run / "link_predictor" / "model.safetensors").is_file()
    assert (run / "profile_embeddings" / "users.npy").is_file()
