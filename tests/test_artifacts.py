"""The artifact layer (issue 11): one owner per stage output, one freshness rule, one JSON-lines reader.

- regenerated profiles reach the explainer's prompt (the profiled table is the one every stage reads);
- `mmprefer run` retrains MMPSASRec exactly when a setting it depends on changes;
- a bad JSON-lines line is reported the same way by every stage that reads one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_import_xrec import write_random_xrec_folder
from tiny_models import serve_chat, write_tiny_llama

from conftest import tiny_config, write_config_file, write_tiny_dataset
from recbole_mmprefer.artifacts import ARTIFACTS, explanation_table_file, is_fresh_at, write_meta
from recbole_mmprefer.cli import main as mmprefer
from recbole_mmprefer.config import stage_config
from recbole_mmprefer.errors import InputError, MissingInputError
from recbole_mmprefer.jsonl import ResumableShards, read_records


@pytest.fixture
def chat_server(monkeypatch):
    yield from serve_chat(monkeypatch)


# -- the layer itself ------------------------------------------------------------------------------------

def test_freshness_is_the_input_hash_in_the_meta_and_the_files(tmp_path):
    folder = tmp_path / "stage"
    folder.mkdir()
    assert not is_fresh_at(folder, "abc", ("out.txt",))
    write_meta(folder, "abc", {"note": 1})
    assert not is_fresh_at(folder, "abc", ("out.txt",))  # a declared file is missing
    (folder / "out.txt").write_text("x")
    assert is_fresh_at(folder, "abc", ("out.txt",)) and not is_fresh_at(folder, "abd", ("out.txt",))
    target = tmp_path / "gen.jsonl"
    write_meta(target, "h", {}, is_file=True)
    assert (tmp_path / "gen.jsonl.meta.json").is_file() and not is_fresh_at(target, "h", is_file=True)
    target.write_text("{}\n")
    assert is_fresh_at(target, "h", is_file=True)


def test_a_missing_artifact_names_the_command_that_makes_it(tmp_path):
    config = {"dataset": "toy", "data_path": str(tmp_path), "run_dir": str(tmp_path / "run")}
    with pytest.raises(MissingInputError, match=r"No retrieval paths in .*run/paths: run `mmprefer paths "
                                                r"--dataset toy` first"):
        ARTIFACTS["paths"].require(config)
    with pytest.raises(MissingInputError, match="run `mmprefer features --dataset toy` first"):
        ARTIFACTS["features"].require(config, modality="text")
    assert ARTIFACTS["features"].dir(config, modality="image") == tmp_path / "run" / "features" / "image"


def test_writing_is_atomic_and_records_the_hash_last(tmp_path):
    config = {"dataset": "toy", "data_path": str(tmp_path), "run_dir": str(tmp_path / "run")}
    with pytest.raises(RuntimeError):
        with ARTIFACTS["report"].writing(config, "h1") as staging:
            (staging / "report.md").write_text("half")
            raise RuntimeError("crash")
    assert not ARTIFACTS["report"].dir(config).exists()
    with ARTIFACTS["report"].writing(config, "h1", {"pairs": 2}) as staging:
        (staging / "report.md").write_text("# ok")
        (staging / "report.html").write_text("<p>ok</p>")
    assert ARTIFACTS["report"].is_fresh(config, "h1") and ARTIFACTS["report"].read_meta(config)["pairs"] == 2


def test_resumable_shards_gather_in_key_order_and_drop_a_cut_line(tmp_path):
    target = tmp_path / "out.jsonl"
    for rank in (0, 1):
        shards = ResumableShards(target, "f" * 20, rank, 2)
        assert shards.completed() == []
        with shards.appending() as handle:
            for key in range(rank, 6, 2):
                handle.write(json.dumps({"key": key}) + "\n")
    with open(shards.shard(1), "a") as handle:
        handle.write('{"key": 9, "cut')  # a kill in the middle of a line
    assert [r["key"] for r in ResumableShards(target, "f" * 20, 1, 2).completed()] == [1, 3, 5]
    gathered = ResumableShards(target, "f" * 20, 0, 2).gather(list(range(6)), lambda record: record["key"])
    assert [record["key"] for record in gathered] == [0, 1, 2, 3, 4, 5]
    assert shards.work_dir.name == ".out.jsonl-partial-" + "f" * 16
    with pytest.raises(RuntimeError, match="1 of 7 records are missing"):
        shards.gather(list(range(7)), lambda record: record["key"])


# -- regenerated profiles reach the prompt ---------------------------------------------------------------

def test_llm_profiles_reach_the_prompt_of_an_explained_pair(tmp_path, chat_server):
    from recbole_mmprefer.data.node_text import NodeText
    from recbole_mmprefer.explainer.pair_data import join_records, load_table
    from recbole_mmprefer.explainer.settings import PromptSettings
    from recbole_mmprefer.explainer.tokens import build_example
    from recbole_mmprefer.llm import load_causal_lm

    source = write_random_xrec_folder(tmp_path / "src")
    assert mmprefer(["import", "xrec", str(source), "--name", "toy", "--out", str(tmp_path / "data")]) == 0
    server = chat_server("A freshly written scripted profile.")
    common = ["--dataset", "toy", f"--data_path={tmp_path / 'data'}", f"--run_dir={tmp_path / 'run'}"]
    assert mmprefer(["profiles", *common, "--source", "llm", "--force", f"--profile_api_base={server.base}",
                     "--profile_api_model=scripted", "--profile_api_retry_wait=0.0"]) == 0

    config = stage_config("toy", None, common[2:])
    assert explanation_table_file(config) == tmp_path / "run" / "profiles" / "toy.expl.jsonl"
    table = load_table(config)
    assert set(table["user_profile"]) == {"A freshly written scripted profile."}
    _, tokenizer = load_causal_lm(str(write_tiny_llama(tmp_path / "llama")))
    row = table.head(1)
    example = build_example(join_records(row, [])[0], NodeText.from_config(config), tokenizer,
                            PromptSettings.from_config(config), explanation=row["explanation"].iloc[0])
    assert "User Profile: A freshly written scripted profile." in example.prompt_text
    assert "likes drama" not in example.prompt_text  # the data set's own (XRec) profile is gone


# -- mmprefer run retrains the recommender exactly when its settings change ----------------------------------

def test_the_recommender_is_retrained_only_when_a_setting_it_depends_on_changes(tmp_path, tiny_encoder,
                                                                               monkeypatch):
    from recbole_mmprefer import quick_start
    from recbole_mmprefer.pipeline import ensure_recommender

    root = tmp_path / "data"
    write_tiny_dataset(root)
    config_file = write_config_file(tmp_path / "tiny.yaml", tiny_config(root, text_encoder=str(tiny_encoder),
                                                                        run_dir=str(tmp_path / "run")))
    trained = []
    real = quick_start.run_recbole
    monkeypatch.setattr(quick_start, "run_recbole", lambda **kwargs: trained.append(kwargs) or real(**kwargs))

    def run(*overrides: str) -> int:
        ensure_recommender(stage_config("tiny", [str(config_file)], overrides), force=False)
        return len(trained)

    assert run() == 1
    meta = ARTIFACTS["recommender"].read_meta(stage_config("tiny", [str(config_file)]))
    assert 0 <= meta["test_result"]["ndcg@10"] <= 1  # the model's test scores travel with its vectors
    assert run() == 1  # up to date
    assert run("--explainer_epochs=7", "--path_k=2", "--eval_metrics=['usr']") == 1  # later stages' keys
    assert run("--learning_rate=0.01") == 2  # a training setting
    assert run("--learning_rate=0.01") == 2
    assert run("--learning_rate=0.01", "--rq_epochs=6") == 3  # new semantic IDs, so new item embeddings


# -- one policy for a bad JSON-lines line -------------------------------------------------------------------

def _corrupt(path: Path, bad: bytes, at: int) -> str:
    """Replace the second line of ``path`` by ``bad``; returns the message's location part (the line, and the byte
    ``at`` bytes into it)."""
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + bad + b"\n" + b"".join(lines[2:]))
    return rf"{path.name}, line 2 \(byte {len(lines[0]) + at}\): "


@pytest.mark.parametrize("bad, at, message", [
    (b'{"user_id": "u1", ', 0, "not valid JSON: Expecting property name enclosed in double quotes at column 20$"),
    (b'{"user_id": "\xff"}', 13, "byte 0xff is not UTF-8 text; JSON-lines files are read as utf-8")])
def test_every_stage_reports_a_bad_line_the_same_way(tmp_path, bad, at, message):
    from recbole_mmprefer.data.generations import read_generations
    from recbole_mmprefer.explainer.pair_data import load_path_records
    from recbole_mmprefer.retrieval.collect import collect_paths

    source = write_random_xrec_folder(tmp_path / "src")
    assert mmprefer(["import", "xrec", str(source), "--name", "toy", "--out", str(tmp_path / "data")]) == 0
    common = ["--dataset", "toy", f"--data_path={tmp_path / 'data'}", f"--run_dir={tmp_path / 'run'}"]
    assert mmprefer(["paths", *common, "--path_weight=degree"]) == 0
    config = stage_config("toy", None, [*common[2:], "--path_weight=degree"])

    # paths.jsonl, read by the explainer
    where = _corrupt(ARTIFACTS["paths"].file(config), bad, at)
    with pytest.raises(InputError, match=where + message):
        load_path_records(config)

    # a generation file, read by the evaluation
    generations = tmp_path / "ours.jsonl"
    generations.write_text("".join(json.dumps({"user_id": f"u{n}", "item_id": "i1", "explanation": "x"}) + "\n"
                                   for n in range(3)))
    where = _corrupt(generations, bad, at)
    with pytest.raises(InputError, match=where + message):
        read_generations(generations)

    # the explanation table, read by the retriever
    where = _corrupt(explanation_table_file(config), bad, at)
    with pytest.raises(InputError, match=where + message):
        collect_paths(config, force=True)

    # and through the command line: the message, no traceback, exit status 2
    assert mmprefer(["evaluate", *common, "--system", f"ours={generations}", "--no_baselines",
                     "--no_published", "--eval_metrics=['usr']"]) == 2


def test_a_complete_bad_line_in_a_partial_file_is_not_skipped(tmp_path):
    path = tmp_path / "rank0-of-1.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": \n{"a": 3}\n')
    with pytest.raises(InputError, match=r"line 2 \(byte 9\): not valid JSON"):
        read_records(path, partial=True)
