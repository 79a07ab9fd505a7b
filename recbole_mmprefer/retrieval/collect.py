"""Retrieval paths for every explained pair (paper section 3.3; design section 8): `mmprefer paths`.

Reads the data set's training graph (``<name>.inter``, edges whose ``split``
is ``train`` where the file has that column), MMPSASRec's user and item
vectors (``<run_dir>/recommender/``) and the pairs (the explanation table,
optionally one split of it, or a pair file), and writes
``<run_dir>/paths/paths.jsonl``: one JSON object per pair, in pair order::

    {"user_id": "4748", "item_id": "1247", "status": "ok", "subgraph_nodes": 812, "subgraph_edges": 2950,
     "paths": [{"nodes": [...], "types": ["user", "item", ...], "tokens": [...], "cost": 7.31}, ...]}

``status`` is ``ok``, ``no_path`` (u and i are not connected once the direct
edge is removed and the subgraph pruned), ``skipped`` (the subgraph exceeded
``path_max_subgraph_nodes``) or ``error`` (with ``error``: the message), so a
long run never stops on one pair. Results are appended to a partial file per
rank as they come, so an interrupted run resumes where it stopped; the final
file replaces the old one only when every pair is done.

Parallelism: ``path_workers`` processes on one machine, and under
``torchrun`` / ``accelerate launch`` each rank takes every WORLD_SIZE-th pair
and rank 0 gathers the shards in pair order (the file equals a 1-process run's).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from recbole_mmprefer.config import run_dir
from recbole_mmprefer.data.atomic import atomic_file_path
from recbole_mmprefer.data.explanations import explanation_table_path, read_explanation_table
from recbole_mmprefer.errors import InputError, MissingInputError
from recbole_mmprefer.retrieval.graph import InteractionGraph
from recbole_mmprefer.retrieval.paths import COST_RULES, check_settings, find_paths
from recbole_mmprefer.utils import (
    atomic_directory,
    file_sha256,
    is_up_to_date,
    json_sha256,
    read_json,
    read_lines,
    write_json,
)

logger = logging.getLogger(__name__)

Pair = Tuple[str, str]
ERROR = "error"


def paths_dir(config) -> Path:
    return run_dir(config) / "paths"


def graph_dir(config) -> Path:
    return run_dir(config) / "graph"


def path_settings(config) -> Dict[str, object]:
    settings = {"hops": config["path_hops"], "core": config["path_core"], "k": config["path_k"],
                "weight": config["path_weight"], "max_subgraph_nodes": config["path_max_subgraph_nodes"]}
    check_settings(**settings)
    return settings


def load_graph(config) -> InteractionGraph:
    """The training graph of the data set, built from ``.inter`` once and cached by the file's hash."""
    inter = atomic_file_path(config, "inter")
    if not inter.is_file():
        raise MissingInputError(f"Interaction file {inter} not found")
    input_hash = json_sha256({"inter": file_sha256(inter), "user": config["USER_ID_FIELD"],
                              "item": config["ITEM_ID_FIELD"]})
    folder = graph_dir(config)
    if is_up_to_date(folder, input_hash):
        return InteractionGraph.load(folder / "graph.npz")
    graph = InteractionGraph.from_atomic(inter, user_field=config["USER_ID_FIELD"], item_field=config["ITEM_ID_FIELD"])
    with atomic_directory(folder) as staging:
        graph.save(staging / "graph.npz")
        write_json(staging / "meta.json", {"input_hash": input_hash, "source": str(inter), "users": graph.num_users,
                                           "items": graph.num_items, "edges": graph.num_edges})
    logger.info("Built the training graph of %s (%d users, %d items, %d edges) in %s", config["dataset"],
                graph.num_users, graph.num_items, graph.num_edges, folder)
    return graph


