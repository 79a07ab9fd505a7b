"""The graph level of the explainer (paper section 3.4): retrieval paths -> GNN -> MoE adapter -> soft prompt.

For each (user, item) pair the retriever (section 3.3) found up to k paths
through the training graph. Each path becomes a small graph, a GNN (GAT by
default; GCN and a graph transformer are the paper's alternatives) encodes it,
the k path vectors are concatenated and a mixture-of-experts adapter maps the
result to ``soft_tokens`` vectors of the LLM's hidden size, which replace the
embeddings of reserved prompt positions in ``inputs_embeds``.

Choices made here (the paper leaves them open):

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
  vector for an item (a zero row for a node the recommender gave no vector);
  a learned node-type embedding is added after the input projection.
* **Pooling.** ``explainer_pool: path`` (default) averages the path nodes only:
  the path is what is explained, its neighbours only feed messages into it.
  ``all`` averages every node of the path's graph.
* **Padding.** A pair keeps its first k paths (the cheapest: retrieval sorts
  them by cost); a missing path is a learned "no path" vector (initialised to
  zero), so every pair gives one vector of size ``k * hidden``.
* **Adapter.** A dense mixture: every expert is a linear map to
  ``soft_tokens * llm_hidden``, mixed by a softmax gate on the (dropped-out)
  pair vector.

``explainer_graph_level: False`` is the "w/o graph-level" ablation: no soft
prompt (:func:`build_graph_soft_prompt` returns None and
:func:`soft_prompt_tokens` 0; the same when ``explainer_soft_tokens`` or
``explainer_paths`` is 0). ``explainer_soft_tokens: ~`` means one per path, as
in the prompt builder; reserve :func:`soft_prompt_tokens` prompt positions so
the ablation flag reaches the prompt too.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Batch, Data
from torch_geometric.nn import GATConv, GCNConv, TransformerConv, global_mean_pool

from recbole_mmprefer.errors import InputError, MissingInputError
from recbole_mmprefer.resources import stage_setting
from recbole_mmprefer.retrieval.graph import InteractionGraph, induced_subgraph

USER_TYPE, ITEM_TYPE = 0, 1
GNN_TYPES = ("gat", "gcn", "transformer")
POOLS = ("path", "all")
DEFAULTS: Dict[str, object] = {
    "explainer_gnn": "gat", "explainer_gnn_layers": 2, "explainer_gnn_hidden": 64, "explainer_gnn_heads": 2,
    "explainer_neighbours": 10, "explainer_pool": "path", "explainer_experts": 4, "explainer_adapter_dropout": 0.1,
    "explainer_graph_level": True, "explainer_paths": 3, "explainer_soft_tokens": None, "seed": 0,
}


# -- settings ------------------------------------------------------------------------------------------


def setting(config, key: str):
    """The config's value, else the shipped default (``seed`` 0 for a plain dict config)."""
    return stage_setting(config, key, DEFAULTS.get(key))


def graph_settings(config) -> Dict[str, object]:
    """The graph-level settings of a config (RecBole Config or dict), checked.

    ``explainer_soft_tokens`` absent or None means one per path, as in the prompt builder.
    """
    settings = {key: setting(config, key) for key in DEFAULTS}
    if settings["explainer_soft_tokens"] is None:
        settings["explainer_soft_tokens"] = settings["explainer_paths"]
    _check_choice(settings, "explainer_gnn", GNN_TYPES)
    _check_choice(settings, "explainer_pool", POOLS)
    for key in ("explainer_gnn_layers", "explainer_gnn_hidden", "explainer_gnn_heads", "explainer_experts"):
        _check_int(settings, key, 1)
    for key in ("explainer_neighbours", "explainer_paths", "explainer_soft_tokens"):
        _check_int(settings, key, 0)
    if not 0 <= float(settings["explainer_adapter_dropout"]) < 1:
        raise InputError(f"explainer_adapter_dropout must be in [0, 1), got {settings['explainer_adapter_dropout']}")
    return settings


def _check_choice(settings: dict, key: str, choices: Sequence[str]) -> None:
    if settings[key] not in choices:
        raise InputError(f"{key} must be one of {', '.join(choices)}; got {settings[key]!r}")


def _check_int(settings: dict, key: str, minimum: int) -> None:
    value = settings[key]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(f"{key} must be an integer >= {minimum}, got {value!r}")


def soft_prompt_tokens(config) -> int:
    """How many prompt positions to reserve for the soft prompt.

    0 under the "w/o graph-level" ablation (``explainer_graph_level: False``),
    and also when ``explainer_soft_tokens`` or ``explainer_paths`` is 0.
    """
    settings = graph_settings(config)
    if not settings["explainer_graph_level"] or not settings["explainer_paths"]:
        return 0
    return int(settings["explainer_soft_tokens"])


# -- node features -----------------------------------------------------------------------------------


