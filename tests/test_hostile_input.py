"""Property-based tests (hypothesis) for the readers of user-supplied files (issue 18).

Every reader, given arbitrary bytes, truncations, wrong types or huge counts,
either reads the file or ends in the toolkit's own error (InputError,
MissingInputError) naming the file, never another exception; a failed import
leaves nothing in the output folder. Covered here: XRec pickles and CSVs,
Amazon JSON / Python-literal lines, RecBole atomic files and pair files (the
latter through ``mmprefer paths``). JSON-lines generation files and the
explanation table have their own suite with their reader.

Runs are small and derandomized (the same examples every run) so the suite
takes seconds.
"""

from __future__ import annotations

import gzip
import json
import pickle
import string
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_bad_input import build as build_state
from test_bad_input import call, crafted, dtype, empty_array, find
from test_import_amazon import META_2014, review_lines, write_lines
from test_import_xrec import write_xrec_folder

from recbole_mmprefer.cli import main as mmprefer
from recbole_mmprefer.data.amazon import import_amazon
from recbole_mmprefer.data.atomic import read_atomic_file
from recbole_mmprefer.data.explanations import single_line, write_atomic_file
from recbole_mmprefer.data.safe_pickle import load_data_pickle
from recbole_mmprefer.data.xrec import PAIR_COLUMNS, import_xrec
from recbole_mmprefer.errors import InputError, MissingInputError

SMALL = settings(max_examples=40, deadline=None, derandomize=True, database=None, report_multiple_bugs=False,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                        HealthCheck.function_scoped_fixture])
FEW = settings(SMALL, max_examples=25)


@contextmanager
def workspace() -> Iterator[Path]:
    """A fresh folder per example (pytest's tmp_path is shared by all examples of a test)."""
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder)


def outcome(run: Callable[[], object], named: Sequence[str], out_root: Path) -> bool:
    """True when ``run`` succeeds; else its error must be the toolkit's, name one of ``named`` and leave
    ``out_root`` empty (no data set, no staging folder)."""
    try:
        run()
    except (InputError, MissingInputError) as error:
        assert any(name in str(error) for name in named), f"{error} names none of {named}"
        leftovers = list(out_root.iterdir()) if out_root.exists() else []
        assert leftovers == [], f"a failed import left {leftovers}"
        return False
    return True


# ----------------------------------------------------------------------------- strategies

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12),
                    st.binary(max_size=12))
data_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.tuples(inner, inner), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=12)
id_like = st.one_of(st.integers(-3, 6), st.integers(), st.floats(), st.sampled_from(["1", "1.0", "-1", "1e30", ""]),
                    st.text(max_size=4), st.none(), st.booleans(), st.lists(st.integers(0, 3), max_size=2))


@st.composite
def pair_frames(draw) -> pd.DataFrame:
    """A tst.pkl-like DataFrame: the pair columns (sometimes one missing, or an extra) with values of any type."""
    rows = draw(st.integers(0, 4))
    columns = list(PAIR_COLUMNS)
    if draw(st.booleans()):
        columns.remove(draw(st.sampled_from(columns)))
    if draw(st.booleans()):
        columns.append(draw(st.sampled_from(["extra", "uid", 7])))
    cells = {"uid": id_like, "iid": id_like}
    frame = pd.DataFrame({f"c{n}": draw(st.lists(cells.get(column, data_values), min_size=rows, max_size=rows))
                          for n, column in enumerate(columns)}, dtype=object)
    frame.columns = columns
    return frame


def huge_claims(count: int) -> list:
    """Pickled objects that each claim ``count`` elements or bytes while holding almost none."""
    return [
        build_state(empty_array(), (1, (count,), dtype("O8"), False, [1, 2])),
        call("numpy", "ndarray", (count,), "f8"),
        call("numpy.core.multiarray", "_reconstruct", find("numpy", "ndarray"), (count, 2), b"b"),
        call("builtins", "bytearray", count),
        call("builtins", "tuple", call("builtins", "range", count)),
        call("pandas.core.indexes.base", "_new_Index", find("pandas.core.indexes.range", "RangeIndex"),
             {"start": 0, "stop": count, "step": 1}),
        call("pandas.core.indexes.base", "_new_Index", find("pandas.core.indexes.base", "Index"),
             {"data": call("builtins", "range", count)}),
    ]


# ----------------------------------------------------------------------------- XRec pickles


def _xrec(source: Path, out: Path) -> Callable[[], object]:
    return lambda: import_xrec(source, "toy", out)


