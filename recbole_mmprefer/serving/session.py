"""Recommend and explain for a user (issue 17): the toolkit's front door, shared by the CLI, Python and the web app.

A :class:`RecommendSession` reads a finished run through the artifact layer:
the training graph (``graph``), MMPSASRec's vectors (``recommender``), the
node text and the data set's ``.inter`` file. For a user it gives

* the **history**: the user's interactions in ``.inter``, oldest first;
* the **top-k items**: MMPSASRec's full-sort scores (the exported sequence
  vector of the user against every item vector, as ``full_sort_predict``
  scores them: dot product or cosine, per the recommender's ``similarity``),
  every item the user interacted with excluded. A user without a vector (no
  history the recommender saw) gets the most interacted items instead,
  marked ``"source": "popularity"``;
* each item's **retrieval paths** (Algorithm 1 with the run's ``path_*``
  settings; never through a direct edge) and their drawing;
* with an :class:`~recbole_mmprefer.serving.explain.PairExplainer`, the
  **explanation** of a pair.

Python::

    from recbole_mmprefer.serving import RecommendSession
    session = RecommendSession.from_dataset("ml-100k")
    for item in session.recommend("196", topk=5)["items"]:
        print(item["title"], item["score"])
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

from recbole_mmprefer.artifacts import ARTIFACTS, dataset_file
from recbole_mmprefer.data.atomic import in_time_order, read_atomic_file
from recbole_mmprefer.data.node_text import NodeText
from recbole_mmprefer.errors import InputError
from recbole_mmprefer.model.export import read_vectors
from recbole_mmprefer.resources import stage_setting
from recbole_mmprefer.retrieval.graph import InteractionGraph
from recbole_mmprefer.retrieval.inputs import load_graph, load_node_vectors
from recbole_mmprefer.retrieval.paths import PathResult, find_paths
from recbole_mmprefer.retrieval.settings import RetrievalSettings
from recbole_mmprefer.utils import read_json, read_lines

logger = logging.getLogger(__name__)

MAX_TOPK = 100


class UnknownNodeError(InputError):
    """A user or item id the run does not know; the message says how to list the valid ones."""

    def __init__(self, kind: str, token: str, hint: str):
        super().__init__(f"unknown {kind} {token!r}: {hint}")
        self.kind, self.token = kind, token


@dataclass
class Vectors:
    """The recommender's vectors in its own row order, and how it scores them."""

    user_tokens: List[str]
    user_rows: Dict[str, int]
    users: np.ndarray
    item_tokens: List[str]
    items: np.ndarray
    similarity: str

    @classmethod
    def load(cls, config) -> "Vectors":
        folder = ARTIFACTS["recommender"].require(config)
        meta = read_json(folder / "meta.json")
        user_tokens, item_tokens = read_lines(folder / "user_tokens.txt"), read_lines(folder / "item_tokens.txt")
        users, _ = read_vectors(folder, "user", user_tokens)
        items, _ = read_vectors(folder, "item", item_tokens)
        similarity = meta.get("similarity") or stage_setting(config, "similarity") or "dot"
        if similarity == "cos":
            users = users / np.maximum(np.linalg.norm(users, axis=1, keepdims=True), 1e-12)
            items = items / np.maximum(np.linalg.norm(items, axis=1, keepdims=True), 1e-12)
        return cls(user_tokens, {token: row for row, token in enumerate(user_tokens)}, users, item_tokens, items,
                   similarity)


