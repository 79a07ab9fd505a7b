"""Retrieval core (paper section 3.3, Algorithm 1): graph, subgraph + k-core, eq. 7 costs, top-k paths."""

from __future__ import annotations

import math

import networkx as nx
import numpy as np
import pytest

from recbole_mmprefer.errors import InputError
from recbole_mmprefer.retrieval.graph import InteractionGraph, extract_subgraph
from recbole_mmprefer.retrieval.paths import COST_SCALE, find_paths
from recbole_mmprefer.retrieval.reference import (
    directed_costs,
    entry_costs,
    pruned_subgraph,
    reference_find_paths,
    to_networkx,
)

USERS = [f"u{n}" for n in range(5)]
ITEMS = [f"i{n}" for n in range(6)]


def graph_of(edges, users=USERS, items=ITEMS) -> InteractionGraph:
    return InteractionGraph.from_edges([u for u, _ in edges], [i for _, i in edges], users, items)


# u0 and i0 are joined directly and by two 3-step routes (a 6-cycle once the direct edge
# goes); u1 carries a pendant chain i3-u3-i4; u4 and i5 hang off the cycle by one edge each.
CYCLE = [("u0", "i0"), ("u0", "i1"), ("u1", "i1"), ("u1", "i0"), ("u0", "i2"), ("u2", "i2"), ("u2", "i0")]
PENDANTS = [("u1", "i3"), ("u3", "i3"), ("u3", "i4"), ("u4", "i1"), ("u2", "i5")]


def tokens_of(graph, nodes):
    return sorted(graph.node_token(int(node)) for node in nodes)


def path_tokens(result):
    return [list(path.tokens) for path in result.paths]


# -- graph ---------------------------------------------------------------------------------------------


def test_graph_ids_csr_and_lookups():
    graph = graph_of(CYCLE + PENDANTS + [("u0", "i1")])  # a duplicate edge is stored once
    assert (graph.num_users, graph.num_items, graph.num_edges) == (5, 6, 12)
    assert graph.user_node("u3") == 3 and graph.item_node("i0") == 5
    assert graph.node_type(4) == "user" and graph.node_type(5) == "item"
    assert graph.node_token(6) == "i1" and graph.degree(0) == 3
    assert graph.degrees.tolist() == [3, 3, 3, 2, 1, 3, 3, 2, 2, 1, 1]
    assert all(np.all(np.diff(graph.neighbours(node)) > 0) for node in range(graph.num_nodes))
    assert graph.has_edge(0, 5) and not graph.has_edge(0, 8)


def test_from_atomic_keeps_only_training_edges(tmp_path):
    path = tmp_path / "d.inter"
    path.write_text("user_id:token\titem_id:token\tsplit:token\n"
                    "a\tx\ttrain\nb\tx\ttrain\na\ty\tvalid\nc\tz\ttest\nb\tx\ttrain\n")
    graph = InteractionGraph.from_atomic(path)
    assert graph.user_tokens == ["a", "b", "c"] and graph.item_tokens == ["x", "y", "z"]
    assert graph.num_edges == 2
    assert graph.has_edge(graph.user_node("a"), graph.item_node("x"))
    assert not graph.has_edge(graph.user_node("a"), graph.item_node("y"))
    assert graph.degree(graph.user_node("c")) == 0


def test_from_atomic_without_split_keeps_all_edges(tmp_path):
    path = tmp_path / "d.inter"
    path.write_text("user_id:token\titem_id:token\ttimestamp:float\na\tx\t1\na\ty\t2\nb\ty\t3\na\tx\t4\n")
    graph = InteractionGraph.from_atomic(path)
    assert graph.num_edges == 3
    with pytest.raises(InputError, match="'uid'"):
        InteractionGraph.from_atomic(path, user_field="uid")


def test_npz_round_trip(tmp_path):
    graph = graph_of(CYCLE + PENDANTS)
    graph.save(tmp_path / "graph.npz")
    loaded = InteractionGraph.load(tmp_path / "graph.npz")
    assert np.array_equal(loaded.indptr, graph.indptr) and np.array_equal(loaded.indices, graph.indices)
    assert loaded.user_tokens == graph.user_tokens and loaded.item_tokens == graph.item_tokens
    assert find_paths(loaded, "u0", "i0", weight="uniform") == find_paths(graph, "u0", "i0", weight="uniform")


# -- subgraph ------------------------------------------------------------------------------------------