@SMALL
@given(content=st.one_of(st.binary(max_size=300), st.binary(max_size=300).map(lambda data: b"\x80\x04" + data)))
def test_xrec_pickle_of_arbitrary_bytes(content):
    with workspace() as root:
        source = write_xrec_folder(root / "src")
        (source / "tst.pkl").write_bytes(content)
        assert not outcome(_xrec(source, root / "out"), ["tst.pkl"], root / "out")


@SMALL
@given(data=st.data())
def test_xrec_pickle_cut_anywhere_is_refused(data):
    with workspace() as root:
        source = write_xrec_folder(root / "src")
        whole = (source / "tst.pkl").read_bytes()
        (source / "tst.pkl").write_bytes(whole[:data.draw(st.integers(0, len(whole) - 1), label="cut")])
        assert not outcome(_xrec(source, root / "out"), ["tst.pkl"], root / "out")


@SMALL
@given(data=st.data())
def test_xrec_pickle_with_changed_bytes(data):
    with workspace() as root:
        source = write_xrec_folder(root / "src")
        content = bytearray((source / "tst.pkl").read_bytes())
        for _ in range(data.draw(st.integers(1, 4), label="changes")):
            content[data.draw(st.integers(0, len(content) - 1), label="at")] = data.draw(st.integers(0, 255))
        (source / "tst.pkl").write_bytes(bytes(content))
        outcome(_xrec(source, root / "out"), ["tst.pkl"], root / "out")


@SMALL
@given(value=st.one_of(data_values, pair_frames()), protocol=st.sampled_from([2, 4]))
def test_xrec_pickle_of_wrong_types(value, protocol):
    with workspace() as root:
        source = write_xrec_folder(root / "src")
        (source / "tst.pkl").write_bytes(pickle.dumps(value, protocol=protocol))
        if outcome(_xrec(source, root / "out"), ["tst.pkl"], root / "out"):
            assert isinstance(value, pd.DataFrame)
            assert (root / "out" / "toy" / "toy.expl.jsonl").is_file()


@SMALL
@given(count=st.integers(2 ** 33, 2 ** 62), which=st.integers(0, 6))
def test_pickle_claiming_a_huge_count_is_refused_by_the_limit(tmp_path, count, which):
    path = tmp_path / "claim.pkl"
    path.write_bytes(crafted(huge_claims(count)[which]))
    with pytest.raises(InputError, match=r"claim\.pkl: refusing to load: .*(limit|overflows)"):
        load_data_pickle(path)


@SMALL
@given(lists=st.one_of(data_values, st.lists(st.lists(id_like, max_size=3), min_size=3, max_size=5)),
       user_num=st.one_of(st.integers(), st.just(4), st.booleans(), st.floats()),
       item_num=st.one_of(st.integers(), st.just(5), st.text(max_size=2)))
def test_xrec_neighbour_lists_of_wrong_types_and_counts(lists, user_num, item_num):
    with workspace() as root:
        source = write_xrec_folder(root / "src")
        (source / "para_dict.pickle").write_bytes(pickle.dumps(
            {"trn_user_nb": lists, "user_num": user_num, "item_num": item_num}))
        outcome(_xrec(source, root / "out"), [str(source)], root / "out")


@SMALL
@given(references=st.one_of(data_values, st.lists(st.text(max_size=8), max_size=4)),
       predictions=st.one_of(data_values, st.lists(st.text(max_size=8), max_size=4)))
def test_xrec_prediction_lists_of_wrong_types(references, predictions):
    with workspace() as root:
        source = write_xrec_folder(root / "src")
        (source / "tst_ref.pkl").write_bytes(pickle.dumps(references))
        (source / "tst_pred.pkl").write_bytes(pickle.dumps(predictions))
        outcome(_xrec(source, root / "out"), ["tst_ref.pkl", "tst_pred.pkl"], root / "out")


# ----------------------------------------------------------------------------- XRec CSVs


@SMALL
@given(content=st.binary(max_size=300))
def test_xrec_csv_of_arbitrary_bytes(content):
    with workspace() as root:
        source = write_xrec_folder(root / "src", with_csv_train=True)
        (source / "total_trn.csv").write_bytes(content)
        outcome(_xrec(source, root / "out"), ["total_trn.csv"], root / "out")


cell_text = st.text(alphabet=string.printable + "é\u2028\x00", max_size=8)


@SMALL
@given(header=st.sampled_from(["user,item", "user,item,Time", "item,user", "user", "user,user,item"]),
       rows=st.lists(st.lists(st.one_of(cell_text, st.integers(-2, 5).map(str)), min_size=1, max_size=4),
                     max_size=6))
