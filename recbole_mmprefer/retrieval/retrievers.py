"""Path retrievers as plugins (issue 15): ``path_retriever: mmprefer`` (ours, paper section 3.3) or ``pagelink``.

A retriever is built once per run (:func:`build_retriever`) and called per
pair; both return a :class:`~recbole_mmprefer.retrieval.paths.PathResult`, so
``paths.jsonl``, the explainer, the report and the drawings work with either.
``pagelink`` trains PaGE-Link's link predictor on the run's training graph
first (the ``link_predictor`` artifact, reused while the graph and its
settings are unchanged; its training time is reported apart from the per-pair
search). ``path_node_retrieval: True`` wraps either in :class:`WithRelatedNodes`
(G-Refer's node-level retrieval, :mod:`.node_retrieval`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np

from recbole_mmprefer.artifacts import ARTIFACTS
from recbole_mmprefer.resources import stage_setting
from recbole_mmprefer.retrieval.graph import InteractionGraph
from recbole_mmprefer.retrieval.inputs import load_node_vectors
from recbole_mmprefer.retrieval.link_predictor import (
    LinkPredictorSettings,
    load_link_predictor,
    save_link_predictor,
    train_link_predictor,
)
from recbole_mmprefer.retrieval.node_retrieval import NodeRetriever, build_node_retriever
from recbole_mmprefer.retrieval.pagelink import PageLinkSettings, pagelink_paths
from recbole_mmprefer.retrieval.paths import PathResult, find_paths
from recbole_mmprefer.retrieval.settings import RetrievalSettings
from recbole_mmprefer.utils import json_sha256

logger = logging.getLogger(__name__)

RETRIEVERS = ("mmprefer", "pagelink")


@dataclass
class OurRetriever:
    """Algorithm 1: k-core subgraph, eq. 7 costs, Yen over Dijkstra."""

    graph: InteractionGraph
    user_vectors: Optional[np.ndarray]
    item_vectors: Optional[np.ndarray]
    search: Dict[str, object]

    def __call__(self, user: str, item: str) -> PathResult:
        return find_paths(self.graph, user, item, self.user_vectors, self.item_vectors, **self.search)


@dataclass
class PageLinkRetriever:
    """PaGE-Link's masks and paths; the first ``keep`` (``path_k``) go to the prompt."""

    graph: InteractionGraph
    predictor: object
    settings: PageLinkSettings
    keep: int
    seed: int

    def __call__(self, user: str, item: str) -> PathResult:
        return pagelink_paths(self.graph, self.predictor, user, item, self.settings, self.keep, self.seed)


@dataclass
class WithRelatedNodes:
    """A path retriever whose results also carry G-Refer's related users and items (``related``)."""

    paths: object
    nodes: NodeRetriever

    def __call__(self, user: str, item: str) -> PathResult:
        result = self.paths(user, item)
        result.related = self.nodes(user, item)
        return result


def build_retriever(config, graph: InteractionGraph, settings: RetrievalSettings) -> Tuple[object, dict]:
    """(the configured retriever, what its paths depend on besides the pairs: for the paths' input hash)."""
    retriever, depends_on = build_path_retriever(config, graph, settings)
    if settings.node_retrieval:
        nodes, embeddings_hash = build_node_retriever(config, graph, settings.node_k)
        retriever = WithRelatedNodes(retriever, nodes)
        depends_on["related_nodes"] = {**settings.nodes(), "profile_embeddings": embeddings_hash}
    return retriever, depends_on


def build_path_retriever(config, graph: InteractionGraph, settings: RetrievalSettings) -> Tuple[object, dict]:
    """(the configured path retriever, what its paths depend on besides the pairs)."""
    if settings.retriever == "mmprefer":
        user_vectors, item_vectors, report = (load_node_vectors(config, graph) if settings.needs_vectors
                                              else (None, None, {}))
        return OurRetriever(graph, user_vectors, item_vectors, settings.search()), {"vectors": report}
    pagelink = PageLinkSettings.from_config(config)
    predictor, report = link_predictor(config, graph)
    seed = int(stage_setting(config, "seed"))
    retriever = PageLinkRetriever(graph, predictor, pagelink, settings.k, seed)
    return retriever, {"pagelink": pagelink.to_config(), "predictor": report, "seed": seed}


def link_predictor(config, graph: InteractionGraph):
    """The run's PaGE-Link predictor: trained once per graph and settings, then loaded."""
    settings = LinkPredictorSettings.from_config(config)
    fingerprint = ARTIFACTS["graph"].input_hash(config) or json_sha256({"edges": graph.num_edges})
    seed = int(stage_setting(config, "seed"))
    input_hash = json_sha256({"graph": fingerprint, "settings": settings.to_config(), "seed": seed})
    artifact = ARTIFACTS["link_predictor"]
    if not artifact.is_fresh(config, input_hash):
        model, report = train_link_predictor(graph, settings, seed)
        with artifact.writing(config, input_hash, {"report": report, "graph": fingerprint}) as staging:
            save_link_predictor(staging, model, fingerprint)
        logger.info("PaGE-Link link predictor trained in %.1f s: %s", report["seconds"], artifact.dir(config))
    meta = artifact.read_meta(config)
    return load_link_predictor(artifact.dir(config), settings, graph, fingerprint), {
        "input_hash": input_hash, "training_seconds": meta["report"]["seconds"]}
