"""`mmprefer profiles`: template and LLM user/item profiles, source checks, atomic rewrites, the reply cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_models import serve_chat, write_tiny_llama

from recbole_mmprefer.data import profiles as profiles_module
from recbole_mmprefer.data.atomic import read_atomic_file
from recbole_mmprefer.data.explanations import read_explanation_table, write_explanation_table
from recbole_mmprefer.data.profile_inputs import header_types
from recbole_mmprefer.data.profiles import build_profiles
from recbole_mmprefer.errors import InputError, MissingInputError
from recbole_mmprefer.llm_backends import LocalLM

ITEMS = """item_id:token\ttitle:token_seq\tyear:token\tgenre:token_seq\tprice:float
i1\tAlpha Story\t1995\tComedy Drama\t9.5
i2\tBeta Night\t1999\tHorror\t
i3\tGamma, the Return\t2001\tDrama,Action\t12
i4\tDelta\t\tComedy\t3
"""
INTERACTIONS = """user_id:token\titem_id:token\trating:float\ttimestamp:float
u1\ti3\t4\t300
u1\ti1\t5\t100
u1\ti2\t2\t200
u1\ti4\t3\t400
u2\ti1\t3\t50
"""
USERS = """user_id:token\tage:token\tgender:token
u1\t30\tF
u3\t41\tM
"""
U1_PROFILE = ("4 interactions. Most frequent genres: Comedy (2), Drama (2), Action (1). "
              "Latest items: Delta; Gamma, the Return; Beta Night. Mean rating: 3.50.")
# The default holds out u1's last interaction (Delta, timestamp 400): what `mmprefer run` explains.
U1_HELD_OUT_PROFILE = ("3 interactions. Most frequent genres: Drama (2), Action (1), Comedy (1). "
                       "Latest items: Gamma, the Return; Beta Night; Alpha Story. Mean rating: 3.67.")
I1_PROFILE = "Alpha Story (1995). Genres: Comedy, Drama."
I3_PROFILE = "Gamma, the Return (2001). Genres: Drama, Action."


@pytest.fixture
def folder(tmp_path) -> Path:
    folder = tmp_path / "data" / "tiny"
    folder.mkdir(parents=True)
    (folder / "tiny.item").write_text(ITEMS)
    (folder / "tiny.inter").write_text(INTERACTIONS)
    (folder / "tiny.user").write_text(USERS)
    return folder


def run_root(folder: Path) -> Path:
    """The run directory the CLI uses by default from the test's cwd: saved/<dataset>."""
    return folder.parent.parent / "saved" / folder.name


def output(folder: Path) -> Path:
    return run_root(folder) / "profiles"


def config_for(folder: Path, **overrides) -> dict:
    return {"data_path": str(folder), "dataset": folder.name, "run_dir": str(run_root(folder)),
            "profile_history_length": 3, "profile_hold_out": False, **overrides}


def profiles(folder: Path, suffix: str) -> dict:
    frame = read_atomic_file(output(folder) / f"tiny.{suffix}")
    return {token: (profile, source) for token, profile, source in
            zip(frame.iloc[:, 0], frame["profile"], frame["profile_source"])}


def write_pairs(folder: Path, pairs) -> Path:
    import pandas as pd

    path = folder / "tiny.expl.jsonl"
    table = pd.DataFrame([{"user_id": user, "item_id": item, "title": "", "user_profile": "old",
                           "item_profile": "old", "explanation": "because", "split": "test", "profile_source": "",
                           "explanation_source": "xrec"} for user, item in pairs])
    write_explanation_table(path, table)
    return path


# ----------------------------------------------------------------------------- template source

def test_template_profiles_are_exact_and_deterministic(folder):
    report = build_profiles(config_for(folder))
    users, items = profiles(folder, "user"), profiles(folder, "item")
    assert users["u1"] == (U1_PROFILE, "template")
    assert users["u2"] == ("1 interaction. Most frequent genres: Comedy (1), Drama (1). Latest items: Alpha Story. "
                           "Mean rating: 3.00.", "template")
    assert users["u3"] == ("", "")  # no history, nothing to say
    assert items["i1"] == (I1_PROFILE, "template")
    assert items["i3"] == (I3_PROFILE, "template")
    assert items["i4"] == ("Delta. Genres: Comedy.", "template")
    assert report["users"] == {"nodes": 3, "written": 2, "empty": 1, "kept": 0}
    assert report["items"] == {"nodes": 4, "written": 4, "empty": 0, "kept": 0}
    assert report["profile_sources"] == {"users": {"template": 2}, "items": {"template": 4}}

    first = {suffix: (output(folder) / f"tiny.{suffix}").read_bytes() for suffix in ("user", "item")}
    again = build_profiles(config_for(folder), force=True)
    assert {suffix: (output(folder) / f"tiny.{suffix}").read_bytes() for suffix in ("user", "item")} == first
    assert again["files"] == [str(output(folder) / "tiny.user"), str(output(folder) / "tiny.item")]
    assert (folder / "tiny.item").read_text() == ITEMS and (folder / "tiny.user").read_text() == USERS