def test_xrec_csv_rows_of_any_shape_and_value(header, rows):
    with workspace() as root:
        source = write_xrec_folder(root / "src", with_csv_train=True)
        lines = [header, *[",".join(row) for row in rows]]
        (source / "total_trn.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        outcome(_xrec(source, root / "out"), ["total_trn.csv", str(source)], root / "out")


@SMALL
@given(line=st.integers(1, 6), bad=st.sampled_from([b"\xff", b"\xc3", b"\xe9", b"\x80abc"]))
def test_xrec_csv_non_utf8_names_the_true_line(line, bad):
    with workspace() as root:
        source = write_xrec_folder(root / "src", with_csv_train=True)
        lines = [b"user,item", b"0,1", b"0,2", b"1,0", b"1,2", b"2,4"]
        lines[line - 1] += bad
        (source / "total_trn.csv").write_bytes(b"\n".join(lines) + b"\n")
        with pytest.raises(InputError, match=rf"total_trn\.csv, line {line} \(byte \d+\): byte 0x.. is not UTF-8"):
            import_xrec(source, "toy", root / "out")
        assert not (root / "out").exists()


# ----------------------------------------------------------------------------- Amazon dumps

json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                                     st.text(max_size=10)),
                           lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                   st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                           max_leaves=10)
review_records = st.fixed_dictionaries({}, optional={
    "reviewerID": st.one_of(st.sampled_from(["A1", "A2", "A3"]), json_values),
    "asin": st.one_of(st.sampled_from(["B1", "B2"]), json_values),
    "overall": st.one_of(st.floats(), st.integers(), json_values),
    "unixReviewTime": st.one_of(st.integers(), st.floats(), json_values),
    "summary": json_values, "reviewText": json_values})
literal_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10),
                                        st.binary(max_size=4), st.complex_numbers()),
                              lambda inner: st.one_of(st.lists(inner, max_size=3), st.tuples(inner, inner),
                                                      st.sets(st.integers(), max_size=3),
                                                      st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                              max_leaves=10)
meta_records = st.fixed_dictionaries({}, optional={
    "asin": st.one_of(st.sampled_from(["B1", "B2", "B3", "B4", "B5"]), literal_values),
    "title": literal_values, "description": literal_values, "categories": literal_values,
    "category": literal_values, "brand": literal_values, "imUrl": literal_values, "imageURL": literal_values})


def _amazon(reviews: Path, meta: Path, out: Path, core: int = 5) -> Callable[[], object]:
    return lambda: import_amazon(reviews, meta, "baby", out, core=core)


@SMALL
@given(content=st.binary(max_size=300), compress=st.booleans(), which=st.sampled_from(["reviews", "meta"]))
def test_amazon_dump_of_arbitrary_bytes(content, compress, which):
    with workspace() as root:
        files = {"reviews": write_lines(root / "reviews.json", review_lines("2018"), compress=False),
                 "meta": write_lines(root / "meta.json", META_2014, compress=False)}
        files[which].write_bytes(gzip.compress(content) if compress else content)
        outcome(_amazon(files["reviews"], files["meta"], root / "out"), [files[which].name], root / "out")


@SMALL
@given(records=st.lists(st.one_of(review_records, json_values), max_size=6))
def test_amazon_review_lines_of_wrong_types(records):
    with workspace() as root:
        reviews = write_lines(root / "reviews.json", [json.dumps(record) for record in records], compress=False)
        meta = write_lines(root / "meta.json", META_2014, compress=False)
        outcome(_amazon(reviews, meta, root / "out", core=1), ["reviews.json", "meta.json"], root / "out")


@SMALL
@given(records=st.lists(st.one_of(meta_records, literal_values), max_size=6), as_json=st.booleans())
def test_amazon_metadata_literal_lines_of_wrong_types(records, as_json):
    with workspace() as root:
        reviews = write_lines(root / "reviews.json", review_lines("2018"), compress=False)
        lines = [json.dumps(record, default=repr) if as_json else repr(record) for record in records]
        meta = write_lines(root / "meta.json", lines, compress=False)
        outcome(_amazon(reviews, meta, root / "out"), ["meta.json"], root / "out")


@SMALL
@given(line=st.integers(1, 6), compress=st.booleans(), bad=st.sampled_from([b"\xff", b"\xc3(", b"\xed\xa0\x80"]))
def test_amazon_non_utf8_names_the_true_line(line, compress, bad):
    with workspace() as root:
        reviews = write_lines(root / "reviews.json", review_lines("2018"), compress=False)
        lines = [line_text.encode() for line_text in META_2014]
        lines[line - 1] = lines[line - 1][:-1] + bad + lines[line - 1][-1:]
        data = b"\n".join(lines) + b"\n"
        meta = root / "meta.json"
        meta.write_bytes(gzip.compress(data) if compress else data)
        with pytest.raises(InputError, match=rf"meta\.json, line {line} \(byte {data.index(bad)}"):
            import_amazon(reviews, meta, "baby", root / "out")
        assert not (root / "out").exists()


