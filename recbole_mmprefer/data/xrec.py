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

Pickles run code when loaded, so they are read with an unpickler that only
builds the pandas/numpy objects these files contain.
"""

from __future__ import annotations

import io
import logging
import operator
import pickle
import struct
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

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
from recbole_mmprefer.errors import InputError, MissingInputError
from recbole_mmprefer.names import check_name
from recbole_mmprefer.utils import atomic_directory, file_sha256, read_text, write_json

logger = logging.getLogger(__name__)

PAIR_COLUMNS = ["uid", "iid", "title", "user_summary", "item_summary", "explanation"]
EDGE_SPLITS = {"train": "trn", "valid": "val", "test": "tst"}
PROFILE_SOURCE = "xrec"

# What loading one pickle may build, so that a damaged or crafted file cannot exhaust memory. A data pickle
# carries its arrays and strings in the file itself, so what its constructors allocate stays a small multiple
# of its size; a file that claims more (a huge shape, a bytearray of a claimed length, a long range) is refused.
PICKLE_BUDGET_PER_BYTE = 16        # bytes that arrays, indexes and copied containers may take per byte of file,
PICKLE_MIN_BUDGET = 256 * 2 ** 20  # and at least this many, whatever the file's size
PICKLE_MAX_DEPTH = 100             # containers nested deeper than this (or containing themselves) are refused
MAX_NODES = 20_000_000             # users or items of one data set: ids are non-negative and below it
_WORD = 8                          # bytes per reference, and per element of an index
_COPY = 64                         # bytes per element of a container built from an iterable (a new object each)
_LEAVES = (str, bytes, int, float, complex, bool, type(None))


class _Refused(Exception):
    """Something the data-only unpickler will not build; the message says what and why."""


def _size(count: int) -> str:
    """``count`` bytes for a message: ``512 B``, ``3.0 MiB``, ``1.0 TiB``."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if value < 1024:
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{float(count):.2e} B"


def _length(value) -> int:
    """How many elements ``value`` holds (or claims: a range, a slice), 0 when it has no length."""
    if isinstance(value, slice):
        if value.stop is None:
            return 0
        value = range(value.start or 0, value.stop, value.step or 1)
    try:
        return len(value)
    except OverflowError:  # a range longer than sys.maxsize
        return sys.maxsize
    except TypeError:
        return 0


def _range_length(start=None, stop=None, step=None) -> int:
    """The length of ``range``/``RangeIndex(start, stop, step)``, where ``RangeIndex(n)`` means ``0..n``."""
    if stop is None:
        start, stop = 0, start if start is not None else 0
    return _length(range(start if start is not None else 0, stop, step if step is not None else 1))


def _itemsize(dtype) -> int:
    itemsize = np.dtype(dtype).itemsize
    if itemsize < 0:  # numpy's item size overflowed: a void type of more than 2 GiB
        raise _Refused(f"refusing to load: a dtype {str(dtype)[:40]!r} whose item size overflows")
    return itemsize


def _array_bytes(shape, dtype) -> int:
    """What an array of ``shape`` and ``dtype`` takes, computed before numpy allocates it."""
    dims = tuple(shape) if isinstance(shape, (tuple, list)) else (shape,)
    count = 1
    for dim in dims:
        count *= max(operator.index(dim), 0)
    return count * _itemsize(dtype)


def _argument(args: tuple, kwargs: dict, position: int, name: str, default=None):
    return args[position] if len(args) > position else kwargs.get(name, default)


def _cost_free(args: tuple, kwargs: dict) -> int:
    return 0


def _cost_of_copy(args: tuple, kwargs: dict) -> int:
    """list/tuple/set/frozenset/dict(iterable): a new element (and a reference) per element."""
    return _COPY * sum(_length(arg) for arg in args)


def _cost_of_bytearray(args: tuple, kwargs: dict) -> int:
    first = _argument(args, kwargs, 0, "source")
    return max(first, 0) if isinstance(first, int) else _length(first)


def _cost_of_range(args: tuple, kwargs: dict) -> int:
    return _WORD * _length(range(*args))


def _cost_of_ndarray(args: tuple, kwargs: dict) -> int:
    return _array_bytes(_argument(args, kwargs, 0, "shape", ()), _argument(args, kwargs, 1, "dtype", float))


def _cost_of_reconstruct(args: tuple, kwargs: dict) -> int:
    return _array_bytes(args[1], args[2]) if len(args) >= 3 else 0


def _cost_of_scalar(args: tuple, kwargs: dict) -> int:
    return _itemsize(args[0]) if args else 0


def _cost_of_frombuffer(args: tuple, kwargs: dict) -> int:
    return _array_bytes(args[2], args[1]) if len(args) >= 3 else 0