def load_vectors(config, graph: InteractionGraph) -> Tuple[Optional[np.ndarray], Optional[np.ndarray], dict]:
    """MMPSASRec's vectors in the graph's user and item order; zero rows (similarity 0) where a node has none."""
    if not COST_RULES[config["path_weight"]].needs_vectors:
        return None, None, {}
    folder = run_dir(config) / "recommender"
    if not (folder / "meta.json").is_file():
        raise MissingInputError(f"No user/item vectors in {folder}: run `run_recbole --model=MMPSASRec "
                                f"--dataset={config['dataset']}` first, or use --path_weight=degree")
    user_vectors, users_missing = _aligned(folder, "user", graph.user_tokens)
    item_vectors, items_missing = _aligned(folder, "item", graph.item_tokens)
    if user_vectors.shape[1] != item_vectors.shape[1]:
        raise InputError(f"{folder}: user vectors have width {user_vectors.shape[1]}, item vectors "
                         f"{item_vectors.shape[1]}")
    report = {"source": str(folder), "meta_sha256": file_sha256(folder / "meta.json"),
              "users_without_vector": users_missing, "items_without_vector": items_missing}
    if users_missing or items_missing:
        logger.warning("%d graph users and %d graph items have no vector in %s: their similarity counts as 0",
                       users_missing, items_missing, folder)
    return user_vectors, item_vectors, report


def _aligned(folder: Path, kind: str, tokens: Sequence[str]) -> Tuple[np.ndarray, int]:
    matrix = np.load(folder / f"{kind}_embeddings.npy")
    row_tokens = read_lines(folder / f"{kind}_tokens.txt")
    if len(row_tokens) != len(matrix):
        raise InputError(f"{folder}: {kind}_embeddings.npy has {len(matrix)} rows, {kind}_tokens.txt "
                         f"{len(row_tokens)}")
    position = {token: row for row, token in enumerate(row_tokens)}
    aligned = np.zeros((len(tokens), matrix.shape[1]), dtype=np.float32)
    rows = [(node, position[token]) for node, token in enumerate(tokens) if token in position]
    if rows:
        nodes, source_rows = map(list, zip(*rows))
        aligned[nodes] = matrix[source_rows]
    return aligned, len(tokens) - len(rows)


def load_pairs(config, graph: InteractionGraph, split: Optional[str] = None,
               pairs_file: Optional[Path] = None) -> List[Pair]:
    """Pairs from a ``user_id<TAB>item_id`` file, or the explanation table (one split or all)."""
    if pairs_file is not None:
        pairs, source = _read_pair_file(Path(pairs_file)), str(pairs_file)
    else:
        path = explanation_table_path(Path(config["data_path"]), config["dataset"])
        if not path.is_file():
            raise MissingInputError(f"{path} not found: give a pair file (--pairs_file) or import a data set "
                                    "with explanations (`mmprefer import`)")
        table = read_explanation_table(path)
        if split:
            table = table[table["split"] == split]
        pairs, source = list(zip(table["user_id"], table["item_id"])), str(path)
    _check_pairs(pairs, graph, source)
    return pairs


def _read_pair_file(path: Path) -> List[Pair]:
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


def _check_pairs(pairs: List[Pair], graph: InteractionGraph, source: str) -> None:
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


# -- workers ------------------------------------------------------------------------------------------

_WORKER: Dict[str, object] = {}


def _init_worker(graph: InteractionGraph, user_vectors, item_vectors, settings: Dict[str, object]) -> None:
    _WORKER.update(graph=graph, user_vectors=user_vectors, item_vectors=item_vectors, settings=settings)


def _pair_record(pair: Pair) -> dict:
    user, item = pair
    try:
        result = find_paths(_WORKER["graph"], user, item, _WORKER["user_vectors"], _WORKER["item_vectors"],
                            **_WORKER["settings"])
    except Exception as error:  # one bad pair must not end a long run: recorded, counted, logged
        return {"user_id": user, "item_id": item, "status": ERROR, "error": f"{type(error).__name__}: {error}",
                "paths": [], "subgraph_nodes": 0, "subgraph_edges": 0}
    record = result.to_dict()
    return {"user_id": record.pop("user"), "item_id": record.pop("item"), **record}


