"""Generation files: one explanation per (user, item) pair, the format every explainer writes and the evaluation reads.

A JSON-lines file (read with :mod:`recbole_mmprefer.jsonl`), one object per pair::

    {"user_id": "4748", "item_id": "1247", "explanation": "The user would enjoy ..."}

Other fields (e.g. the paths used) are kept but not scored.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import numpy as np
import pandas as pd

from recbole_mmprefer.errors import InputError, MissingInputError
from recbole_mmprefer.jsonl import read_jsonl, write_jsonl

GENERATION_FIELDS = ("user_id", "item_id", "explanation")


def read_generations(path: Path) -> pd.DataFrame:
    """A generation file as a frame (user_id, item_id, explanation); errors name the line and field."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"Generation file {path} not found")
    records = []
    for number, record in read_jsonl(path):
        for field in GENERATION_FIELDS:
            if not isinstance(record.get(field), (str, int)) or (field != "explanation" and record[field] == ""):
                raise InputError(f"{path}, line {number}: field {field!r} missing or not a string")
        records.append({field: str(record[field]) for field in GENERATION_FIELDS})
    frame = pd.DataFrame.from_records(records, columns=list(GENERATION_FIELDS))
    duplicated = frame.duplicated(["user_id", "item_id"])
    if duplicated.any():
        row = int(np.flatnonzero(duplicated.to_numpy())[0])
        raise InputError(f"{path}: pair ({frame['user_id'].iloc[row]}, {frame['item_id'].iloc[row]}) "
                         "has more than one explanation")
    return frame


def write_generations(path: Path, frame: pd.DataFrame, extra: Optional[List[dict]] = None) -> None:
    """Write (user_id, item_id, explanation) rows, each with its ``extra`` fields, as JSON lines (atomically)."""
    rows = frame[list(GENERATION_FIELDS)].to_dict(orient="records")
    write_jsonl(Path(path), ({**record, **(extra[row] if extra else {})} for row, record in enumerate(rows)))
