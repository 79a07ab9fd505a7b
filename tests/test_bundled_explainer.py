"""The explainer adapter shipped in the wheel (issue 12, item 6) and `mmprefer run`'s choice of explainer.

The last test runs the shipped adapter itself (on the bundled SmolLM2) over fixed ml-100k pairs, with template
profiles and hand-built paths through ml-100k's own interactions, and checks that no genre or year it names is
missing from what it was shown.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from tiny_models import smollm2_once, torch_threads, write_tiny_llama

from recbole_mmprefer.cli import main as mmprefer
from recbole_mmprefer.data.generations import read_generations
from recbole_mmprefer.errors import InputError, MissingInputError
from recbole_mmprefer.explainer.checkpoints import resolve_explainer
from recbole_mmprefer.explainer.generate import model_settings
from recbole_mmprefer.llm import BUNDLED_LLM_NAME
from recbole_mmprefer.pipeline import PipelineSettings
from recbole_mmprefer.resources import bundled_explainer_dir
from recbole_mmprefer.utils import read_json

GENRES = ["action", "adventure", "animation", "children's", "comedy", "crime", "documentary", "drama", "fantasy",
          "film-noir", "horror", "musical", "mystery", "romance", "sci-fi", "thriller", "war", "western"]
YEAR = re.compile(r"\b(?:19|20)\d\d\b")


def test_the_bundled_adapter_is_shipped_small_and_without_a_graph_level():
    folder = resolve_explainer("bundled")
    assert folder == bundled_explainer_dir()
    meta, settings = read_json(folder / "meta.json"), read_json(folder / "explainer_config.json")
    assert settings["explainer_graph_level"] is False and settings["llm_path"] is None
    assert meta["llm"] == {"path": None, "name": BUNDLED_LLM_NAME} and meta["graph"] is None
    assert set(meta["pairs"]) == {"xrec-amazon", "xrec-google"}
    assert (folder / "adapter.safetensors").stat().st_size < 8e6
    assert "/work/" not in (folder / "meta.json").read_text() + (folder / "explainer_config.json").read_text()


def test_explainer_choices_resolve_or_name_what_is_missing(tmp_path):
    assert resolve_explainer("zero-shot") is None
    with pytest.raises(MissingInputError, match="mmprefer train"):
        resolve_explainer(str(tmp_path / "nothing"))
    with pytest.raises(InputError, match="pipeline_explainer must be bundled, zero-shot or a trained explainer's "
                                         "folder, got 'bundeld'"):
        PipelineSettings.from_config(None, explainer="bundeld")
    assert PipelineSettings.from_config(None).explainer == "bundled"


def test_the_bundled_adapter_refuses_another_llm_naming_both(tmp_path):
    llama = write_tiny_llama(tmp_path / "tiny-llama")
    with pytest.raises(InputError) as error:
        model_settings({"llm_path": str(llama)}, resolve_explainer("bundled"))
    assert BUNDLED_LLM_NAME in str(error.value) and str(llama) in str(error.value)


def test_mmprefer_run_explains_with_the_chosen_explainer(tmp_path, tiny_encoder):
    """A data set without explanations, explained by an adapter tuned elsewhere (pipeline_explainer: a folder)."""
    from test_import_xrec import write_random_xrec_folder

    from conftest import tiny_config, write_config_file, write_tiny_dataset

    llama = write_tiny_llama(tmp_path / "tiny-llama")
    source = write_random_xrec_folder(tmp_path / "src")
    assert mmprefer(["import", "xrec", str(source), "--name", "toy", "--out", str(tmp_path / "data")]) == 0
    tuned = ["--dataset", "toy", f"--data_path={tmp_path / 'data'}", f"--run_dir={tmp_path / 'toy-run'}",
             f"--llm_path={llama}", "--explainer_graph_level=False", "--explainer_epochs=1",
             "--explainer_max_length=160", "--path_weight=degree"]
    assert mmprefer(["train", *tuned]) == 0
    model_dir = tmp_path / "toy-run" / "explainer"

    root = tmp_path / "tiny"
    write_tiny_dataset(root)
    config = tiny_config(root, text_encoder=str(tiny_encoder), run_dir=str(tmp_path / "run"), llm_path=str(llama),
                         pipeline_pairs=3, pipeline_report_pairs=1, explainer_max_length=160,
                         explainer_max_new_tokens=5, profile_item_fields=["title", "genre"],
                         pipeline_explainer=str(model_dir))
    assert mmprefer(["run", "--dataset", "tiny", "--config_files", str(write_config_file(tmp_path / "t.yaml",
                                                                                          config))]) == 0
    generations = next((tmp_path / "run" / "generations").glob("mmprefer-*.jsonl"))
    assert "zeroshot" not in generations.name
    assert list(read_generations(generations)["user_id"]) == ["u0", "u1", "u2"]
    assert read_json(Path(f"{generations}.meta.json"))["model_dir"] == str(model_dir)
    assert f"Explained by the explainer tuned in {model_dir}" in (tmp_path / "run" / "report" / "report.md").read_text()


# ----------------------------------------------------------------------------- the shipped adapter on ml-100k


def ml100k_inputs(tmp_path: Path, users: list):
    """(config, pairs, paths records, node text): each user's last interaction, template profiles written from the
    rest, and up to three paths user -> item -> other user -> item through ml-100k's interactions."""
    import recbole

    from recbole_mmprefer.config import Config
    from recbole_mmprefer.data.atomic import in_time_order, read_atomic_file
    from recbole_mmprefer.data.node_text import NodeText
    from recbole_mmprefer.data.profiles import build_profiles

    data_path = Path(recbole.__file__).parent / "dataset_example"
    config = Config(model="MMPSASRec", dataset="ml-100k",
                    config_dict={"data_path": str(data_path), "run_dir": str(tmp_path / "run")})
    build_profiles(config, source="template")
    inter = in_time_order(read_atomic_file(data_path / "ml-100k" / "ml-100k.inter"), "timestamp")
    by_user = inter.groupby("user_id")["item_id"].apply(list).to_dict()
    by_item = inter.groupby("item_id")["user_id"].apply(set).to_dict()
    pairs, records = [], []
    for user in users:
        *history, target = by_user[user]
        paths = []
        for item in reversed(history[-10:]):
            other = sorted(by_item[item] & by_item[target] - {user}, key=int)
            if other and len(paths) < 3:
                paths.append({"types": ["user", "item", "user", "item"], "tokens": [user, item, other[0], target]})
        pairs.append((user, target))
        records.append({"user_id": user, "item_id": target, "status": "ok", "paths": paths})
    return config, pairs, records, NodeText.from_config(config)


