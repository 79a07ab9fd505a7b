"""PaGE-Link paths for a pair (issue 15; Zhang et al., WWW 2023), the retriever G-Refer uses.

For a pair (u, i) and a trained :mod:`~recbole_mmprefer.retrieval.link_predictor`:

1. the computation graph: the nodes within ``pagelink_hops`` (2) of u or i,
   the direct edge (u, i) removed, every edge of a node with more than
   ``pagelink_max_degree`` (200) neighbours there dropped, then its
   ``pagelink_core``-core (2); u and i are protected in both steps, as in the
   authors' code, so a pair has no path (``no_path``) only when nothing joins
   them once pruned;
2. one mask logit per interaction (shared by its two directions; N(0,
   sqrt(2/N)) at the start, N the computation graph's nodes), the sigmoid of
   which weights the edge's messages in the predictor; the masks learn for up
   to ``pagelink_mask_epochs`` (10, G-Refer's) Adam steps (lr 0.01) of the
   prediction loss -log sigmoid(score(u, i)) plus the path loss
   ``alpha`` * -mean(m on the current paths) + ``beta`` * mean(m off them)
   (:func:`path_loss`), the paths being the ``pagelink_search_k`` (5) cheapest
   under the current masks; they stop early once the masks' norm changes by
   less than 1e-3;
3. a step x -> v over interaction e costs log in-degree(v) - log mask(e) (the
   endpoints u and i count degree 1, so entering i costs -log mask(e)), and
   Yen's algorithm (networkx's ``shortest_simple_paths``) gives the
   ``pagelink_k`` (10) cheapest loopless paths of at most
   ``pagelink_max_path_edges`` (5) edges; the first ``path_k`` of them are the
   pair's paths (G-Refer keeps 2).

Paths come back as :class:`~recbole_mmprefer.retrieval.paths.PathResult`, so
``paths.jsonl`` has the same format for either retriever.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import networkx as nx
import numpy as np
import torch

from recbole_mmprefer.retrieval.graph import InteractionGraph, Subgraph, hop_neighbourhood, induced_subgraph
from recbole_mmprefer.retrieval.link_predictor import BOUGHT_BY, BUYS, Edges, LinkPredictor
from recbole_mmprefer.retrieval.paths import COST_SCALE, NO_PATH, OK, PathResult, RetrievalPath
from recbole_mmprefer.settings import StageSettings, check_float, check_int

Path = Tuple[int, ...]


@dataclass
class PageLinkSettings(StageSettings):
    """The ``pagelink_*`` keys (properties/retrieval.yaml)."""

    PREFIX = "pagelink_"

    hops: int
    max_degree: int
    core: int
    mask_epochs: int
    mask_learning_rate: float
    alpha: float
    beta: float
    search_k: int
    k: int
    max_path_edges: int

    def __post_init__(self):
        for name in ("hops", "max_degree", "search_k", "k", "max_path_edges"):
            setattr(self, name, check_int(self.key(name), getattr(self, name), 1))
        self.core = check_int(self.key("core"), self.core, 0)
        self.mask_epochs = check_int(self.key("mask_epochs"), self.mask_epochs, 0)
        self.mask_learning_rate = check_float(self.key("mask_learning_rate"), self.mask_learning_rate, 0.0,
                                              above_minimum=True)
        self.alpha = check_float(self.key("alpha"), self.alpha, 0.0)
        self.beta = check_float(self.key("beta"), self.beta, 0.0)


def computation_graph(graph: InteractionGraph, user: int, item: int, settings: PageLinkSettings) -> Subgraph:
    """Step 1: the hop neighbourhood without the direct edge and the high-degree nodes' edges, as its core."""
    nodes = hop_neighbourhood(graph, (user, item), settings.hops)
    subgraph = induced_subgraph(graph, nodes, removed_edge=(user, item))
    sources = np.repeat(np.arange(subgraph.num_nodes), subgraph.degrees)
    targets = subgraph.indices
    protected = np.isin(subgraph.nodes, [user, item])
    low = (subgraph.degrees <= settings.max_degree) | protected
    keep = low[sources] & low[targets]
    sources, targets = sources[keep], targets[keep]
    alive = np.ones(subgraph.num_nodes, dtype=bool)
    while True:  # the k-core, u and i kept
        degrees = np.bincount(sources[alive[sources] & alive[targets]], minlength=subgraph.num_nodes)
        drop = alive & (degrees < settings.core) & ~protected
        if not drop.any():
            break
        alive &= ~drop
    kept = alive[sources] & alive[targets]
    new_ids = np.cumsum(alive) - 1
    sources, targets = new_ids[sources[kept]], new_ids[targets[kept]]
    indptr = np.zeros(int(alive.sum()) + 1, dtype=np.int64)
    np.cumsum(np.bincount(sources, minlength=int(alive.sum())), out=indptr[1:])
    return Subgraph(nodes=subgraph.nodes[alive], indptr=indptr, indices=targets.astype(np.int64))


