"""The graph level of the explainer (paper section 3.4): retrieval paths -> GNN -> MoE adapter -> soft prompt.

For each (user, item) pair the retriever (section 3.3) found up to k paths
through the training graph. Each path becomes a small graph, a GNN (GAT by
default; GCN and a graph transformer are the paper's alternatives) encodes it,
the k path vectors are concatenated and a mixture-of-experts adapter maps the
result to ``soft_tokens`` vectors of the LLM's hidden size, which replace the
embeddings of reserved prompt positions in ``inputs_embeds``.

Choices made here (the paper leaves them open):

* **Path graphs** (:mod:`.path_graphs`): each path with a seeded sample of
  its nodes' neighbours; a learned node-type embedding is added after the
  input projection.
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

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Batch, Data
from torch_geometric.nn import GATConv, GCNConv, TransformerConv, global_mean_pool

from recbole_mmprefer.errors import InputError
from recbole_mmprefer.explainer.settings import GNN_TYPES, POOLS, GraphPromptSettings


def graph_settings(config) -> GraphPromptSettings:
    """The graph-level settings of a config (RecBole Config, dict or None), checked."""
    return GraphPromptSettings.from_config(config)


def soft_prompt_tokens(config) -> int:
    """How many prompt positions to reserve for the soft prompt (see
    :attr:`GraphPromptSettings.soft_prompt_tokens`)."""
    return graph_settings(config).soft_prompt_tokens


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
    """A dense mixture of ``experts`` linear maps to [soft_tokens, llm_hidden], mixed by a softmax gate.

    ``zero_start``: the experts start at zero (the output is 0 until they learn; their gradients are not)."""

    def __init__(self, in_dim: int, llm_hidden: int, soft_tokens: int, experts: int = 4, dropout: float = 0.1,
                 zero_start: bool = False):
        super().__init__()
        self.soft_tokens, self.llm_hidden = soft_tokens, llm_hidden
        self.dropout = nn.Dropout(dropout)
        self.gate = nn.Linear(in_dim, experts)
        self.experts = nn.ModuleList(nn.Linear(in_dim, soft_tokens * llm_hidden) for _ in range(experts))
        if zero_start:
            for expert in self.experts:
                nn.init.zeros_(expert.weight)
                nn.init.zeros_(expert.bias)

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

    Holds only the GNN, the "no path" vector and the adapter (and, with ``start="neutral"``, the neutral
    token the adapter's output is added to), so its ``state_dict`` is small and saved apart from the LLM.
    """

    def __init__(self, in_dim: int, llm_hidden: int, paths: int = 3, soft_tokens: int = 3, gnn: str = "gat",
                 layers: int = 2, hidden_dim: int = 64, heads: int = 2, pool: str = "path", experts: int = 4,
                 dropout: float = 0.1, start: str = "random"):
        super().__init__()
        if paths < 1 or soft_tokens < 1:
            raise InputError(f"a graph soft prompt needs paths >= 1 and soft_tokens >= 1, got {paths}, {soft_tokens}")
        self.paths = paths
        self.encoder = PathGraphEncoder(in_dim, hidden_dim, hidden_dim, gnn, layers, heads, pool)
        self.no_path = nn.Parameter(torch.zeros(hidden_dim))
        self.adapter = MoEAdapter(paths * hidden_dim, llm_hidden, soft_tokens, experts, dropout,
                                  zero_start=start == "neutral")
        self.neutral = nn.Parameter(torch.zeros(soft_tokens, llm_hidden)) if start == "neutral" else None

    def start_at(self, token_embedding: Tensor) -> None:
        """Set the neutral token (``start="neutral"``), e.g. to the LLM's mean input embedding."""
        if self.neutral is not None:
            with torch.no_grad():
                self.neutral.copy_(token_embedding.detach().to(self.neutral.dtype).expand_as(self.neutral))

    @classmethod
    def from_config(cls, config, in_dim: int, llm_hidden: int) -> "GraphSoftPrompt":
        return cls.from_settings(graph_settings(config), in_dim, llm_hidden)

    @classmethod
    def from_settings(cls, settings: GraphPromptSettings, in_dim: int, llm_hidden: int) -> "GraphSoftPrompt":
        return cls(in_dim, llm_hidden, paths=settings.paths, soft_tokens=settings.soft_prompt_tokens,
                   gnn=settings.gnn, layers=settings.gnn_layers, hidden_dim=settings.gnn_hidden,
                   heads=settings.gnn_heads, pool=settings.pool, experts=settings.experts,
                   dropout=settings.adapter_dropout, start=settings.soft_prompt_start)

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
        soft = self.adapter(self.pair_vectors(pairs))
        return soft if self.neutral is None else soft + self.neutral


def build_graph_soft_prompt(config, in_dim: int, llm_hidden: int) -> Optional[GraphSoftPrompt]:
    """The soft prompt module of a config, or None when :func:`soft_prompt_tokens` is 0 (no soft prompt)."""
    settings = graph_settings(config)
    if settings.soft_prompt_tokens == 0:
        return None
    return GraphSoftPrompt.from_settings(settings, in_dim, llm_hidden)
