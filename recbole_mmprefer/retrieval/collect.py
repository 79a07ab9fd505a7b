"""Retrieval paths for every explained pair (paper section 3.3; design section 8): `mmprefer paths`.

Reads the training graph, MMPSASRec's vectors and the pairs
(:mod:`.inputs`) and writes the ``paths`` artifact,
``<run_dir>/paths/paths.jsonl``: one JSON object per pair, in pair order
(:meth:`PathResult.to_record`; :func:`read_paths` reads it back)::

    {"user_id": "4748", "item_id": "1247", "status": "ok", "subgraph_nodes": 812, "subgraph_edges": 2950,
     "paths": [{"nodes": [...], "types": ["user", "item", ...], "tokens": [...], "cost": 7.31}, ...]}

``status`` is ``ok``, ``no_path`` (u and i are not connected once the direct
edge is removed and the subgraph pruned), ``skipped`` (the subgraph exceeded
``path_max_subgraph_nodes``) or ``error`` (with ``error``: the message), so a
long run never stops on one pair. Records are appended to a partial file per
rank as they come (:class:`~recbole_mmprefer.jsonl.ResumableShards`), so an
interrupted run resumes where it stopped; the final file replaces the old one
only when every pair is done.

Parallelism: ``path_workers`` processes on one machine, and under
``torchrun`` / ``accelerate launch`` each rank takes every WORLD_SIZE-th pair
and rank 0 gathers the shards in pair order (the file equals a 1-process run's).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import numpy as np
from tqdm import tqdm

from recbole_mmprefer.artifacts import ARTIFACTS
from recbole_mmprefer.errors import Interrupted
from recbole_mmprefer.jsonl import ResumableShards, barrier, distributed, dump_line, read_records, stale_partials
from recbole_mmprefer.retrieval.inputs import Pair, load_graph, load_pairs
from recbole_mmprefer.retrieval.retrievers import build_retriever
from recbole_mmprefer.retrieval.settings import RetrievalSettings
from recbole_mmprefer.utils import json_sha256

logger = logging.getLogger(__name__)

ERROR = "error"


def read_paths(out_dir: Path) -> List[dict]:
    """The records of ``paths.jsonl`` in pair order (:meth:`PathResult.from_record` turns one into a result)."""
    path = Path(out_dir) / ARTIFACTS["paths"].files[0]
    if not path.is_file():
        raise ARTIFACTS["paths"].missing(path)
    return read_records(path)


def read_run_paths(config) -> List[dict]:
    """The records of the run's ``paths`` artifact."""
    return read_paths(ARTIFACTS["paths"].require(config))


# -- workers ------------------------------------------------------------------------------------------

_WORKER: Dict[str, object] = {}


def _init_worker(retriever) -> None:
    _WORKER.update(retriever=retriever)


def _pair_record(pair: Pair) -> dict:
    user, item = pair
    try:
        result = _WORKER["retriever"](user, item)
    except Exception as error:  # one bad pair must not end a long run: recorded, counted, logged
        return {"user_id": user, "item_id": item, "status": ERROR, "error": f"{type(error).__name__}: {error}",
                "paths": [], "subgraph_nodes": 0, "subgraph_edges": 0}
    return result.to_record()