def node_features(graph: InteractionGraph, user_vectors: np.ndarray, item_vectors: np.ndarray) -> Tensor:
    """One float32 row per graph node (users, then items): the aligned user and item matrices stacked.

    The matrices are in graph user / item order with a zero row where a node has
    no vector, as ``retrieval.collect._aligned`` gives them.
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


def load_node_vectors(config, graph: InteractionGraph) -> Tuple[np.ndarray, np.ndarray]:
    """MMPSASRec's exported user and item vectors in the graph's order (zero rows where missing)."""
    from recbole_mmprefer.model.export import recommender_dir
    from recbole_mmprefer.retrieval.collect import _aligned

    folder = recommender_dir(config)
    if not (folder / "meta.json").is_file():
        raise MissingInputError(f"No user/item vectors in {folder}: run `run_recbole --model=MMPSASRec "
                                f"--dataset={config['dataset']}` first")
    user_vectors, _ = _aligned(folder, "user", graph.user_tokens)
    item_vectors, _ = _aligned(folder, "item", graph.item_tokens)
    return user_vectors, item_vectors


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
    def from_config(cls, config, graph: Optional[InteractionGraph] = None) -> "PathSubgraphBuilder":
        """The training graph and MMPSASRec vectors of the config's run, with its neighbour cap and seed."""
        from recbole_mmprefer.retrieval.collect import load_graph

        graph = load_graph(config) if graph is None else graph
        settings = graph_settings(config)
        return cls(graph, *load_node_vectors(config, graph), settings["explainer_neighbours"], settings["seed"])

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


# -- the GNN ----------------------------------------------------------------------------------------


def _conv(gnn: str, hidden_dim: int, heads: int) -> nn.Module:
    if gnn == "gat":
        return GATConv(hidden_dim, hidden_dim, heads=heads, concat=False)
    if gnn == "gcn":
        return GCNConv(hidden_dim, hidden_dim)
    if gnn == "transformer":
        return TransformerConv(hidden_dim, hidden_dim, heads=heads, concat=False)
    raise InputError(f"explainer_gnn must be one of {', '.join(GNN_TYPES)}; got {gnn!r}")


