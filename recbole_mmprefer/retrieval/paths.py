"""Edge weights (paper eq. 7) and the top-k loopless paths from u to i (paper section 3.3, Algorithm 1).

Costs are directed and depend only on the node a step enters: entering node n
costs ``log((2 - sim(n, u)) * deg(n))`` (rule ``multimodal``, eq. 7) and
entering the target item i costs exactly 1. ``sim`` is the cosine between the
target user's vector and n's vector (user vectors for user nodes, item vectors
for item nodes; 0 when either vector is zero, clipped to [-1, 1]) and ``deg``
is n's degree in the pruned subgraph. Since ``2 - sim`` lies in [1, 3] and a
reachable node has degree >= 1, every cost is >= 0, which Dijkstra needs.
Ablation rules: ``degree`` = ``log(2 * deg(n))`` (eq. 7 with the similarity
fixed at 0, strictly positive) and ``uniform`` = 1 per step.

Costs are stored in fixed point, as integer multiples of ``1 / COST_SCALE``
(2**-32, about 2.3e-10), so that sums are exact and independent of the order
of addition: two paths tie only when their fixed-point costs are equal, and
the same paths tie in every implementation.

Order of paths (the tie-break rule): by total cost, then equal costs by the
lexicographically smaller sequence of global node ids. The search returns the
k first paths of exactly this order: Yen's algorithm, whose spur searches are a
Dijkstra run backwards from i (scipy's, over the subgraph's CSR arrays)
followed by a walk from the spur node that always takes the smallest-id
neighbour still on a cheapest path.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from recbole_mmprefer.errors import InputError
from recbole_mmprefer.retrieval.graph import InteractionGraph, Subgraph, extract_subgraph

COST_SCALE = 2 ** 32
TARGET_COST = 1.0
MAX_HOPS, MAX_K = 5, 10
OK, NO_PATH, SKIPPED = "ok", "no_path", "skipped"


# -- edge weights -------------------------------------------------------------------------------------


def multimodal_cost(degrees: np.ndarray, similarities: np.ndarray) -> np.ndarray:
    """Eq. 7: ``log((2 - sim(n, u)) * deg(n))`` for each node n."""
    return np.log((2.0 - similarities) * degrees)


def degree_cost(degrees: np.ndarray, similarities: np.ndarray) -> np.ndarray:
    """Ablation without the recommender's vectors: eq. 7 with sim = 0, i.e. ``log(2 * deg(n)) > 0``."""
    return np.log(2.0 * degrees)


def uniform_cost(degrees: np.ndarray, similarities: np.ndarray) -> np.ndarray:
    """Ablation: every step costs 1, so the cheapest paths are the shortest ones."""
    return np.ones(len(degrees))


@dataclass(frozen=True)
class CostRule:
    """How much entering a node costs, from its subgraph degree and its similarity to the target user."""

    name: str
    cost: Callable[[np.ndarray, np.ndarray], np.ndarray]
    needs_vectors: bool


COST_RULES: Dict[str, CostRule] = {
    rule.name: rule for rule in (CostRule("multimodal", multimodal_cost, needs_vectors=True),
                                 CostRule("degree", degree_cost, needs_vectors=False),
                                 CostRule("uniform", uniform_cost, needs_vectors=False))
}


def cosine_to_user(graph: InteractionGraph, nodes: np.ndarray, user_node: int, user_vectors: np.ndarray,
                   item_vectors: np.ndarray) -> np.ndarray:
    """Cosine between the user's vector and each node's vector; 0 where a vector is zero."""
    is_user = nodes < graph.num_users
    vectors = np.empty((len(nodes), user_vectors.shape[1]), dtype=np.float64)
    vectors[is_user] = user_vectors[nodes[is_user]]
    vectors[~is_user] = item_vectors[nodes[~is_user] - graph.num_users]
    anchor = np.asarray(user_vectors[user_node], dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=1) * np.linalg.norm(anchor)
    dots = vectors @ anchor
    cosine = np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)
    return np.clip(cosine, -1.0, 1.0)


