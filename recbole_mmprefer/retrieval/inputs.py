"""What the retriever reads (paper section 3.3): the training graph, MMPSASRec's vectors and the pairs.

- the training graph of ``<name>.inter`` (edges whose ``split`` is ``train``
  where the file has that column), built once into the ``graph`` artifact and
  rebuilt when the file changes;
- the ``recommender`` artifact's user and item vectors in the graph's node
  order (a zero row, similarity 0, for a node without one);
- the pairs: a ``user_id<TAB>item_id`` file, or the run's explanation table
  (one split of it, or all).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from recbole_mmprefer.artifacts import ARTIFACTS, dataset_file, explanation_table_file, has_explanation_table
from recbole_mmprefer.data.explanations import SPLITS, read_explanation_table
from recbole_mmprefer.errors import InputError, MissingInputError
from recbole_mmprefer.model.export import read_vectors
from recbole_mmprefer.resources import stage_setting
from recbole_mmprefer.retrieval.graph import InteractionGraph
from recbole_mmprefer.utils import file_sha256, json_sha256, read_lines, write_lines

logger = logging.getLogger(__name__)

Pair = Tuple[str, str]


def load_graph(config) -> InteractionGraph:
    """The training graph of the data set, built from ``.inter`` once and cached by the file's hash."""
    inter = dataset_file(config, "inter")
    if not inter.is_file():
        raise MissingInputError(f"Interaction file {inter} not found")
    user_field, item_field = stage_setting(config, "USER_ID_FIELD"), stage_setting(config, "ITEM_ID_FIELD")
    input_hash = json_sha256({"inter": file_sha256(inter), "user": user_field, "item": item_field})
    artifact = ARTIFACTS["graph"]
    if artifact.is_fresh(config, input_hash):
        return InteractionGraph.load(artifact.file(config))
    graph = InteractionGraph.from_atomic(inter, user_field=user_field, item_field=item_field)
    meta = {"source": str(inter), "users": graph.num_users, "items": graph.num_items, "edges": graph.num_edges}
    with artifact.writing(config, input_hash, meta) as staging:
        graph.save(staging / "graph.npz")
    logger.info("Built the training graph of %s (%d users, %d items, %d edges) in %s", config["dataset"],
                graph.num_users, graph.num_items, graph.num_edges, artifact.dir(config))
    return graph


def load_node_vectors(config, graph: InteractionGraph) -> Tuple[np.ndarray, np.ndarray, dict]:
    """MMPSASRec's user and item vectors in the graph's order (zero rows where a node has none) and a report of
    where they came from and how many nodes have none."""
    try:
        folder = ARTIFACTS["recommender"].require(config)
    except MissingInputError as error:
        raise MissingInputError(f"{error}, or use --path_weight=degree") from None
    user_vectors, users_missing = read_vectors(folder, "user", graph.user_tokens)
    item_vectors, items_missing = read_vectors(folder, "item", graph.item_tokens)
    if user_vectors.shape[1] != item_vectors.shape[1]:
        raise InputError(f"{folder}: user vectors have width {user_vectors.shape[1]}, item vectors "
                         f"{item_vectors.shape[1]}")
    report = {"source": str(folder), "meta_sha256": file_sha256(folder / "meta.json"),
              "users_without_vector": users_missing, "items_without_vector": items_missing}
    if users_missing or items_missing:
        logger.warning("%d graph users and %d graph items have no vector in %s: their similarity counts as 0",
                       users_missing, items_missing, folder)
    return user_vectors, item_vectors, report


def load_pairs(config, graph: InteractionGraph, split: Optional[str] = None,
               pairs_file: Optional[Path] = None) -> List[Pair]:
    """Pairs from a ``user_id<TAB>item_id`` file, or the run's explanation table (one split or all)."""
    if pairs_file is not None:
        pairs, source = read_pair_file(Path(pairs_file)), str(pairs_file)
    else:
        if not has_explanation_table(config):
            raise MissingInputError(f"{explanation_table_file(config)} not found: give a pair file (--pairs_file) "
                                    "or import a data set with explanations (`mmprefer import`)")
        path = explanation_table_file(config)
        table = read_explanation_table(path)
        if split:
            if split not in SPLITS:
                raise InputError(f"split {split!r} is not one of {', '.join(SPLITS)}")
            table = table[table["split"] == split]
        pairs, source = list(zip(table["user_id"], table["item_id"])), f"{path} (split {split or 'all'})"
    check_pairs(pairs, graph, source)
    return pairs


def read_pair_file(path: Path) -> List[Pair]:
    """The pairs of a ``user_id<TAB>item_id`` file (an optional header line naming ``user_id`` first)."""
    if not path.is_file():
        raise MissingInputError(f"Pair file {path} not found")
    pairs = []
    for number, line in enumerate(read_lines(path), start=1):
        fields = line.split("\t")
        if number == 1 and fields[0].split(":")[0] == "user_id":
            continue  # a header line
        if len(fields) < 2 or not fields[0] or not fields[1]:
            raise InputError(f"{path}, line {number}: expected user_id<TAB>item_id, got {line!r}")
        pairs.append((fields[0], fields[1]))
    return pairs


def write_pair_file(path: Path, pairs: List[Pair]) -> None:
    """The file :func:`read_pair_file` reads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_lines(path, ["user_id\titem_id", *[f"{user}\t{item}" for user, item in pairs]])


def check_pairs(pairs: List[Pair], graph: InteractionGraph, source: str) -> None:
    if not pairs:
        raise InputError(f"{source}: no pairs to collect paths for")
    if len(set(pairs)) != len(pairs):
        raise InputError(f"{source}: some (user, item) pairs are listed more than once")
    unknown = [(row, u, i) for row, (u, i) in enumerate(pairs, start=1)
               if u not in graph.user_index or i not in graph.item_index]
    if unknown:
        row, user, item = unknown[0]
        raise InputError(f"{source}: {len(unknown)} pair(s) name a user or item that is not in the data set's "
                         f"graph, e.g. pair {row}: ({user}, {item})")