def test_columns_and_header_types_are_kept(folder):
    inter_before = (folder / "tiny.inter").read_text()
    build_profiles(config_for(folder))
    assert header_types(output(folder) / "tiny.item") == {"item_id": "token", "title": "token_seq", "year": "token",
                                                  "genre": "token_seq", "price": "float", "profile": "token_seq",
                                                  "profile_source": "token"}
    assert header_types(output(folder) / "tiny.user") == {"user_id": "token", "age": "token", "gender": "token",
                                                  "profile": "token_seq", "profile_source": "token"}
    items = read_atomic_file(output(folder) / "tiny.item")
    assert items["price"].tolist() == ["9.5", "", "12", "3"]
    assert items["title"].tolist() == ["Alpha Story", "Beta Night", "Gamma, the Return", "Delta"]
    users = read_atomic_file(output(folder) / "tiny.user")
    assert users["user_id"].tolist() == ["u1", "u3", "u2"]  # u2 has history but no row: appended
    assert users["age"].tolist() == ["30", "41", ""]
    assert (folder / "tiny.inter").read_text() == inter_before
    assert sorted(path.name for path in folder.iterdir()) == ["tiny.inter", "tiny.item", "tiny.user"]


def test_user_file_is_created_when_the_data_set_has_none(folder):
    (folder / "tiny.user").unlink()
    build_profiles(config_for(folder))
    assert not (folder / "tiny.user").exists()
    assert header_types(output(folder) / "tiny.user") == {"user_id": "token", "profile": "token_seq",
                                                  "profile_source": "token"}
    assert profiles(folder, "user")["u1"] == (U1_PROFILE, "template")


def test_configured_fields_group_and_reviews(folder):
    reviews = [{"user_id": "u1", "item_id": "i1", "review": "Loved it. The ending was weak.", "timestamp": 100},
               {"user_id": "u2", "item_id": "i1", "text": "Far too slow for me", "timestamp": 50}]
    (folder / "tiny.reviews.jsonl").write_text("".join(json.dumps(record) + "\n" for record in reviews))
    build_profiles(config_for(folder, profile_item_fields=["title", "genre"], profile_top_groups=1,
                              profile_review_words=3))
    items, users = profiles(folder, "item"), profiles(folder, "user")
    assert items["i1"][0] == 'Alpha Story. Genres: Comedy, Drama. Reviews: "Far too slow ..."; "Loved it.".'
    assert users["u1"][0] == ("4 interactions. Most frequent genres: Comedy (2). Latest items: Delta; "
                              'Gamma, the Return; Beta Night. Mean rating: 3.50. Reviews: "Loved it.".')


