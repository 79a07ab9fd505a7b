"""Path neighbourhood subgraphs of the explainer's graph level (paper section 3.4).

* **Path neighbourhood.** A path's graph holds its nodes plus, for every path
  node, at most ``explainer_neighbours`` of its training-graph neighbours that
  are not on the path, with every training edge among all these nodes
  (induced). The neighbours of a node are ranked by a random permutation
  seeded by ``(seed, node)`` alone and the first ones not on the path are
  taken, so a path always gets the same graph, whatever the batch or the order
  in which paths are built. The direct edge between the path's ends (the user
  and the item being explained) is left out, as in retrieval: a training pair
  is in the graph and a test pair is not, and the encoder must not tell them
  apart by that edge.
* **Node order and features.** Path nodes come first in path order, then the
  neighbours by id. Features are MMPSASRec's user vector for a user and item
  vector for an item (a zero row for a node the recommender gave no vector).
"""

from __future__ import annotations

from typing import Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data

from recbole_mmprefer.errors import InputError
from recbole_mmprefer.explainer.settings import GraphPromptSettings
from recbole_mmprefer.retrieval.graph import InteractionGraph, induced_subgraph

USER_TYPE, ITEM_TYPE = 0, 1


# -- node features -----------------------------------------------------------------------------------


def node_features(graph: InteractionGraph, user_vectors: np.ndarray, item_vectors: np.ndarray) -> Tensor:
    """One float32 row per graph node (users, then items): the aligned user and item matrices stacked.

    The matrices are in graph user / item order with a zero row where a node has
    no vector, as ``retrieval.inputs.load_node_vectors`` gives them.
    """
    user_vectors, item_vectors = np.asarray(user_vectors), np.asarray(item_vectors)
    if user_vectors.ndim != 2 or item_vectors.ndim != 2:
        raise InputError("user and item vectors must be 2-d matrices")
    if (len(user_vectors), len(item_vectors)) != (graph.num_users, graph.num_items):
        raise InputError(f"{len(user_vectors)} user and {len(item_vectors)} item vector rows do not fit a graph "
                         f"of {graph.num_users} users and {graph.num_items} items")
    if user_vectors.shape[1] != item_vectors.shape[1]:
        raise InputError(f"user vectors have width {user_vectors.shape[1]}, item vectors {item_vectors.shape[1]}")
    return torch.from_numpy(np.concatenate([user_vectors, item_vectors]).astype(np.float32))


# -- path neighbourhood subgraphs ---------------------------------------------------------------------------


def sample_neighbours(graph: InteractionGraph, node: int, cap: int, seed: int,
                      exclude: Iterable[int] = ()) -> np.ndarray:
    """Up to ``cap`` neighbours of ``node`` not in ``exclude``: the first ones of a permutation seeded by (seed, node).

    The permutation depends on nothing but ``seed`` and ``node``, so the choice
    never depends on batches or on which other paths were built before.
    """
    candidates = graph.neighbours(int(node))
    exclude = np.asarray(list(exclude), dtype=np.int64)
    if len(candidates) > cap:
        candidates = candidates[np.random.default_rng([int(seed), int(node)]).permutation(len(candidates))]
    candidates = candidates[~np.isin(candidates, exclude)]
    return np.sort(candidates[:cap])


def path_subgraph(graph: InteractionGraph, path_nodes: Sequence[int], features: Tensor, neighbours: int = 10,
                  seed: int = 0) -> Data:
    """The graph of one path: its nodes, at most ``neighbours`` sampled neighbours each, and the induced edges.

    Returns a ``Data`` with ``x`` (rows of ``features``), ``edge_index`` (both
    directions), ``node_type`` (0 user, 1 item), ``path_mask`` and ``node_id``
    (global ids); path nodes come first, in path order. The edge between the
    path's two ends is left out.
    """
    path = _check_path(graph, path_nodes)
    sampled = [sample_neighbours(graph, node, neighbours, seed, exclude=path) for node in path]
    context = np.setdiff1d(np.concatenate([np.zeros(0, dtype=np.int64), *sampled]), path)
    nodes = np.concatenate([path, context])
    edge_index = _induced_edge_index(graph, nodes, (int(path[0]), int(path[-1])) if len(path) > 1 else None)
    node_id = torch.from_numpy(nodes)
    return Data(x=features[node_id], edge_index=edge_index, node_type=(node_id >= graph.num_users).long(),
                path_mask=torch.arange(len(nodes)) < len(path), node_id=node_id, num_nodes=len(nodes))


