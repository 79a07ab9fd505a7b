"""The user-item interaction graph and the per-pair subgraph (paper section 3.3, Algorithm 1 lines 1-3).

:class:`InteractionGraph` holds the bipartite graph in CSR arrays with users and
items in one id space: users are nodes ``0..U-1`` in the order of
``user_tokens``, items are nodes ``U..U+I-1`` in the order of ``item_tokens``.
Each node's neighbours are sorted by id, and every edge is stored once in each
direction.

For a pair (u, i), :func:`extract_subgraph` keeps the nodes within L hops of
u or of i, removes the direct edge (u, i) (the path must explain the
interaction, not restate it) and prunes the result to its k-core, except that
u and i themselves are never dropped. All per-pair work happens on the
subgraph's own arrays, so memory grows with the subgraph, not the whole graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from recbole_mmprefer.data.atomic import read_atomic_file
from recbole_mmprefer.errors import InputError, MissingInputError

USER, ITEM = "user", "item"
NPZ_KEYS = ("indptr", "indices", "user_tokens", "item_tokens")


class InteractionGraph:
    """Bipartite user-item graph in CSR form; users ``0..U-1``, items ``U..U+I-1``."""

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, user_tokens: Sequence[str],
                 item_tokens: Sequence[str]):
        self.indptr = np.asarray(indptr, dtype=np.int64)
        self.indices = np.asarray(indices, dtype=np.int64)
        self.user_tokens: List[str] = [str(token) for token in user_tokens]
        self.item_tokens: List[str] = [str(token) for token in item_tokens]
        self.user_index: Dict[str, int] = {token: n for n, token in enumerate(self.user_tokens)}
        self.item_index: Dict[str, int] = {token: n for n, token in enumerate(self.item_tokens)}
        self._check_shapes()
        self._local_ids: Optional[np.ndarray] = None

    def local_ids(self) -> np.ndarray:
        """A reusable node -> local id array, all -1 between uses (allocated once per graph, not per pair)."""
        if self._local_ids is None:
            self._local_ids = np.full(self.num_nodes, -1, dtype=np.int64)
        return self._local_ids

    def _check_shapes(self) -> None:
        if len(self.user_index) != len(self.user_tokens) or len(self.item_index) != len(self.item_tokens):
            raise InputError("user and item tokens must each be unique")
        if len(self.indptr) != self.num_nodes + 1 or self.indptr[0] != 0 or self.indptr[-1] != len(self.indices):
            raise InputError(f"CSR indptr of length {len(self.indptr)} does not fit {self.num_users} users, "
                             f"{self.num_items} items and {len(self.indices)} stored edges")

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_edges(cls, users: Sequence[str], items: Sequence[str], user_tokens: Optional[Sequence[str]] = None,
                   item_tokens: Optional[Sequence[str]] = None) -> "InteractionGraph":
        """Build from parallel lists of user and item tokens (one edge each; duplicates kept once).

        ``user_tokens``/``item_tokens`` fix the node order and may list nodes without
        edges; by default nodes are numbered in order of first appearance.
        """
        users = [str(token) for token in users]
        items = [str(token) for token in items]
        if len(users) != len(items):
            raise InputError(f"{len(users)} user tokens but {len(items)} item tokens: edges come in pairs")
        user_tokens = _first_appearance(users) if user_tokens is None else [str(t) for t in user_tokens]
        item_tokens = _first_appearance(items) if item_tokens is None else [str(t) for t in item_tokens]
        user_ids = _token_ids(users, user_tokens, "user")
        item_ids = _token_ids(items, item_tokens, "item")
        indptr, indices = _bipartite_csr(user_ids, item_ids, len(user_tokens), len(item_tokens))
        return cls(indptr, indices, user_tokens, item_tokens)

    @classmethod
    def from_atomic(cls, path: Path, user_field: str = "user_id", item_field: str = "item_id",
                    split_field: str = "split", train_value: str = "train") -> "InteractionGraph":
        """Build from a RecBole atomic ``.inter`` file; only training edges when it has a split column.

        Every user and item of the file gets a node (in order of first appearance),
        including those whose edges are all outside the training split.
        """
        path = Path(path)
        frame = read_atomic_file(path)
        missing = [field for field in (user_field, item_field) if field not in frame.columns]
        if missing:
            raise InputError(f"{path} has no field {missing[0]!r} (fields: {list(frame.columns)})")
        user_tokens = _first_appearance(frame[user_field].tolist())
        item_tokens = _first_appearance(frame[item_field].tolist())
        if split_field in frame.columns:
            frame = frame[frame[split_field] == train_value]
            if frame.empty:
                raise InputError(f"{path} has a {split_field!r} column but no row with {split_field}={train_value}")
        return cls.from_edges(frame[user_field].tolist(), frame[item_field].tolist(), user_tokens, item_tokens)

    def save(self, path: Path) -> None:
        """Write the graph to an ``.npz`` file (at exactly ``path``)."""
        with open(path, "wb") as handle:
            np.savez(handle, indptr=self.indptr, indices=self.indices,
                     user_tokens=np.array(self.user_tokens, dtype=str),
                     item_tokens=np.array(self.item_tokens, dtype=str))

    @classmethod
    def load(cls, path: Path) -> "InteractionGraph":
        """Read a graph written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise MissingInputError(f"Graph file {path} not found")
        with np.load(path, allow_pickle=False) as arrays:
            missing = [key for key in NPZ_KEYS if key not in arrays.files]
            if missing:
                raise InputError(f"{path} is not a saved interaction graph: it lacks {missing}")
            return cls(arrays["indptr"], arrays["indices"], arrays["user_tokens"].tolist(),
                       arrays["item_tokens"].tolist())

    # -- lookups ---------------------------------------------------------------------------------

    @property
    def num_users(self) -> int:
        return len(self.user_tokens)

    @property
    def num_items(self) -> int:
        return len(self.item_tokens)

    @property
    def num_nodes(self) -> int:
        return self.num_users + self.num_items

    @property
    def num_edges(self) -> int:
        """Undirected (user, item) edges."""
        return len(self.indices) // 2

    @property
    def degrees(self) -> np.ndarray:
        return np.diff(self.indptr)

    def degree(self, node: int) -> int:
        return int(self.indptr[node + 1] - self.indptr[node])

    def neighbours(self, node: int) -> np.ndarray:
        return self.indices[self.indptr[node]:self.indptr[node + 1]]

    def node_type(self, node: int) -> str:
        return USER if node < self.num_users else ITEM

    def node_token(self, node: int) -> str:
        return self.user_tokens[node] if node < self.num_users else self.item_tokens[node - self.num_users]

    def user_node(self, token: str) -> int:
        """The node id of a user token; InputError naming the token when it is unknown."""
        try:
            return self.user_index[str(token)]
        except KeyError:
            raise InputError(f"user token {str(token)!r} is not in the graph ({self.num_users} users)") from None

    def item_node(self, token: str) -> int:
        """The node id of an item token; InputError naming the token when it is unknown."""
        try:
            return self.num_users + self.item_index[str(token)]
        except KeyError:
            raise InputError(f"item token {str(token)!r} is not in the graph ({self.num_items} items)") from None

    def has_edge(self, user_node: int, item_node: int) -> bool:
        row = self.neighbours(user_node)
        position = np.searchsorted(row, item_node)
        return bool(position < len(row) and row[position] == item_node)