def node_costs(graph: InteractionGraph, subgraph: Subgraph, user_node: int, item_node: int, weight: str,
               user_vectors: Optional[np.ndarray] = None, item_vectors: Optional[np.ndarray] = None) -> np.ndarray:
    """Real-valued cost of entering each subgraph node (local order); the target item costs 1."""
    rule = COST_RULES[weight]
    degrees = subgraph.degrees.astype(np.float64)
    similarities = (cosine_to_user(graph, subgraph.nodes, user_node, user_vectors, item_vectors)
                    if rule.needs_vectors else np.zeros(subgraph.num_nodes))
    costs = np.zeros(subgraph.num_nodes)
    reachable = degrees > 0  # nodes without neighbours are never entered: cost 0
    costs[reachable] = rule.cost(degrees[reachable], similarities[reachable])
    costs[subgraph.local(item_node)] = TARGET_COST
    if not (costs >= 0).all():
        raise ValueError(f"edge cost rule {weight!r} gave a negative cost; Dijkstra needs costs >= 0")
    return costs


def to_fixed_point(costs: np.ndarray) -> np.ndarray:
    """Costs as integer multiples of 1 / COST_SCALE, so path sums are exact."""
    return np.rint(np.asarray(costs, dtype=np.float64) * COST_SCALE).astype(np.int64)


# -- results ------------------------------------------------------------------------------------------


@dataclass
class RetrievalPath:
    """One path from the user to the item: global node ids, their types and tokens, and its total cost."""

    nodes: Tuple[int, ...]
    types: Tuple[str, ...]
    tokens: Tuple[str, ...]
    cost: float


@dataclass
class PathResult:
    """The outcome for one (user, item) pair.

    ``status`` is ``ok`` (at least one path), ``no_path`` (u and i are not
    connected once pruned) or ``skipped`` (the L-hop union exceeded the node cap).
    ``subgraph_nodes``/``subgraph_edges`` count the pruned subgraph (0 when skipped).
    """

    user: str
    item: str
    status: str
    paths: List[RetrievalPath] = field(default_factory=list)
    subgraph_nodes: int = 0
    subgraph_edges: int = 0
    related: Optional[Dict[str, List[str]]] = None  # node retrieval's users and items (absent when it is off)

    def to_dict(self) -> dict:
        record = asdict(self)
        if record["related"] is None:
            record.pop("related")
        return record

    def to_record(self) -> dict:
        """The pair's line of ``paths.jsonl`` (``user_id``, ``item_id``, ...); :meth:`from_record` reads it."""
        record = self.to_dict()
        return {"user_id": record.pop("user"), "item_id": record.pop("item"), **record}

    @classmethod
    def from_record(cls, record: dict) -> "PathResult":
        """The result of a ``paths.jsonl`` line written by :meth:`to_record`."""
        paths = [RetrievalPath(tuple(path["nodes"]), tuple(path["types"]), tuple(path["tokens"]), path["cost"])
                 for path in record.get("paths", [])]
        return cls(user=str(record["user_id"]), item=str(record["item_id"]), status=record["status"], paths=paths,
                   subgraph_nodes=int(record.get("subgraph_nodes", 0)),
                   subgraph_edges=int(record.get("subgraph_edges", 0)), related=record.get("related"))


def make_path(graph: InteractionGraph, nodes: Tuple[int, ...], fixed_cost: int) -> RetrievalPath:
    return RetrievalPath(nodes=tuple(int(node) for node in nodes),
                         types=tuple(graph.node_type(node) for node in nodes),
                         tokens=tuple(graph.node_token(node) for node in nodes),
                         cost=fixed_cost / COST_SCALE)


# -- input checks -------------------------------------------------------------------------------------


def check_vectors(graph: InteractionGraph, user_vectors: Optional[np.ndarray],
                  item_vectors: Optional[np.ndarray], weight: str = "multimodal") -> None:
    """InputError unless the vectors are two matrices with one row per graph user / item and one width."""
    if user_vectors is None and item_vectors is None and not COST_RULES[weight].needs_vectors:
        return
    if user_vectors is None or item_vectors is None:
        raise InputError(f"edge weight {weight!r} needs both user_vectors and item_vectors")
    user_shape, item_shape = np.shape(user_vectors), np.shape(item_vectors)
    shapes = (f"user_vectors {user_shape} and item_vectors {item_shape}, "
              f"graph with {graph.num_users} users and {graph.num_items} items")
    if len(user_shape) != 2 or len(item_shape) != 2:
        raise InputError(f"vectors must be 2-D matrices: {shapes}")
    if user_shape[0] != graph.num_users or item_shape[0] != graph.num_items:
        raise InputError(f"vector rows do not match the graph: {shapes}")
    if user_shape[1] != item_shape[1]:
        raise InputError(f"user and item vectors must have the same width for the cosine: {shapes}")