@dataclass
class MaskedGraph:
    """A computation graph as the predictor's directed edges, each pointing at its interaction's mask."""

    subgraph: Subgraph
    edges: Edges
    interaction: torch.Tensor  # directed edge -> interaction (mask) index
    pairs: List[Tuple[int, int]]  # interaction -> (local user, local item)

    @classmethod
    def of(cls, subgraph: Subgraph, num_users: int) -> "MaskedGraph":
        sources = np.repeat(np.arange(subgraph.num_nodes), subgraph.degrees)
        targets = subgraph.indices
        is_user = subgraph.nodes[sources] < num_users
        user_side = np.where(is_user, sources, targets)
        item_side = np.where(is_user, targets, sources)
        keys = user_side * subgraph.num_nodes + item_side
        unique, interaction = np.unique(keys, return_inverse=True)
        pairs = [(int(key // subgraph.num_nodes), int(key % subgraph.num_nodes)) for key in unique]
        relations = np.where(is_user, BUYS, BOUGHT_BY)
        return cls(subgraph, Edges(torch.as_tensor(sources), torch.as_tensor(targets), torch.as_tensor(relations)),
                   torch.as_tensor(interaction), pairs)


def step_costs(masked: MaskedGraph, masks: np.ndarray, endpoints: Sequence[int] = ()) -> Dict[Tuple[int, int], float]:
    """Cost of the directed step x -> v: log in-degree(v) - log mask(e), e the interaction of x and v; the
    ``endpoints`` (local u and i) count in-degree 1."""
    degrees = masked.subgraph.degrees.astype(float)
    degrees[list(endpoints)] = 1.0
    costs = {}
    for edge, (source, target) in enumerate(zip(masked.edges.sources.tolist(), masked.edges.targets.tolist())):
        mask = float(masks[int(masked.interaction[edge])])
        costs[(source, target)] = math.log(degrees[target]) - math.log(max(mask, 1e-12))
    return costs


def cheapest_paths(costs: Dict[Tuple[int, int], float], source: int, target: int, k: int,
                   max_edges: Optional[int], examined: int = 2000) -> List[Tuple[float, Path]]:
    """The ``k`` cheapest loopless paths of at most ``max_edges`` edges (None: any length; Yen, networkx); the
    direct edge is not in the computation graph."""
    network = nx.DiGraph()
    network.add_weighted_edges_from((a, b, cost) for (a, b), cost in costs.items())
    if source not in network or target not in network or not nx.has_path(network, source, target):
        return []
    found = []
    for nodes in itertools.islice(nx.shortest_simple_paths(network, source, target, weight="weight"), examined):
        if max_edges is None or len(nodes) - 1 <= max_edges:
            found.append((sum(costs[(a, b)] for a, b in zip(nodes, nodes[1:])), tuple(nodes)))
            if len(found) == k:
                break
    return found


def path_interactions(masked: MaskedGraph, paths: Sequence[Path]) -> torch.Tensor:
    """A bool per interaction: whether any of ``paths`` uses it."""
    index = {pair: n for n, pair in enumerate(masked.pairs)}
    on = torch.zeros(len(masked.pairs), dtype=torch.bool)
    for nodes in paths:
        for a, b in zip(nodes, nodes[1:]):
            on[index.get((a, b), index.get((b, a)))] = True
    return on


def path_loss(masks: torch.Tensor, on_path: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """-alpha * mean mask over the interactions on the current paths + beta * mean mask over the others."""
    loss = masks.sum() * 0.0
    if on_path.any():
        loss = loss - alpha * masks[on_path].mean()
    if (~on_path).any():
        loss = loss + beta * masks[~on_path].mean()
    return loss


def learn_masks(predictor: LinkPredictor, masked: MaskedGraph, user: int, item: int, settings: PageLinkSettings,
                seed: int) -> np.ndarray:
    """Step 2: the mask of each interaction after ``mask_epochs`` steps of prediction + path loss."""
    generator = torch.Generator().manual_seed(seed)
    spread = math.sqrt(2.0 / max(masked.subgraph.num_nodes, 1))
    logits = torch.nn.Parameter(torch.randn(len(masked.pairs), generator=generator) * spread)
    optimizer = torch.optim.Adam([logits], lr=settings.mask_learning_rate)
    nodes = torch.as_tensor(masked.subgraph.nodes)
    for parameter in predictor.parameters():
        parameter.requires_grad_(False)
    previous_norm = None
    for _ in range(settings.mask_epochs):
        masks = torch.sigmoid(logits)
        norm = float(masks.detach().norm())
        if previous_norm is not None and abs(norm - previous_norm) < 1e-3:
            break
        previous_norm = norm
        states = predictor.node_states(masked.edges, masks[masked.interaction], nodes=nodes)
        prediction = -torch.nn.functional.logsigmoid(LinkPredictor.score(states, torch.tensor([user]),
                                                                        torch.tensor([item]))).mean()
        costs = step_costs(masked, masks.detach().numpy(), (user, item))
        paths = [nodes for _, nodes in cheapest_paths(costs, user, item, settings.search_k, None)]
        loss = prediction + path_loss(masks, path_interactions(masked, paths), settings.alpha, settings.beta)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return torch.sigmoid(logits).detach().numpy()


def pagelink_paths(graph: InteractionGraph, predictor: LinkPredictor, user_token: str, item_token: str,
                   settings: PageLinkSettings, keep: int, seed: int = 0) -> PathResult:
    """Steps 1-3 for one pair: the ``keep`` best PaGE-Link paths u -> i (see the module docstring)."""
    user, item = graph.user_node(user_token), graph.item_node(item_token)
    result = PathResult(user=str(user_token), item=str(item_token), status=NO_PATH)
    subgraph = computation_graph(graph, user, item, settings)
    if user not in set(subgraph.nodes.tolist()) or item not in set(subgraph.nodes.tolist()):
        return result
    result.subgraph_nodes, result.subgraph_edges = subgraph.num_nodes, subgraph.num_edges
    masked = MaskedGraph.of(subgraph, graph.num_users)
    source, target = subgraph.local(user), subgraph.local(item)
    masks = learn_masks(predictor, masked, source, target, settings, seed)
    costs = step_costs(masked, masks, (source, target))
    found = cheapest_paths(costs, source, target, settings.k, settings.max_path_edges)[:keep]
    result.paths = [as_retrieval_path(graph, subgraph, nodes, cost) for cost, nodes in found]
    result.status = OK if result.paths else NO_PATH
    return result


def as_retrieval_path(graph: InteractionGraph, subgraph: Subgraph, local: Path, cost: float) -> RetrievalPath:
    nodes = tuple(int(subgraph.nodes[n]) for n in local)
    return RetrievalPath(nodes=nodes, types=tuple(graph.node_type(n) for n in nodes),
                         tokens=tuple(graph.node_token(n) for n in nodes),
                         cost=round(cost * COST_SCALE) / COST_SCALE)