def _cost_of_state_only(args: tuple, kwargs: dict) -> int:
    if args or kwargs:
        raise _Refused("a pandas DataFrame or Series is called with arguments; a pickled one is rebuilt from "
                       "its state only")
    return 0


def _cost_of_manager(args: tuple, kwargs: dict) -> int:
    axes = _argument(args, kwargs, 1, "axes", ())
    axes = axes if isinstance(axes, (list, tuple)) else [axes]
    return _WORD * sum(_length(axis) for axis in axes)


def _cost_of_block(args: tuple, kwargs: dict) -> int:
    return _WORD * _length(_argument(args, kwargs, 1, "placement"))


def _index_fields_cost(fields: dict) -> int:
    cost = _WORD * _length(fields.get("data"))
    if "start" in fields or "stop" in fields:
        cost = max(cost, _WORD * _range_length(fields.get("start"), fields.get("stop"), fields.get("step")))
    return cost


def _cost_of_new_index(args: tuple, kwargs: dict) -> int:
    fields = _argument(args, kwargs, 1, "d", {})
    return _index_fields_cost(fields) if isinstance(fields, dict) else 0


def _cost_of_index(args: tuple, kwargs: dict) -> int:
    return _WORD * _length(_argument(args, kwargs, 0, "data"))


def _cost_of_range_index(args: tuple, kwargs: dict) -> int:
    fields = dict(zip(("start", "stop", "step"), args))
    fields.update(kwargs)
    return _index_fields_cost({key: fields[key] for key in ("start", "stop", "step") if key in fields}
                              or {"stop": 0})


# The globals a pickled DataFrame, list or dict of lists needs, and nothing that runs code; each with what
# calling it (or creating it with NEWOBJ) costs in bytes, computed from the arguments before the call.
_SAFE_GLOBALS = {
    ("builtins", "slice"): _cost_free, ("builtins", "complex"): _cost_free, ("builtins", "range"): _cost_of_range,
    ("builtins", "list"): _cost_of_copy, ("builtins", "dict"): _cost_of_copy, ("builtins", "tuple"): _cost_of_copy,
    ("builtins", "set"): _cost_of_copy, ("builtins", "frozenset"): _cost_of_copy,
    ("builtins", "bytearray"): _cost_of_bytearray,
    ("numpy", "ndarray"): _cost_of_ndarray, ("numpy", "dtype"): _cost_free,
    ("numpy.core.multiarray", "_reconstruct"): _cost_of_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _cost_of_reconstruct,
    ("numpy.core.multiarray", "scalar"): _cost_of_scalar, ("numpy._core.multiarray", "scalar"): _cost_of_scalar,
    ("numpy.core.numeric", "_frombuffer"): _cost_of_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _cost_of_frombuffer,
    ("pandas.core.frame", "DataFrame"): _cost_of_state_only, ("pandas.core.series", "Series"): _cost_of_state_only,
    ("pandas.core.internals.managers", "BlockManager"): _cost_of_manager,
    ("pandas.core.internals.managers", "SingleBlockManager"): _cost_of_manager,
    ("pandas._libs.internals", "_unpickle_block"): _cost_of_block,
    ("pandas.core.internals.blocks", "new_block"): _cost_of_block,
    ("pandas.core.indexes.base", "_new_Index"): _cost_of_new_index,
    ("pandas.core.indexes.base", "Index"): _cost_of_index,
    ("pandas.core.indexes.range", "RangeIndex"): _cost_of_range_index,
    ("pandas.core.indexes.numeric", "Int64Index"): _cost_of_index,
}


def _check_dtype_state(instance: np.dtype, state) -> None:
    """A dtype's pickled state may only restate what numpy derived from its type code.

    numpy trusts the state's item size and flags: an object dtype whose
    state drops the reference-counting flag makes numpy copy object pointers
    without counting them, which crashes the interpreter. Structured and
    sub-array dtypes (their layout comes from the state) are not data XRec uses.
    """
    if not isinstance(state, tuple) or len(state) < 8:
        raise _Refused("refusing to load: a numpy dtype state that is not the tuple numpy writes")
    if state[2] is not None or state[3] is not None or state[4] is not None:
        raise _Refused("refusing to load: a structured or sub-array numpy dtype")
    elsize, alignment, flags = state[5:8]
    if elsize not in (-1, instance.itemsize) or alignment not in (-1, instance.alignment) or flags != instance.flags:
        raise _Refused(f"refusing to load: a numpy dtype {instance.str!r} whose pickled size, alignment or flags "
                       f"({elsize}, {alignment}, {flags}) are not its own ({instance.itemsize}, "
                       f"{instance.alignment}, {instance.flags})")


