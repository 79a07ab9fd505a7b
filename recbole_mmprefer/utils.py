"""Small helpers shared by the stages: atomic output folders, hashes, JSON."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, List


@contextlib.contextmanager
def atomic_directory(final_dir: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``final_dir`` that replaces it only on success.

    A crash or an exception inside the block leaves ``final_dir`` as it was and
    removes the temporary folder, so a stage never leaves half-written outputs.
    """
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.tmp-", dir=final_dir.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; outputs are ordinary folders
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    previous = None
    if final_dir.exists():
        previous = final_dir.with_name(f".{final_dir.name}.old-{os.getpid()}")
        os.replace(final_dir, previous)
    os.replace(staging, final_dir)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


def file_sha256(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def json_sha256(value: Any) -> str:
    """Hash of a JSON-serialisable value, independent of dict key order."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def write_json(path: Path, value: Any) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(value, handle, indent=2, sort_keys=True, default=str)
        handle.write("\n")


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def write_lines(path: Path, lines: List[str]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(f"{line}\n" for line in lines)


def not_utf8(path: Path, line: int, offset: int, value: int, kind: str, encoding: str = "UTF-8"):
    """The InputError for a byte that is not UTF-8: file, line, byte offset, and how ``kind`` are read."""
    from recbole_mmprefer.errors import InputError

    return InputError(f"{path}, line {line} (byte {offset}): byte {value:#04x} is not UTF-8 text; {kind} are read "
                      f"as {encoding}")


def read_text(path: Path, kind: str = "text files") -> str:
    """The file's text; bytes that are not UTF-8 are an InputError (:func:`not_utf8`)."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise not_utf8(path, data.count(b"\n", 0, error.start) + 1, error.start, data[error.start], kind) from None


def read_lines(path: Path, kind: str = "text files") -> List[str]:
    """The file's lines without their newline (a last newline ends the last line; it starts no new one)."""
    lines = read_text(path, kind).split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


def align_rows(matrix, row_tokens: List[str], item_tokens: List[str], source: Path, remedy: str):
    """Reorder ``matrix`` (one row per token of ``row_tokens``) into the order of ``item_tokens``.

    RecBole's padding token ``[PAD]`` gets a zero row. A token without a row is
    an error naming ``source`` and ``remedy`` (what the user can do about it).
    """
    import numpy as np

    from recbole_mmprefer.errors import InputError

    if len(row_tokens) != len(matrix):
        raise InputError(f"{source} has {len(matrix)} rows but its index lists {len(row_tokens)} items")
    position = {token: row for row, token in enumerate(row_tokens)}
    missing = [token for token in item_tokens if token != "[PAD]" and token not in position]
    if missing:
        raise InputError(f"{source} has no row for {len(missing)} item(s) of the data set, e.g. {missing[:5]}; "
                         f"{remedy}")
    aligned = np.zeros((len(item_tokens),) + matrix.shape[1:], dtype=matrix.dtype)
    rows = [row for row, token in enumerate(item_tokens) if token != "[PAD]"]
    aligned[rows] = matrix[[position[item_tokens[row]] for row in rows]]
    return aligned
