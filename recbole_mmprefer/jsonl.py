"""JSON lines: the one reader and the one sharded, resumable writer that every stage uses (design sections 2, 8).

**Reading** (:func:`read_jsonl`). Blank lines are skipped. A line that is not
UTF-8, not valid JSON or not a JSON object is an :class:`InputError` naming the
file, the line number and its byte offset (and, for bytes that do not decode,
that the file must be UTF-8); nothing is skipped silently. The one exception
is a file this module is still writing (``partial=True``): its last line
without a newline was cut by a killed run, and is dropped so the record is
made again.

**Writing** (:class:`ResumableShards`). A stage that makes one record per pair
appends each record to a partial file of its rank as it is done
(``.<target>-partial-<hash>/rank<r>-of-<w>.jsonl`` beside the target), so an
interrupted run resumes where it stopped; rank 0 then gathers every shard in
pair order and the caller writes the target in one go. Under ``torchrun`` /
``accelerate launch`` (``WORLD_SIZE`` > 1) each rank takes every W-th pair
(:func:`distributed`, :func:`barrier`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable, Dict, Hashable, Iterable, Iterator, List, Sequence, Tuple

from recbole_mmprefer.errors import InputError, MissingInputError
from recbole_mmprefer.utils import not_utf8

ENCODING = "utf-8"


def _decode(path: Path, number: int, offset: int, raw: bytes) -> str:
    try:
        return raw.decode(ENCODING)
    except UnicodeDecodeError as error:
        raise not_utf8(path, number, offset + error.start, raw[error.start], "JSON-lines files", ENCODING) from None


def _parse(path: Path, number: int, offset: int, text: str) -> dict:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"{path}, line {number} (byte {offset}): not valid JSON: {error.msg} at column "
                         f"{error.pos + 1}") from None
    if not isinstance(record, dict):
        raise InputError(f"{path}, line {number} (byte {offset}): expected a JSON object, got "
                         f"{type(record).__name__}")
    return record


def read_jsonl(path: Path, partial: bool = False) -> Iterator[Tuple[int, dict]]:
    """``(line number, object)`` for each non-blank line; see the module docstring for bad lines."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path} not found")
    with open(path, "rb") as handle:
        offset = 0
        for number, raw in enumerate(handle, start=1):
            if partial and not raw.endswith(b"\n"):
                return  # cut by a killed run
            text = _decode(path, number, offset, raw)
            if text.strip():
                yield number, _parse(path, number, offset, text)
            offset += len(raw)


def read_records(path: Path, partial: bool = False) -> List[dict]:
    """Every object of a JSON-lines file, in order."""
    return [record for _, record in read_jsonl(path, partial)]


def dump_line(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"


def write_jsonl(path: Path, records: Iterable[dict]) -> None:
    """Write the records atomically (a temporary file beside ``path``, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "w", encoding=ENCODING) as handle:
            handle.writelines(dump_line(record) for record in records)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


# -- processes ----------------------------------------------------------------------------------------

def distributed() -> Tuple[int, int]:
    """(rank, world size) under torchrun / accelerate launch, else (0, 1); sets up a gloo group once."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return dist.get_rank(), world


def barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


# -- the resumable, sharded writer ---------------------------------------------------------------------

class ResumableShards:
    """Per-rank partial files of one output, gathered in key order; see the module docstring."""

    def __init__(self, target: Path, input_hash: str, rank: int, world: int):
        self.target, self.rank, self.world = Path(target), rank, world
        self.work_dir = self.target.parent / f".{self.target.name}-partial-{input_hash[:16]}"
        self.work_dir.mkdir(parents=True, exist_ok=True)

    def shard(self, rank: int) -> Path:
        return self.work_dir / f"rank{rank}-of-{self.world}.jsonl"

    def completed(self, force: bool = False) -> List[dict]:
        """This rank's finished records (none when ``force``); the partial file is left holding exactly them."""
        path = self.shard(self.rank)
        records = [] if force or not path.is_file() else read_records(path, partial=True)
        write_jsonl(path, records)
        return records

    def appending(self):
        """A text handle appending to this rank's partial file (write :func:`dump_line` lines, flush often)."""
        return open(self.shard(self.rank), "a", encoding=ENCODING)

    def gather(self, keys: Sequence[Hashable], key_of: Callable[[dict], Hashable]) -> List[dict]:
        """Every rank's records in the order of ``keys`` (rank 0, after a :func:`barrier`)."""
        found: Dict[Hashable, dict] = {}
        for rank in range(self.world):
            if self.shard(rank).is_file():
                for record in read_records(self.shard(rank), partial=True):
                    found[key_of(record)] = record
        missing = [key for key in keys if key not in found]
        if missing:
            raise RuntimeError(f"{len(missing)} of {len(keys)} records are missing after every rank finished, "
                               f"e.g. {missing[0]} (partial files in {self.work_dir})")
        return [found[key] for key in keys]

    def remove(self) -> None:
        self.discard(self.work_dir)

    @staticmethod
    def discard(work_dir: Path) -> None:
        shutil.rmtree(work_dir, ignore_errors=True)


def stale_partials(target: Path) -> List[Path]:
    """Partial folders of ``target`` left by interrupted runs (any input hash)."""
    target = Path(target)
    return sorted(target.parent.glob(f".{target.name}-partial-*")) if target.parent.is_dir() else []
