"""Amazon review dumps (McAuley et al. 2014/2018) into RecBole atomic files: paper section 4.1 data sets.

One category of the public dumps is two files, plain or gzipped (detected by
their magic bytes, not their name):

- reviews: one JSON object per line (``reviewerID``, ``asin``, ``overall``,
  ``unixReviewTime``, ``summary``, ``reviewText``, ...; 2018 adds
  ``verified``, ``vote``, ``style``, ``image``);
- metadata: one Python-literal dict per line in 2014 (``title``,
  ``description`` as a string, ``imUrl``, ``categories`` as a list of lists,
  ``brand``, ...), one JSON object per line in 2018 (``description`` and
  ``imageURL`` / ``imageURLHighRes`` as lists, ``category`` as a list, ...).

:func:`import_amazon` keeps the earliest review of each (user, item) pair,
applies the iterative k-core filter and writes ``<out_root>/<name>/``:
``<name>.inter``, ``<name>.item``, ``<name>.user`` (profiles left empty for
``mmprefer profiles``), ``<name>.reviews.jsonl`` (exact review texts, in the
order of the source file) and ``import_report.json``.
"""

from __future__ import annotations

import ast
import gzip
import json
import logging
import math
import os
import re
import zlib
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, TextIO, Tuple

import pandas as pd

from recbole_mmprefer.data.explanations import write_atomic_file
from recbole_mmprefer.errors import InputError, MissingInputError
from recbole_mmprefer.utils import atomic_directory, file_sha256, write_json

logger = logging.getLogger(__name__)

GZIP_MAGIC = b"\x1f\x8b"
# Same as features.IMAGE_EXTENSIONS (not imported: that module pulls in torch).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
REQUIRED_REVIEW_FIELDS = ("reviewerID", "asin", "overall", "unixReviewTime")
INTER_FIELDS = {"user_id": "token", "item_id": "token", "rating": "float", "timestamp": "float"}
ITEM_FIELDS = {"item_id": "token", "title": "token_seq", "description": "token_seq", "categories": "token_seq",
               "brand": "token", "image_url": "token", "image": "token", "profile": "token_seq",
               "profile_source": "token"}
