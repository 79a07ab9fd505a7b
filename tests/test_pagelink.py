"""PaGE-Link as a retriever plugin (issue 15): computation graph, link predictor, masks, Yen paths, the switch."""

from __future__ import annotations

import itertools

import networkx as nx
import numpy as np
import pytest
import torch
from test_collect_paths import config_for, write_data_set

from recbole_mmprefer.errors import InputError
from recbole_mmprefer.retrieval.collect import collect_paths, read_paths
from recbole_mmprefer.retrieval.graph import InteractionGraph
from recbole_mmprefer.retrieval.link_predictor import (
    LinkPredictorSettings,
    load_link_predictor,
    save_link_predictor,
    train_link_predictor,
)
from recbole_mmprefer.retrieval.pagelink import (
    MaskedGraph,
    PageLinkSettings,
    cheapest_paths,
    computation_graph,
    learn_masks,
    pagelink_paths,
    step_costs,
)
from recbole_mmprefer.retrieval.paths import PathResult

PREDICTOR = LinkPredictorSettings(embedding_size=8, hidden_size=8, epochs=60, learning_rate=0.05)


def settings(**overrides) -> PageLinkSettings:
    values = dict(hops=2, max_degree=200, core=2, mask_epochs=10, mask_learning_rate=0.5, alpha=1.0, beta=1.0,
                  search_k=5, k=10, max_path_edges=5)
    return PageLinkSettings(**{**values, **overrides})


def square_graph() -> InteractionGraph:
    """u0 and i0 joined directly, through two 4-cycles (via u1/i1 and u2/i2), plus a hub u3 and a pendant u4."""
    edges = [("u0", "i0"), ("u0", "i1"), ("u1", "i1"), ("u1", "i0"), ("u0", "i2"), ("u2", "i2"), ("u2", "i0"),
             ("u3", "i0"), ("u3", "i1"), ("u3", "i2"), ("u4", "i2")]
    return InteractionGraph.from_edges(*zip(*edges))


def tokens(graph, subgraph):
    return sorted(graph.node_token(int(node)) for node in subgraph.nodes)


def test_computation_graph_drops_the_direct_edge_high_degree_edges_and_the_pendant():
    graph = square_graph()
    user, item = graph.user_node("u0"), graph.item_node("i0")
    subgraph = computation_graph(graph, user, item, settings())
    assert tokens(graph, subgraph) == ["i0", "i1", "i2", "u0", "u1", "u2", "u3"]  # u4 has one edge: not in the 2-core
    local = {graph.node_token(int(n)): position for position, n in enumerate(subgraph.nodes)}
    assert local["i0"] not in set(subgraph.indices[subgraph.indptr[local["u0"]]:subgraph.indptr[local["u0"] + 1]])
    low = computation_graph(graph, user, item, settings(max_degree=3))  # i2 has 4 neighbours there: its edges go
    assert tokens(graph, low) == ["i0", "i1", "u0", "u1", "u3"]  # u2 keeps one neighbour: out; u0 is protected


def test_a_pair_that_nothing_joins_once_pruned_has_no_path():
    graph = square_graph()
    predictor, _ = train_link_predictor(graph, PREDICTOR, seed=0)
    result = pagelink_paths(graph, predictor, "u4", "i2", settings(), keep=2)
    assert result.status == "no_path" and result.paths == []


def test_link_predictor_scores_training_edges_above_non_edges_and_refuses_another_graph(tmp_path):
    from sklearn.metrics import roc_auc_score

    graph = square_graph()
    predictor, report = train_link_predictor(graph, PREDICTOR, seed=0)
    from recbole_mmprefer.retrieval.link_predictor import Edges

    with torch.no_grad():
        states = predictor.node_states(Edges.of_graph(graph))
    pairs = [(u, i) for u in range(graph.num_users) for i in range(graph.num_users, graph.num_nodes)]
    scores = [float(predictor.score(states, torch.tensor([u]), torch.tensor([i]))) for u, i in pairs]
    labels = [graph.has_edge(u, i) for u, i in pairs]
    assert roc_auc_score(labels, scores) > 0.8 and report["edges"] == 11
    save_link_predictor(tmp_path, predictor, "graph-a")
    assert load_link_predictor(tmp_path, PREDICTOR, graph, "graph-a") is not None
    with pytest.raises(InputError, match="trained on another graph"):
        load_link_predictor(tmp_path, PREDICTOR, graph, "graph-b")


