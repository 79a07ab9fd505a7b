"""G-Refer's node-level retrieval (issue 15; G-Refer, Li et al. 2025, section "hybrid graph retrieval").

Beside its paths, G-Refer gives the LLM the pair's most similar neighbours by
profile: among the users who bought the item, those whose profile is closest
to the user's; among the items the user bought, those closest to the item.
Profiles are embedded once per run by the feature store's text encoder (the
bundled MiniLM unless ``text_encoder`` names another): users by their
profile, items by ``<title>: <profile>`` (the text a path shows for them).
Nodes without any text are never retrieved, and neither is a neighbour with
a negative cosine.

Switched on by ``path_node_retrieval: True`` (properties/retrieval.yaml);
each ``paths.jsonl`` record then gains ``"related": {"users": [...],
"items": [...]}``, tokens best first, at most ``path_node_k`` of each. The
explainer shows the first ``explainer_related_nodes`` of each in its prompt
(:mod:`recbole_mmprefer.explainer.prompts`). The embeddings are the
``profile_embeddings`` artifact, rebuilt when the profiles, titles, graph or
encoder change.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from recbole_mmprefer.artifacts import ARTIFACTS
from recbole_mmprefer.data.node_text import NodeText
from recbole_mmprefer.resources import stage_setting
from recbole_mmprefer.retrieval.graph import InteractionGraph
from recbole_mmprefer.utils import json_sha256

logger = logging.getLogger(__name__)

USERS_FILE, ITEMS_FILE = "users.npy", "items.npy"


def item_profile_text(node_text: NodeText, token: str) -> str:
    """``<title>: <profile>``, or whichever of the two the item has ("" with neither)."""
    title, profile = node_text.title(token).strip(), node_text.profile("item", token).strip()
    return f"{title}: {profile}" if title and profile else title or profile


def profile_texts(graph: InteractionGraph, node_text: NodeText) -> Dict[str, List[str]]:
    """The text embedded for every graph user and item, in graph order."""
    return {"user": [node_text.profile("user", token).strip() for token in graph.user_tokens],
            "item": [item_profile_text(node_text, token) for token in graph.item_tokens]}


def embed_texts(texts: Sequence[str], encoder) -> np.ndarray:
    """Unit rows from ``encoder.encode`` for the non-empty texts; zero rows (never retrieved) for empty ones."""
    rows = np.zeros((len(texts), 0), dtype=np.float32)
    present = [n for n, text in enumerate(texts) if text]
    if present:
        encoded = encoder.encode([texts[n] for n in present])
        rows = np.zeros((len(texts), encoded.shape[1]), dtype=np.float32)
        rows[present] = encoded
    return rows


@dataclass
class NodeRetriever:
    """Top ``k`` similar neighbours of a pair: users who bought the item, items the user bought."""

    graph: InteractionGraph
    user_embeddings: np.ndarray
    item_embeddings: np.ndarray
    k: int

    def __call__(self, user: str, item: str) -> Dict[str, List[str]]:
        user_node, item_node = self.graph.user_node(user), self.graph.item_node(item)
        offset = self.graph.num_users
        users = [int(n) for n in self.graph.neighbours(item_node) if n != user_node]
        items = [int(n) - offset for n in self.graph.neighbours(user_node) if n != item_node]
        return {"users": self._closest(self.user_embeddings, users, user_node, self.graph.user_tokens),
                "items": self._closest(self.item_embeddings, items, item_node - offset, self.graph.item_tokens)}

    def _closest(self, embeddings: np.ndarray, candidates: List[int], anchor: int, tokens: List[str]) -> List[str]:
        if not candidates or embeddings.shape[1] == 0:
            return []
        rows = embeddings[candidates]
        present = np.abs(rows).sum(axis=1) > 0
        similarity = rows @ embeddings[anchor]
        keep = [n for n in np.argsort(-similarity, kind="stable") if present[n] and similarity[n] >= 0]
        return [tokens[candidates[n]] for n in keep[:self.k]]


def profile_embeddings(config, graph: InteractionGraph, encoder=None) -> Dict[str, np.ndarray]:
    """The run's ``profile_embeddings`` (users and items in graph order): built once, then read."""
    from recbole_mmprefer.data.features import TextEncoder, default_text_encoder_path, model_fingerprint

    node_text = NodeText.from_config(config)
    encoder_path = stage_setting(config, "text_encoder") or str(default_text_encoder_path())
    texts = profile_texts(graph, node_text)
    fingerprint = encoder.fingerprint if encoder is not None else model_fingerprint(Path(encoder_path))
    input_hash = json_sha256({"texts": texts, "encoder": fingerprint,
                              "max_length": int(stage_setting(config, "text_max_length"))})
    artifact = ARTIFACTS["profile_embeddings"]
    if not artifact.is_fresh(config, input_hash):
        encoder = encoder or TextEncoder(encoder_path, int(stage_setting(config, "text_max_length")))
        users, items = embed_texts(texts["user"], encoder), embed_texts(texts["item"], encoder)
        meta = {"encoder": fingerprint, "users_without_text": int(sum(not t for t in texts["user"])),
                "items_without_text": int(sum(not t for t in texts["item"]))}
        with artifact.writing(config, input_hash, meta) as staging:
            np.save(staging / USERS_FILE, users)
            np.save(staging / ITEMS_FILE, items)
        logger.info("Embedded %d user and %d item profiles (%d and %d without text) into %s", len(users),
                    len(items), meta["users_without_text"], meta["items_without_text"], artifact.dir(config))
    folder = artifact.dir(config)
    return {"users": np.load(folder / USERS_FILE), "items": np.load(folder / ITEMS_FILE), "input_hash": input_hash}


def build_node_retriever(config, graph: InteractionGraph, k: int, encoder=None) -> Tuple[NodeRetriever, str]:
    """(the run's node retriever, its embeddings' input hash: for the paths' input hash)."""
    embeddings = profile_embeddings(config, graph, encoder)
    return NodeRetriever(graph, embeddings["users"], embeddings["items"], k), embeddings["input_hash"]
