"""A plain networkx version of paper section 3.3 / Algorithm 1, the oracle for :mod:`.paths`.

It follows the same specification with networkx's own tools: the L-hop union
from ego graphs, the protected k-core by repeated degree checks (``nx.k_core``
cannot keep u and i), a DiGraph carrying the directed eq. 7 costs (in the same
fixed point as :mod:`.paths`), and ``nx.shortest_simple_paths``. networkx
breaks ties by discovery order, so it keeps every path as cheap as the k-th
one and then orders them by (cost, node sequence), the rule of :mod:`.paths`.
Slow and memory-hungry on large graphs: for tests and benchmarks only.
"""

from __future__ import annotations

from typing import List, Optional, Set, Tuple

import networkx as nx
import numpy as np

from recbole_mmprefer.retrieval.graph import InteractionGraph
from recbole_mmprefer.retrieval.paths import (
    COST_SCALE,
    NO_PATH,
    OK,
    PathResult,
    check_settings,
    check_vectors,
    make_path,
)


def to_networkx(graph: InteractionGraph) -> nx.Graph:
    """The whole interaction graph as an undirected networkx graph on the same node ids."""
    network = nx.Graph()
    network.add_nodes_from(range(graph.num_nodes))
    for node in range(graph.num_users):
        network.add_edges_from((node, int(neighbour)) for neighbour in graph.neighbours(node))
    return network


def reference_find_paths(graph: InteractionGraph, user_token: str, item_token: str,
                         user_vectors: Optional[np.ndarray] = None, item_vectors: Optional[np.ndarray] = None,
                         hops: int = 3, core: int = 2, k: int = 3, weight: str = "multimodal",
                         network: Optional[nx.Graph] = None) -> PathResult:
    """What :func:`.paths.find_paths` returns, computed with networkx (``network`` = :func:`to_networkx`)."""
    check_settings(hops, core, k, weight)
    check_vectors(graph, user_vectors, item_vectors, weight)
    user, item = graph.user_node(user_token), graph.item_node(item_token)
    network = to_networkx(graph) if network is None else network
    subgraph = pruned_subgraph(network, user, item, hops, core)
    costs = entry_costs(graph, subgraph, user, item, weight, user_vectors, item_vectors)
    found = cheapest_simple_paths(directed_costs(subgraph, costs), user, item, k)
    return PathResult(user=str(user_token), item=str(item_token), status=OK if found else NO_PATH,
                      paths=[make_path(graph, path, cost) for cost, path in found],
                      subgraph_nodes=subgraph.number_of_nodes(), subgraph_edges=subgraph.number_of_edges())


def pruned_subgraph(network: nx.Graph, user: int, item: int, hops: int, core: int) -> nx.Graph:
    """Union of the L-hop ego graphs of u and i, without the edge (u, i), pruned to a k-core keeping u and i."""
    nodes: Set[int] = set(nx.ego_graph(network, user, radius=hops)) | set(nx.ego_graph(network, item, radius=hops))
    subgraph = network.subgraph(nodes).copy()
    if subgraph.has_edge(user, item):
        subgraph.remove_edge(user, item)
    while True:
        weak = [node for node in subgraph if node not in (user, item) and subgraph.degree(node) < core]
        if not weak:
            return subgraph
        subgraph.remove_nodes_from(weak)


def entry_costs(graph: InteractionGraph, subgraph: nx.Graph, user: int, item: int, weight: str,
                user_vectors: Optional[np.ndarray], item_vectors: Optional[np.ndarray]) -> dict:
    """Fixed-point cost of entering each node: eq. 7 and its ablations, 1 for the target item."""
    costs = {}
    for node in subgraph:
        degree = subgraph.degree(node)
        if node == item:
            value = 1.0
        elif degree == 0:
            value = 0.0
        elif weight == "uniform":
            value = 1.0
        elif weight == "degree":
            value = float(np.log(2.0 * degree))
        else:
            value = float(np.log((2.0 - cosine(graph, node, user, user_vectors, item_vectors)) * degree))
        costs[node] = int(np.rint(value * COST_SCALE))
    return costs


def cosine(graph: InteractionGraph, node: int, user: int, user_vectors: np.ndarray,
           item_vectors: np.ndarray) -> float:
    vector = user_vectors[node] if node < graph.num_users else item_vectors[node - graph.num_users]
    vector, anchor = np.asarray(vector, dtype=np.float64), np.asarray(user_vectors[user], dtype=np.float64)
    norms = float(np.linalg.norm(vector) * np.linalg.norm(anchor))
    return 0.0 if norms == 0 else min(1.0, max(-1.0, float(np.dot(vector, anchor)) / norms))


def directed_costs(subgraph: nx.Graph, costs: dict) -> nx.DiGraph:
    """Each undirected edge as two arcs, each costing the entry cost of the node it points to."""
    directed = nx.DiGraph()
    directed.add_nodes_from(subgraph)
    for first, second in subgraph.edges():
        directed.add_edge(first, second, cost=costs[second])
        directed.add_edge(second, first, cost=costs[first])
    return directed


def cheapest_simple_paths(directed: nx.DiGraph, source: int, target: int, k: int) -> List[Tuple[int, tuple]]:
    """The first k simple paths by (cost, node sequence), via networkx's Yen generator."""
    collected: List[Tuple[int, tuple]] = []
    try:
        for path in nx.shortest_simple_paths(directed, source, target, weight="cost"):
            cost = nx.path_weight(directed, path, weight="cost")
            if len(collected) >= k and cost > collected[k - 1][0]:
                break
            collected.append((cost, tuple(path)))
    except nx.NetworkXNoPath:
        return []
    return sorted(collected)[:k]
