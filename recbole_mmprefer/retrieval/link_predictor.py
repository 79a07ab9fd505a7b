"""PaGE-Link's link predictor (issue 15; Zhang et al., WWW 2023, as G-Refer runs it): a 2-layer relational GCN.

The training graph has two relations, ``buys`` (user -> item) and ``bought
by`` (item -> user). Every node starts from a learned 128-d embedding (N(0, 1)
at the start); a layer maps each relation's source states by its own linear
map, multiplies each message by its edge's weight (1 in training; the
explainer's sigmoid mask when it explains a pair), averages the messages a
node receives per relation (over its in-degree), sums over relations and adds
the node's own state through a shared linear map (PaGE-Link's heterogeneous
RGCN); leaky ReLU between the two layers. A link (u, i) scores the dot
product of the two output states. Trained with BCE on every training edge
against as many random (user, item) non-edges, resampled each epoch.

The weights go to the ``link_predictor`` artifact with the fingerprint of the
graph they were trained on; :func:`load_link_predictor` refuses them for
another graph.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recbole_mmprefer.errors import InputError
from recbole_mmprefer.retrieval.graph import InteractionGraph
from recbole_mmprefer.settings import StageSettings, check_float, check_int

logger = logging.getLogger(__name__)

BUYS, BOUGHT_BY = 0, 1


@dataclass
class LinkPredictorSettings(StageSettings):
    """The ``pagelink_predictor_*`` keys (properties/retrieval.yaml)."""

    PREFIX = "pagelink_predictor_"

    embedding_size: int
    hidden_size: int
    epochs: int
    learning_rate: float

    def __post_init__(self):
        self.embedding_size = check_int(self.key("embedding_size"), self.embedding_size, 1)
        self.hidden_size = check_int(self.key("hidden_size"), self.hidden_size, 1)
        self.epochs = check_int(self.key("epochs"), self.epochs, 1)
        self.learning_rate = check_float(self.key("learning_rate"), self.learning_rate, 0.0, above_minimum=True)


@dataclass(frozen=True)
class Edges:
    """Directed edges (both directions of each interaction) with their relation."""

    sources: torch.Tensor
    targets: torch.Tensor
    relations: torch.Tensor

    @classmethod
    def of_graph(cls, graph: InteractionGraph) -> "Edges":
        sources = np.repeat(np.arange(graph.num_nodes), graph.degrees)
        relations = np.where(sources < graph.num_users, BUYS, BOUGHT_BY)
        return cls(torch.as_tensor(sources), torch.as_tensor(graph.indices), torch.as_tensor(relations))


class RelationalLayer(nn.Module):
    """One layer: per relation, the mean of weighted, linearly mapped source states; summed over relations."""

    def __init__(self, in_size: int, out_size: int, relations: int = 2) -> None:
        super().__init__()
        self.maps = nn.ModuleList(nn.Linear(in_size, out_size) for _ in range(relations))
        self.own = nn.Linear(in_size, out_size)

    def forward(self, states: torch.Tensor, edges: Edges, weights: torch.Tensor) -> torch.Tensor:
        out = self.own(states)
        size = states.size(0)
        for relation, linear in enumerate(self.maps):
            chosen = edges.relations == relation
            sources, targets = edges.sources[chosen], edges.targets[chosen]
            counts = torch.bincount(targets, minlength=size).clamp(min=1)
            # the weighted mean over in-neighbours as one sparse product (gradients reach the edge weights)
            adjacency = torch.sparse_coo_tensor(torch.stack([targets, sources]), weights[chosen] / counts[targets],
                                                (size, size), check_invariants=False)
            out = out + torch.sparse.mm(adjacency, linear(states))
        return out


class LinkPredictor(nn.Module):
    """Node embeddings, two relational layers and a dot-product link score."""

    def __init__(self, num_nodes: int, settings: LinkPredictorSettings) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_nodes, settings.embedding_size)
        nn.init.normal_(self.embedding.weight)
        self.first = RelationalLayer(settings.embedding_size, settings.hidden_size)
        self.second = RelationalLayer(settings.hidden_size, settings.hidden_size)

    def node_states(self, edges: Edges, weights: Optional[torch.Tensor] = None,
                    nodes: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Output states of ``nodes`` (default all) over ``edges`` (whose ids index ``nodes``)."""
        states = self.embedding.weight if nodes is None else self.embedding(nodes)
        weights = torch.ones(len(edges.sources)) if weights is None else weights
        return self.second(F.leaky_relu(self.first(states, edges, weights)), edges, weights)

    @staticmethod
    def score(states: torch.Tensor, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return (states[users] * states[items]).sum(dim=-1)


def random_non_edges(graph: InteractionGraph, count: int, generator: np.random.Generator) -> Tuple[np.ndarray, ...]:
    """``count`` random (user node, item node) pairs that are not training edges (rejection sampling)."""
    sources = np.repeat(np.arange(graph.num_nodes), graph.degrees)
    edges = np.unique(sources[sources < graph.num_users] * graph.num_nodes + graph.indices[sources < graph.num_users])
    users, items = np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    while len(users) < count:
        u = generator.integers(0, graph.num_users, count)
        i = generator.integers(graph.num_users, graph.num_nodes, count)
        keep = ~np.isin(u * graph.num_nodes + i, edges)
        users, items = np.concatenate([users, u[keep]]), np.concatenate([items, i[keep]])
    return users[:count], items[:count]


def train_link_predictor(graph: InteractionGraph, settings: LinkPredictorSettings,
                         seed: int) -> Tuple[LinkPredictor, Dict[str, float]]:
    """Full-graph BCE training, positives = the training edges, 1:1 fresh negatives each epoch."""
    torch.manual_seed(seed)
    generator = np.random.default_rng(seed)
    model = LinkPredictor(graph.num_nodes, settings)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    edges = Edges.of_graph(graph)
    buys = edges.relations == BUYS
    positive_users, positive_items = edges.sources[buys], edges.targets[buys]
    if len(positive_users) == 0:
        raise InputError("the training graph has no edges: nothing to train the link predictor on")
    started, loss = time.perf_counter(), torch.tensor(0.0)
    for _ in range(settings.epochs):
        negative_users, negative_items = map(torch.as_tensor, random_non_edges(graph, len(positive_users), generator))
        states = model.node_states(edges)
        logits = torch.cat([model.score(states, positive_users, positive_items),
                            model.score(states, negative_users, negative_items)])
        labels = torch.cat([torch.ones(len(positive_users)), torch.zeros(len(negative_users))])
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    report = {"epochs": settings.epochs, "final_loss": float(loss.detach()), "edges": int(len(positive_users)),
              "seconds": round(time.perf_counter() - started, 3)}
    logger.info("link predictor: %d epochs on %d edges, loss %.4f, %.1f s", settings.epochs, report["edges"],
                report["final_loss"], report["seconds"])
    return model, report


def save_link_predictor(folder: Path, model: LinkPredictor, graph_fingerprint: str) -> None:
    from safetensors.torch import save_file

    save_file(model.state_dict(), str(Path(folder) / "model.safetensors"),
              metadata={"graph_fingerprint": graph_fingerprint})


def load_link_predictor(folder: Path, settings: LinkPredictorSettings, graph: InteractionGraph,
                        graph_fingerprint: str) -> LinkPredictor:
    """The saved predictor; InputError when it was trained on another graph."""
    from safetensors import safe_open

    path = Path(folder) / "model.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        trained_on = (handle.metadata() or {}).get("graph_fingerprint")
        state = {key: handle.get_tensor(key) for key in handle.keys()}
    if trained_on != graph_fingerprint:
        raise InputError(f"{path} was trained on another graph (fingerprint {trained_on}, this run's "
                         f"{graph_fingerprint}): train it again (`mmprefer paths --path_retriever=pagelink --force`)")
    model = LinkPredictor(graph.num_nodes, settings)
    model.load_state_dict(state)
    return model.eval()
