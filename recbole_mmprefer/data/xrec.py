"""XRec-layout explanation data (XRec, G-Refer and MMP-Refer section 4.1) into RecBole atomic files.

The published folders hold pandas pickles (``tst.pkl``: one row per explained
pair with ``uid, iid, title, user_summary, item_summary, explanation``, and
``trn.pkl``/``val.pkl`` where released), interaction CSVs
(``total_{trn,val,tst}.csv``: ``user,item[,Time]``), a neighbour-list pickle
(``para_dict.pickle``) where the training CSV is absent, and XRec's own outputs
(``tst_pred.pkl`` aligned with ``tst_ref.pkl``). :func:`import_xrec` turns a
folder into the layout of :mod:`recbole_mmprefer.data.explanations`:

- ``<name>.inter``: every edge, training edges first in their published order,
  then validation and test edges; ``order`` is the row number (the sequence
  order RecBole sorts by, since training edges carry no time), ``timestamp``
  the published time where there is one, ``split`` the edge's source file;
- ``<name>.item`` (title, profile) and ``<name>.user`` (profile) for every node
  of the graph, ``profile_source`` = ``xrec`` where a profile exists;
- ``<name>.expl.jsonl``: one row per explained pair with a seeded
  train/valid/test split, XRec's prediction under ``baselines.xrec``;
- ``import_report.json``: what was read, kept, skipped and why.

Pickles run code when loaded, so they are read by
:func:`recbole_mmprefer.data.safe_pickle.load_data_pickle`.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from recbole_mmprefer.data.explanations import (
    assign_splits,
    count_by,
    explanation_table_path,
    single_line,
    table_summary,
    write_atomic_file,
    write_explanation_table,
)
from recbole_mmprefer.data.safe_pickle import load_data_pickle
from recbole_mmprefer.errors import InputError, MissingInputError
from recbole_mmprefer.names import check_name
from recbole_mmprefer.utils import atomic_directory, file_sha256, read_text, write_json

logger = logging.getLogger(__name__)

PAIR_COLUMNS = ["uid", "iid", "title", "user_summary", "item_summary", "explanation"]
EDGE_SPLITS = {"train": "trn", "valid": "val", "test": "tst"}
PROFILE_SOURCE = "xrec"

MAX_NODES = 20_000_000             # users or items of one data set: ids are non-negative and below it


def read_pair_frame(path: Path) -> pd.DataFrame:
    """``tst.pkl`` (or trn/val.pkl): a DataFrame with :data:`PAIR_COLUMNS`, checked before use."""
    frame = load_data_pickle(path)
    if not isinstance(frame, pd.DataFrame):
        raise InputError(f"{path}: expected a pandas DataFrame, found {type(frame).__name__}")
    missing = [column for column in PAIR_COLUMNS if column not in frame.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {missing}; found {list(frame.columns)}")
    duplicated = sorted({str(column) for column in frame.columns[frame.columns.duplicated()]})
    if duplicated:
        raise InputError(f"{path}: column(s) {duplicated} appear more than once")
    frame = frame[PAIR_COLUMNS].reset_index(drop=True)
    for column in ("uid", "iid"):
        frame[column] = node_ids(frame[column], f"{path}", column, row_offset=1, row_word="row")
    for column in PAIR_COLUMNS[2:]:
        texts = [_cell_text(value, path, row, column) for row, value in enumerate(frame[column], start=1)]
        frame[column] = pd.Series(texts, index=frame.index, dtype=object)
    return frame


def _cell_text(value, path: Path, row: int, field: str) -> str:
    """A text cell as a string: empty for None/NaN, numbers as written; anything else is an error."""
    if isinstance(value, str):
        return value
    if value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, (int, float, np.integer, np.floating)):
        return str(value)
    raise InputError(f"{path}, row {row}: field {field!r} must be text, got {type(value).__name__}")


def _as_numbers(values: pd.Series) -> pd.Series:
    """``values`` as floats, NaN where a value is not a number (also for cells of any other type)."""
    try:
        numeric = pd.to_numeric(values, errors="coerce")
    except (TypeError, ValueError):  # cells pandas cannot even look at, e.g. lists
        numeric = values.map(lambda value: pd.to_numeric(value, errors="coerce")
                             if isinstance(value, (str, int, float, np.number)) else np.nan)
    numeric = pd.Series(numeric, index=values.index)
    if numeric.dtype == bool or not pd.api.types.is_numeric_dtype(numeric):
        numeric = numeric.map(lambda value: np.nan if isinstance(value, (bool, np.bool_)) else value)
        numeric = pd.to_numeric(numeric, errors="coerce")
    return numeric.astype(float)


def _first_bad_id(numeric: pd.Series) -> Optional[int]:
    """Position of the first value that is not an integer id in 0..MAX_NODES-1, None when all are."""
    bad = numeric.isna() | (numeric < 0) | (numeric >= MAX_NODES) | (numeric != np.floor(numeric))
    return int(np.flatnonzero(bad.to_numpy())[0]) if bad.any() else None


def _bad_id_message(value, field: str) -> str:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:60] + "..."
    return (f"field {field!r} must be an integer id from 0 to {MAX_NODES - 1:,} (at most {MAX_NODES:,} nodes), "
            f"got {shown}")


def node_ids(values: pd.Series, source: str, field: str, row_offset: int, row_word: str) -> np.ndarray:
    """``values`` as int64 node ids; an error naming the row when one is not an integer in 0..MAX_NODES-1."""
    numeric = _as_numbers(values)
    row = _first_bad_id(numeric)
    if row is not None:
        raise InputError(f"{source}, {row_word} {row + row_offset}: {_bad_id_message(values.iloc[row], field)}")
    return numeric.to_numpy().astype(np.int64)


def parse_times(values: pd.Series, path: Path) -> np.ndarray:
    """XRec's ``Time`` ("MM DD, YYYY") as unix seconds (UTC midnight); NaN where empty."""
    values = values.str.strip()
    times = pd.to_datetime(values, format="%m %d, %Y", errors="coerce", utc=True)
    bad = times.isna() & (values != "")
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(f"{path}, line {row + 2}: field 'Time' {values.iloc[row]!r} is not 'MM DD, YYYY'")
    seconds = times.astype("int64").to_numpy() / 1e9
    return np.where(times.isna().to_numpy(), np.nan, seconds)


