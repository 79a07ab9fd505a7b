"""The Amazon-reviews importer on fixtures written in the real dumps' formats (2014 and 2018)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from recbole_mmprefer.data import amazon
from recbole_mmprefer.data.amazon import import_amazon
from recbole_mmprefer.data.atomic import read_atomic_file
from recbole_mmprefer.errors import InputError, MissingInputError
from recbole_mmprefer.utils import file_sha256, read_json

CORE_USERS = ["A1", "A2", "A3", "A4", "A5"]
CORE_ITEMS = ["B1", "B2", "B3", "B4", "B5"]
META_2014 = [
    # As in the 2014 dump: Python literals, a title with an apostrophe inside double quotes.
    """{'asin': 'B1', 'title': "Mom's Bottle", 'description': 'Soft\\tand\\nsafe.', 'price': 3.5, """
    """'imUrl': 'http://img/B1.jpg', 'related': {'also_bought': ['B2']}, 'salesRank': {'Baby': 12}, """
    """'categories': [['Baby', 'Feeding'], ['Baby', 'Bottles']], 'brand': 'Acme'}""",
    repr({"asin": "B2", "title": "Blanket", "description": "Warm", "categories": [["Baby"]]}),
    repr({"asin": "B3", "title": "Rattle", "imUrl": "http://img/B3.jpg"}),
    repr({"asin": "B4", "title": "Crib", "brand": "Sleepy"}),
    repr({"asin": "B7", "title": "Dropped by the core"}),
    repr({"asin": "Z9", "title": "Never reviewed"}),
]  # B5 has no metadata


def interactions():
    """(user, item, rating, time): 5x5 core block; B6 and A6 go only in the second k-core round.

    Round 1 drops A6 (4 items) and B7..B9 (1 user each); B6 then has 4 users and goes in round 2.
    """
    rows = [(user, item, float(1 + (u + i) % 5), 1000 + 10 * i + u)
            for u, user in enumerate(CORE_USERS) for i, item in enumerate(CORE_ITEMS)]
    rows += [(user, "B6", 4.0, 2000 + u) for u, user in enumerate(CORE_USERS[:4])]
    rows += [("A6", item, 3.0, 3000 + i) for i, item in enumerate(["B6", "B7", "B8", "B9"])]
    return rows


def review_record(user, item, rating, time, release):
    record = {"reviewerID": user, "asin": item, "reviewerName": f"name {user}", "reviewText": f"{user} on {item}",
              "overall": rating, "summary": f"about {item}", "unixReviewTime": time, "reviewTime": "01 1, 2014"}
    if release == "2014":
        record["helpful"] = [0, 0]
    else:
        record.update(verified=True, vote="2", style={"Size:": " Large"})
    return record


def review_lines(release):
    """The interactions plus a duplicate (earlier in the file, later in time) and broken rows."""
    records = [review_record("A1", "B1", 5.0, 9999, release)]  # duplicate of (A1, B1): later, dropped
    records += [review_record(*row, release) for row in interactions()]
    records[1]["reviewText"] = 'Exact\ttext\n"quoted"'
    broken = [review_record("A9", "B1", 5.0, 1, release) for _ in range(4)]
    del broken[0]["reviewerID"]
    del broken[1]["overall"]
    broken[2]["unixReviewTime"] = "not a time"
    del broken[3]["overall"]
    return [json.dumps(record) for record in records + broken]


def meta_2018():
    return [json.dumps(record) for record in [
        {"asin": "B1", "title": "Mom's Bottle", "description": ["Soft", "and safe."], "brand": "Acme",
         "category": ["Baby", "Feeding", "Baby"], "imageURL": ["http://img/B1_small.jpg"],
         "imageURLHighRes": ["http://img/B1_large.jpg"], "main_cat": "Baby", "also_buy": ["B2"]},
        {"asin": "B2", "title": "Blanket", "description": [], "category": ["Baby"], "imageURL": [],
         "imageURLHighRes": []},
        {"asin": "B3", "title": "Rattle", "imageURL": ["http://img/B3_small.jpg"]},
        {"asin": "B4", "title": "Crib", "brand": "Sleepy"},
        {"asin": "Z9", "title": "Never reviewed"},
    ]]


def write_lines(path: Path, lines, compress: bool) -> Path:
    data = ("\n".join(lines) + "\n").encode("utf-8")
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


@pytest.fixture
def dumps_2014(tmp_path):
    return (write_lines(tmp_path / "reviews_Baby.json.gz", review_lines("2014"), compress=True),
            write_lines(tmp_path / "meta_Baby.json", META_2014, compress=False))


@pytest.fixture
def dumps_2018(tmp_path):
    return (write_lines(tmp_path / "Baby.json", review_lines("2018"), compress=False),
            write_lines(tmp_path / "meta_Baby.json.gz", meta_2018(), compress=True))


def items_by_id(folder: Path, name: str):
    return read_atomic_file(folder / f"{name}.item").set_index("item_id")


def test_2014_counts_after_iterative_core(tmp_path, dumps_2014):
    report = import_amazon(*dumps_2014, name="baby", out_root=tmp_path / "data")
    counts = report["counts"]
    assert report["format"] == "2014" and report["core"] == 5
    assert counts["review_lines"] == 38
    assert counts["skipped"] == {"bad_unixReviewTime": 1, "duplicate": 1, "missing_overall": 2,
                                 "missing_reviewerID": 1}
    assert counts["skipped_total"] == 5
    assert counts["before_core"] == {"users": 6, "items": 9, "interactions": 33}
    assert counts["after_core"] == {"users": 5, "items": 5, "interactions": 25}
    assert counts["core_rounds"] == 2
    assert counts["items_without_meta"] == 1 and counts["items_with_image"] == 0
    assert counts["meta_lines"] == 6
    assert read_json(tmp_path / "data" / "baby" / "import_report.json") == json.loads(json.dumps(report))
    assert report["sources"]["reviews"]["sha256"] == file_sha256(dumps_2014[0])


def test_inter_file_keeps_core_ids_sorted_and_earliest_duplicate(tmp_path, dumps_2014):
    import_amazon(*dumps_2014, name="baby", out_root=tmp_path / "data")
    path = tmp_path / "data" / "baby" / "baby.inter"
    assert path.read_text().splitlines()[0] == "user_id:token\titem_id:token\trating:float\ttimestamp:float"
    inter = read_atomic_file(path)
    assert list(inter.columns) == ["user_id", "item_id", "rating", "timestamp"]
    assert sorted(inter["user_id"].unique()) == CORE_USERS
    assert sorted(inter["item_id"].unique()) == CORE_ITEMS
    keys = list(zip(inter["user_id"], inter["timestamp"].astype(float)))
    assert keys == sorted(keys) and len(inter) == 25
    first = inter[(inter["user_id"] == "A1") & (inter["item_id"] == "B1")]
    assert first[["rating", "timestamp"]].values.tolist() == [["1.0", "1000"]]
    users = read_atomic_file(tmp_path / "data" / "baby" / "baby.user")
    assert users["user_id"].tolist() == CORE_USERS and set(users["profile"]) == {""}


def test_2014_python_literal_metadata(tmp_path, dumps_2014):
    import_amazon(*dumps_2014, name="baby", out_root=tmp_path / "data")
    folder = tmp_path / "data" / "baby"
    assert folder.joinpath("baby.item").read_text().splitlines()[0].split("\t") == [
        "item_id:token", "title:token_seq", "description:token_seq", "categories:token_seq", "brand:token",
        "image_url:token", "image:token", "profile:token_seq", "profile_source:token"]
    items = items_by_id(folder, "baby")
    assert items.index.tolist() == CORE_ITEMS
    b1 = items.loc["B1"]
    assert (b1["title"], b1["description"], b1["categories"]) == ("Mom's Bottle", "Soft and safe.",
                                                                  "Baby, Feeding, Bottles")
    assert (b1["brand"], b1["image_url"], b1["image"]) == ("Acme", "http://img/B1.jpg", "")
    assert items.loc["B3", "image_url"] == "http://img/B3.jpg"
    assert items.loc["B5"].tolist() == [""] * 8  # reviewed, no metadata: kept with empty text
    assert set(items["profile"]) == {""} and set(items["profile_source"]) == {""}


def test_2018_lists_joined_and_local_images(tmp_path, dumps_2018):
    images = tmp_path / "images"
    images.mkdir()
    for name in ["B1.png", "B1.jpg", "B2.webp", "B3.txt", "Z9.jpg"]:
        (images / name).write_bytes(b"x")
    report = import_amazon(*dumps_2018, name="baby18", out_root=tmp_path / "data", images=images)
    assert report["format"] == "2018" and report["formats"] == {"reviews": "2018", "meta": "2018"}
    assert report["counts"]["after_core"] == {"users": 5, "items": 5, "interactions": 25}
    assert report["counts"]["items_with_image"] == 2 and report["counts"]["items_without_meta"] == 1
    items = items_by_id(tmp_path / "data" / "baby18", "baby18")
    assert items.loc["B1", "description"] == "Soft and safe."
    assert items.loc["B1", "categories"] == "Baby, Feeding"
    assert items.loc["B1", "image_url"] == "http://img/B1_large.jpg"
    assert items.loc["B3", "image_url"] == "http://img/B3_small.jpg"
    assert items.loc["B2", "description"] == "" and items.loc["B2", "image_url"] == ""
    assert items["image"].to_dict() == {"B1": "B1.jpg", "B2": "B2.webp", "B3": "", "B4": "", "B5": ""}


def test_reviews_jsonl_keeps_exact_text(tmp_path, dumps_2018):
    import_amazon(*dumps_2018, name="baby18", out_root=tmp_path / "data")
    lines = (tmp_path / "data" / "baby18" / "baby18.reviews.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 25
    assert records[0] == {"user_id": "A1", "item_id": "B1", "rating": 1.0, "timestamp": 1000,
                          "summary": "about B1", "review": 'Exact\ttext\n"quoted"'}
    assert {(r["user_id"], r["item_id"]) for r in records} == {(u, i) for u in CORE_USERS for i in CORE_ITEMS}


def test_gzip_detected_by_content_not_name(tmp_path, dumps_2018):
    reviews = write_lines(tmp_path / "reviews_plain_name.json", review_lines("2018"), compress=True)
    report = import_amazon(reviews, dumps_2018[1], name="all", out_root=tmp_path / "data", core=1)
    assert report["counts"]["after_core"] == report["counts"]["before_core"]
    assert report["counts"]["core_rounds"] == 0


def test_gz_name_that_is_not_gzip(tmp_path, dumps_2018):
    fake = write_lines(tmp_path / "reviews.json.gz", review_lines("2018"), compress=False)
    with pytest.raises(InputError, match=r"reviews\.json\.gz.*not gzip"):
        import_amazon(fake, dumps_2018[1], name="baby", out_root=tmp_path / "data")
    assert not (tmp_path / "data" / "baby").exists()


def test_broken_line_names_file_and_line(tmp_path, dumps_2014):
    lines = list(META_2014)
    lines.insert(2, "{'asin': 'B8', 'title': 'unterminated}")
    meta = write_lines(tmp_path / "meta_broken.json", lines, compress=False)
    with pytest.raises(InputError, match=r"meta_broken\.json, line 3"):
        import_amazon(dumps_2014[0], meta, name="baby", out_root=tmp_path / "data")
    assert not (tmp_path / "data" / "baby").exists()


def test_error_leaves_existing_output_untouched(tmp_path, dumps_2014):
    folder = tmp_path / "data" / "baby"
    folder.mkdir(parents=True)
    (folder / "baby.inter").write_text("old\n")
    with pytest.raises(InputError, match="10-core"):
        import_amazon(*dumps_2014, name="baby", out_root=tmp_path / "data", core=10)
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["baby"]
    assert [p.name for p in folder.iterdir()] == ["baby.inter"] and (folder / "baby.inter").read_text() == "old\n"


def test_failure_while_writing_leaves_no_partial_output(tmp_path, dumps_2014, monkeypatch):
    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(amazon, "write_review_texts", fail)
    with pytest.raises(OSError, match="disk full"):
        import_amazon(*dumps_2014, name="baby", out_root=tmp_path / "data")
    assert list((tmp_path / "data").iterdir()) == []


def test_all_rows_bad_is_an_error(tmp_path, dumps_2014):
    reviews = write_lines(tmp_path / "bad.json", [json.dumps({"asin": "B1", "overall": 5.0})] * 3, compress=False)
    with pytest.raises(InputError, match=r"no usable review in 3 line.*missing_reviewerID': 3"):
        import_amazon(reviews, dumps_2014[1], name="baby", out_root=tmp_path / "data")


def test_missing_inputs(tmp_path, dumps_2014):
    with pytest.raises(MissingInputError, match="nowhere.json"):
        import_amazon(tmp_path / "nowhere.json", dumps_2014[1], name="baby", out_root=tmp_path / "data")
    with pytest.raises(MissingInputError, match="no_images"):
        import_amazon(*dumps_2014, name="baby", out_root=tmp_path / "data", images=tmp_path / "no_images")
    with pytest.raises(InputError, match="plain folder name"):
        import_amazon(*dumps_2014, name="../escape", out_root=tmp_path / "data")
    assert not (tmp_path / "data").exists()


def test_cli_import_amazon_writes_the_data_set_and_reports_errors(tmp_path, dumps_2018, capsys):
    from recbole_mmprefer.cli import main as mmprefer

    reviews, meta = dumps_2018
    assert mmprefer(["import", "amazon", "--reviews", str(reviews), "--meta", str(meta), "--name", "baby",
                     "--out", str(tmp_path / "data")]) == 0
    assert read_json(tmp_path / "data" / "baby" / "import_report.json")["counts"]["after_core"]["items"] == 5
    assert "Wrote" in capsys.readouterr().out
    assert mmprefer(["import", "amazon", "--reviews", str(tmp_path / "none.json"), "--meta", str(meta),
                     "--name", "baby"]) == 2
    assert "mmprefer import amazon: error" in capsys.readouterr().err