def test_amazon_style_items_leave_out_media_and_clip_long_text(folder):
    description = " ".join(f"w{n}" for n in range(60))
    (folder / "tiny.item").write_text(
        "item_id:token\ttitle:token_seq\tdescription:token_seq\tcategories:token_seq\tbrand:token\t"
        "image_url:token\timage:token\tprofile:token_seq\tprofile_source:token\n"
        f"i1\tSoft Wipes\t{description}\tBaby, Diapering, Wipes\tAcme\thttp://x/1.jpg\ti1.jpg\t\t\n"
        "i2\tBottle\t\tBaby, Feeding\t\t\t\t\t\n")
    (folder / "tiny.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                                       "u1\ti1\t5.0\t10\nu1\ti2\t4.0\t20\n")
    (folder / "tiny.user").unlink()
    reviews = [{"user_id": "u1", "item_id": "i1", "rating": 5.0, "timestamp": 10, "summary": "Five Stars",
                "review": ""},
               {"user_id": "u1", "item_id": "i2", "rating": 4.0, "timestamp": 20, "summary": "Fine",
                "review": "Does not leak! Cleaning it is a chore."}]
    (folder / "tiny.reviews.jsonl").write_text("".join(json.dumps(record) + "\n" for record in reviews))
    build_profiles(config_for(folder, profile_max_field_words=4))
    items, users = profiles(folder, "item"), profiles(folder, "user")
    assert items["i1"][0] == ('Soft Wipes. Description: w0 w1 w2 w3 ... Categories: Baby, Diapering, Wipes. '
                              'Brand: Acme. Reviews: "Five Stars".')
    assert items["i2"][0] == 'Bottle. Categories: Baby, Feeding. Reviews: "Does not leak!".'
    assert users["u1"][0] == ("2 interactions. Most frequent categories: Baby (2), Diapering (1), Feeding (1). "
                              'Latest items: Bottle; Soft Wipes. Mean rating: 4.50. Reviews: "Five Stars"; '
                              '"Does not leak!".')


def test_profiles_never_name_a_held_out_item(folder):
    """Default profile_hold_out: no user or item profile names or quotes the pair it will explain."""
    reviews = [{"user_id": "u1", "item_id": "i4", "review": "Delta made me laugh.", "timestamp": 400},
               {"user_id": "u1", "item_id": "i1", "review": "Loved it.", "timestamp": 100}]
    (folder / "tiny.reviews.jsonl").write_text("".join(json.dumps(record) + "\n" for record in reviews))
    config = {key: value for key, value in config_for(folder).items() if key != "profile_hold_out"}
    build_profiles(config)
    users, items = profiles(folder, "user"), profiles(folder, "item")
    assert users["u1"][0] == U1_HELD_OUT_PROFILE + ' Reviews: "Loved it.".'
    assert users["u2"] == ("", "")  # its only interaction is the held-out one
    assert items["i4"][0] == "Delta. Genres: Comedy."  # the held-out review is not quoted
    assert items["i1"][0] == 'Alpha Story (1995). Genres: Comedy, Drama. Reviews: "Loved it.".'

    write_pairs(folder, [("u1", "i3")])  # explained pairs are held out too
    build_profiles(config, force=True)
    assert profiles(folder, "user")["u1"][0] == ("2 interactions. Most frequent genres: Comedy (1), Drama (1), "
                                                 'Horror (1). Latest items: Beta Night; Alpha Story. Mean rating: '
                                                 '3.50. Reviews: "Loved it.".')

    (folder / "tiny.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\tsplit:token\n"
                                       "u1\ti1\t100\ttrain\nu1\ti2\t200\tvalid\nu1\ti4\t400\ttrain\n")
    (folder / "tiny.expl.jsonl").unlink()
    build_profiles(config, force=True)  # with a split field, only its train rows
    assert profiles(folder, "user")["u1"][0] == ("2 interactions. Most frequent genres: Comedy (2), Drama (1). "
                                                 'Latest items: Delta; Alpha Story. Reviews: "Loved it."; '
                                                 '"Delta made me laugh.".')


def test_bundled_ml100k_profiles_leave_the_installed_files_alone(tmp_path):
    import recbole

    bundled = Path(recbole.__file__).parent / "dataset_example" / "ml-100k"
    before = {path.name: path.stat().st_mtime_ns for path in bundled.iterdir()}
    report = build_profiles({"data_path": str(bundled), "dataset": "ml-100k", "run_dir": str(tmp_path / "run"),
                             "profile_item_fields": ["movie_title", "release_year", "class"]})
    assert {path.name: path.stat().st_mtime_ns for path in bundled.iterdir()} == before
    folder = tmp_path / "run" / "profiles"
    items = read_atomic_file(folder / "ml-100k.item").set_index("item_id")
    assert items.loc["1", "profile"] == "Toy Story (1995). Genres: Animation, Children's, Comedy."
    assert report["users"]["written"] == 943 and report["items"]["written"] == 1682
    assert read_atomic_file(folder / "ml-100k.user").set_index("user_id").loc["1", "profile"].startswith(
        "271 interactions. Most frequent genres: Drama (107), Comedy (91), Action (75).")  # the last one held out


# ----------------------------------------------------------------------------- sources never mix

def test_another_source_needs_force(folder):
    (folder / "tiny.item").write_text(
        "item_id:token\ttitle:token_seq\tprofile:token_seq\tprofile_source:token\n"
        "i1\tAlpha Story\tFor fans of gentle comedy.\txrec\ni2\tBeta Night\t\t\n"
        "i3\tGamma, the Return\t\t\ni4\tDelta\t\t\n")
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    with pytest.raises(InputError, match=r"1 item profile\(s\) from 'xrec' \(1\).*--force"):
        build_profiles(config_for(folder))
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before

    report = build_profiles(config_for(folder), force=True)
    assert profiles(folder, "item")["i1"] == ("Alpha Story.", "template")
    assert report["profile_sources"]["items"] == {"template": 4}


def test_same_source_fills_only_empty_profiles(folder):
    build_profiles(config_for(folder))  # then the data set itself gets template profiles, one edited, one gone
    text = (output(folder) / "tiny.user").read_text().replace(U1_PROFILE, "Hand-written note.")
    (folder / "tiny.user").write_text(text)
    text = (output(folder) / "tiny.item").read_text().replace(f"{I1_PROFILE}\ttemplate", "\t")
    (folder / "tiny.item").write_text(text)
    report = build_profiles(config_for(folder))
    assert profiles(folder, "user")["u1"] == ("Hand-written note.", "template")
    assert profiles(folder, "item")["i1"] == (I1_PROFILE, "template")
    assert report["items"] == {"nodes": 4, "written": 1, "empty": 0, "kept": 3}
    assert report["users"]["kept"] == 2


def test_explanation_table_takes_the_node_profiles(folder):
    path = write_pairs(folder, [("u1", "i1"), ("u2", "i3")])
    report = build_profiles(config_for(folder))
    assert read_explanation_table(path)["user_profile"].tolist() == ["old", "old"]  # the data set's copy is kept
    path = output(folder) / path.name
    table = read_explanation_table(path).set_index(["user_id", "item_id"])
    assert table.loc[("u1", "i1"), "user_profile"] == U1_PROFILE
    assert table.loc[("u1", "i1"), "item_profile"] == I1_PROFILE
    assert table.loc[("u2", "i3"), "item_profile"] == I3_PROFILE
    assert set(table["profile_source"]) == {"template"}
    assert table.loc[("u1", "i1"), "explanation"] == "because"
    assert str(path) in report["files"]


def test_a_failed_write_keeps_every_old_file(folder, monkeypatch):
    write_pairs(folder, [("u1", "i1")])
    before = {path.name: path.read_bytes() for path in folder.iterdir()}

    def broken(path, table):
        Path(path).write_text("half")
        raise OSError("disk full")

    monkeypatch.setattr(profiles_module, "write_explanation_table", broken)
    with pytest.raises(OSError, match="disk full"):
        build_profiles(config_for(folder))
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before
    assert not output(folder).exists() and [p.name for p in run_root(folder).iterdir()] == []


def test_bad_input_is_named(folder):
    with pytest.raises(InputError, match=r"tiny.item: profile field 'plot' not found; the file has \['item_id'"):
        build_profiles(config_for(folder, profile_item_fields=["title", "plot"]))
    with pytest.raises(InputError, match="profile field 'studio'"):
        build_profiles(config_for(folder, profile_user_group_field="studio"))
    with pytest.raises(InputError, match="Unknown profile source 'gpt'"):
        build_profiles(config_for(folder), source="gpt")
    with pytest.raises(InputError, match="exactly one of profile_llm_path"):
        build_profiles(config_for(folder), source="llm")
    (folder / "tiny.inter").unlink()
    with pytest.raises(MissingInputError, match="tiny.inter"):
        build_profiles(config_for(folder))
    (folder / "tiny.item").unlink()
    with pytest.raises(MissingInputError, match="tiny.item"):
        build_profiles(config_for(folder))


def test_bad_settings_and_review_lines_are_named(folder):
    with pytest.raises(InputError, match="profile_method must be one of template, llm; got 'gpt'"):
        build_profiles(config_for(folder, profile_method="gpt"))
    with pytest.raises(InputError, match="profile_top_groups must be an integer >= 0, got -1"):
        build_profiles(config_for(folder, profile_top_groups=-1))
    with pytest.raises(InputError, match="profile_llm_batch_size must be an integer >= 1, got 0"):
        build_profiles(config_for(folder, profile_llm_batch_size=0))
    (folder / "tiny.reviews.jsonl").write_text('{"user_id": "u1", "item_id": "i1", "review": "Fine."}\n{"user_id"\n')
    with pytest.raises(InputError, match=r"tiny.reviews.jsonl, line 2 \(byte 54\): not valid JSON"):
        build_profiles(config_for(folder))
    (folder / "tiny.reviews.jsonl").write_text('{"user_id": "u1", "item_id": "i1"}\n')
    with pytest.raises(InputError, match=r"tiny.reviews.jsonl, line 1: a review needs user_id, item_id and one of"):
        build_profiles(config_for(folder))


def test_recbole_config_knows_the_keys(folder):
    from recbole_mmprefer.config import Config

    config = Config(model="MMPSASRec", dataset="tiny",
                    config_dict={"data_path": str(folder.parent), "profile_history_length": 3,
                                 "run_dir": str(run_root(folder)),
                                 "load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"]}})
    assert config["profile_method"] == "template"
    build_profiles(config)
    assert profiles(folder, "user")["u1"] == (U1_HELD_OUT_PROFILE, "template")


