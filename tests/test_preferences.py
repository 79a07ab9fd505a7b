"""Preference samples (ExplainRec part 1, TALLRec's protocol): exact windows, labels and splits on a hand-made
data set, the few-shot order, published TALLRec JSON, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recbole_mmprefer.cli import main as mmprefer
from recbole_mmprefer.config import Config
from recbole_mmprefer.data.preferences import (
    build_preferences,
    few_shot,
    import_tallrec_json,
    item_titles,
    read_preferences,
)
from recbole_mmprefer.errors import InputError

SHARED_BOOKS = Path(__file__).resolve().parents[2] / "shared" / "data" / "tallrec" / "book" / "valid.json"

# user, item, rating, time: user b appears first in the file, so its windows come first (TALLRec's order)
INTERACTIONS = [("b", "i1", 5, 10), ("a", "i3", 1, 2), ("b", "i2", 2, 30), ("a", "i1", 4, 1), ("b", "i3", 4, 20),
                ("a", "i2", 5, 3), ("b", "i4", 3, 40), ("a", "i4", 4, 4), ("a", "i5", 2, 5)]
ITEMS = [("i1", "Alpha", "1990", "Comedy"), ("i2", "Beta", "1991", "Comedy Drama"), ("i3", "Gamma", "", "Horror"),
         ("i4", "Delta", "1993", "Drama"), ("i5", "Eps", "1994", "")]


def write_rated_dataset(root: Path, with_rating: bool = True) -> Path:
    folder = root / "rated"
    folder.mkdir(parents=True, exist_ok=True)
    header = "user_id:token\titem_id:token\t" + ("rating:float\t" if with_rating else "") + "timestamp:float"
    lines = [header] + ["\t".join([u, i] + ([str(r)] if with_rating else []) + [str(t)])
                        for u, i, r, t in INTERACTIONS]
    (folder / "rated.inter").write_text("\n".join(lines) + "\n")
    (folder / "rated.item").write_text("item_id:token\ttitle:token_seq\tyear:token\tgenre:token_seq\n"
                                       + "".join(f"{i}\t{t}\t{y}\t{g}\n" for i, t, y, g in ITEMS))
    return root


def rated_config(root: Path, tmp_path: Path, **overrides) -> Config:
    return Config(model="MMPSASRec", dataset="rated", config_dict={
        "data_path": str(root), "run_dir": str(tmp_path / "run"), "text_fields": ["title", "year"],
        "load_col": None, "preference_history_length": 2, "preference_windows": 5,
        "preference_split_ratios": [0.6, 0.2, 0.2], **overrides})


def test_windows_labels_and_splits_follow_tallrecs_protocol(tmp_path):
    config = rated_config(write_rated_dataset(tmp_path / "data"), tmp_path)
    build_preferences(config)
    samples = read_preferences(config)
    # b in time order: i1(5) i3(4) i2(2) i4(3); a: i1(4) i3(1) i2(5) i4(4) i5(2); b first (first in the file)
    expected = [("b", ["i1", "i3"], [True, True], "i2", 0), ("b", ["i3", "i2"], [True, False], "i4", 0),
                ("a", ["i1", "i3"], [True, False], "i2", 1), ("a", ["i3", "i2"], [False, True], "i4", 1),
                ("a", ["i2", "i4"], [True, True], "i5", 0)]
    assert [(s["user_id"], [h["item_id"] for h in s["history"]], [h["liked"] for h in s["history"]], s["item_id"],
             s["label"]) for s in samples] == expected
    assert [s["split"] for s in samples] == ["train", "train", "train", "valid", "test"]
    assert samples[0]["title"] == "Beta (1991)" and samples[0]["history"][1]["title"] == "Gamma"
    assert samples[0]["rating"] == 2.0 and samples[0]["timestamp"] == 30
    assert samples[0]["groups"] == ["Comedy", "Drama"] and samples[0]["history"][1]["groups"] == ["Horror"]
    assert samples[4]["groups"] == [] and samples[0]["history"][0]["rating"] == 5.0

    config["preference_windows"] = 3  # the last three windows only, split again in order
    build_preferences(config)
    assert [(s["user_id"], s["item_id"], s["split"]) for s in read_preferences(config)] == [
        ("a", "i2", "train"), ("a", "i4", "valid"), ("a", "i5", "test")]


def test_few_shot_sets_are_seeded_and_nested(tmp_path):
    config = rated_config(write_rated_dataset(tmp_path / "data"), tmp_path, preference_windows=5,
                          preference_split_ratios=[0.8, 0.2, 0.0], preference_shot_seed=3)
    build_preferences(config)
    samples = read_preferences(config)
    train = [s for s in samples if s["split"] == "train"]
    assert sorted(s["shot_rank"] for s in train) == [0, 1, 2, 3]
    assert all(s["shot_rank"] is None for s in samples if s["split"] != "train")
    two, three = few_shot(samples, 2), few_shot(samples, 3)
    assert [s["index"] for s in two] == [s["index"] for s in three][:2]
    with pytest.raises(InputError, match="only 4 train samples"):
        few_shot(samples, 16)
    build_preferences(config, force=True)
    assert read_preferences(config) == samples


def test_a_data_set_without_ratings_names_the_field_and_the_key(tmp_path):
    config = rated_config(write_rated_dataset(tmp_path / "data", with_rating=False), tmp_path)
    with pytest.raises(InputError, match="no rating field 'rating' \\(config key RATING_FIELD"):
        build_preferences(config)


def tallrec_record(liked, disliked, target, answer, kind="movie"):
    quote = ", ".join(f'"{title}"' for title in liked), ", ".join(f'"{title}"' for title in disliked)
    return {"instruction": f"... the target {kind} ...",
            "input": f"User Preference: {quote[0]}\nUser Unpreference: {quote[1]}\n"
                     f"Whether the user will like the target {kind} \"{target}\"?",
            "output": answer}


def test_published_tallrec_json_maps_titles_and_counts_the_unmatched(tmp_path, caplog):
    config = rated_config(write_rated_dataset(tmp_path / "data"), tmp_path)
    path = tmp_path / "test.json"
    path.write_text(json.dumps([tallrec_record(["Alpha (1990)", "Gamma"], ["Unknown"], "Beta (1991)", "Yes."),
                                tallrec_record([], ['"Quoted" Delta (1993)'], "Eps (1994)", "No.")]))
    samples, report = import_tallrec_json(path, item_titles(config), "test")
    assert [(h["item_id"], h["liked"]) for h in samples[0]["history"]] == [("i1", True), ("i3", True), (None, False)]
    assert (samples[0]["item_id"], samples[0]["label"], samples[1]["item_id"], samples[1]["label"]) == \
        ("i2", 1, "i5", 0)
    assert samples[1]["history"][0]["title"] == "Quoted Delta (1993)"
    assert report["unmatched_mentions"] == 2 and set(report["first_unmatched"]) == {"Unknown", "Quoted Delta (1993)"}
    assert "match no item of the data set" in caplog.text

    foreign = tmp_path / "books.json"
    foreign.write_text(json.dumps([tallrec_record(["Book A", "Book B"], ["Book C"], "Book D", "No.", "book")]))
    with pytest.raises(InputError, match="4 of 4 title mentions .* match no item.*'Book A'"):
        import_tallrec_json(foreign, item_titles(config), "test")
    samples, _ = import_tallrec_json(foreign, None, "test")
    assert samples[0]["item_id"] == "Book D" and [h["item_id"] for h in samples[0]["history"]] == \
        ["Book A", "Book B", "Book C"]


def test_a_malformed_published_sample_is_named(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([tallrec_record(["A"], [], "B", "Yes."), {"input": "hello", "output": "Yes."}]))
    with pytest.raises(InputError, match="sample 1: 'input' is not TALLRec's"):
        import_tallrec_json(path, None, "test")
    path.write_text(json.dumps([tallrec_record(["A"], [], "B", "Maybe.")]))
    with pytest.raises(InputError, match="sample 0: 'output' must be"):
        import_tallrec_json(path, None, "test")


@pytest.mark.skipif(not SHARED_BOOKS.is_file(), reason=f"TALLRec's book set is not at {SHARED_BOOKS}")
def test_tallrecs_published_book_set_reads_as_it_is():
    samples, report = import_tallrec_json(SHARED_BOOKS, None, "valid")
    assert len(samples) == 2427 and sum(s["label"] for s in samples) == 1011
    assert all(s["history"] for s in samples) and report["unmatched_mentions"] == 0
    first = samples[0]  # no liked book, four disliked ones; the target's title holds quotes of its own
    assert [h["liked"] for h in first["history"]] == [False] * 4
    assert first["history"][0]["title"] == "Booked to Die (Cliff Janeway Novels (Paperback)) written by John Dunning"
    assert first["title"] == "The Colonel written by Patrick A. Davis" and first["label"] == 0


def test_the_cli_writes_the_samples_and_the_report(tmp_path, capsys):
    root = write_rated_dataset(tmp_path / "data")
    common = ["--dataset", "rated", f"--data_path={root}", f"--run_dir={tmp_path / 'run'}",
              "--text_fields=['title', 'year']", "--preference_history_length=2", "--load_col=None"]
    assert mmprefer(["preferences", *common]) == 0
    folder = tmp_path / "run" / "preferences" / "windows"
    report = json.loads((folder / "report.json").read_text())
    assert report["samples"] == 5 and report["per_split"]["train"] == {"yes": 2, "no": 2}
    assert f"Preference samples: {folder / 'samples.jsonl'}" in capsys.readouterr().out
    published = tmp_path / "pub.json"
    published.write_text(json.dumps([tallrec_record(["Alpha (1990)"], [], "Beta (1991)", "Yes.")]))
    assert mmprefer(["preferences", *common, "--tallrec_json", str(published)]) == 0
    assert json.loads((tmp_path / "run" / "preferences" / "tallrec-pub" / "report.json").read_text())["samples"] == 1