class PathGraphEncoder(nn.Module):
    """A GNN over batched path subgraphs; one vector of size ``out_dim`` per path.

    Input projection plus a node-type embedding, ``layers`` convolutions
    (GATConv, GCNConv or TransformerConv; attention heads averaged) with ELU,
    mean pooling over the path nodes (``pool="path"``) or all nodes
    (``pool="all"``), and an output projection.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, gnn: str = "gat", layers: int = 2,
                 heads: int = 2, pool: str = "path"):
        super().__init__()
        if pool not in POOLS:
            raise InputError(f"explainer_pool must be one of {', '.join(POOLS)}; got {pool!r}")
        if layers < 1:
            raise InputError(f"explainer_gnn_layers must be >= 1, got {layers}")
        self.pool = pool
        self.input = nn.Linear(in_dim, hidden_dim)
        self.node_type = nn.Embedding(2, hidden_dim)
        self.convs = nn.ModuleList(_conv(gnn, hidden_dim, heads) for _ in range(layers))
        self.output = nn.Linear(hidden_dim, out_dim)

    def forward(self, batch: Batch) -> Tensor:
        hidden = self.input(batch.x) + self.node_type(batch.node_type)
        for conv in self.convs:
            hidden = F.elu(conv(hidden, batch.edge_index))
        keep = batch.path_mask if self.pool == "path" else torch.ones_like(batch.path_mask)
        pooled = global_mean_pool(hidden[keep], batch.batch[keep], size=batch.num_graphs)
        return self.output(pooled)


def concat_paths(path_vectors: Tensor, counts: Sequence[int], k: int, no_path: Tensor) -> Tensor:
    """[path_1, ..., path_k] per pair: ``path_vectors`` holds each pair's paths in turn (``counts[b]`` <= k of
    them); a missing path is ``no_path``. Returns [len(counts), k * dim]."""
    counts_t = torch.as_tensor(list(counts), dtype=torch.long, device=path_vectors.device)
    if len(counts_t) and (counts_t.min() < 0 or counts_t.max() > k):
        raise InputError(f"every pair needs between 0 and {k} paths, got counts {counts_t.tolist()}")
    if int(counts_t.sum()) != len(path_vectors):
        raise InputError(f"{len(path_vectors)} path vectors for counts summing to {int(counts_t.sum())}")
    pairs = torch.repeat_interleave(torch.arange(len(counts_t), device=counts_t.device), counts_t)
    starts = torch.repeat_interleave(torch.cumsum(counts_t, 0) - counts_t, counts_t)
    slots = pairs * k + torch.arange(len(pairs), device=counts_t.device) - starts
    padded = no_path.unsqueeze(0).repeat(len(counts_t) * k, 1)
    padded = padded.index_put((slots,), path_vectors.to(padded.dtype))
    return padded.reshape(len(counts_t), k * no_path.shape[-1])


# -- the adapter and the soft prompt -------------------------------------------------------------------------------


class MoEAdapter(nn.Module):
    """A dense mixture of ``experts`` linear maps to [soft_tokens, llm_hidden], mixed by a softmax gate."""

    def __init__(self, in_dim: int, llm_hidden: int, soft_tokens: int, experts: int = 4, dropout: float = 0.1):
        super().__init__()
        self.soft_tokens, self.llm_hidden = soft_tokens, llm_hidden
        self.dropout = nn.Dropout(dropout)
        self.gate = nn.Linear(in_dim, experts)
        self.experts = nn.ModuleList(nn.Linear(in_dim, soft_tokens * llm_hidden) for _ in range(experts))

    def gate_weights(self, inputs: Tensor) -> Tensor:
        """[batch, experts], each row summing to 1."""
        return torch.softmax(self.gate(inputs), dim=-1)

    def forward(self, inputs: Tensor) -> Tensor:
        inputs = self.dropout(inputs)
        weights = self.gate_weights(inputs)
        outputs = torch.stack([expert(inputs) for expert in self.experts], dim=1)
        mixed = (weights.unsqueeze(-1) * outputs).sum(dim=1)
        return mixed.view(len(inputs), self.soft_tokens, self.llm_hidden)


def place_soft_prompts(inputs_embeds: Tensor, soft_embeddings: Tensor, soft_positions: Tensor) -> Tensor:
    """A copy of ``inputs_embeds`` [batch, length, hidden] with ``soft_embeddings`` [batch, soft, hidden] written
    at ``soft_positions`` [batch, soft] (distinct indices per row); differentiable in both embeddings."""
    batch, length, hidden = inputs_embeds.shape
    positions = torch.as_tensor(soft_positions, dtype=torch.long, device=inputs_embeds.device)
    if positions.shape != soft_embeddings.shape[:2] or soft_embeddings.shape != (batch, positions.shape[1], hidden):
        raise InputError(f"soft embeddings {tuple(soft_embeddings.shape)} and positions {tuple(positions.shape)} do "
                         f"not fit inputs_embeds {tuple(inputs_embeds.shape)}")
    if positions.numel() and (positions.min() < 0 or positions.max() >= length):
        raise InputError(f"soft prompt positions must lie in [0, {length}), got {positions.tolist()}")
    if positions.numel() and (positions.sort(dim=1).values.diff(dim=1) == 0).any():
        raise InputError(f"soft prompt positions repeat within a row: {positions.tolist()}")
    index = positions.unsqueeze(-1).expand(-1, -1, hidden)
    return inputs_embeds.scatter(1, index, soft_embeddings.to(inputs_embeds.dtype))


class GraphSoftPrompt(nn.Module):
    """Pairs' path subgraphs -> [batch, soft_tokens, llm_hidden] soft prompt embeddings.

    Holds only the GNN, the "no path" vector and the adapter, so its
    ``state_dict`` is small and saved apart from the LLM.
    """

    def __init__(self, in_dim: int, llm_hidden: int, paths: int = 3, soft_tokens: int = 3, gnn: str = "gat",
                 layers: int = 2, hidden_dim: int = 64, heads: int = 2, pool: str = "path", experts: int = 4,
                 dropout: float = 0.1):
        super().__init__()
        if paths < 1 or soft_tokens < 1:
            raise InputError(f"a graph soft prompt needs paths >= 1 and soft_tokens >= 1, got {paths}, {soft_tokens}")
        self.paths = paths
        self.encoder = PathGraphEncoder(in_dim, hidden_dim, hidden_dim, gnn, layers, heads, pool)
        self.no_path = nn.Parameter(torch.zeros(hidden_dim))
        self.adapter = MoEAdapter(paths * hidden_dim, llm_hidden, soft_tokens, experts, dropout)

    @classmethod
    def from_config(cls, config, in_dim: int, llm_hidden: int) -> "GraphSoftPrompt":
        settings = graph_settings(config)
        return cls(in_dim, llm_hidden, paths=settings["explainer_paths"],
                   soft_tokens=settings["explainer_soft_tokens"], gnn=settings["explainer_gnn"],
                   layers=settings["explainer_gnn_layers"], hidden_dim=settings["explainer_gnn_hidden"],
                   heads=settings["explainer_gnn_heads"], pool=settings["explainer_pool"],
                   experts=settings["explainer_experts"], dropout=float(settings["explainer_adapter_dropout"]))

    def pair_vectors(self, pairs: Sequence[Sequence[Data]]) -> Tensor:
        """[batch, paths * hidden]: each pair's first ``paths`` path vectors, padded with the "no path" vector."""
        kept = [list(graphs)[:self.paths] for graphs in pairs]
        flat = [graph for graphs in kept for graph in graphs]
        if flat:
            vectors = self.encoder(Batch.from_data_list(flat).to(self.no_path.device))
        else:
            vectors = self.no_path.new_zeros((0, self.no_path.shape[0]))
        return concat_paths(vectors, [len(graphs) for graphs in kept], self.paths, self.no_path)

    def forward(self, pairs: Sequence[Sequence[Data]]) -> Tensor:
        return self.adapter(self.pair_vectors(pairs))


def build_graph_soft_prompt(config, in_dim: int, llm_hidden: int) -> Optional[GraphSoftPrompt]:
    """The soft prompt module of a config, or None when :func:`soft_prompt_tokens` is 0 (no soft prompt)."""
    if soft_prompt_tokens(config) == 0:
        return None
    return GraphSoftPrompt.from_config(config, in_dim, llm_hidden)