def _check_path(graph: InteractionGraph, path_nodes: Sequence[int]) -> np.ndarray:
    path = np.asarray(path_nodes, dtype=np.int64).reshape(-1)
    if len(path) == 0:
        raise InputError("a retrieval path needs at least one node")
    if path.min() < 0 or path.max() >= graph.num_nodes:
        raise InputError(f"path {path.tolist()} names a node outside the graph's {graph.num_nodes} nodes")
    if len(np.unique(path)) != len(path):
        raise InputError(f"path {path.tolist()} visits a node twice")
    return path


def _induced_edge_index(graph: InteractionGraph, nodes: np.ndarray, removed: Optional[Tuple[int, int]]) -> Tensor:
    """Every training edge among ``nodes`` (both directions), as local ids in the order of ``nodes``."""
    order = np.argsort(nodes)
    subgraph = induced_subgraph(graph, nodes[order], removed_edge=removed)
    sources = np.repeat(np.arange(subgraph.num_nodes), subgraph.degrees)
    return torch.from_numpy(np.stack([order[sources], order[subgraph.indices]]).astype(np.int64))


class PathSubgraphBuilder:
    """Builds path subgraphs from ``paths.jsonl`` records: the graph, the node features and the settings in one place.

    Nothing is cached: a path's graph is cheap next to the LLM step and always the same.
    """

    def __init__(self, graph: InteractionGraph, user_vectors: np.ndarray, item_vectors: np.ndarray,
                 neighbours: int = 10, seed: int = 0):
        self.graph, self.neighbours, self.seed = graph, int(neighbours), int(seed)
        self.features = node_features(graph, user_vectors, item_vectors)

    @classmethod
    def from_config(cls, config, graph: Optional[InteractionGraph] = None,
                    settings: Optional[GraphPromptSettings] = None) -> "PathSubgraphBuilder":
        """The training graph and MMPSASRec vectors of the config's run, with the neighbour cap and seed of
        ``settings`` (a trained explainer's), else of the config."""
        from recbole_mmprefer.retrieval.inputs import load_graph, load_node_vectors

        graph = load_graph(config) if graph is None else graph
        settings = GraphPromptSettings.from_config(config) if settings is None else settings
        user_vectors, item_vectors, _ = load_node_vectors(config, graph)
        return cls(graph, user_vectors, item_vectors, settings.neighbours, settings.seed)

    def fingerprint(self) -> str:
        """A hash of the graph, the node features and the sampling settings."""
        import hashlib

        digest = hashlib.sha256()
        for array in (self.graph.indptr, self.graph.indices, self.features.numpy()):
            digest.update(np.ascontiguousarray(array).tobytes())
        digest.update(f"{self.neighbours} {self.seed}".encode())
        return digest.hexdigest()

    @property
    def feature_dim(self) -> int:
        return int(self.features.shape[1])

    def path(self, path_nodes: Sequence[int]) -> Data:
        return path_subgraph(self.graph, path_nodes, self.features, self.neighbours, self.seed)

    def pair(self, record: Union[dict, Sequence[Sequence[int]]], k: Optional[int] = None) -> List[Data]:
        """The graphs of a pair's first ``k`` paths: a ``paths.jsonl`` record or a list of node lists."""
        paths = record.get("paths", []) if isinstance(record, dict) else record
        node_lists = [path["nodes"] if isinstance(path, dict) else path for path in paths]
        return [self.path(nodes) for nodes in node_lists[:k]]