def _first_appearance(tokens: Sequence[str]) -> List[str]:
    return list(dict.fromkeys(tokens))


def _token_ids(tokens: Sequence[str], vocabulary: Sequence[str], kind: str) -> np.ndarray:
    index = {token: n for n, token in enumerate(vocabulary)}
    unknown = [token for token in tokens if token not in index]
    if unknown:
        raise InputError(f"edge {kind} token {unknown[0]!r} is not among the given {kind} tokens")
    return np.array([index[token] for token in tokens], dtype=np.int64)


def _bipartite_csr(user_ids: np.ndarray, item_ids: np.ndarray, num_users: int,
                   num_items: int) -> Tuple[np.ndarray, np.ndarray]:
    """Both directions of each distinct (user, item) edge, rows sorted by neighbour id."""
    keys = np.unique(user_ids * max(num_items, 1) + item_ids)
    users, items = np.divmod(keys, max(num_items, 1))
    sources = np.concatenate([users, items + num_users])
    targets = np.concatenate([items + num_users, users])
    return _csr(sources, targets, num_users + num_items)


def _csr(sources: np.ndarray, targets: np.ndarray, num_nodes: int) -> Tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((targets, sources))
    indptr = np.zeros(num_nodes + 1, dtype=np.int64)
    np.cumsum(np.bincount(sources, minlength=num_nodes), out=indptr[1:])
    return indptr, np.asarray(targets[order], dtype=np.int64)