# ----------------------------------------------------------------------------- LLM sources

def test_local_llm_profiles_are_cached(folder, tmp_path, monkeypatch):
    model_dir = write_tiny_llama(tmp_path / "tiny-llama")
    calls = []
    original = LocalLM.generate

    def counting(self, prompts, **options):
        calls.append(len(prompts))
        return original(self, prompts, **options)

    monkeypatch.setattr(LocalLM, "generate", counting)
    config = config_for(folder, profile_llm_path=str(model_dir), profile_max_new_tokens=6, profile_llm_batch_size=3)
    report = build_profiles(config, source="llm")
    users, items = profiles(folder, "user"), profiles(folder, "item")
    assert report["source"] == "llm:tiny-llama"
    assert all(source == "llm:tiny-llama" and text for text, source in [users["u1"], users["u2"], *items.values()])
    assert users["u3"] == ("", "")
    assert calls[:3] == [2, 3, 1]  # two users with history, then four items in batches of three
    assert report["llm"]["generated"] == 6 and report["llm"]["cached"] == 0
    assert (run_root(folder) / "profile_cache.jsonl").is_file()

    model = LocalLM(str(model_dir), 6)  # left padding: a batch answers as single prompts do
    prompts = ["user likes drama", "who would enjoy this story of the night : drama , horror , action ."]
    assert model.generate(prompts) == [model.generate([prompt])[0] for prompt in prompts]

    calls.clear()
    again = build_profiles(config, source="llm", force=True)
    assert calls == [] and again["llm"]["cached"] == 6
    assert profiles(folder, "user") == users and profiles(folder, "item") == items


