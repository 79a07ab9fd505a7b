"""A data-only, bounded unpickler for published data pickles (the XRec/G-Refer releases, paper section 4.1).

Pickles run code when loaded, so :func:`load_data_pickle` reads them with an
unpickler that only builds the pandas/numpy/builtin objects such files hold,
and that costs what every constructor and array state would allocate before it
runs: a damaged or crafted file cannot run code, exhaust memory, nest without
end or crash the interpreter; it is an :class:`InputError` naming the file and
the limit it broke.
"""

from __future__ import annotations

import io
import operator
import pickle
import struct
import sys
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import pandas as pd

from recbole_mmprefer.errors import InputError, MissingInputError

# What loading one pickle may build, so that a damaged or crafted file cannot exhaust memory. A data pickle
# carries its arrays and strings in the file itself, so what its constructors allocate stays a small multiple
# of its size; a file that claims more (a huge shape, a bytearray of a claimed length, a long range) is refused.
PICKLE_BUDGET_PER_BYTE = 16        # bytes that arrays, indexes and copied containers may take per byte of file,
PICKLE_MIN_BUDGET = 256 * 2 ** 20  # and at least this many, whatever the file's size
PICKLE_MAX_DEPTH = 100             # containers nested deeper than this (or containing themselves) are refused
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