def _results(pairs: List[Pair], workers: int, setup: tuple) -> Iterator[dict]:
    if workers <= 1 or len(pairs) < 2:
        _init_worker(*setup)
        yield from map(_pair_record, pairs)
        return
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(workers, initializer=_init_worker, initargs=setup) as pool:
        yield from pool.imap(_pair_record, pairs, chunksize=max(1, min(16, len(pairs) // (4 * workers))))


# -- the stage ------------------------------------------------------------------------------------------

def collect_paths(config, split: Optional[str] = None, pairs_file: Optional[Path] = None,
                  force: bool = False) -> Path:
    """Write ``<run_dir>/paths/`` for the pairs; skip when up to date, resume when interrupted."""
    settings = RetrievalSettings.from_config(config)
    split = split if split is not None else settings.pairs_split
    graph = load_graph(config)
    retriever, depends_on = build_retriever(config, graph, settings)
    pairs = load_pairs(config, graph, split, pairs_file)
    input_hash = json_sha256({"settings": settings.search(), "graph": ARTIFACTS["graph"].read_meta(config),
                              "vectors": depends_on.get("vectors", {}), "pairs": pairs,
                              **({} if settings.retriever == "mmprefer" else {"retriever": depends_on}),
                              **({"related_nodes": depends_on["related_nodes"]} if settings.node_retrieval else {})})
    artifact = ARTIFACTS["paths"]
    if not force and artifact.is_fresh(config, input_hash):
        for leftover in stale_partials(artifact.dir(config)):
            logger.info("Paths are up to date: removing %s, left by an interrupted --force run", leftover)
            ResumableShards.discard(leftover)
        logger.info("Paths are up to date in %s", artifact.dir(config))
        return artifact.dir(config)
    rank, world = distributed()
    shards = _shards(config, input_hash, rank, world)
    started = time.perf_counter()
    try:
        _collect_shard(pairs[rank::world], shards, settings.workers, (retriever,), force, rank)
    except KeyboardInterrupt:
        kept = len(shards.completed())
        raise Interrupted(f"paths: stopped by the user after {kept} of {len(pairs[rank::world])} pairs; they are "
                          f"kept in {shards.work_dir}: the same command without --force resumes from them "
                          f"(--force starts over)") from None
    barrier(world)
    if rank == 0:
        records = shards.gather(pairs, lambda record: (record["user_id"], record["item_id"]))
        meta = {"settings": settings.search(), "retriever": settings.retriever, "split": split,
                "pairs_file": str(pairs_file) if pairs_file else None,
                "pairs": len(pairs), "world_size": world, "workers": settings.workers, **depends_on,
                "seconds_this_run": round(time.perf_counter() - started, 3)}
        _write_paths(config, input_hash, records, meta)
        shards.remove()
    barrier(world)
    return artifact.dir(config)


def _shards(config, input_hash: str, rank: int, world: int) -> ResumableShards:
    """This run's partial files; those of runs with other inputs are removed (they can never be resumed)."""
    target = ARTIFACTS["paths"].dir(config)
    shards = ResumableShards(target, input_hash, rank, world)
    if rank == 0:
        for leftover in stale_partials(target):
            if leftover != shards.work_dir:
                logger.info("Removing %s, left by an interrupted run with other inputs", leftover)
                ResumableShards.discard(leftover)
    return shards


def _collect_shard(pairs: List[Pair], shards: ResumableShards, workers: int, setup: tuple, force: bool,
                   rank: int) -> None:
    finished = {(record["user_id"], record["item_id"]) for record in shards.completed(force)}
    todo = [pair for pair in pairs if pair not in finished]
    if finished:
        logger.info("Resuming: %d of %d pairs already done in %s", len(pairs) - len(todo), len(pairs),
                    shards.shard(rank))
    with shards.appending() as handle:
        for record in tqdm(_results(todo, workers, setup), total=len(todo), desc=f"paths (rank {rank})",
                           unit="pair"):
            handle.write(dump_line(record))
            handle.flush()
            if record["status"] == ERROR:
                logger.warning("pair (%s, %s) failed: %s", record["user_id"], record["item_id"], record["error"])


def _write_paths(config, input_hash: str, records: List[dict], meta: dict) -> None:
    statuses: Dict[str, int] = {}
    for record in records:
        statuses[record["status"]] = statuses.get(record["status"], 0) + 1
    meta["status_counts"] = statuses
    meta["paths_per_pair"] = round(float(np.mean([len(record["paths"]) for record in records])), 3)
    with ARTIFACTS["paths"].writing(config, input_hash, meta) as staging:
        with open(staging / "paths.jsonl", "w", encoding="utf-8") as handle:
            handle.writelines(dump_line(record) for record in records)
    logger.info("Wrote paths for %d pairs (%s) to %s", len(records), statuses, ARTIFACTS["paths"].file(config))