@FEW
@given(data=st.data())
def test_amazon_gzip_cut_anywhere_is_refused(data):
    with workspace() as root:
        reviews = write_lines(root / "reviews.json.gz", review_lines("2018"), compress=True)
        whole = reviews.read_bytes()
        reviews.write_bytes(whole[:data.draw(st.integers(0, len(whole) - 1), label="cut")])
        meta = write_lines(root / "meta.json", META_2014, compress=False)
        assert not outcome(_amazon(reviews, meta, root / "out"), ["reviews.json.gz"], root / "out")


# ----------------------------------------------------------------------------- atomic files

atomic_cells = st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=10)


@SMALL
@given(rows=st.lists(st.tuples(atomic_cells, atomic_cells), min_size=1, max_size=5))
def test_atomic_files_written_are_read_back(tmp_path, rows):
    """What the importers write (text made single-line) is what RecBole and the stages read back."""
    path = tmp_path / "round.item"
    frame = pd.DataFrame(rows, columns=["item_id", "title"])
    write_atomic_file(path, frame, {"item_id": "token", "title": "token_seq"})
    read = read_atomic_file(path)
    assert list(read.columns) == ["item_id", "title"]
    assert read.values.tolist() == [[single_line(a), single_line(b)] for a, b in rows]


def test_atomic_text_with_a_nul_character_is_read_back(tmp_path):
    path = tmp_path / "nul.item"
    write_atomic_file(path, pd.DataFrame({"item_id": ["i1"], "title": ["a\x00b"]}), {"item_id": "token",
                                                                                     "title": "token_seq"})
    assert read_atomic_file(path)["title"].tolist() == ["a b"] == [single_line("a\x00b")]


@SMALL
@given(content=st.binary(max_size=200))
def test_atomic_file_of_arbitrary_bytes(tmp_path, content):
    path = tmp_path / "any.item"
    path.write_bytes(b"item_id:token\ttitle:token_seq\n" + content)
    try:
        frame = read_atomic_file(path)
    except InputError as error:
        assert "any.item" in str(error)
    else:
        assert isinstance(frame, pd.DataFrame)


# ----------------------------------------------------------------------------- pair files (through the CLI)


@pytest.fixture(scope="module")
def toy_graph(tmp_path_factory) -> Path:
    from test_collect_paths import write_data_set

    data = tmp_path_factory.mktemp("pairs") / "data"
    write_data_set(data)
    return data


def _paths(data: Path, run: Path, pair_file: Path) -> int:
    return mmprefer(["paths", "--dataset", "toy", f"--data_path={data}", f"--run_dir={run}", "--path_weight=degree",
                     "--path_workers=1", "--pairs_file", str(pair_file)])


@FEW
@given(lines=st.lists(st.one_of(st.sampled_from(["u0\ti1", "u1\ti3", "user_id\titem_id", "u0 i1", "\t", "u0\tnobody"]),
                                st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=12)),
                      max_size=5))
def test_pair_file_of_any_text(toy_graph, capsys, lines):
    with workspace() as root:
        pair_file = root / "pairs.tsv"
        pair_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
        capsys.readouterr()
        code = _paths(toy_graph, root / "run", pair_file)
        err = capsys.readouterr().err
        assert code in (0, 2), err
        if code == 2:
            assert "pairs.tsv" in err and "Traceback" not in err
            assert not (root / "run" / "paths").exists() and not list((root / "run").glob(".paths-partial-*"))


@FEW
@given(content=st.binary(min_size=1, max_size=40).filter(lambda data: not _is_utf8(data)))
def test_pair_file_of_arbitrary_bytes(toy_graph, capsys, content):
    with workspace() as root:
        pair_file = root / "pairs.tsv"
        pair_file.write_bytes(content)
        capsys.readouterr()
        assert _paths(toy_graph, root / "run", pair_file) == 2
        assert "pairs.tsv" in capsys.readouterr().err


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_strategies_reach_both_outcomes():
    """The suite would prove little if every example failed: a valid folder imports, its neighbours do not."""
    with workspace() as root:
        source = write_xrec_folder(root / "src")
        assert outcome(_xrec(source, root / "ok"), ["tst.pkl"], root / "ok")
        (source / "tst.pkl").write_bytes(pickle.dumps(pd.DataFrame({column: [np.nan] for column in PAIR_COLUMNS})))
        assert not outcome(_xrec(source, root / "bad"), ["tst.pkl"], root / "bad")