def _results(pairs: List[Pair], workers: int, setup: tuple) -> Iterator[dict]:
    if workers <= 1 or len(pairs) < 2:
        _init_worker(*setup)
        yield from map(_pair_record, pairs)
        return
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(workers, initializer=_init_worker, initargs=setup) as pool:
        yield from pool.imap(_pair_record, pairs, chunksize=max(1, min(16, len(pairs) // (4 * workers))))


# -- resumable, sharded collection --------------------------------------------------------------------

def _distributed() -> Tuple[int, int]:
    """(rank, world size) under torchrun / accelerate launch, else (0, 1); sets up a gloo group once."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return dist.get_rank(), world


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _read_records(path: Path) -> List[dict]:
    """The complete lines of a partial file (a line cut by a killed run is dropped)."""
    records = []
    if path.is_file():
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    break
    return records


def _rewrite_complete(path: Path, records: List[dict]) -> None:
    """Drop a trailing partial line before appending, so the file stays one record per line."""
    temporary = path.with_suffix(".tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    os.replace(temporary, path)


def collect_paths(config, split: Optional[str] = None, pairs_file: Optional[Path] = None,
                  force: bool = False) -> Path:
    """Write ``<run_dir>/paths/`` for the pairs; skip when up to date, resume when interrupted."""
    settings = path_settings(config)
    split = split if split is not None else config["path_pairs_split"]
    graph = load_graph(config)
    user_vectors, item_vectors, vector_report = load_vectors(config, graph)
    pairs = load_pairs(config, graph, split, pairs_file)
    input_hash = json_sha256({"settings": settings, "graph": read_json(graph_dir(config) / "meta.json"),
                              "vectors": vector_report, "pairs": pairs})
    out_dir = paths_dir(config)
    if not force and is_up_to_date(out_dir, input_hash):
        logger.info("Paths are up to date in %s", out_dir)
        return out_dir
    rank, world = _distributed()
    work_dir = run_dir(config) / f".paths-partial-{input_hash[:16]}"
    work_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    _collect_shard(pairs[rank::world], work_dir / f"rank{rank}-of-{world}.jsonl", config["path_workers"],
                   (graph, user_vectors, item_vectors, settings), force, rank)
    _barrier(world)
    if rank == 0:
        records = [record for shard in range(world)
                   for record in _read_records(work_dir / f"rank{shard}-of-{world}.jsonl")]
        meta = {"input_hash": input_hash, "settings": settings, "split": split,
                "pairs_file": str(pairs_file) if pairs_file else None, "pairs": len(pairs), "world_size": world,
                "workers": config["path_workers"], "vectors": vector_report,
                "seconds_this_run": round(time.perf_counter() - started, 3)}
        _write_paths(out_dir, pairs, records, meta)
        for leftover in work_dir.iterdir():
            leftover.unlink()
        work_dir.rmdir()
    _barrier(world)
    return out_dir


def _collect_shard(pairs: List[Pair], partial: Path, workers: int, setup: tuple, force: bool, rank: int) -> None:
    done = [] if force else _read_records(partial)
    _rewrite_complete(partial, done)
    finished = {(record["user_id"], record["item_id"]) for record in done}
    todo = [pair for pair in pairs if pair not in finished]
    if finished:
        logger.info("Resuming: %d of %d pairs already done in %s", len(pairs) - len(todo), len(pairs), partial)
    with open(partial, "a", encoding="utf-8") as handle:
        for record in tqdm(_results(todo, workers, setup), total=len(todo), desc=f"paths (rank {rank})",
                           unit="pair"):
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            handle.flush()
            if record["status"] == ERROR:
                logger.warning("pair (%s, %s) failed: %s", record["user_id"], record["item_id"], record["error"])


def _write_paths(out_dir: Path, pairs: List[Pair], records: List[dict], meta: dict) -> None:
    by_pair = {(record["user_id"], record["item_id"]): record for record in records}
    missing = [pair for pair in pairs if pair not in by_pair]
    if missing:
        raise RuntimeError(f"{len(missing)} pairs have no result after collection, e.g. {missing[0]}")
    ordered = [by_pair[pair] for pair in pairs]
    statuses: Dict[str, int] = {}
    for record in ordered:
        statuses[record["status"]] = statuses.get(record["status"], 0) + 1
    meta["status_counts"] = statuses
    meta["paths_per_pair"] = round(float(np.mean([len(record["paths"]) for record in ordered])), 3)
    with atomic_directory(out_dir) as staging:
        with open(staging / "paths.jsonl", "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in ordered)
        write_json(staging / "meta.json", meta)
    logger.info("Wrote paths for %d pairs (%s) to %s", len(ordered), statuses, out_dir / "paths.jsonl")


def read_paths(out_dir: Path) -> List[dict]:
    """The records of ``paths.jsonl`` in pair order."""
    path = Path(out_dir) / "paths.jsonl"
    if not path.is_file():
        raise MissingInputError(f"{path} not found: run `mmprefer paths` first")
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]