def read_edge_csv(path: Path) -> pd.DataFrame:
    """``total_<split>.csv``: columns user, item and optionally Time; ids checked per line."""
    text = read_text(path, "XRec CSV files")
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise InputError(f"{path} is empty: expected a header 'user,item[,Time]' and rows") from None
    except (ValueError, pd.errors.ParserError) as error:
        raise InputError(f"{path}: not a readable CSV ({' '.join(str(error).split())})") from None
    missing = [column for column in ("user", "item") if column not in frame.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {missing}; found {list(frame.columns)[:20]}")
    edges = pd.DataFrame({column: node_ids(frame[column], str(path), column, row_offset=2, row_word="line")
                          for column in ("user", "item")})
    edges["timestamp"] = parse_times(frame["Time"], path) if "Time" in frame.columns else np.nan
    return edges


def read_neighbour_lists(path: Path) -> Tuple[Dict[str, pd.DataFrame], int, int]:
    """``para_dict.pickle``: per split the user -> items lists, plus user_num and item_num."""
    content = load_data_pickle(path)
    if not isinstance(content, dict):
        raise InputError(f"{path}: expected a dict, found {type(content).__name__}")
    for key in ("user_num", "item_num"):
        value = content.get(key)
        if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)):
            raise InputError(f"{path}: key {key!r} must be an int, found {type(value).__name__}")
        if not 0 < value <= MAX_NODES:
            raise InputError(f"{path}: key {key!r} is {value}; a data set has 1 to {MAX_NODES:,} nodes of a kind")
    n_users, n_items = int(content["user_num"]), int(content["item_num"])
    edges = {}
    for split, short in EDGE_SPLITS.items():
        key = f"{short}_user_nb"
        lists = content.get(key)
        if lists is None:
            continue
        if not isinstance(lists, list) or len(lists) != n_users:
            raise InputError(f"{path}: {key!r} must be a list of {n_users} neighbour lists")
        edges[split] = _neighbour_edges(lists, f"{path}: {key!r}")
    return edges, n_users, n_items