@pytest.fixture
def chat_server(monkeypatch):
    yield from serve_chat(monkeypatch)


def test_openai_compatible_endpoint(folder, chat_server, monkeypatch):
    server = chat_server("  Enjoys light\ncomedies and dramas.  ", failures=1)
    monkeypatch.setenv("TEST_PROFILE_KEY", "secret")
    path = write_pairs(folder, [("u1", "i1")])
    config = config_for(folder, profile_api_base=server.base, profile_api_model="judge-7b",
                        profile_api_key_env="TEST_PROFILE_KEY", profile_api_retry_wait=0.0)
    report = build_profiles(config, source="llm")
    assert profiles(folder, "user")["u1"] == ("Enjoys light comedies and dramas.", "llm:judge-7b")
    assert profiles(folder, "item")["i4"] == ("Enjoys light comedies and dramas.", "llm:judge-7b")
    assert read_explanation_table(output(folder) / path.name)["profile_source"].tolist() == ["llm:judge-7b"]
    assert len(server.requests) == 1 + 2 + 4  # one 503 retried, two users, four items
    url, auth, body = server.requests[0]
    assert url == "/v1/chat/completions" and auth == "Bearer secret"
    assert body["model"] == "judge-7b" and body["temperature"] == 0 and body["max_tokens"] == 128
    user_prompts = [body["messages"][0]["content"] for _, _, body in server.requests if "interacted" in
                    body["messages"][0]["content"]]
    assert any("- Alpha Story (1995). Genres: Comedy, Drama. Rated 5." in prompt for prompt in user_prompts)
    assert report["llm"] == {"generated": 6, "cached": 0, "empty": 0, "calls": 2}


def test_empty_replies_are_retried_once_then_recorded(folder, chat_server):
    server = chat_server("")
    path = write_pairs(folder, [("u1", "i1")])
    report = build_profiles(config_for(folder, profile_api_base=server.base, profile_api_model="mute",
                                       profile_api_retry_wait=0.0), source="llm")
    assert len(server.requests) == 2 * 6
    assert report["llm"]["empty"] == 6 and report["users"]["empty"] == 3 and report["items"]["empty"] == 4
    assert profiles(folder, "item")["i1"] == ("", "")
    assert read_explanation_table(output(folder) / path.name)["profile_source"].tolist() == [""]
    assert not (run_root(folder) / "profile_cache.jsonl").exists()  # empty replies are not cached: a rerun asks again


def test_cli_profiles_command(folder, capsys):
    from recbole_mmprefer.cli import main as mmprefer

    assert mmprefer(["profiles", "--dataset", "tiny", f"--data_path={folder.parent}",
                     "--profile_history_length=3"]) == 0
    assert profiles(folder, "user")["u1"] == (U1_HELD_OUT_PROFILE, "template")
    assert mmprefer(["profiles", "--dataset", "tiny", f"--data_path={folder.parent}", "--source", "llm"]) == 2
    assert "mmprefer profiles: error: --source llm needs exactly one of" in capsys.readouterr().err