def check_settings(hops: int, core: int, k: int, weight: str, max_subgraph_nodes: Optional[int] = None) -> None:
    """InputError for settings outside hops 1..5, k 1..10, core >= 0, a known weight rule and a positive cap."""
    if not _is_int(hops) or not 1 <= hops <= MAX_HOPS:
        raise InputError(f"path hops must be an integer in 1..{MAX_HOPS}, got {hops!r}")
    if not _is_int(k) or not 1 <= k <= MAX_K:
        raise InputError(f"path k must be an integer in 1..{MAX_K}, got {k!r}")
    if not _is_int(core) or core < 0:
        raise InputError(f"path core must be an integer >= 0, got {core!r}")
    if weight not in COST_RULES:
        raise InputError(f"unknown path weight {weight!r}; choose one of {sorted(COST_RULES)}")
    if max_subgraph_nodes is not None and (not _is_int(max_subgraph_nodes) or max_subgraph_nodes < 2):
        raise InputError(f"path max_subgraph_nodes must be an integer >= 2 or None, got {max_subgraph_nodes!r}")


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


# -- search -------------------------------------------------------------------------------------------


def find_paths(graph: InteractionGraph, user_token: str, item_token: str,
               user_vectors: Optional[np.ndarray] = None, item_vectors: Optional[np.ndarray] = None,
               hops: int = 3, core: int = 2, k: int = 3, weight: str = "multimodal",
               max_subgraph_nodes: Optional[int] = None) -> PathResult:
    """Algorithm 1 for one pair: subgraph, eq. 7 weights, the k cheapest loopless paths u -> i."""
    check_settings(hops, core, k, weight, max_subgraph_nodes)
    check_vectors(graph, user_vectors, item_vectors, weight)
    user_node, item_node = graph.user_node(user_token), graph.item_node(item_token)
    result = PathResult(user=str(user_token), item=str(item_token), status=SKIPPED)
    subgraph = extract_subgraph(graph, user_node, item_node, hops, core, max_subgraph_nodes)
    if subgraph is None:
        return result
    result.subgraph_nodes, result.subgraph_edges = subgraph.num_nodes, subgraph.num_edges
    costs = to_fixed_point(node_costs(graph, subgraph, user_node, item_node, weight, user_vectors, item_vectors))
    found = k_cheapest_paths(subgraph, costs, subgraph.local(user_node), subgraph.local(item_node), k)
    result.paths = [make_path(graph, tuple(subgraph.nodes[list(local)]), cost) for cost, local in found]
    result.status = OK if result.paths else NO_PATH
    return result


def k_cheapest_paths(subgraph: Subgraph, costs: np.ndarray, source: int, target: int,
                     k: int) -> List[Tuple[int, Tuple[int, ...]]]:
    """Yen's algorithm: the first k loopless paths in (cost, node sequence) order, as (cost, local nodes).

    ``costs[n]`` is the integer cost of entering local node n; neighbour lists are ascending.
    """
    search = SpurSearch(subgraph, costs, target)
    first = search.path(source, (), (), search.three_hop_bound(source))
    if first is None:
        return []
    found = [first]
    candidates: List[Tuple[int, Tuple[int, ...]]] = []
    seen = {first[1]}
    while len(found) < k:
        add_deviations(search, found, candidates, seen, needed=k - len(found))
        if not candidates:
            break
        found.append(heapq.heappop(candidates))
    return found


def add_deviations(search: "SpurSearch", found: List[Tuple[int, Tuple[int, ...]]],
                   candidates: List[Tuple[int, Tuple[int, ...]]], seen: set, needed: int) -> None:
    """Push Yen's candidates from the last found path: for each spur node, the best path leaving its root anew.

    Once ``needed`` candidates are known, a spur search stops at the cost of the
    ``needed``-th cheapest (ties included): a dearer path could never be chosen.
    """
    _, last = found[-1]
    root_cost = 0
    for position in range(len(last) - 1):
        root = last[:position + 1]
        if position > 0:
            root_cost += int(search.costs[root[-1]])
        used_steps = tuple(path[position + 1] for _, path in found if path[:position + 1] == root)
        bound = heapq.nsmallest(needed, candidates)[-1][0] - root_cost if len(candidates) >= needed else None
        if bound is not None and bound < 0:
            continue
        spur = search.path(root[-1], root[:-1], used_steps, bound)
        if spur is not None and root[:-1] + spur[1] not in seen:
            seen.add(root[:-1] + spur[1])
            heapq.heappush(candidates, (root_cost + spur[0], root[:-1] + spur[1]))


