"""XRec-layout importer and the explanation table: fixtures in the published layout, and the real data."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import SHARED_DATA
from recbole_mmprefer.cli import main as mmprefer
from recbole_mmprefer.data.atomic import read_atomic_file
from recbole_mmprefer.data.explanations import (
    assign_splits,
    explanation_table_path,
    read_explanation_table,
    read_node_profiles,
    write_atomic_file,
    write_explanation_table,
)
from recbole_mmprefer.data.safe_pickle import load_data_pickle
from recbole_mmprefer.data.xrec import import_xrec
from recbole_mmprefer.errors import InputError, MissingInputError
from recbole_mmprefer.utils import read_json

# A 4-user, 5-item graph. Pairs (0, 1) and (2, 4) are training edges; (3, 0) is a test edge.
TRAIN_LISTS = [[1, 2], [0, 2, 3], [4, 1], [2]]
PAIRS = [
    (0, 1, "Dune", "Likes epic science fiction.", "Readers of space opera.", "Because they love\tdeserts."),
    (2, 4, "Emma", "Enjoys\nclassic novels.", '"Witty" romance fans.', "Because of the wit."),
    (3, 0, "Ulysses", "Reads modernist prose.", "", "Because it is hard."),
]


def write_xrec_folder(folder: Path, with_csv_train: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    pairs = pd.DataFrame(PAIRS, columns=["uid", "iid", "title", "user_summary", "item_summary", "explanation"])
    pairs.to_pickle(folder / "tst.pkl")
    if with_csv_train:
        rows = [(u, i) for u, items in enumerate(TRAIN_LISTS) for i in items]
        pd.DataFrame(rows, columns=["user", "item"]).to_csv(folder / "total_trn.csv", index=False)
    else:
        para = {"trn_user_nb": TRAIN_LISTS, "trn_item_nb": [[1], [0, 2], [0, 1, 3], [1], [2]],
                "user_num": 4, "item_num": 5}
        with open(folder / "para_dict.pickle", "wb") as handle:
            pickle.dump(para, handle)
    pd.DataFrame({"user": [0], "item": [3], "Time": ["02 22, 2017"]}).to_csv(folder / "total_val.csv", index=False)
    pd.DataFrame({"user": [3, 1], "item": [0, 2], "Time": ["01 7, 2015", ""]}).to_csv(
        folder / "total_tst.csv", index=False)
    references = [PAIRS[2][5], PAIRS[0][5], PAIRS[1][5]]
    predictions = ["pred for 3-0", "pred for 0-1", "pred for 2-4"]
    pd.to_pickle(predictions, folder / "tst_pred.pkl")
    pd.to_pickle(references, folder / "tst_ref.pkl")
    return folder


def test_import_writes_graph_nodes_and_table(tmp_path):
    source = write_xrec_folder(tmp_path / "src")
    report = import_xrec(source, "toy", tmp_path / "dataset")
    out = tmp_path / "dataset" / "toy"
    assert sorted(p.name for p in out.iterdir()) == ["import_report.json", "toy.expl.jsonl", "toy.inter",
                                                     "toy.item", "toy.user"]
    assert report["users"] == 4 and report["items"] == 5
    # (1, 2) is listed in training and test: kept once, as a training edge
    assert report["edges"] == {"train": 8, "valid": 1, "test": 1} and report["skipped"]["duplicate_edge"] == 1
    assert report["pairs_in_train_graph"] == 2 and report["predictions_aligned"] == 3

    inter = read_atomic_file(out / "toy.inter")
    assert list(inter.columns) == ["user_id", "item_id", "order", "timestamp", "split"]
    assert inter.iloc[:3].values.tolist() == [["0", "1", "0", "", "train"], ["0", "2", "1", "", "train"],
                                              ["1", "0", "2", "", "train"]]
    assert inter.iloc[-2:].values.tolist() == [["0", "3", "8", "1487721600", "valid"],
                                               ["3", "0", "9", "1420588800", "test"]]

    users, items = read_node_profiles(out, "toy")
    assert users == {"0": "Likes epic science fiction.", "2": "Enjoys classic novels.",
                     "3": "Reads modernist prose."}
    assert items == {"1": "Readers of space opera.", "4": "\u201cWitty\" romance fans."}
    item_table = read_atomic_file(out / "toy.item")
    assert item_table["title"].tolist() == ["Ulysses", "Dune", "", "", "Emma"]
    assert item_table["profile_source"].tolist() == ["", "xrec", "", "", "xrec"]

    table = read_explanation_table(explanation_table_path(out, "toy"))
    assert table[["user_id", "item_id"]].values.tolist() == [["0", "1"], ["2", "4"], ["3", "0"]]
    assert table["explanation"].tolist() == [p[5] for p in PAIRS]  # exact text, tab included
    assert table["user_profile"].iloc[1] == "Enjoys\nclassic novels."
    assert [b["xrec"] for b in table["baselines"]] == ["pred for 0-1", "pred for 2-4", "pred for 3-0"]
    assert set(table["profile_source"]) == {"xrec"} and set(table["explanation_source"]) == {"xrec"}


def test_training_csv_gives_the_same_graph_as_para_dict(tmp_path):
    import_xrec(write_xrec_folder(tmp_path / "a"), "toy", tmp_path / "from_para")
    import_xrec(write_xrec_folder(tmp_path / "b", with_csv_train=True), "toy", tmp_path / "from_csv")
    first = read_atomic_file(tmp_path / "from_para" / "toy" / "toy.inter")
    second = read_atomic_file(tmp_path / "from_csv" / "toy" / "toy.inter")
    pd.testing.assert_frame_equal(first, second)


def test_explanation_table_round_trips(tmp_path):
    import_xrec(write_xrec_folder(tmp_path / "src"), "toy", tmp_path / "dataset")
    path = explanation_table_path(tmp_path / "dataset" / "toy", "toy")
    table = read_explanation_table(path)
    write_explanation_table(tmp_path / "copy.jsonl", table)
    assert (tmp_path / "copy.jsonl").read_bytes() == path.read_bytes()


def test_splits_are_seeded_sized_and_independent_of_row_order():
    pairs = pd.DataFrame({"user_id": [str(u) for u in range(50) for _ in range(2)],
                          "item_id": [str(i) for i in range(100)]})
    labels = assign_splits(pairs, seed=7)
    assert pd.Series(labels).value_counts().to_dict() == {"train": 80, "valid": 10, "test": 10}
    assert (assign_splits(pairs, seed=7) == labels).all()
    assert (assign_splits(pairs, seed=8) != labels).any()
    shuffled = pairs.sample(frac=1.0, random_state=0)
    assert (assign_splits(shuffled, seed=7) == labels[shuffled.index]).all()
    by_user = pd.DataFrame({"user": pairs["user_id"], "split": assign_splits(pairs, seed=7, group_by="user")})
    assert (by_user.groupby("user")["split"].nunique() == 1).all()
    with pytest.raises(InputError, match="sum to 1"):
        assign_splits(pairs, ratios=(0.8, 0.3, 0.1))


def test_published_train_and_valid_files_give_the_split(tmp_path):
    source = write_xrec_folder(tmp_path / "src")
    columns = ["uid", "iid", "title", "user_summary", "item_summary", "explanation"]
    pd.DataFrame([(1, 0, "Ulysses", "Likes long books.", "", "Because it is long.")], columns=columns).to_pickle(
        source / "trn.pkl")
    pd.DataFrame([(1, 3, "Hamlet", "", "Tragedy fans.", "Because of the ghost."), PAIRS[0]],
                 columns=columns).to_pickle(source / "val.pkl")
    report = import_xrec(source, "toy", tmp_path / "dataset")
    table = read_explanation_table(explanation_table_path(tmp_path / "dataset" / "toy", "toy"))
    assert table[["user_id", "item_id", "split"]].values.tolist() == [
        ["1", "0", "train"], ["1", "3", "valid"], ["0", "1", "valid"], ["2", "4", "test"], ["3", "0", "test"]]
    assert report["split"] == {"from": "published files"} and report["skipped"]["duplicate_pair"] == 1
    # predictions belong to tst.pkl rows: (0, 1) now comes from val.pkl and gets none
    assert [b.get("xrec") for b in table["baselines"]] == [None, None, None, "pred for 2-4", "pred for 3-0"]
    report = import_xrec(source, "toy", tmp_path / "dataset", resplit=True, split_ratios=(0.6, 0.2, 0.2))
    assert report["split"]["from"] == "seeded" and report["table"]["splits"] == {"train": 3, "valid": 1, "test": 1}


def test_duplicate_pairs_and_empty_explanations_are_skipped_and_counted(tmp_path):
    source = write_xrec_folder(tmp_path / "src")
    rows = PAIRS + [PAIRS[0], (1, 3, "Hamlet", "Drama lover.", "Tragedy fans.", "   ")]
    pd.DataFrame(rows, columns=["uid", "iid", "title", "user_summary", "item_summary", "explanation"]).to_pickle(
        source / "tst.pkl")
    report = import_xrec(source, "toy", tmp_path / "dataset")
    assert report["skipped"]["duplicate_pair"] == 1 and report["skipped"]["empty_explanation"] == 1
    assert report["table"]["pairs"] == 3


def test_truncated_pickle_is_a_clear_error_and_nothing_is_written(tmp_path):
    source = write_xrec_folder(tmp_path / "src")
    data = (source / "tst.pkl").read_bytes()
    (source / "tst.pkl").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"tst\.pkl: not a readable data pickle"):
        import_xrec(source, "toy", tmp_path / "dataset")
    assert not (tmp_path / "dataset" / "toy").exists()


def test_pickle_that_would_run_code_is_refused(tmp_path):
    class Exploit:
        def __reduce__(self):
            return os.system, ("echo pwned > pwned.txt",)

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(InputError, match="refusing to load posix.system|refusing to load os.system"):
        load_data_pickle(path)
    assert not Path("pwned.txt").exists()


def test_wrong_columns_are_named(tmp_path):
    source = write_xrec_folder(tmp_path / "src")
    pd.DataFrame({"uid": [0], "iid": [1], "title": ["x"]}).to_pickle(source / "tst.pkl")
    with pytest.raises(InputError, match=r"missing column\(s\) \['user_summary', 'item_summary', 'explanation'\]"):
        import_xrec(source, "toy", tmp_path / "dataset")


def test_pair_outside_the_graph_names_row_and_field(tmp_path):
    source = write_xrec_folder(tmp_path / "src")
    rows = PAIRS + [(0, 9, "Ghost", "a", "b", "c")]
    pd.DataFrame(rows, columns=["uid", "iid", "title", "user_summary", "item_summary", "explanation"]).to_pickle(
        source / "tst.pkl")
    with pytest.raises(InputError, match=r"tst\.pkl, row 4: iid 9 is outside the graph \(5 nodes\)"):
        import_xrec(source, "toy", tmp_path / "dataset")


def test_bad_csv_id_and_time_name_the_line(tmp_path):
    source = write_xrec_folder(tmp_path / "src")
    (source / "total_val.csv").write_text("user,item,Time\n0,3,02 22, 2017\n")  # unquoted comma in Time
    with pytest.raises(InputError, match="total_val.csv"):
        import_xrec(source, "toy", tmp_path / "dataset")
    (source / "total_val.csv").write_text('user,item,Time\n0,3,"02 22, 2017"\n1,x,"01 1, 2016"\n')
    with pytest.raises(InputError, match=r"total_val\.csv, line 3: field 'item'"):
        import_xrec(source, "toy", tmp_path / "dataset")
    (source / "total_val.csv").write_text('user,item,Time\n0,3,"2017-02-22"\n')
    with pytest.raises(InputError, match=r"total_val\.csv, line 2: field 'Time'"):
        import_xrec(source, "toy", tmp_path / "dataset")


def test_missing_training_graph_is_named(tmp_path):
    source = write_xrec_folder(tmp_path / "src")
    (source / "para_dict.pickle").unlink()
    with pytest.raises(MissingInputError, match="total_trn.csv or para_dict.pickle"):
        import_xrec(source, "toy", tmp_path / "dataset")


def test_failed_reimport_keeps_the_previous_output(tmp_path):
    source = write_xrec_folder(tmp_path / "src")
    import_xrec(source, "toy", tmp_path / "dataset")
    before = (tmp_path / "dataset" / "toy" / "toy.expl.jsonl").read_bytes()
    pd.to_pickle(["only one"], source / "tst_pred.pkl")
    with pytest.raises(InputError, match="has 1 entries but"):
        import_xrec(source, "toy", tmp_path / "dataset")
    assert (tmp_path / "dataset" / "toy" / "toy.expl.jsonl").read_bytes() == before


def test_atomic_text_is_single_line_and_safe_for_recbole(tmp_path):
    frame = pd.DataFrame({"item_id": ["a"], "title": ['"Quoted"\ttitle\nover lines'], "year": [np.nan]})
    write_atomic_file(tmp_path / "x.item", frame, {"item_id": "token", "title": "token_seq", "year": "float"})
    assert (tmp_path / "x.item").read_text().splitlines() == [
        "item_id:token\ttitle:token_seq\tyear:float", "a\t\u201cQuoted\" title over lines\t"]
    loaded = pd.read_csv(tmp_path / "x.item", sep="\t")  # pandas' default quoting, as RecBole reads
    assert loaded.shape == (1, 3)


def test_cli_import_then_run_recbole_reads_the_data_set(tmp_path, capsys):
    source = write_xrec_folder(tmp_path / "src")
    assert mmprefer(["import", "xrec", str(source), "--name", "toy", "--out", str(tmp_path / "data"),
                     "--seed", "3"]) == 0
    assert "Wrote" in capsys.readouterr().out
    report = json.loads((tmp_path / "data" / "toy" / "import_report.json").read_text())
    assert report["split"]["seed"] == 3
    assert mmprefer(["import", "xrec", str(tmp_path / "nowhere"), "--name", "toy"]) == 2
    assert "mmprefer import xrec: error" in capsys.readouterr().err

    from recbole.data import create_dataset

    from recbole_mmprefer.config import Config

    config = Config(model="SASRec", dataset="toy", config_dict={
        "data_path": str(tmp_path / "data"), "load_col": {"inter": ["user_id", "item_id", "order"]},
        "TIME_FIELD": "order"})
    dataset = create_dataset(config)
    assert dataset.user_num == 5 and dataset.item_num == 6  # 4 users, 5 items, plus padding


XREC = SHARED_DATA / "xrec"


@pytest.mark.skipif(not (XREC / "amazon" / "tst.pkl").is_file(),
                    reason=f"real XRec data not found at {XREC}/amazon (the shared data folder is absent)")
def test_real_xrec_amazon_imports_with_the_published_counts(tmp_path):
    report = import_xrec(XREC / "amazon", "xrec-amazon", tmp_path)
    assert (report["users"], report["items"], report["edges"]["train"]) == (15349, 15247, 288671)
    assert report["table"]["pairs"] == 3000 and report["predictions_aligned"] == 3000
    assert report["users_with_profile"] == 1830 and report["items_with_profile"] == 2545
    table = read_explanation_table(explanation_table_path(tmp_path / "xrec-amazon", "xrec-amazon"))
    assert table["split"].value_counts().to_dict() == {"train": 2400, "valid": 300, "test": 300}
    published = pd.read_pickle(XREC / "amazon" / "tst.pkl")
    assert table.iloc[0]["explanation"] == published.iloc[0]["explanation"]
    predictions = dict(zip(pd.read_pickle(XREC / "amazon" / "tst_ref.pkl"),
                           pd.read_pickle(XREC / "amazon" / "tst_pred.pkl")))
    assert all(b["xrec"] == predictions[e] for b, e in zip(table["baselines"], table["explanation"]))


@pytest.mark.skipif(not (XREC / "google" / "tst.pkl").is_file(),
                    reason=f"real XRec data not found at {XREC}/google (the shared data folder is absent)")
def test_real_xrec_google_imports(tmp_path):
    report = import_xrec(XREC / "google", "xrec-google", tmp_path)
    assert (report["users"], report["items"], report["edges"]["train"]) == (22582, 16557, 329472)
    assert report["table"]["pairs"] == 3000 and report["predictions_aligned"] == 3000


def write_random_xrec_folder(folder: Path, n_users: int = 30, n_items: int = 40, seed: int = 0) -> Path:
    """An XRec-layout folder on a random graph big enough to train a sequential model for one epoch."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    lists = [sorted(int(i) for i in rng.choice(n_items, size=7, replace=False)) for _ in range(n_users)]
    item_lists = [[u for u, items in enumerate(lists) if i in items] for i in range(n_items)]
    with open(folder / "para_dict.pickle", "wb") as handle:
        pickle.dump({"trn_user_nb": lists, "trn_item_nb": item_lists, "user_num": n_users, "item_num": n_items},
                    handle)
    rows = [(u, lists[u][0], f"movie number {lists[u][0]}", "likes drama", "comedy fans", f"because {u}")
            for u in range(0, n_users, 3)]
    pd.DataFrame(rows, columns=["uid", "iid", "title", "user_summary", "item_summary", "explanation"]).to_pickle(
        folder / "tst.pkl")
    return folder


def test_run_recbole_trains_mmpsasrec_on_an_imported_xrec_data_set(tmp_path, tiny_encoder):
    from conftest import tiny_config
    from recbole_mmprefer.quick_start import run_recbole

    source = write_random_xrec_folder(tmp_path / "src")
    import_xrec(source, "xrec-amazon", tmp_path / "data")  # the name picks dataset_configs/xrec-amazon.yaml
    config = tiny_config(tmp_path / "data", text_encoder=str(tiny_encoder))
    del config["text_fields"], config["load_col"]  # from the data-set config: [title, profile], order
    result = run_recbole(model="MMPSASRec", dataset="xrec-amazon", config_dict=config)
    assert result["epochs_trained"] == 1 and 0 <= result["test_result"]["ndcg@10"] <= 1
    meta = read_json(tmp_path / "data" / "saved" / "xrec-amazon" / "features" / "text" / "meta.json")
    items_with_text = pd.read_pickle(source / "tst.pkl")["iid"].nunique()
    assert meta["inputs"]["fields"] == ["title", "profile"] and meta["items_without_text"] == 40 - items_with_text