def _neighbour_edges(lists: list, source: str) -> pd.DataFrame:
    """(user, item) edges of per-user item lists; each list must hold integer ids."""
    flat: list = []
    lengths = np.zeros(len(lists), dtype=np.int64)
    for user, neighbours in enumerate(lists):
        if not isinstance(neighbours, (list, tuple, np.ndarray)):
            raise InputError(f"{source}, user {user}: expected a list of item ids, found {type(neighbours).__name__}")
        lengths[user] = len(neighbours)
        flat.extend(neighbours)
    values = pd.Series(flat, dtype=object)
    numeric = _as_numbers(values)
    position = _first_bad_id(numeric)
    if position is not None:
        ends = np.cumsum(lengths)
        user = int(np.searchsorted(ends, position, side="right"))
        entry = position - int(ends[user] - lengths[user]) + 1
        raise InputError(f"{source}, user {user}, entry {entry}: {_bad_id_message(values.iloc[position], 'item')}")
    users = np.repeat(np.arange(len(lists), dtype=np.int64), lengths)
    return pd.DataFrame({"user": users, "item": numeric.to_numpy().astype(np.int64), "timestamp": np.nan})


def read_graph(source: Path) -> Tuple[Dict[str, pd.DataFrame], int, int, Dict[str, str]]:
    """Edges per split from the CSVs, falling back to para_dict.pickle; node counts; files used."""
    edges: Dict[str, pd.DataFrame] = {}
    used: Dict[str, str] = {}
    n_users = n_items = None
    para_path = source / "para_dict.pickle"
    if para_path.is_file():
        para_edges, n_users, n_items = read_neighbour_lists(para_path)
        for split, frame in para_edges.items():
            edges[split], used[split] = frame, para_path.name
    for split, short in EDGE_SPLITS.items():
        path = source / f"total_{short}.csv"
        if path.is_file():  # the CSV carries times where para_dict has none
            edges[split], used[split] = read_edge_csv(path), path.name
    if "train" not in edges:
        raise MissingInputError(f"{source}: no training graph; expected total_trn.csv or para_dict.pickle")
    if edges["train"].empty:
        raise InputError(f"{source / used['train']}: the training graph has no edges")
    all_edges = pd.concat(edges.values())
    if n_users is None:
        n_users, n_items = int(all_edges["user"].max()) + 1, int(all_edges["item"].max()) + 1
    for split, frame in edges.items():
        for column, limit in (("user", n_users), ("item", n_items)):
            outside = frame[column] >= limit
            if outside.any():
                row = int(np.flatnonzero(outside.to_numpy())[0])
                raise InputError(f"{source / used[split]}: {split} edge {row + 1} has {column} "
                                 f"{frame[column].iloc[row]} outside the graph ({limit} {column}s)")
    return edges, n_users, n_items, used


def combine_edges(edges: Dict[str, pd.DataFrame]) -> Tuple[pd.DataFrame, Dict[str, int]]:
    """All edges in one frame (train, valid, test), each (user, item) kept once, with an order column."""
    combined = pd.concat([edges[split].assign(split=split) for split in EDGE_SPLITS if split in edges],
                         ignore_index=True)
    duplicated = combined.duplicated(["user", "item"])
    skipped = {"duplicate_edge": int(duplicated.sum())}
    combined = combined[~duplicated].reset_index(drop=True)
    combined["order"] = np.arange(len(combined), dtype=np.int64)
    return combined, skipped


def clean_pairs(frame: pd.DataFrame, source: Path, n_users: int, n_items: int) -> Tuple[pd.DataFrame, Dict[str, int]]:
    """Explained pairs inside the graph, each once, with a non-empty explanation."""
    for column, limit in (("uid", n_users), ("iid", n_items)):
        outside = frame[column].astype(np.int64) >= limit
        if outside.any():
            row = int(np.flatnonzero(outside.to_numpy())[0])
            raise InputError(f"{frame['file'].iloc[row]}, row {frame['row'].iloc[row]}: {column} "
                             f"{frame[column].iloc[row]} is outside the graph ({limit} nodes)")
    duplicated = frame.duplicated(["uid", "iid"])
    empty = frame["explanation"].str.strip() == ""
    skipped = {"duplicate_pair": int(duplicated.sum()), "empty_explanation": int((empty & ~duplicated).sum())}
    return frame[~duplicated & ~empty].reset_index(drop=True), skipped