class SpurSearch:
    """Cheapest paths to one target on a subgraph with node-entry costs, by Dijkstra (scipy, in C).

    The search runs backwards from the target: on the reversed graph the edge
    n -> x weighs ``costs[n]``, so the distance of x is the cost of its cheapest
    path to the target. Blocked nodes, the spur node as an intermediate node,
    and blocked first steps get infinite weights. Costs are integers kept
    exactly in float64 (sums stay far below 2**53).
    """

    def __init__(self, subgraph: Subgraph, costs: np.ndarray, target: int):
        self.indptr, self.indices = subgraph.indptr, subgraph.indices
        self.costs = np.asarray(costs, dtype=np.int64)
        self.target = target
        self.weights = np.repeat(self.costs.astype(np.float64), np.diff(self.indptr))

    def three_hop_bound(self, source: int) -> Optional[int]:
        """Cost of the cheapest path source -> a -> b -> target, the shortest a bipartite pair can have
        without its direct edge: an upper bound that keeps the first search near the target. None without one.
        """
        into_target = np.full(len(self.costs), math.inf)
        before_target = self.indices[self.indptr[self.target]:self.indptr[self.target + 1]]
        into_target[before_target] = self.costs[before_target]
        first_steps = self.indices[self.indptr[source]:self.indptr[source + 1]]
        first_steps = first_steps[first_steps != self.target]
        if not len(first_steps):
            return None
        best = min((self.costs[step] + into_target[self.indices[self.indptr[step]:self.indptr[step + 1]]].min()
                    for step in first_steps if self.indptr[step + 1] > self.indptr[step]), default=math.inf)
        return int(best + self.costs[self.target]) if math.isfinite(best) else None

    def distances(self, source: int, blocked: Sequence[int], blocked_first_steps: Sequence[int],
                  bound: Optional[int] = None) -> np.ndarray:
        """Cost to the target from every node (infinite where unreachable or dearer than ``bound``)."""
        from scipy.sparse import csr_matrix
        from scipy.sparse.csgraph import dijkstra

        weights = self.weights.copy()
        for node in (*blocked, source):  # no path continues through them (the walk never enters them either)
            weights[self.indptr[node]:self.indptr[node + 1]] = math.inf
        for step in blocked_first_steps:  # reversed edge step -> source
            row = slice(self.indptr[step], self.indptr[step + 1])
            weights[row][np.searchsorted(self.indices[row], source)] = math.inf
        size = len(self.indptr) - 1
        graph = csr_matrix((weights, self.indices, self.indptr), shape=(size, size))
        return dijkstra(graph, directed=True, indices=self.target, limit=np.inf if bound is None else float(bound))

    def path(self, source: int, blocked: Sequence[int], blocked_first_steps: Sequence[int],
             bound: Optional[int] = None) -> Optional[Tuple[int, Tuple[int, ...]]]:
        """The cheapest path source -> target avoiding ``blocked`` nodes and the first steps source -> n for n in
        ``blocked_first_steps``; among equally cheap ones the lexicographically smallest. None when there is
        none (or none costing at most ``bound``).
        """
        distance = self.distances(source, blocked, blocked_first_steps, bound)
        if not math.isfinite(distance[source]):
            return None
        path, node = [source], source
        while node != self.target:
            avoid = (*blocked, source, *(blocked_first_steps if node == source else ()))
            node = self._cheapest_next(node, distance, avoid)
            path.append(node)
        return int(distance[source]), tuple(path)

    def _cheapest_next(self, node: int, distance: np.ndarray, avoid: Sequence[int]) -> int:
        """The smallest neighbour, not in ``avoid``, from which a cheapest path continues."""
        neighbours = self.indices[self.indptr[node]:self.indptr[node + 1]]
        on_cheapest = (self.costs[neighbours] + distance[neighbours] == distance[node]) & ~np.isin(neighbours, avoid)
        candidates = np.flatnonzero(on_cheapest)
        if not len(candidates):
            raise AssertionError("no neighbour continues a cheapest path: distances are inconsistent")
        return int(neighbours[candidates[0]])