def gather_neighbours(indptr: np.ndarray, indices: np.ndarray, nodes: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(source, neighbour) arrays for every stored edge of ``nodes``, in CSR order."""
    starts, counts = indptr[nodes], indptr[nodes + 1] - indptr[nodes]
    total = int(counts.sum())
    before = np.cumsum(counts) - counts
    positions = np.repeat(starts - before, counts) + np.arange(total)
    return np.repeat(nodes, counts), indices[positions]


# -- the per-pair subgraph ---------------------------------------------------------------------------


@dataclass
class Subgraph:
    """An induced, pruned piece of an :class:`InteractionGraph` with local ids ``0..n-1``.

    ``nodes[local]`` is the global id; it is sorted, so local order is global order.
    """

    nodes: np.ndarray
    indptr: np.ndarray
    indices: np.ndarray

    @property
    def num_nodes(self) -> int:
        return len(self.nodes)

    @property
    def num_edges(self) -> int:
        return len(self.indices) // 2

    @property
    def degrees(self) -> np.ndarray:
        return np.diff(self.indptr)

    def local(self, node: int) -> int:
        position = int(np.searchsorted(self.nodes, node))
        if position == len(self.nodes) or self.nodes[position] != node:
            raise KeyError(node)
        return position


def hop_neighbourhood(graph: InteractionGraph, sources: Sequence[int], hops: int,
                      max_nodes: Optional[int] = None) -> Optional[np.ndarray]:
    """Sorted ids of the nodes within ``hops`` of any source; None once more than ``max_nodes``."""
    reached = np.unique(np.asarray(sources, dtype=np.int64))
    frontier = reached
    for _ in range(hops):
        _, neighbours = gather_neighbours(graph.indptr, graph.indices, frontier)
        frontier = np.setdiff1d(neighbours, reached, assume_unique=False)
        if len(frontier) == 0:
            break
        reached = np.union1d(reached, frontier)
        if max_nodes is not None and len(reached) > max_nodes:
            return None
    return reached


def induced_subgraph(graph: InteractionGraph, nodes: np.ndarray,
                     removed_edge: Optional[Tuple[int, int]] = None) -> Subgraph:
    """The subgraph on sorted ``nodes`` with all their edges among themselves, minus ``removed_edge``."""
    sources, neighbours = gather_neighbours(graph.indptr, graph.indices, nodes)
    local = graph.local_ids()
    local[nodes] = np.arange(len(nodes))
    try:
        positions = local[neighbours]
        local_sources = local[sources]
    finally:
        local[nodes] = -1
    inside = positions >= 0
    local_sources, local_targets = local_sources[inside], positions[inside]
    if removed_edge is not None:
        first, second = (int(np.searchsorted(nodes, end)) for end in removed_edge)
        direct = ((local_sources == first) & (local_targets == second)) | (
            (local_sources == second) & (local_targets == first))
        local_sources, local_targets = local_sources[~direct], local_targets[~direct]
    return _compact_subgraph(nodes, local_sources, local_targets, np.ones(len(nodes), dtype=bool))


def protected_core(subgraph: Subgraph, core: int, protected: Sequence[int]) -> Subgraph:
    """The k-core of ``subgraph`` (k = ``core``) in which the ``protected`` global nodes always stay.

    Repeatedly drops every unprotected node with fewer than ``core`` neighbours
    left; the result does not depend on the order of removal.
    """
    keep_always = np.isin(subgraph.nodes, np.asarray(protected, dtype=np.int64))
    alive = np.ones(subgraph.num_nodes, dtype=bool)
    sources = np.repeat(np.arange(subgraph.num_nodes), subgraph.degrees)
    targets = subgraph.indices
    degrees = subgraph.degrees
    while True:
        drop = alive & (degrees < core) & ~keep_always
        if not drop.any():
            break
        alive &= ~drop
        both_alive = alive[sources] & alive[targets]
        sources, targets = sources[both_alive], targets[both_alive]
        degrees = np.bincount(sources, minlength=subgraph.num_nodes)
    return _compact_subgraph(subgraph.nodes, sources, targets, alive)


def _compact_subgraph(nodes: np.ndarray, sources: np.ndarray, targets: np.ndarray, alive: np.ndarray) -> Subgraph:
    """Renumber the alive nodes 0..m-1 (order kept) and build their CSR; edges must be sorted CSR-wise."""
    new_ids = np.cumsum(alive) - 1
    kept = alive[sources] & alive[targets]
    sources, targets = new_ids[sources[kept]], new_ids[targets[kept]]
    count = int(alive.sum())
    indptr = np.zeros(count + 1, dtype=np.int64)
    np.cumsum(np.bincount(sources, minlength=count), out=indptr[1:])
    return Subgraph(nodes=nodes[alive], indptr=indptr, indices=np.asarray(targets, dtype=np.int64))


def extract_subgraph(graph: InteractionGraph, user_node: int, item_node: int, hops: int = 3, core: int = 2,
                     max_nodes: Optional[int] = None) -> Optional[Subgraph]:
    """Algorithm 1, lines 1-3: L-hop union around u and i, direct edge removed, k-core with u, i kept.

    Returns None when the L-hop union has more than ``max_nodes`` nodes.
    """
    nodes = hop_neighbourhood(graph, (user_node, item_node), hops, max_nodes)
    if nodes is None:
        return None
    subgraph = induced_subgraph(graph, nodes, removed_edge=(user_node, item_node))
    return protected_core(subgraph, core, (user_node, item_node))