def named(pattern_words, text: str) -> set:
    return {word for word in pattern_words if re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text.lower())}


@pytest.mark.slow
def test_the_bundled_adapter_names_no_genre_or_year_absent_from_its_inputs(tmp_path, tmp_path_factory):
    from recbole_mmprefer.evaluation.grounding import pair_inputs
    from recbole_mmprefer.explainer.generate import generate_explanations
    from recbole_mmprefer.explainer.pair_data import select_rows

    smollm2 = smollm2_once(tmp_path_factory)
    config, pairs, records, node_text = ml100k_inputs(tmp_path, ["1", "2", "3", "4"])
    config["llm_cache_dir"] = str(smollm2["cache_dir"])
    out = tmp_path / "bundled.jsonl"
    with torch_threads(1):
        generate_explanations(config, resolve_explainer("bundled"), pairs=pairs, out_file=out, records=records,
                              node_text=node_text)
    explanations = list(read_generations(out)["explanation"])
    inputs = pair_inputs(select_rows(None, records, None, pairs), records, node_text)
    for explanation, shown in zip(explanations, inputs):
        text = " ".join(shown)
        assert explanation.strip()
        assert named(GENRES, explanation) <= named(GENRES, text), (explanation, text)
        assert set(YEAR.findall(explanation)) <= set(YEAR.findall(text)), (explanation, text)
