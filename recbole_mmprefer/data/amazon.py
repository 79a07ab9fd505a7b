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
import zlib
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Dict, Iterator, List, Optional, Set, Tuple

import pandas as pd

from recbole_mmprefer.data.explanations import write_atomic_file
from recbole_mmprefer.errors import InputError, MissingInputError
from recbole_mmprefer.names import check_name
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
TEXT_FIELDS = ("title", "description", "categories", "brand")
ENCODING = "utf-8"
MOST_WITHOUT_TEXT = 0.5  # above this share of items without text, the import warns
_SCALARS = (str, int, float)


# ----------------------------------------------------------------------------- reading the dumps


@contextmanager
def _open_bytes(path: Path) -> Iterator[Tuple[BinaryIO, bool]]:
    """The file's bytes, gunzipped when it starts with the gzip magic bytes; and whether it was gzipped."""
    if not path.is_file():
        raise MissingInputError(f"Amazon dump {path} not found")
    with open(path, "rb") as handle:
        is_gzip = handle.read(2) == GZIP_MAGIC
    if not is_gzip and path.suffix == ".gz":
        raise InputError(f"{path} is named .gz but is not gzip-compressed: gunzip it properly or rename it")
    opener = gzip.open if is_gzip else open
    with opener(path, "rb") as handle:
        yield handle, is_gzip


def _decode(raw: bytes, path: Path, line_number: int, offset: int, is_gzip: bool) -> str:
    try:
        return raw.decode(ENCODING)
    except UnicodeDecodeError as error:
        where = f"byte {offset + error.start}" + (" of the uncompressed text" if is_gzip else "")
        raise InputError(f"{path}, line {line_number} ({where}): byte {raw[error.start]:#04x} is not UTF-8 text; "
                         "Amazon dumps are read as UTF-8") from None


def _lines(path: Path) -> Iterator[Tuple[int, str]]:
    """(line number, line) of the non-blank lines; bytes that are not UTF-8 and damaged compressed data are
    errors naming the file and the line (each line is decoded alone, so the number is the true one)."""
    line_number = offset = 0
    with _open_bytes(path) as (handle, is_gzip):
        try:
            for line_number, raw in enumerate(handle, start=1):
                line = _decode(raw, path, line_number, offset, is_gzip)
                offset += len(raw)
                if line.strip():
                    yield line_number, line
        except (OSError, EOFError, zlib.error) as error:  # gzip.BadGzipFile is an OSError
            raise InputError(f"{path}: damaged compressed data after line {line_number} ({error})") from None


def _literal(line: str) -> Tuple[object, str]:
    """A Python literal (2014 metadata lines), or the parser's message when the line is not one."""
    try:
        return ast.literal_eval(line.strip()), ""
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError, OverflowError) as error:
        message = str(error) or type(error).__name__
        return None, message if isinstance(error, (ValueError, SyntaxError)) else f"{type(error).__name__}: {message}"


def parse_record(line: str, path: Path, line_number: int) -> dict:
    """One dump line as a dict: JSON first, then a Python literal (2014 metadata); never ``eval``.

    A line that is neither is an error with both parsers' whole messages.
    """
    try:
        record = json.loads(line)
    except (ValueError, RecursionError) as error:
        json_message = str(error) if isinstance(error, ValueError) else "nested too deeply"
        record, literal_message = _literal(line)
        if literal_message:
            raise InputError(f"{path}, line {line_number}: neither JSON nor a Python literal dict; as JSON: "
                             f"{json_message}; as a Python literal: {literal_message}") from None
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
    """An id as a token: a non-empty string without whitespace runs, or '' when absent or not a string or number."""
    if not isinstance(value, _SCALARS) or isinstance(value, bool):
        return ""
    return " ".join(str(value).split())


def _review_row(record: dict) -> Tuple[Optional[tuple], str]:
    """(user, item, rating, timestamp) of a review line, or None and the reason it is skipped."""
    for field in REQUIRED_REVIEW_FIELDS:
        value = record.get(field)
        if value is not None and (not isinstance(value, _SCALARS) or isinstance(value, bool)):
            return None, f"bad_{field}"
        if _token(value) == "":
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
    if abs(timestamp) >= 2 ** 62:
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
    """A text field as a string: nested lists (and dict values) joined with spaces."""
    if isinstance(value, str):
        return value
    return " ".join(_flatten(value))


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
    """The non-empty strings of a value and of the lists, tuples, sets and dict values nested in it, in order."""
    texts: List[str] = []
    pending = [value]
    while pending:
        part = pending.pop()
        if isinstance(part, dict):
            pending.extend(reversed(list(part.values())))
        elif isinstance(part, (list, tuple, set, frozenset)):
            pending.extend(reversed(list(part)))
        elif part is not None:
            text = (part if isinstance(part, str) else str(part)).strip()
            if text:
                texts.append(text)
    return texts


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
    check_name(name)
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


def check_item_text(meta: Path, items: int, without_text: int, meta_lines: int, allow_missing_text: bool) -> None:
    """Warn when most items have no text; refuse when none has any, unless ``allow_missing_text``."""
    if without_text <= MOST_WITHOUT_TEXT * items:
        return
    share = (f"{without_text} of {items} items ({100.0 * without_text / items:.0f}%) have no title, description, "
             f"categories or brand in {meta} ({meta_lines} metadata line(s) read)")
    if without_text < items:
        logger.warning("%s: their text features will be empty", share)
    elif not allow_missing_text:
        raise InputError(f"{share}: every item would have the same empty text. Give the category's metadata file "
                         "(meta_<Category>.json[.gz]) as --meta, or pass --allow_missing_text to import the "
                         "interactions without item text")
    else:
        logger.warning("%s; imported anyway (--allow_missing_text)", share)


def import_amazon(reviews: Path, meta: Path, name: str, out_root: Path, images: Optional[Path] = None,
                  core: int = 5, allow_missing_text: bool = False) -> Dict[str, object]:
    """Import one category of the public Amazon review dumps (2014 or 2018) into out_root/name/; returns the report.

    When most items have no metadata text it warns with the share; when none
    has any it refuses, unless ``allow_missing_text``.
    """
    reviews, meta = Path(reviews), Path(meta)
    _check_arguments(reviews, meta, name, core)
    out_dir = Path(out_root) / name
    frame, review_info = read_reviews(reviews)
    kept, rounds = k_core(frame, core)
    if kept.empty:
        raise InputError(f"{reviews}: no interaction survives the {core}-core filter "
                         f"({_shape(frame)}); use a smaller core")
    item_ids = sorted(kept["item_id"].unique())
    metadata, meta_info = read_metadata(meta, set(item_ids))
    without_text = sum(not any(metadata.get(item, {}).get(field) for field in TEXT_FIELDS) for item in item_ids)
    check_item_text(meta, len(item_ids), without_text, meta_info["lines"], allow_missing_text)
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
            "items_without_meta": len(item_ids) - len(metadata), "items_without_text": without_text,
            "items_with_image": len(image_files),
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