def test_k_core_prunes_the_pendant_chain_and_drops_the_direct_edge():
    graph = graph_of(CYCLE + PENDANTS)
    user, item = graph.user_node("u0"), graph.item_node("i0")
    whole = extract_subgraph(graph, user, item, hops=4, core=0)
    assert tokens_of(graph, whole.nodes) == sorted(USERS + ITEMS)
    assert whole.num_edges == graph.num_edges - 1  # only the direct edge is gone
    pruned = extract_subgraph(graph, user, item, hops=4, core=2)
    assert tokens_of(graph, pruned.nodes) == ["i0", "i1", "i2", "u0", "u1", "u2"]
    assert pruned.num_edges == 6 and pruned.degrees.tolist() == [2] * 6
    user_row = slice(pruned.indptr[pruned.local(user)], pruned.indptr[pruned.local(user) + 1])
    assert pruned.local(item) not in pruned.indices[user_row].tolist()
    assert graph.has_edge(user, item)  # the whole graph is not modified


def test_hop_limit_and_protected_ends_of_degree_one():
    graph = graph_of(CYCLE + PENDANTS)
    subgraph = extract_subgraph(graph, graph.user_node("u4"), graph.item_node("i5"), hops=3, core=2)
    assert tokens_of(graph, subgraph.nodes) == ["i0", "i1", "i2", "i5", "u0", "u1", "u2", "u4"]
    assert subgraph.degrees[subgraph.local(graph.user_node("u4"))] == 1
    assert subgraph.degrees[subgraph.local(graph.item_node("i5"))] == 1
    one_hop = extract_subgraph(graph, graph.user_node("u0"), graph.item_node("i0"), hops=1, core=0)
    assert tokens_of(graph, one_hop.nodes) == ["i0", "i1", "i2", "u0", "u1", "u2"]
    assert extract_subgraph(graph, graph.user_node("u0"), graph.item_node("i0"), hops=4, core=0, max_nodes=6) is None


# -- costs and paths -----------------------------------------------------------------------------------


def test_eq7_costs_by_hand():
    graph = graph_of(CYCLE)
    user_vectors = np.zeros((5, 2))
    item_vectors = np.zeros((6, 2))
    user_vectors[:3] = [[1, 0], [2, 0], [0, 1]]  # u0 itself; u1: sim 1; u2: sim 0
    item_vectors[:3] = [[5, 5], [1, 1], [-1, 0]]  # i0: the target; i1: sim cos 45 degrees; i2: sim -1
    result = find_paths(graph, "u0", "i0", user_vectors, item_vectors)
    assert result.status == "ok" and (result.subgraph_nodes, result.subgraph_edges) == (6, 6)
    assert path_tokens(result) == [["u0", "i1", "u1", "i0"], ["u0", "i2", "u2", "i0"]]
    assert [path.types for path in result.paths] == [("user", "item", "user", "item")] * 2
    first = math.log((2 - math.sqrt(0.5)) * 2) + math.log((2 - 1) * 2) + 1
    second = math.log((2 + 1) * 2) + math.log((2 - 0) * 2) + 1
    assert result.paths[0].cost == pytest.approx(first, abs=1e-9)
    assert result.paths[1].cost == pytest.approx(second, abs=1e-9)

    degree = find_paths(graph, "u0", "i0", weight="degree")
    assert [path.cost for path in degree.paths] == pytest.approx([2 * math.log(4) + 1] * 2, abs=1e-9)
    uniform = find_paths(graph, "u0", "i0", weight="uniform")
    assert [path.cost for path in uniform.paths] == [3.0, 3.0]


def test_ties_follow_node_ids_and_the_direct_edge_is_never_a_path():
    edges = [("u0", "i0"), ("u0", "i1"), ("u0", "i2"), ("u1", "i1"), ("u1", "i2"), ("u1", "i0"),
             ("u2", "i1"), ("u2", "i0")]
    graph = graph_of(edges, users=["u0", "u1", "u2"], items=["i0", "i1", "i2"])
    result = find_paths(graph, "u0", "i0", weight="uniform", k=5)
    assert [path.nodes for path in result.paths] == [(0, 4, 1, 3), (0, 4, 2, 3), (0, 5, 1, 3), (0, 5, 1, 4, 2, 3)]
    assert [path.cost for path in result.paths] == [3.0, 3.0, 3.0, 5.0]
    assert [path.nodes for path in find_paths(graph, "u0", "i0", weight="uniform", k=2).paths] == [
        (0, 4, 1, 3), (0, 4, 2, 3)]
    # Token order does not matter, node ids do: rename so that u2 gets id 1.
    swapped = graph_of(edges, users=["u0", "u2", "u1"], items=["i0", "i1", "i2"])
    assert path_tokens(find_paths(swapped, "u0", "i0", weight="uniform", k=2)) == [
        ["u0", "i1", "u2", "i0"], ["u0", "i1", "u1", "i0"]]