class RecommendSession:
    """One run's recommender, graph, texts and histories, loaded once (see the module docstring)."""

    def __init__(self, config):
        self.config = config
        self.dataset = str(config["dataset"])
        self.graph: InteractionGraph = load_graph(config)
        self.vectors = Vectors.load(config)
        self.node_text = NodeText.from_config(config)
        self.retrieval = RetrievalSettings.from_config(config)
        self.path_vectors = (load_node_vectors(config, self.graph)[:2] if self.retrieval.needs_vectors
                             else (None, None))
        self.histories = read_histories(config)
        self.item_rows = {token: row for row, token in enumerate(self.vectors.item_tokens)}
        degrees = self.graph.degrees[self.graph.num_users:]
        self.popular = [self.graph.item_tokens[n] for n in np.argsort(-degrees, kind="stable")]
        logger.info("Loaded %s: %d users, %d items with vectors (%s scores), %d graph edges", self.dataset,
                    len(self.known_users()), len(self.vectors.item_tokens), self.vectors.similarity,
                    self.graph.num_edges)

    @classmethod
    def from_dataset(cls, dataset: str, config_files: Optional[Sequence[str]] = None,
                     overrides: Optional[Sequence[str]] = None) -> "RecommendSession":
        from recbole_mmprefer.config import stage_config

        return cls(stage_config(dataset, list(config_files) if config_files else None, list(overrides or [])))

    # -- users and items ----------------------------------------------------------------------------------

    def known_users(self) -> List[str]:
        tokens = dict.fromkeys(self.graph.user_tokens)
        tokens.update(dict.fromkeys(self.vectors.user_tokens))
        tokens.update(dict.fromkeys(self.histories))
        return list(tokens)

    def check_user(self, user: str) -> str:
        user = str(user)
        if user not in self.histories and user not in self.vectors.user_rows and user not in self.graph.user_index:
            raise UnknownNodeError("user", user, f"{self.dataset} has {len(self.known_users())} users; "
                                   "`GET /api/users?query=...` or `mmprefer recommend --list_users` lists them")
        return user

    def check_item(self, item: str) -> str:
        item = str(item)
        if item not in self.item_rows and item not in self.graph.item_index:
            raise UnknownNodeError("item", item, f"{self.dataset} has {len(self.vectors.item_tokens)} items; a "
                                   "user's recommendations and history list valid ones")
        return item

    def item_card(self, item: str) -> Dict[str, str]:
        return {"item_id": item, "title": self.node_text.title(item) or f"item {item}",
                "profile": self.node_text.profile("item", item)}

    def users(self, query: str = "", limit: int = 20) -> Dict[str, object]:
        """Users whose id or profile contains ``query`` (all without one), fewest-digit ids first."""
        query = query.strip().lower()
        matches = [user for user in self.known_users()
                   if not query or query in user.lower() or query in self.node_text.profile("user", user).lower()]
        matches.sort(key=lambda token: (len(token), token))
        return {"total": len(matches), "users": [
            {"user_id": user, "profile": self.node_text.profile("user", user),
             "interactions": len(self.histories.get(user, []))} for user in matches[:max(int(limit), 0)]]}

    def history(self, user: str) -> Dict[str, object]:
        user = self.check_user(user)
        return {"user_id": user, "profile": self.node_text.profile("user", user),
                "history": [{**self.item_card(entry["item_id"]), **{k: v for k, v in entry.items() if k != "item_id"}}
                            for entry in self.histories.get(user, [])]}

    # -- recommendations and paths -----------------------------------------------------------------------

    def seen_items(self, user: str) -> set:
        seen = {entry["item_id"] for entry in self.histories.get(user, [])}
        if user in self.graph.user_index:
            seen.update(self.graph.node_token(int(n)) for n in self.graph.neighbours(self.graph.user_node(user)))
        return seen

    def top_items(self, user: str, topk: int) -> Dict[str, object]:
        """(source, [(item, score)]): MMPSASRec's full-sort top-k without the user's items, or by popularity."""
        topk = int(topk)
        if not 1 <= topk <= MAX_TOPK:
            raise InputError(f"topk must be between 1 and {MAX_TOPK}, got {topk}")
        seen = self.seen_items(user)
        row = self.vectors.user_rows.get(user)
        if row is None or not self.vectors.users[row].any():
            items = [item for item in self.popular if item not in seen][:topk]
            return {"source": "popularity", "items": [(item, None) for item in items]}
        scores = self.vectors.items @ self.vectors.users[row]
        banned = [self.item_rows[item] for item in seen if item in self.item_rows]
        scores[banned] = -np.inf
        count = min(topk, int(np.isfinite(scores).sum()))
        best = np.argpartition(-scores, count - 1)[:count] if count else np.array([], dtype=int)
        best = best[np.argsort(-scores[best], kind="stable")]
        return {"source": "mmpsasrec", "items": [(self.vectors.item_tokens[n], float(scores[n])) for n in best]}

    def paths(self, user: str, item: str) -> PathResult:
        """The pair's retrieval paths (status ``no_path`` when either end is outside the training graph)."""
        user, item = self.check_user(user), self.check_item(item)
        if user not in self.graph.user_index or item not in self.graph.item_index:
            return PathResult(user, item, "no_path")
        user_vectors, item_vectors = self.path_vectors
        return find_paths(self.graph, user, item, user_vectors, item_vectors, **self.retrieval.search())

    def recommend(self, user: str, topk: int = 5, with_paths: bool = True) -> Dict[str, object]:
        """The user's top-k items, each with its score and (``with_paths``) its retrieval paths record."""
        user = self.check_user(user)
        found = self.top_items(user, topk)
        items = []
        for rank, (item, score) in enumerate(found["items"], start=1):
            entry = {"rank": rank, **self.item_card(item), "score": score}
            if with_paths:
                entry["paths"] = self.paths(user, item).to_record()
            items.append(entry)
        return {"user_id": user, "source": found["source"], "topk": int(topk), "items": items}

    def drawing(self, result: PathResult, size: int = 420) -> str:
        """The pair's paths drawn as SVG (with a legend); "" when either end is outside the graph."""
        from recbole_mmprefer.retrieval.show import svg

        if result.user not in self.graph.user_index or result.item not in self.graph.item_index:
            return ""
        return svg(self.graph, result, self.node_text, size=size)

    def describe_paths(self, result: PathResult) -> List[str]:
        from recbole_mmprefer.explainer.prompts import verbalise_path

        return [verbalise_path({"types": path.types, "tokens": path.tokens}, self.node_text) for path in result.paths]


def read_histories(config) -> Dict[str, List[dict]]:
    """Each user's interactions in ``.inter``, oldest first (rating and time kept where the file has them)."""
    frame = read_atomic_file(dataset_file(config, "inter"))
    user, item = stage_setting(config, "USER_ID_FIELD"), stage_setting(config, "ITEM_ID_FIELD")
    rating, time = stage_setting(config, "RATING_FIELD"), stage_setting(config, "TIME_FIELD")
    for field in (user, item):
        if field not in frame.columns:
            raise InputError(f"{dataset_file(config, 'inter')}: no {field!r} column; columns are "
                             f"{list(frame.columns)}")
    frame = in_time_order(frame, time)
    extra = {name: pd.to_numeric(frame[field], errors="coerce").tolist() for name, field in
             (("rating", rating), ("timestamp", time)) if field and field in frame.columns}
    histories: Dict[str, List[dict]] = {}
    for row, (token, item_token) in enumerate(zip(frame[user], frame[item])):
        entry = {"item_id": item_token}
        for name, values in extra.items():
            if not math.isnan(values[row]):
                entry[name] = int(values[row]) if name == "timestamp" else float(values[row])
        histories.setdefault(token, []).append(entry)
    return histories
