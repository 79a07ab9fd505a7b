"""One test per finding of the hostile-input sweeps (issues 18 and 19): each failed before its fix.

A few tests beside them guard what must keep working (published pickles, plain
names, hub ids already in the cache). Crafted pickles are written opcode by
opcode (:func:`call`, :func:`build`), so a test can claim a huge object without
building one.
"""

from __future__ import annotations

import gzip
import json
import logging
import pickle
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_import_amazon import META_2014, review_lines, write_lines
from test_import_xrec import write_xrec_folder

from conftest import tiny_config, write_tiny_dataset, write_tiny_text_encoder
from recbole_mmprefer import cli, llm
from recbole_mmprefer.cli import main as mmprefer
from recbole_mmprefer.data.amazon import import_amazon
from recbole_mmprefer.data.safe_pickle import PICKLE_MIN_BUDGET, load_data_pickle
from recbole_mmprefer.data.xrec import import_xrec
from recbole_mmprefer.errors import InputError, MissingInputError
from recbole_mmprefer.names import check_name

TIB = 2 ** 40


# ----------------------------------------------------------------------------- writing pickles by hand


class Ops(bytes):
    """Pickle opcodes, written into a pickle as they are."""


def ops(value) -> bytes:
    """The opcodes that push ``value``: tuples, lists and dicts item by item (so they may hold :class:`Ops`)."""
    if isinstance(value, Ops):
        return value
    if isinstance(value, tuple):
        return b"(" + b"".join(ops(item) for item in value) + b"t"
    if isinstance(value, list):
        return b"](" + b"".join(ops(item) for item in value) + b"e"
    if isinstance(value, dict):
        return b"}(" + b"".join(ops(key) + ops(item) for key, item in value.items()) + b"u"
    return pickle.dumps(value, protocol=3)[2:-1]


def find(module: str, name: str) -> Ops:
    return Ops(b"c" + module.encode() + b"\n" + name.encode() + b"\n")


def call(module: str, name: str, *args) -> Ops:
    """``module.name(*args)`` as REDUCE."""
    return Ops(find(module, name) + ops(tuple(args)) + b"R")


def build(instance, state) -> Ops:
    """``instance.__setstate__(state)`` as BUILD."""
    return Ops(ops(instance) + ops(state) + b"b")


def crafted(value) -> bytes:
    return b"\x80\x03" + ops(value) + b"."


def dtype(code: str) -> Ops:
    return call("numpy", "dtype", code, False, True)


def empty_array() -> Ops:
    """What a pickled array starts as: an empty ndarray, given its shape and data by BUILD."""
    return call("numpy.core.multiarray", "_reconstruct", find("numpy", "ndarray"), (0,), b"b")


def huge_object_array(count: int) -> Ops:
    """An object array that claims ``count`` elements and carries two (numpy allocates the claim first)."""
    return build(empty_array(), (1, (count,), dtype("O8"), False, [1, 2]))


# ----------------------------------------------------------------------------- issue 18, finding 1