def read_explained_pairs(source: Path) -> pd.DataFrame:
    """The rows of trn.pkl, val.pkl (where released) and tst.pkl, with their file, row and published split."""
    frames = []
    for split, short in EDGE_SPLITS.items():
        path = source / f"{short}.pkl"
        if split == "test" or path.is_file():
            frame = read_pair_frame(path)
            frames.append(frame.assign(published_split=split, file=str(path), row=np.arange(1, len(frame) + 1)))
    return pd.concat(frames, ignore_index=True)


def node_texts(pairs: pd.DataFrame, id_column: str, fields: Sequence[str]) -> Tuple[pd.DataFrame, int]:
    """One row per node seen in ``pairs`` with its first non-empty value of each field, and the conflict count."""
    rows, conflicts = {}, 0
    for record in pairs[[id_column, *fields]].itertuples(index=False, name=None):
        node, values = int(record[0]), record[1:]
        known = rows.setdefault(node, {})
        for field, value in zip(fields, values):
            value = single_line(value)
            if not value:
                continue
            if field in known and known[field] != value:
                conflicts += 1
            known.setdefault(field, value)
    return pd.DataFrame.from_dict(rows, orient="index", columns=list(fields)).fillna(""), conflicts


def align_predictions(source: Path, pairs: pd.DataFrame) -> Tuple[List[Optional[str]], Dict[str, int]]:
    """XRec's ``tst_pred[k]`` placed on the row whose explanation equals ``tst_ref[k]``."""
    pred_path, ref_path = source / "tst_pred.pkl", source / "tst_ref.pkl"
    aligned: List[Optional[str]] = [None] * len(pairs)
    if not pred_path.is_file() and not ref_path.is_file():
        return aligned, {"predictions": 0}
    predictions, references = load_data_pickle(pred_path), load_data_pickle(ref_path)
    for path, values in ((pred_path, predictions), (ref_path, references)):
        if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
            raise InputError(f"{path}: expected a list of strings")
    if len(predictions) != len(references):
        raise InputError(f"{pred_path} has {len(predictions)} entries but {ref_path} has {len(references)}")
    row_of = {}
    for row, (explanation, split) in enumerate(zip(pairs["explanation"], pairs["published_split"])):
        if split == "test":  # tst_pred/tst_ref are XRec's outputs for tst.pkl
            row_of.setdefault(explanation, []).append(row)
    unmatched = ambiguous = 0
    for prediction, reference in zip(predictions, references):
        rows = row_of.get(reference, [])
        if len(rows) != 1:
            unmatched += not rows
            ambiguous += len(rows) > 1
            continue
        aligned[rows[0]] = prediction
    return aligned, {"predictions": len(predictions), "predictions_aligned": sum(p is not None for p in aligned),
                     "references_unmatched": unmatched, "references_ambiguous": ambiguous}