def test_no_path_is_an_outcome():
    apart = graph_of([("u0", "i0"), ("u0", "i1"), ("u1", "i1"), ("u2", "i0"), ("u2", "i2")])
    result = find_paths(apart, "u0", "i0", weight="uniform", core=0)
    assert (result.status, result.paths) == ("no_path", [])
    pruned_away = find_paths(graph_of(CYCLE), "u0", "i0", weight="uniform", core=3)
    assert (pruned_away.status, pruned_away.paths, pruned_away.subgraph_nodes) == ("no_path", [], 2)
    isolated = find_paths(graph_of(CYCLE), "u3", "i0", weight="uniform")
    assert isolated.status == "no_path"
    skipped = find_paths(graph_of(CYCLE + PENDANTS), "u0", "i0", weight="uniform", max_subgraph_nodes=4)
    assert (skipped.status, skipped.paths) == ("skipped", [])
    assert result.to_dict()["status"] == "no_path"


def test_bad_inputs_name_the_problem():
    graph = graph_of(CYCLE)
    vectors = (np.ones((5, 3)), np.ones((6, 3)))
    with pytest.raises(InputError, match="'nobody'"):
        find_paths(graph, "nobody", "i0", *vectors)
    with pytest.raises(InputError, match="'nothing'"):
        find_paths(graph, "u0", "nothing", *vectors)
    with pytest.raises(InputError, match=r"\(4, 3\).*\(6, 3\).*5 users and 6 items"):
        find_paths(graph, "u0", "i0", np.ones((4, 3)), np.ones((6, 3)))
    with pytest.raises(InputError, match="width"):
        find_paths(graph, "u0", "i0", np.ones((5, 3)), np.ones((6, 2)))
    with pytest.raises(InputError, match="needs both"):
        find_paths(graph, "u0", "i0")
    for settings, word in [({"hops": 0}, "hops"), ({"hops": 6}, "hops"), ({"k": 0}, "k"), ({"k": 11}, "k"),
                           ({"core": -1}, "core"), ({"weight": "fancy"}, "fancy")]:
        with pytest.raises(InputError, match=word):
            find_paths(graph, "u0", "i0", *vectors, **settings)


# -- agreement with the networkx oracle -------------------------------------------------------------------


def random_case(seed: int):
    rng = np.random.default_rng(seed)
    n_users, n_items = int(rng.integers(4, 11)), int(rng.integers(4, 11))
    links = rng.random((n_users, n_items)) < rng.uniform(0.2, 0.45)
    users, items = np.nonzero(links)
    graph = InteractionGraph.from_edges([f"u{n}" for n in users], [f"i{n}" for n in items],
                                        [f"u{n}" for n in range(n_users)], [f"i{n}" for n in range(n_items)])
    vectors = rng.normal(size=(n_users, 4)), rng.normal(size=(n_items, 4))
    pairs = [(f"u{rng.integers(n_users)}", f"i{rng.integers(n_items)}") for _ in range(3)]
    return graph, vectors, pairs


@pytest.mark.parametrize("weight", ["multimodal", "degree", "uniform"])
def test_paths_match_the_networkx_oracle(weight):
    outcomes, tied = set(), 0
    for seed in range(30):
        graph, vectors, pairs = random_case(seed)
        network = to_networkx(graph)
        for n, (user, item) in enumerate(pairs):
            for hops in (1, 2, 3):
                for k in (1, 3, 5):
                    core = (0, 2)[(seed + n) % 2]
                    ours = find_paths(graph, user, item, *vectors, hops=hops, core=core, k=k, weight=weight)
                    oracle = reference_find_paths(graph, user, item, *vectors, hops=hops, core=core, k=k,
                                                  weight=weight, network=network)
                    assert [p.nodes for p in ours.paths] == [p.nodes for p in oracle.paths], (seed, user, item)
                    assert [p.cost for p in ours.paths] == pytest.approx([p.cost for p in oracle.paths], abs=1e-9)
                    assert (ours.status, ours.subgraph_nodes, ours.subgraph_edges) == (
                        oracle.status, oracle.subgraph_nodes, oracle.subgraph_edges)
                    assert all(len(path.nodes) >= 4 for path in ours.paths)  # never the direct edge
                    outcomes.add(ours.status)
                    tied += sum(a.cost == b.cost for a, b in zip(ours.paths, ours.paths[1:]))
    assert outcomes == {"ok", "no_path"}
    assert tied > 0


def test_paths_match_brute_force_enumeration():
    """Every simple path of the pruned subgraph, sorted by (cost, node ids): the definition itself."""
    for seed in range(30, 45):
        graph, vectors, pairs = random_case(seed)
        network = to_networkx(graph)
        for user, item in pairs:
            for weight in ("multimodal", "uniform"):
                u, i = graph.user_node(user), graph.item_node(item)
                subgraph = pruned_subgraph(network, u, i, 3, 2)
                directed = directed_costs(subgraph, entry_costs(graph, subgraph, u, i, weight, *vectors))
                every = sorted((nx.path_weight(directed, path, "cost"), tuple(path))
                               for path in nx.all_simple_paths(directed, u, i))
                ours = find_paths(graph, user, item, *vectors, k=5, weight=weight)
                assert [(round(p.cost * COST_SCALE), p.nodes) for p in ours.paths] == every[:5]