def test_pickle_claiming_a_terabyte_is_refused_naming_the_file_and_the_limit(tmp_path, capsys):
    source = write_xrec_folder(tmp_path / "src")
    (source / "tst.pkl").write_bytes(crafted(huge_object_array(TIB // 8)))
    with pytest.raises(InputError, match=r"tst\.pkl: refusing to load: .* 1\.0 TiB, beyond the limit of 256\.0 MiB"):
        import_xrec(source, "toy", tmp_path / "dataset")
    assert mmprefer(["import", "xrec", str(source), "--name", "toy", "--out", str(tmp_path / "dataset")]) == 2
    err = capsys.readouterr().err
    assert "tst.pkl" in err and "limit" in err and "Traceback" not in err
    assert not (tmp_path / "dataset").exists() or not any((tmp_path / "dataset").iterdir())


@pytest.mark.parametrize("claim", [
    pytest.param(call("numpy", "ndarray", (TIB,), "f8"), id="ndarray-shape"),
    pytest.param(call("builtins", "bytearray", TIB), id="bytearray-size"),
    pytest.param(Ops(b"\x96" + struct.pack("<Q", TIB) + b"abc"), id="bytearray8-length"),
    pytest.param(call("builtins", "list", call("builtins", "range", TIB)), id="list-of-range"),
    pytest.param(call("pandas.core.indexes.base", "_new_Index", find("pandas.core.indexes.range", "RangeIndex"),
                      {"start": 0, "stop": TIB, "step": 1}), id="range-index"),
    pytest.param(call("numpy.core.multiarray", "scalar", dtype(f"V{2 ** 31 - 1}"), b"x"), id="void-scalar"),
    pytest.param(call("numpy.core.multiarray", "scalar", dtype(f"V{10 ** 12}"), b"x"), id="overflowing-dtype"),
])
def test_every_way_to_claim_a_huge_object_is_refused(tmp_path, claim):
    path = tmp_path / "claim.pkl"
    path.write_bytes(crafted(claim))
    with pytest.raises(InputError, match=r"claim\.pkl: refusing to load"):
        load_data_pickle(path)


def test_copies_of_a_list_count_against_the_limit(tmp_path):
    """A small file that copies one list many times would otherwise build far more than it holds."""
    keep = b"r\x00\x00\x01\x00"  # LONG_BINPUT 65536
    copy = b"cbuiltins\nlist\n(j\x00\x00\x01\x00tR0"  # list(memo[65536]), then POP
    path = tmp_path / "copies.pkl"
    path.write_bytes(crafted(Ops(call("builtins", "list", call("builtins", "range", 10 ** 6)) + keep + copy * 200)))
    with pytest.raises(InputError, match=r"copies\.pkl: refusing to load: building a builtins\.list .* beyond the "
                                         f"limit of {PICKLE_MIN_BUDGET // 2 ** 20}\\.0 MiB"):
        load_data_pickle(path)


def test_deep_and_self_containing_objects_are_refused(tmp_path):
    nest = b"]j\x00\x00\x01\x00ar\x00\x00\x01\x00"  # [memo[65536]] stored as memo[65536]: one level deeper
    cases = {"deep": Ops(b"]r\x00\x00\x01\x00" + nest * 5000), "itself": Ops(b"]r\x00\x00\x01\x00j\x00\x00\x01\x00a"),
             "marks": Ops(b"(" * 5000)}
    for name, value in cases.items():
        path = tmp_path / f"{name}.pkl"
        path.write_bytes(crafted(value))
        with pytest.raises(InputError, match=rf"{name}\.pkl: refusing to load: .*nested more than 100 levels"):
            load_data_pickle(path)


def test_pickles_that_crashed_the_interpreter_are_refused(tmp_path):
    """Found by mutating a real tst.pkl: numpy trusts a dtype's pickled flags and an object array's list length.

    Run in a child process: before the fix, loading these ended Python with a segmentation fault.
    """
    cases = {
        "flags": build(empty_array(), (1, (3,), build(dtype("O8"), (3, "|", None, None, None, -1, -1, 54)), False,
                                       ["a", "b", "c"])),
        "short": build(empty_array(), (1, (50,), dtype("O8"), False, ["a", "b"])),
    }
    for name, value in cases.items():
        (tmp_path / f"{name}.pkl").write_bytes(crafted(value))
    script = ("import gc, sys\nfrom pathlib import Path\n"
              "from recbole_mmprefer.data.safe_pickle import load_data_pickle\n"
              "for path in sys.argv[1:]:\n    try:\n        value = load_data_pickle(Path(path))\n"
              "        print(repr(value)); del value; gc.collect(); [str(n) * 9 for n in range(100000)]\n"
              "    except ValueError as error:\n        print(error)\n")
    done = subprocess.run([sys.executable, "-c", script, *(str(tmp_path / f"{name}.pkl") for name in cases)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == [
        f"{tmp_path / 'flags.pkl'}: refusing to load: a numpy dtype '|O' whose pickled size, alignment or flags "
        "(-1, -1, 54) are not its own (8, 8, 63)",
        f"{tmp_path / 'short.pkl'}: refusing to load: an object array of 50 elements whose state holds 2 objects"]


def test_published_pickles_still_load_as_pandas_does(tmp_path):
    frame = pd.DataFrame({"uid": [0, 1], "iid": [2, 3], "title": ["a", None], "score": [0.5, np.nan]})
    for protocol in (3, 4, 5):
        path = tmp_path / f"frame{protocol}.pkl"
        path.write_bytes(pickle.dumps(frame, protocol=protocol))
        assert load_data_pickle(path).equals(frame)
    path = tmp_path / "para.pickle"
    path.write_bytes(pickle.dumps({"trn_user_nb": [[1, 2], []], "user_num": 2, "item_num": 3}))
    assert load_data_pickle(path) == {"trn_user_nb": [[1, 2], []], "user_num": 2, "item_num": 3}


def test_neighbour_lists_claiming_huge_node_counts_are_refused(tmp_path):
    source = write_xrec_folder(tmp_path / "src")
    with open(source / "para_dict.pickle", "wb") as handle:
        pickle.dump({"trn_user_nb": [[1]] * 4, "user_num": 4, "item_num": 10 ** 12}, handle)
    with pytest.raises(InputError, match=r"para_dict\.pickle: key 'item_num' is 1000000000000; a data set has 1 to "
                                         r"20,000,000"):
        import_xrec(source, "toy", tmp_path / "dataset")


def test_csv_id_beyond_the_node_limit_is_refused_before_writing_rows(tmp_path):
    source = write_xrec_folder(tmp_path / "src", with_csv_train=True)
    (source / "total_trn.csv").write_text("user,item\n0,1\n3,999999999999\n")
    with pytest.raises(InputError, match=r"total_trn\.csv, line 3: field 'item' must be an integer id from 0 to "
                                         r"19,999,999"):
        import_xrec(source, "toy", tmp_path / "dataset")
    assert not (tmp_path / "dataset").exists()


# ----------------------------------------------------------------------------- issue 18, findings 2 and 3


@pytest.mark.parametrize("name", ["../escaped", "a/b", "..", ".hidden", "", "a\\b", "x" * 101, "semi;colon"])
def test_unsafe_data_set_names_are_refused_with_the_rule(tmp_path, name):
    source = write_xrec_folder(tmp_path / "src")
    with pytest.raises(InputError, match="not a plain folder name .*single plain folder name"):
        import_xrec(source, name, tmp_path / "dataset")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["src"]


def test_unsafe_name_on_the_command_line_writes_nothing(tmp_path, capsys):
    source = write_xrec_folder(tmp_path / "src")
    out = tmp_path / "dataset"
    for name in ("../escaped", "a/b"):
        assert mmprefer(["import", "xrec", str(source), "--name", name, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"--name {name!r} is not a plain folder name" in err and "Traceback" not in err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["src"]


def test_amazon_import_checks_the_name_in_python_too(tmp_path):
    reviews = write_lines(tmp_path / "reviews.json", review_lines("2018"), compress=False)
    meta = write_lines(tmp_path / "meta.json", META_2014, compress=False)
    with pytest.raises(InputError, match="it contains a path separator"):
        import_amazon(reviews, meta, "a/b", tmp_path / "data")
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("arguments, option", [
    (["features", "--dataset", "../up"], "--dataset"),
    (["evaluate", "--dataset", "toy", "--name", "a/b"], "--name"),
    (["evaluate", "--dataset", "toy", "--system", "../x=gen.jsonl"], "--system '../x=gen.jsonl': NAME"),
])
def test_names_that_become_paths_are_checked_before_any_stage_runs(arguments, option, capsys, monkeypatch):
    monkeypatch.setattr(cli, "stage_config", lambda *a: pytest.fail("the stage ran with an unsafe name"))
    assert mmprefer(arguments) == 2
    assert f"{option} " in capsys.readouterr().err


def test_check_name_returns_plain_names():
    assert [check_name(name) for name in ("ml-100k", "xrec-amazon", "Baby_2014.v2")] == [
        "ml-100k", "xrec-amazon", "Baby_2014.v2"]


# ----------------------------------------------------------------------------- issue 18: the CLI rule


def test_unexpected_exception_prints_one_line_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr("recbole_mmprefer.data.xrec.import_xrec", broken)
    arguments = ["import", "xrec", str(tmp_path), "--name", "toy"]
    assert mmprefer(arguments) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == ["mmprefer import xrec: unexpected RuntimeError: disk on fire second line "
                                "(rerun with --debug for the traceback)"]
    with pytest.raises(RuntimeError, match="disk on fire"):
        mmprefer([*arguments, "--debug"])
    with pytest.raises(RuntimeError, match="disk on fire"):
        mmprefer(["--debug", *arguments])


# ----------------------------------------------------------------------------- issue 19, item 1: no item text


@pytest.fixture
def amazon_reviews(tmp_path) -> Path:
    return write_lines(tmp_path / "reviews.json", review_lines("2018"), compress=False)


def test_empty_meta_file_is_an_error_unless_accepted(tmp_path, amazon_reviews, caplog, capsys):
    meta = tmp_path / "meta.json"
    meta.write_bytes(b"")
    with pytest.raises(InputError, match=r"5 of 5 items \(100%\) have no title.*meta\.json \(0 metadata line"
                                         r".*--allow_missing_text"):
        import_amazon(amazon_reviews, meta, "baby", tmp_path / "data")
    assert not (tmp_path / "data").exists()
    arguments = ["import", "amazon", "--reviews", str(amazon_reviews), "--meta", str(meta), "--name", "baby",
                 "--out", str(tmp_path / "data")]
    assert mmprefer(arguments) == 2 and "--allow_missing_text" in capsys.readouterr().err
    with caplog.at_level(logging.WARNING, logger="recbole_mmprefer.data.amazon"):
        assert mmprefer([*arguments, "--allow_missing_text"]) == 0
    assert "5 of 5 items (100%) have no title" in caplog.text
    report = json.loads((tmp_path / "data" / "baby" / "import_report.json").read_text())
    assert report["counts"]["items_without_text"] == 5


def test_meta_for_few_items_warns_with_the_share(tmp_path, amazon_reviews, caplog):
    meta = write_lines(tmp_path / "meta.json", [json.dumps({"asin": "B1", "title": "Bottle"}),
                                                json.dumps({"asin": "B2", "title": ""})], compress=False)
    with caplog.at_level(logging.WARNING, logger="recbole_mmprefer.data.amazon"):
        report = import_amazon(amazon_reviews, meta, "baby", tmp_path / "data")
    assert "4 of 5 items (80%) have no title, description, categories or brand" in caplog.text
    assert report["counts"]["items_without_text"] == 4 and report["counts"]["items_without_meta"] == 3


def _features_config(root: Path, **overrides):
    from recbole_mmprefer.config import Config

    return Config(model="MMPSASRec", dataset="tiny", config_dict=tiny_config(root, **overrides))


def _blank_titles(folder: Path, keep: int) -> None:
    item_file = folder / "tiny.item"
    lines = item_file.read_text().splitlines()
    rows = [line.split("\t") for line in lines[1:]]
    rows = [row if number < keep else [row[0], "", ""] for number, row in enumerate(rows)]
    item_file.write_text("\n".join([lines[0], *["\t".join(row) for row in rows]]) + "\n")


def test_features_refuse_items_without_any_text_unless_accepted(tmp_path, caplog):
    from recbole_mmprefer.artifacts import ARTIFACTS
    from recbole_mmprefer.data.features import build_features

    encoder = write_tiny_text_encoder(tmp_path / "bert")
    _blank_titles(write_tiny_dataset(tmp_path / "data"), keep=0)
    config = _features_config(tmp_path / "data", text_encoder=str(encoder))
    with pytest.raises(InputError, match=r"40 of 40 items \(100%\) have no text in fields \['title', 'genre'\] "
                                         r".*tiny\.item.*allow_missing_text"):
        build_features(config, "text")
    assert not ARTIFACTS["features"].dir(config, modality="text").exists()
    with caplog.at_level(logging.WARNING, logger="recbole_mmprefer.data.features"):
        out = build_features(_features_config(tmp_path / "data", text_encoder=str(encoder),
                                              allow_missing_text=True), "text")
    assert "40 of 40 items (100%)" in caplog.text
    assert json.loads((out / "meta.json").read_text())["items_without_text"] == 40


def test_features_warn_when_most_items_have_no_text(tmp_path, caplog):
    from recbole_mmprefer.data.features import build_features

    encoder = write_tiny_text_encoder(tmp_path / "bert")
    _blank_titles(write_tiny_dataset(tmp_path / "data"), keep=10)
    with caplog.at_level(logging.WARNING, logger="recbole_mmprefer.data.features"):
        build_features(_features_config(tmp_path / "data", text_encoder=str(encoder)), "text")
    assert "30 of 40 items (75%) have no text" in caplog.text


# ----------------------------------------------------------------------------- issue 19, item 2: --llm_path


@pytest.fixture
def no_transformers_call(monkeypatch):
    """Fail the test if the path ever reaches transformers: the error must come before any download try."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def reached(*args, **kwargs):
        raise AssertionError("transformers was asked to load the path")

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", reached)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", reached)


def test_llm_path_to_a_missing_folder_is_refused_naming_it(tmp_path, no_transformers_call):
    missing = tmp_path / "models" / "my-llama"
    with pytest.raises(MissingInputError, match=rf"the folder {re.escape(str(missing))} does not exist"):
        llm.load_causal_lm(str(missing))
    with pytest.raises(MissingInputError, match=r"does not exist"):
        llm.resolve_llm_path("./relative/../folder")


def test_hub_id_offline_fails_at_once_saying_how_to_give_a_local_path(no_transformers_call, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(llm, "_hub_reachable", lambda endpoint: pytest.fail("probed the network while offline"))
    with pytest.raises(MissingInputError, match=r"as a hub id it cannot be downloaded because HF_HUB_OFFLINE is set"
                                                r".*huggingface-cli download owner/some-llm --local-dir DIR.*llm_path"):
        llm.load_causal_lm("owner/some-llm")


def test_hub_id_without_network_fails_at_once(no_transformers_call, monkeypatch):
    for variable in llm.OFFLINE_ENVS:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(llm, "_hub_reachable", lambda endpoint: False)
    with pytest.raises(MissingInputError, match=r"because the model hub \(https://huggingface\.co\) cannot be reached"):
        llm.resolve_llm_path("gpt2")
    monkeypatch.setattr(llm, "_hub_reachable", lambda endpoint: True)
    assert llm.resolve_llm_path("owner/some-llm") == "owner/some-llm"  # online: left to transformers


def test_hub_id_in_the_hub_cache_is_passed_on_offline(tmp_path, monkeypatch):
    from huggingface_hub import constants

    snapshot = tmp_path / "models--owner--cached" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "models--owner--cached" / "refs").mkdir()
    (tmp_path / "models--owner--cached" / "refs" / "main").write_text("abc")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert llm.resolve_llm_path("owner/cached") == "owner/cached"


# ----------------------------------------------------------------------------- issue 19, item 4: locations


def test_non_utf8_byte_reports_its_true_line_and_offset(tmp_path, amazon_reviews):
    lines = [json.dumps({"asin": f"B{n}", "title": "x" * 5000}).encode() for n in range(1, 6)]
    lines[2] = lines[2].replace(b"xxx", b"x\xffx", 1)
    for compress in (False, True):
        data = b"\n".join(lines) + b"\n"
        meta = tmp_path / ("meta.json.gz" if compress else "meta.json")
        meta.write_bytes(gzip.compress(data) if compress else data)
        offset = data.index(b"\xff")
        with pytest.raises(InputError, match=rf"{meta.name}, line 3 \(byte {offset}.*\): byte 0xff is not UTF-8 text; "
                                             "Amazon dumps are read as UTF-8"):
            import_amazon(amazon_reviews, meta, "baby", tmp_path / "data")


def test_malformed_json_keeps_the_parsers_whole_message(tmp_path, amazon_reviews):
    meta = tmp_path / "meta.json"
    meta.write_bytes(b'{"asin": "B1"}\n{"asin": "B2", "title": "tab\there", "new": true}\n')
    with pytest.raises(InputError, match=r"meta\.json, line 2: neither JSON nor a Python literal dict; as JSON: "
                                         r"Invalid control character at: line 1 column 29 \(char 28\); as a Python "
                                         r"literal: "):
        import_amazon(amazon_reviews, meta, "baby", tmp_path / "data")


def test_xrec_csv_with_non_utf8_bytes_names_line_and_byte(tmp_path):
    source = write_xrec_folder(tmp_path / "src", with_csv_train=True)
    (source / "total_trn.csv").write_bytes(b"user,item\n0,1\n1,\xe92\n")
    with pytest.raises(InputError, match=r"total_trn\.csv, line 3 \(byte 16\): byte 0xe9 is not UTF-8 text"):
        import_xrec(source, "toy", tmp_path / "dataset")