def _array_state_bytes(state) -> int:
    """The size in bytes of the array an array state (version, shape, dtype, fortran, data) describes."""
    if not isinstance(state, tuple) or len(state) not in (4, 5):
        raise _Refused("refusing to load: an array state that is not the tuple numpy writes")
    if not isinstance(state[-3], np.dtype):
        raise _Refused(f"refusing to load: an array state whose dtype is a {type(state[-3]).__name__}")
    return _array_bytes(state[-4], state[-3])


def _check_object_list(state, size: int) -> None:
    """numpy fills an object array from the state's list without checking its length (a short list leaves
    empty slots that crash the interpreter later): the list must hold exactly one object per element."""
    kind, data = state[-3], state[-1]
    if not kind.hasobject:
        return
    count = size // max(kind.itemsize, 1)
    if kind != np.dtype(object) or not isinstance(data, list) or len(data) != count:
        held = f"{len(data)} objects" if isinstance(data, list) else f"a {type(data).__name__}"
        raise _Refused(f"refusing to load: an object array of {count} elements whose state holds {held}")


class _DataOnlyUnpickler(pickle._Unpickler):  # the pure-Python unpickler: each opcode can be checked
    """Builds only the globals of :data:`_SAFE_GLOBALS`, within a byte budget and :data:`PICKLE_MAX_DEPTH`.

    Every call (REDUCE, NEWOBJ, INST/OBJ) and every array state (BUILD) is
    costed from its arguments before it runs; containers are filled only with
    their own opcodes (APPEND to lists, SETITEM to dicts, ADDITEMS to sets), so
    no pandas object can be grown by item assignment.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, data: bytes, budget: int):
        super().__init__(io.BytesIO(data))
        self.file_size, self.budget, self.built = len(data), budget, 0
        self.costs: Dict[int, Tuple[str, Callable[[tuple, dict], int]]] = {}

    def find_class(self, module: str, name: str):
        cost = _SAFE_GLOBALS.get((module, name))
        if cost is None:
            raise _Refused(f"refusing to load {module}.{name}, which is not a plain data object; "
                           "only pandas DataFrames, lists and dicts of data are read")
        found = super().find_class(module, name)
        self.costs[id(found)] = (f"{module}.{name}", cost)
        return found

    def charge(self, what: str, cost: int) -> None:
        """Count ``cost`` bytes against the budget; refuse before building what would pass it."""
        self.built += cost
        if self.built > self.budget:
            in_all = f" ({_size(self.built)} with what came before)" if self.built != cost else ""
            raise _Refused(f"refusing to load: {what} would take {_size(cost)}{in_all}, beyond the limit of "
                           f"{_size(self.budget)} for a file of {_size(self.file_size)} (a data pickle builds at "
                           f"most {PICKLE_BUDGET_PER_BYTE} bytes per byte of file, or {_size(PICKLE_MIN_BUDGET)}); "
                           "the file is damaged or not a plain data pickle")

    def check_call(self, func, args, kwargs) -> None:
        if type(args) is not tuple or type(kwargs) is not dict:
            raise _Refused(f"refusing to load: a call with arguments in a {type(args).__name__} and keywords in a "
                           f"{type(kwargs).__name__}, not a tuple and a dict")
        known = self.costs.get(id(func))
        if known is None:
            raise _Refused(f"refusing to call a {type(func).__name__} object, which is not a known data type")
        name, cost = known
        self.charge(f"building a {name}", cost(args, kwargs))

    def load_reduce(self):
        self.check_call(self.stack[-2], self.stack[-1], {})
        pickle._Unpickler.load_reduce(self)
    dispatch[pickle.REDUCE[0]] = load_reduce

    def load_newobj(self):
        self.check_call(self.stack[-2], self.stack[-1], {})
        pickle._Unpickler.load_newobj(self)
    dispatch[pickle.NEWOBJ[0]] = load_newobj

    def load_newobj_ex(self):
        self.check_call(self.stack[-3], self.stack[-2], self.stack[-1])
        pickle._Unpickler.load_newobj_ex(self)
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex

    def _instantiate(self, klass, args):
        self.check_call(klass, tuple(args) if type(args) is list else args, {})
        super()._instantiate(klass, args)

    def load_build(self):
        instance = self.stack[-2]
        if isinstance(instance, np.dtype):
            _check_dtype_state(instance, self.stack[-1])
        if isinstance(instance, np.ndarray):
            size = _array_state_bytes(self.stack[-1])
            self.charge("the state of an array", size)
            _check_object_list(self.stack[-1], size)
        pickle._Unpickler.load_build(self)
    dispatch[pickle.BUILD[0]] = load_build

    def load_mark(self):
        if len(self.metastack) >= PICKLE_MAX_DEPTH:
            raise _Refused(f"refusing to load: nested more than {PICKLE_MAX_DEPTH} levels deep")
        pickle._Unpickler.load_mark(self)
    dispatch[pickle.MARK[0]] = load_mark

    def load_bytearray8(self):
        size, = struct.unpack("<Q", self.read(8))
        if size > self.file_size:
            raise _Refused(f"refusing to load: a bytearray claims {_size(size)} in a file of "
                           f"{_size(self.file_size)}")
        self.charge("a bytearray", size)
        buffer = bytearray(size)
        self.readinto(buffer)
        self.append(buffer)
    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8

    def target(self, kind: type, opcode: str):
        target = self.stack[-1]
        if not isinstance(target, kind):
            raise _Refused(f"refusing to load: {opcode} applied to a {type(target).__name__}, "
                           f"not a {kind.__name__}")
        return target

    def load_append(self):
        value = self.stack.pop()
        self.target(list, "APPEND").append(value)
    dispatch[pickle.APPEND[0]] = load_append

    def load_appends(self):
        items = self.pop_mark()
        self.target(list, "APPENDS").extend(items)
    dispatch[pickle.APPENDS[0]] = load_appends

    def load_setitem(self):
        value, key = self.stack.pop(), self.stack.pop()
        self.target(dict, "SETITEM")[key] = value
    dispatch[pickle.SETITEM[0]] = load_setitem

    def load_setitems(self):
        items = self.pop_mark()
        if len(items) % 2:
            raise _Refused("refusing to load: SETITEMS with a key but no value")
        target = self.target(dict, "SETITEMS")
        for position in range(0, len(items), 2):
            target[items[position]] = items[position + 1]
    dispatch[pickle.SETITEMS[0]] = load_setitems

    def load_additems(self):
        items = self.pop_mark()
        self.target(set, "ADDITEMS").update(items)
    dispatch[pickle.ADDITEMS[0]] = load_additems


def _object_arrays(*parts) -> list:
    """The object-dtype values of pandas Index/Series parts (numeric ones hold no nested objects)."""
    return [part.to_numpy() for part in parts if part.dtype == object]


def _children(value) -> Optional[list]:
    """The objects ``value`` holds, for the nesting check; None for a leaf."""
    if isinstance(value, (list, tuple, set, frozenset)):
        return list(value)
    if isinstance(value, dict):
        return [*value.keys(), *value.values()]
    if isinstance(value, np.ndarray):
        return list(value.ravel()) if value.dtype == object else None
    if isinstance(value, pd.DataFrame):
        columns = [value.iloc[:, position] for position in range(value.shape[1])]
        return _object_arrays(value.columns, value.index, *columns) + [value.attrs]
    if isinstance(value, (pd.Series, pd.Index)):
        return _object_arrays(value)
    return None


def _check_nesting(root) -> None:
    """Refuse objects nested deeper than :data:`PICKLE_MAX_DEPTH`; one that contains itself counts as endless.

    Each object is expanded again only when reached at a greater depth, so
    shared references cost at most that many visits.
    """
    deepest: Dict[int, Tuple[int, object]] = {}  # the object is kept so that its id stays its own
    pending = [(root, 0)]
    while pending:
        value, depth = pending.pop()
        children = _children(value)
        if children is None:
            continue
        if depth >= PICKLE_MAX_DEPTH:
            raise _Refused(f"refusing to load: objects nested more than {PICKLE_MAX_DEPTH} levels deep "
                           "(or containing themselves)")
        if deepest.get(id(value), (-1, None))[0] >= depth:
            continue
        deepest[id(value)] = (depth, value)
        pending.extend((child, depth + 1) for child in children if not isinstance(child, _LEAVES))


def _short(error: BaseException, limit: int = 300) -> str:
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= limit else text[:limit] + "..."


def load_data_pickle(path: Path):
    """Unpickle a published data file, allowing only pandas/numpy/builtin data objects, within bounded memory.

    What constructors and array states may allocate is limited to
    :data:`PICKLE_BUDGET_PER_BYTE` bytes per byte of the file (at least
    :data:`PICKLE_MIN_BUDGET`), and nesting to :data:`PICKLE_MAX_DEPTH`; a file
    beyond them is an :class:`InputError` naming it and the limit.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path} not found")
    data = path.read_bytes()
    budget = max(PICKLE_MIN_BUDGET, PICKLE_BUDGET_PER_BYTE * len(data))
    try:
        content = _DataOnlyUnpickler(data, budget).load()
        _check_nesting(content)
    except _Refused as refused:
        raise InputError(f"{path}: {refused}") from None
    except Exception as error:  # anything else a damaged stream raises inside pickle, numpy or pandas
        raise InputError(f"{path}: not a readable data pickle ({_short(error)}); "
                         "the file may be truncated or not from the XRec release") from None
    return content


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