USER_FIELDS = {"user_id": "token", "profile": "token_seq", "profile_source": "token"}
# Keys that only one release has, to tell which one a file comes from.
FORMAT_KEYS = {
    "reviews": {"2014": {"helpful"}, "2018": {"verified", "vote", "style", "image"}},
    "meta": {"2014": {"imUrl", "categories", "salesRank", "related"},
             "2018": {"imageURL", "imageURLHighRes", "category", "main_cat", "also_buy", "also_view", "rank"}},
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


# ----------------------------------------------------------------------------- reading the dumps


@contextmanager
def _open_text(path: Path) -> Iterator[TextIO]:
    """The file as UTF-8 text, gunzipped when it starts with the gzip magic bytes."""
    if not path.is_file():
        raise MissingInputError(f"Amazon dump {path} not found")
    with open(path, "rb") as handle:
        is_gzip = handle.read(2) == GZIP_MAGIC
    if not is_gzip and path.suffix == ".gz":
        raise InputError(f"{path} is named .gz but is not gzip-compressed: gunzip it properly or rename it")
    opener = gzip.open if is_gzip else open
    with opener(path, "rt", encoding="utf-8") as handle:
        yield handle


def _lines(path: Path) -> Iterator[Tuple[int, str]]:
    """(line number, line) of the non-blank lines; a damaged file is an error naming it."""
    line_number = 0
    with _open_text(path) as handle:
        try:
            for line_number, line in enumerate(handle, start=1):
                if line.strip():
                    yield line_number, line
        except (OSError, EOFError, zlib.error) as error:  # gzip.BadGzipFile is an OSError
            raise InputError(f"{path}: damaged compressed data after line {line_number} ({error})") from None
        except UnicodeDecodeError as error:
            raise InputError(f"{path}: not UTF-8 text near line {line_number + 1} ({error.reason})") from None


def parse_record(line: str, path: Path, line_number: int) -> dict:
    """One dump line as a dict: JSON first, then a Python literal (2014 metadata); never ``eval``."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        try:
            record = ast.literal_eval(line.strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            raise InputError(f"{path}, line {line_number}: neither JSON nor a Python literal dict") from None
    if not isinstance(record, dict):
        raise InputError(f"{path}, line {line_number}: expected an object ({{...}}), got {type(record).__name__}")
    return record


def _records(path: Path) -> Iterator[Tuple[int, dict]]:
    for line_number, line in _lines(path):
        yield line_number, parse_record(line, path, line_number)


def _vote_format(record: dict, markers: Dict[str, Set[str]], votes: Counter) -> None:
    for release, keys in markers.items():
        if not keys.isdisjoint(record):
            votes[release] += 1


def _release(votes: Counter) -> str:
    if not votes:
        return "unknown"
    return "2018" if votes["2018"] > votes["2014"] else "2014"


# ----------------------------------------------------------------------------- reviews


def _token(value) -> str:
    """An id as a token: a non-empty string without whitespace runs, or '' when absent."""
    if value is None:
        return ""
    return " ".join(str(value).split())


def _review_row(record: dict) -> Tuple[Optional[tuple], str]:
    """(user, item, rating, timestamp) of a review line, or None and the reason it is skipped."""
    for field in REQUIRED_REVIEW_FIELDS:
        if _token(record.get(field)) == "":
            return None, f"missing_{field}"
    try:
        rating = float(record["overall"])
    except (TypeError, ValueError):
        return None, "bad_overall"
    if not math.isfinite(rating):
        return None, "bad_overall"
    try:
        timestamp = int(float(record["unixReviewTime"]))
    except (TypeError, ValueError, OverflowError):
        return None, "bad_unixReviewTime"
    return (_token(record["reviewerID"]), _token(record["asin"]), rating, timestamp), ""


def read_reviews(path: Path) -> Tuple[pd.DataFrame, Dict[str, object]]:
    """The usable reviews (user_id, item_id, rating, timestamp, line) and what reading them found."""
    rows: List[tuple] = []
    skipped: Counter = Counter()
    votes: Counter = Counter()
    lines = 0
    for line_number, record in _records(path):
        lines += 1
        _vote_format(record, FORMAT_KEYS["reviews"], votes)
        row, reason = _review_row(record)
        if row is None:
            skipped[reason] += 1
        else:
            rows.append(row + (line_number,))
    if not rows:
        raise InputError(f"{path}: no usable review in {lines} line(s); skipped by reason: {dict(skipped)}")
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp", "line"])
    frame, duplicates = drop_duplicate_pairs(frame)
    if duplicates:
        skipped["duplicate"] += duplicates
    return frame, {"lines": lines, "skipped": dict(sorted(skipped.items())), "format": _release(votes)}


def drop_duplicate_pairs(frame: pd.DataFrame) -> Tuple[pd.DataFrame, int]:
    """Keep the earliest review of each (user, item) pair (the first in the file on a tie)."""
    ordered = frame.sort_values(["timestamp", "line"], kind="stable")
    kept = ordered.drop_duplicates(["user_id", "item_id"], keep="first")
    return kept.sort_values("line", kind="stable").reset_index(drop=True), len(frame) - len(kept)


def k_core(frame: pd.DataFrame, core: int) -> Tuple[pd.DataFrame, int]:
    """Drop users and items with fewer than ``core`` interactions until none is left; also the rounds that dropped."""
    rounds = 0
    while True:
        user_counts = frame["user_id"].map(frame["user_id"].value_counts())
        item_counts = frame["item_id"].map(frame["item_id"].value_counts())
        keep = (user_counts >= core) & (item_counts >= core)
        if keep.all():
            return frame.reset_index(drop=True), rounds
        frame = frame[keep]
        rounds += 1


def _shape(frame: pd.DataFrame) -> Dict[str, int]:
    return {"users": int(frame["user_id"].nunique()), "items": int(frame["item_id"].nunique()),
            "interactions": len(frame)}


def _text(value) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def write_review_texts(source: Path, target: Path, kept: pd.DataFrame) -> None:
    """One JSON line per kept interaction with its exact summary and review, in source-file order.

    The texts are read in a second pass over the source so that only the kept
    ones are ever held, one at a time.
    """
    by_line = kept.set_index("line")[["user_id", "item_id", "rating", "timestamp"]].to_dict(orient="index")
    with open(target, "w", encoding="utf-8") as handle:
        for line_number, line in _lines(source):
            row = by_line.get(line_number)
            if row is None:
                continue
            record = parse_record(line, source, line_number)
            entry = {"user_id": row["user_id"], "item_id": row["item_id"], "rating": float(row["rating"]),
                     "timestamp": int(row["timestamp"]), "summary": _text(record.get("summary")),
                     "review": _text(record.get("reviewText"))}
            handle.write(json.dumps(entry, ensure_ascii=False) + "\n")


# ----------------------------------------------------------------------------- metadata


def _flatten(value) -> List[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [text for part in value for text in _flatten(part)]
    text = _text(value).strip()
    return [text] if text else []


def _join_unique(values: List[str], separator: str) -> str:
    return separator.join(dict.fromkeys(values))


def _first_url(record: dict) -> str:
    for key in ("imUrl", "imageURLHighRes", "imageURL"):
        urls = _flatten(record.get(key))
        if urls:
            return urls[0]
    return ""


def item_fields(record: dict) -> Dict[str, str]:
    """The .item text of one metadata record, 2014 or 2018 style (lists of strings joined)."""
    return {
        "title": " ".join(_flatten(record.get("title"))),
        "description": " ".join(_flatten(record.get("description"))),
        "categories": _join_unique(_flatten(record.get("categories", record.get("category"))), ", "),
        "brand": " ".join(_flatten(record.get("brand"))),
        "image_url": _first_url(record),
    }


def read_metadata(path: Path, items: Set[str]) -> Tuple[Dict[str, Dict[str, str]], Dict[str, object]]:
    """Metadata of ``items`` (others are ignored) and what reading the file found."""
    found: Dict[str, Dict[str, str]] = {}
    skipped: Counter = Counter()
    votes: Counter = Counter()
    lines = 0
    for _, record in _records(path):
        lines += 1
        _vote_format(record, FORMAT_KEYS["meta"], votes)
        asin = _token(record.get("asin"))
        if not asin:
            skipped["missing_asin"] += 1
        elif asin in found:
            skipped["duplicate_asin"] += 1
        elif asin in items:
            found[asin] = item_fields(record)
    return found, {"lines": lines, "skipped": dict(sorted(skipped.items())), "format": _release(votes)}


def find_images(image_dir: Path, items: List[str]) -> Dict[str, str]:
    """File name (relative to ``image_dir``) of each item's ``<asin>.<jpg|jpeg|png|webp>``, where one exists."""
    if not image_dir.is_dir():
        raise MissingInputError(f"Image folder {image_dir} not found")
    rank = {extension: position for position, extension in enumerate(IMAGE_EXTENSIONS)}
    best: Dict[str, Tuple[int, str]] = {}
    with os.scandir(image_dir) as entries:
        for entry in entries:
            stem, extension = os.path.splitext(entry.name)
            position = rank.get(extension.lower())
            if position is not None and entry.is_file() and (stem not in best or position < best[stem][0]):
                best[stem] = (position, entry.name)
    return {item: best[item][1] for item in items if item in best}


# ----------------------------------------------------------------------------- output


def _item_frame(items: List[str], meta: Dict[str, Dict[str, str]], images: Dict[str, str]) -> pd.DataFrame:
    empty = {"title": "", "description": "", "categories": "", "brand": "", "image_url": ""}
    rows = [{"item_id": item, **meta.get(item, empty), "image": images.get(item, ""), "profile": "",
             "profile_source": ""} for item in items]
    return pd.DataFrame(rows, columns=list(ITEM_FIELDS))


def _inter_frame(kept: pd.DataFrame) -> pd.DataFrame:
    ordered = kept.sort_values(["user_id", "timestamp", "line"], kind="stable")
    return ordered.assign(rating=ordered["rating"].map(float), timestamp=ordered["timestamp"].map(int))


def _write_dataset(folder: Path, name: str, kept: pd.DataFrame, items: pd.DataFrame, reviews: Path) -> List[str]:
    users = pd.DataFrame({"user_id": sorted(kept["user_id"].unique()), "profile": "", "profile_source": ""})
    write_atomic_file(folder / f"{name}.inter", _inter_frame(kept), INTER_FIELDS)
    write_atomic_file(folder / f"{name}.item", items, ITEM_FIELDS)
    write_atomic_file(folder / f"{name}.user", users, USER_FIELDS)
    write_review_texts(reviews, folder / f"{name}.reviews.jsonl", kept)
    return [f"{name}.{suffix}" for suffix in ("inter", "item", "user", "reviews.jsonl")] + ["import_report.json"]


def _check_arguments(reviews: Path, meta: Path, name: str, core: int) -> None:
    if not _NAME.match(name):
        raise InputError(f"Data set name {name!r} must be a plain folder name (letters, digits, '.', '_', '-')")
    if isinstance(core, bool) or not isinstance(core, int) or core < 1:
        raise InputError(f"core must be a positive integer (1 keeps every interaction), got {core!r}")
    for path in (reviews, meta):
        if not path.is_file():
            raise MissingInputError(f"Amazon dump {path} not found")


def _overall_format(reviews: str, meta: str) -> str:
    known = {release for release in (reviews, meta) if release != "unknown"}
    return known.pop() if len(known) == 1 else ("mixed" if known else "unknown")


def _source(path: Path) -> Dict[str, str]:
    return {"path": str(path.resolve()), "sha256": file_sha256(path)}


def import_amazon(reviews: Path, meta: Path, name: str, out_root: Path, images: Optional[Path] = None,
                  core: int = 5) -> Dict[str, object]:
    """Import one category of the public Amazon review dumps (2014 or 2018) into out_root/name/; returns the report."""
    reviews, meta, out_dir = Path(reviews), Path(meta), Path(out_root) / name
    _check_arguments(reviews, meta, name, core)
    frame, review_info = read_reviews(reviews)
    kept, rounds = k_core(frame, core)
    if kept.empty:
        raise InputError(f"{reviews}: no interaction survives the {core}-core filter "
                         f"({_shape(frame)}); use a smaller core")
    item_ids = sorted(kept["item_id"].unique())
    metadata, meta_info = read_metadata(meta, set(item_ids))
    image_files = find_images(Path(images), item_ids) if images is not None else {}
    report = {
        "dataset": name, "core": core, "output": str(out_dir.resolve()),
        "format": _overall_format(review_info["format"], meta_info["format"]),
        "formats": {"reviews": review_info["format"], "meta": meta_info["format"]},
        "sources": {"reviews": _source(reviews), "meta": _source(meta),
                    "images": str(Path(images).resolve()) if images is not None else None},
        "counts": {
            "review_lines": review_info["lines"], "skipped": review_info["skipped"],
            "skipped_total": sum(review_info["skipped"].values()),
            "meta_lines": meta_info["lines"], "meta_skipped": meta_info["skipped"],
            "before_core": _shape(frame), "after_core": _shape(kept), "core_rounds": rounds,
            "items_without_meta": len(item_ids) - len(metadata), "items_with_image": len(image_files),
        },
    }
    with atomic_directory(out_dir) as staging:
        report["files"] = _write_dataset(staging, name, kept, _item_frame(item_ids, metadata, image_files), reviews)
        write_json(staging / "import_report.json", report)
    _log_summary(report)
    return report


def _log_summary(report: Dict[str, object]) -> None:
    counts = report["counts"]
    after = counts["after_core"]
    logger.info("Imported Amazon %s (%s format) into %s: %d users, %d items, %d interactions after %d-core "
                "(%d review lines, %d skipped, %d items without metadata, %d with a local image)",
                report["dataset"], report["format"], report["output"], after["users"], after["items"],
                after["interactions"], report["core"], counts["review_lines"], counts["skipped_total"],
                counts["items_without_meta"], counts["items_with_image"])