def test_masks_move_toward_the_edges_of_the_best_path():
    graph = square_graph()
    predictor, _ = train_link_predictor(graph, PREDICTOR, seed=0)
    user, item = graph.user_node("u0"), graph.item_node("i0")
    subgraph = computation_graph(graph, user, item, settings())
    masked = MaskedGraph.of(subgraph, graph.num_users)
    source, target = subgraph.local(user), subgraph.local(item)
    focused = settings(search_k=1)  # with 5 paths nearly every edge of this small graph is on one of them
    start = learn_masks(predictor, masked, source, target, settings(mask_epochs=0), seed=0)
    masks = learn_masks(predictor, masked, source, target, focused, seed=0)
    best = cheapest_paths(step_costs(masked, masks), source, target, 1, 5)[0][1]
    on = {tuple(sorted(pair)) for pair in zip(best, best[1:])}
    on_path = np.array([tuple(sorted(pair)) in on for pair in masked.pairs])
    assert len(best) == 4  # u0 -> i -> u -> i0: a 3-edge path around one of the squares
    assert masks[on_path].min() > masks[~on_path].max()
    assert masks[on_path].mean() > start[on_path].mean() and masks[~on_path].mean() < start[~on_path].mean()


def test_yen_paths_match_a_brute_force_oracle_given_the_masks():
    rng = np.random.default_rng(3)
    edges = [(f"u{a}", f"i{b}") for a in range(5) for b in range(5) if (3 * a + b) % 5 != 1]
    graph = InteractionGraph.from_edges(*zip(*edges))
    user, item = graph.user_node(edges[0][0]), graph.item_node(edges[0][1])
    subgraph = computation_graph(graph, user, item, settings(core=0, hops=3))
    masked = MaskedGraph.of(subgraph, graph.num_users)
    costs = step_costs(masked, rng.uniform(0.05, 0.95, len(masked.pairs)))
    source, target = subgraph.local(user), subgraph.local(item)
    found = cheapest_paths(costs, source, target, 6, 5)
    network = nx.DiGraph(list(costs))
    oracle = sorted((sum(costs[(a, b)] for a, b in zip(p, p[1:])), tuple(p))
                    for p in nx.all_simple_paths(network, source, target, cutoff=5))
    assert len(found) == min(6, len(oracle)) >= 4
    assert [nodes for _, nodes in found] == [nodes for _, nodes in oracle[:6]]
    assert all(len(nodes) > 2 for _, nodes in found)  # never the direct edge
    assert [cost for cost, _ in found] == pytest.approx([cost for cost, _ in oracle[:6]])


def test_the_switch_changes_the_paths_and_nothing_of_their_format(tmp_path):
    write_data_set(tmp_path)
    ours = collect_paths(config_for(tmp_path, tmp_path / "ours", path_weight="degree"))
    theirs = collect_paths(config_for(tmp_path, tmp_path / "pagelink", path_retriever="pagelink", path_k=2,
                                      pagelink_predictor_epochs=20))
    a, b = read_paths(ours), read_paths(theirs)
    assert [(r["user_id"], r["item_id"]) for r in a] == [(r["user_id"], r["item_id"]) for r in b]
    assert all(set(x) == set(y) for x, y in zip(a, b))
    assert all(len(record["paths"]) <= 2 for record in b)
    assert any(record["status"] == "ok" for record in b)
    results = [PathResult.from_record(record) for record in b]
    for result in results:
        for path in result.paths:
            assert path.types[0] == "user" and path.types[-1] == "item" and len(path.nodes) > 2
    assert (tmp_path / "pagelink" / "link_predictor" / "model.safetensors").is_file()
    assert collect_paths(config_for(tmp_path, tmp_path / "pagelink", path_retriever="pagelink", path_k=2,
                                    pagelink_predictor_epochs=20)) == theirs  # up to date: nothing retrained
    assert list(itertools.chain.from_iterable(r["paths"] for r in a)) != list(
        itertools.chain.from_iterable(r["paths"] for r in b))
