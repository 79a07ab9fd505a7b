"""RecBole atomic files (``<dataset>.inter``, ``.item``, ``.user``): reading and checks.

RecBole itself fails deep inside its loader on an empty or missing
interaction file; these checks name the file before any stage starts.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pandas as pd

from recbole_mmprefer.artifacts import dataset_file
from recbole_mmprefer.errors import InputError, MissingInputError
from recbole_mmprefer.utils import read_text


def atomic_file_path(config, suffix: str) -> Path:
    return dataset_file(config, suffix)


def read_atomic_file(path: Path, separator: str = "\t") -> pd.DataFrame:
    """Read an atomic file as strings, columns named without their ``:type``."""
    if not path.is_file():
        raise MissingInputError(f"Atomic file {path} not found")
    text = read_text(path, "atomic files")
    try:
        frame = pd.read_csv(io.StringIO(text), sep=separator, dtype=str, keep_default_na=False,
                            quoting=csv.QUOTE_NONE)
    except pd.errors.EmptyDataError:
        raise InputError(f"{path} is empty: an atomic file starts with a header line of field:type columns")
    except (ValueError, pd.errors.ParserError) as error:
        raise InputError(f"{path}: not a readable atomic file ({' '.join(str(error).split())})") from None
    frame.columns = [column.split(":")[0] for column in frame.columns]
    return frame


def in_time_order(frame: pd.DataFrame, time_field: str) -> pd.DataFrame:
    """Rows sorted by the numeric ``time_field`` (ties and missing times keep file order; no field: as is)."""
    if time_field not in frame.columns:
        return frame
    times = pd.to_numeric(frame[time_field], errors="coerce").to_numpy(dtype=float)
    return frame.iloc[np.argsort(times, kind="stable")]  # NaN sorts last


def is_last_of_user(frame: pd.DataFrame, user_field: str) -> pd.Series:
    """True on each user's last row: in time order, RecBole's leave-one-out test interaction."""
    return frame.groupby(user_field, sort=False).cumcount(ascending=False) == 0


def check_interactions(config) -> None:
    """Fail early, naming the file, when the data set's .inter file is missing or has no rows."""
    path = atomic_file_path(config, "inter")
    if config["benchmark_filename"]:
        return  # pre-split files (<dataset>.train.inter, ...) are checked by RecBole
    if not path.is_file():
        raise MissingInputError(f"Interaction file {path} not found (data_path={config['data_path']})")
    with open(path, encoding="utf-8") as handle:
        header, first_row = handle.readline(), handle.readline()
    if not header.strip() or not first_row.strip():
        raise InputError(f"{path} has no interactions: it needs a header line and at least one row")
