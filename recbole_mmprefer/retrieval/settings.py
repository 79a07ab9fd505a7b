"""Settings of the retrieval paths (paper section 3.3, Algorithm 1): the ``path_*`` keys of retrieval.yaml."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

from recbole_mmprefer.data.explanations import SPLITS
from recbole_mmprefer.retrieval.paths import COST_RULES, MAX_HOPS, MAX_K
from recbole_mmprefer.settings import StageSettings, check_bool, check_choice, check_int, check_optional_int


@dataclass
class RetrievalSettings(StageSettings):
    """``path_hops``, ``path_core``, ``path_k``, ``path_weight``, ``path_workers``, ``path_pairs_split``,
    ``path_max_subgraph_nodes``, ``path_retriever``, ``path_node_retrieval`` and ``path_node_k``, checked."""

    PREFIX = "path_"

    hops: int
    core: int
    k: int
    weight: str
    workers: int
    pairs_split: Optional[str]
    max_subgraph_nodes: Optional[int]
    retriever: str
    node_retrieval: bool
    node_k: int

    def __post_init__(self):
        self.node_retrieval = check_bool("path_node_retrieval", self.node_retrieval)
        self.node_k = check_int("path_node_k", self.node_k, 1)
        self.retriever = check_choice("path_retriever", self.retriever, ("mmprefer", "pagelink"))
        self.hops = check_int("path_hops", self.hops, 1, MAX_HOPS)
        self.core = check_int("path_core", self.core, 0)
        self.k = check_int("path_k", self.k, 1, MAX_K)
        self.weight = check_choice("path_weight", self.weight, sorted(COST_RULES))
        self.workers = check_int("path_workers", self.workers, 1)
        if self.pairs_split is not None:
            self.pairs_split = check_choice("path_pairs_split", self.pairs_split, SPLITS)
        self.max_subgraph_nodes = check_optional_int("path_max_subgraph_nodes", self.max_subgraph_nodes, 2)

    def search(self) -> Dict[str, object]:
        """The keyword arguments of :func:`~recbole_mmprefer.retrieval.paths.find_paths`."""
        return {"hops": self.hops, "core": self.core, "k": self.k, "weight": self.weight,
                "max_subgraph_nodes": self.max_subgraph_nodes}

    def nodes(self) -> Dict[str, object]:
        """What node retrieval adds to the paths' inputs ({} when it is off, so that paths made without it
        stay up to date)."""
        return {"node_k": self.node_k} if self.node_retrieval else {}

    @property
    def needs_vectors(self) -> bool:
        return self.retriever == "mmprefer" and COST_RULES[self.weight].needs_vectors