def import_xrec(source: Path, name: str, out_root: Path, seed: int = 2020,
                split_ratios: Sequence[float] = (0.8, 0.1, 0.1), split_by: str = "pair",
                resplit: bool = False) -> Dict[str, object]:
    """Import an XRec-layout folder into ``out_root/name/``; returns the import report.

    Explained pairs keep the split of the file they come from when ``trn.pkl``
    or ``val.pkl`` is present (unless ``resplit``); otherwise they get the
    seeded ``split_ratios`` split of :func:`assign_splits`.
    """
    source = Path(source)
    check_name(name)
    if not source.is_dir():
        raise MissingInputError(f"XRec data folder {source} not found")
    edges, n_users, n_items, edge_files = read_graph(source)
    raw_pairs = read_explained_pairs(source)
    pairs, skipped = clean_pairs(raw_pairs, source, n_users, n_items)
    if pairs.empty:
        read = ", ".join(f"{short}.pkl" for short in EDGE_SPLITS.values() if (source / f"{short}.pkl").is_file())
        raise InputError(f"{source}: no usable explanation rows in {read} ({len(raw_pairs)} read; skipped {skipped})")
    combined, edge_skipped = combine_edges(edges)
    skipped.update(edge_skipped)
    predictions, prediction_report = align_predictions(source, pairs)
    published = not resplit and set(pairs["published_split"]) != {"test"}
    table = explanation_table(pairs, predictions)
    table["split"] = pairs["published_split"] if published else assign_splits(table, split_ratios, seed, split_by)
    users, user_conflicts = node_texts(pairs, "uid", ["user_summary"])
    items, item_conflicts = node_texts(pairs, "iid", ["title", "item_summary"])
    train_edges = set(zip(edges["train"]["user"].tolist(), edges["train"]["item"].tolist()))
    report = {
        "source": str(source.resolve()), "name": name,
        "files": {path.name: file_sha256(path) for path in sorted(source.iterdir()) if path.is_file()},
        "edge_files": edge_files,
        "users": n_users, "items": n_items,
        "edges": {split: int((combined["split"] == split).sum()) for split in EDGE_SPLITS},
        "edges_with_time": int(combined["timestamp"].notna().sum()),
        "pair_rows_read": count_by(raw_pairs["published_split"]), "skipped": skipped,
        "pairs_in_train_graph": int(sum((u, i) in train_edges for u, i in zip(pairs["uid"], pairs["iid"]))),
        "profile_conflicts": {"user": user_conflicts, "item": item_conflicts},
        "users_with_profile": int((users["user_summary"] != "").sum()),
        "items_with_profile": int((items["item_summary"] != "").sum()),
        "split": {"from": "published files"} if published else {
            "from": "seeded", "seed": seed, "ratios": list(split_ratios), "by": split_by},
        "table": table_summary(table), **prediction_report,
    }
    write_output(Path(out_root) / name, name, combined, users, items, table, report)
    logger.info("Imported %s: %d users, %d items, %d train edges, %d explanation pairs (%d with XRec predictions) "
                "into %s", source, n_users, n_items, report["edges"]["train"], len(table),
                report.get("predictions_aligned", 0), Path(out_root) / name)
    return report


def write_output(out_dir: Path, name: str, combined: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame,
                 table: pd.DataFrame, report: Dict[str, object]) -> None:
    """All files of the imported data set, or none of them."""
    n_users, n_items = report["users"], report["items"]
    with atomic_directory(out_dir) as staging:
        write_interactions(staging / f"{name}.inter", combined)
        write_nodes(staging / f"{name}.user", "user_id", n_users, users.rename(columns={"user_summary": "profile"}))
        write_nodes(staging / f"{name}.item", "item_id", n_items,
                    items.rename(columns={"item_summary": "profile"}), extra_fields={"title": "token_seq"})
        write_explanation_table(explanation_table_path(staging, name), table)
        write_json(staging / "import_report.json", report)


def explanation_table(pairs: pd.DataFrame, predictions: List[Optional[str]]) -> pd.DataFrame:
    table = pd.DataFrame({
        "user_id": pairs["uid"].astype(np.int64).astype(str), "item_id": pairs["iid"].astype(np.int64).astype(str),
        "title": pairs["title"], "user_profile": pairs["user_summary"], "item_profile": pairs["item_summary"],
        "explanation": pairs["explanation"], "explanation_source": PROFILE_SOURCE,
    })
    has_profiles = (table["user_profile"].str.strip() != "") | (table["item_profile"].str.strip() != "")
    table["profile_source"] = np.where(has_profiles, PROFILE_SOURCE, "")
    table["baselines"] = [{"xrec": p} if p is not None else {} for p in predictions]
    return table


def write_interactions(path: Path, combined: pd.DataFrame) -> None:
    frame = pd.DataFrame({"user_id": combined["user"], "item_id": combined["item"], "order": combined["order"],
                          "timestamp": combined["timestamp"].map(lambda t: "" if np.isnan(t) else f"{t:.0f}"),
                          "split": combined["split"]})
    write_atomic_file(path, frame, {"user_id": "token", "item_id": "token", "order": "float",
                                    "timestamp": "float", "split": "token"})


def write_nodes(path: Path, id_field: str, count: int, texts: pd.DataFrame,
                extra_fields: Optional[Dict[str, str]] = None) -> None:
    """Every node 0..count-1, with its text where the pairs gave one (empty otherwise)."""
    frame = texts.reindex(range(count)).fillna("")
    frame.insert(0, id_field, np.arange(count))
    frame["profile_source"] = np.where(frame["profile"] != "", PROFILE_SOURCE, "")
    fields = {id_field: "token", **(extra_fields or {}), "profile": "token_seq", "profile_source": "token"}
    write_atomic_file(path, frame, fields)
