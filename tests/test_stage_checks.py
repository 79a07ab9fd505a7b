"""Stage settings checked where they are read, interrupts that say how to resume, inputs checked before models
load (issue 19, items 3, 5 and 6)."""

from __future__ import annotations

import pytest
from test_collect_paths import config_for, write_data_set, write_vectors

from recbole_mmprefer.errors import InputError, Interrupted
from recbole_mmprefer.explainer.settings import DecodingSettings, GraphPromptSettings, LoraSettings, TrainingSettings
from recbole_mmprefer.retrieval import collect
from recbole_mmprefer.retrieval.collect import collect_paths, read_paths
from recbole_mmprefer.retrieval.settings import RetrievalSettings


@pytest.fixture
def setup(tmp_path):
    pairs = write_data_set(tmp_path / "data")
    run = tmp_path / "run"
    write_vectors(run, [f"u{u}" for u in range(12)] + ["lonely"], [f"i{i}" for i in range(10)] + ["far"])
    return tmp_path / "data", run, pairs


@pytest.mark.parametrize("key, value, message", [
    ("path_workers", 0, r"path_workers must be an integer >= 1, got 0"),
    ("path_workers", -2, r"path_workers must be an integer >= 1, got -2"),
    ("path_pairs_split", "tset", r"path_pairs_split must be one of train, valid, test; got 'tset'"),
    ("path_k", 11, r"path_k must be an integer in 1..10, got 11"),
    ("path_weight", "cosine", r"path_weight must be one of degree, multimodal, uniform; got 'cosine'"),
    ("path_max_subgraph_nodes", 1, r"path_max_subgraph_nodes must be an integer >= 2, got 1"),
])
def test_retrieval_settings_name_the_key_and_the_valid_values(setup, key, value, message):
    data, run, _ = setup
    with pytest.raises(InputError, match=message):
        collect_paths(config_for(data, run, **{key: value}))


@pytest.mark.parametrize("settings, key, value, message", [
    (GraphPromptSettings, "explainer_gnn", "gin", "explainer_gnn must be one of gat, gcn, transformer; got 'gin'"),
    (GraphPromptSettings, "explainer_adapter_dropout", 1.0, "explainer_adapter_dropout must be a number >= 0.0 and "
                                                            "< 1.0, got 1.0"),
    (LoraSettings, "explainer_lora_r", 0, "explainer_lora_r must be an integer >= 1, got 0"),
    (TrainingSettings, "explainer_learning_rate", 0, "explainer_learning_rate must be a number > 0.0, got 0.0"),
    (TrainingSettings, "explainer_batch_size", "4", "explainer_batch_size must be an integer >= 1, got '4'"),
    (TrainingSettings, "explainer_bf16", "maybe", "explainer_bf16 must be True, False or auto, got 'maybe'"),
    (DecodingSettings, "explainer_decoding", "nucleus", "explainer_decoding must be one of greedy, beam, sample; "
                                                        "got 'nucleus'"),
    (DecodingSettings, "explainer_top_p", 1.5, r"explainer_top_p must be a number > 0.0 and <= 1.0, got 1.5"),
])
def test_explainer_settings_name_the_key_and_the_valid_values(settings, key, value, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        settings.from_config({key: value})


def test_feature_settings_name_the_key_and_the_valid_values():
    from recbole_mmprefer.data.features import FeatureSettings

    with pytest.raises(InputError, match="text_max_length must be an integer >= 1, got 0"):
        FeatureSettings.from_config({"text_max_length": 0})
    with pytest.raises(InputError, match="text_fields must be a list of names, got 3"):
        FeatureSettings.from_config({"text_fields": 3})
    assert FeatureSettings.from_config({"text_fields": "title"}).text_fields == ["title"]


def test_settings_take_the_shipped_defaults_and_give_their_keys_back():
    retrieval = RetrievalSettings.from_config(None)
    assert (retrieval.hops, retrieval.core, retrieval.k, retrieval.weight) == (3, 2, 3, "multimodal")
    assert RetrievalSettings.from_config(retrieval.to_config()) == retrieval
    assert LoraSettings.from_config({"explainer_lora_targets": "q_proj"}).targets == ["q_proj"]
    from recbole_mmprefer.explainer.settings import bf16_supported

    assert TrainingSettings.from_config(None).bf16 is bf16_supported()  # shipped default: auto
    assert TrainingSettings.from_config({"explainer_bf16": False}).bf16 is False


def test_ctrl_c_while_collecting_says_where_it_stopped_and_the_rerun_resumes(setup, monkeypatch):
    data, run, pairs = setup
    original, calls = collect._pair_record, []

    def interrupted_after_two(pair):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(pair)
        return original(pair)

    monkeypatch.setattr(collect, "_pair_record", interrupted_after_two)
    with pytest.raises(Interrupted, match=r"stopped by the user after 2 of 8 pairs; they are kept in .*"
                                          r"\.paths-partial-\w+: the same command without --force resumes"):
        collect_paths(config_for(data, run), force=True)
    monkeypatch.setattr(collect, "_pair_record", lambda pair: calls.append(pair) or original(pair))
    collect_paths(config_for(data, run))
    assert calls == pairs and len(read_paths(run / "paths")) == len(pairs)  # the 2 done pairs were not redone
    assert not list(run.glob(".paths-partial-*"))


def test_an_interrupted_force_run_leaves_nothing_behind_once_the_paths_are_up_to_date(setup, monkeypatch):
    data, run, pairs = setup
    collect_paths(config_for(data, run))
    original = collect._pair_record

    def interrupted(pair):
        raise KeyboardInterrupt

    monkeypatch.setattr(collect, "_pair_record", interrupted)
    with pytest.raises(Interrupted):
        collect_paths(config_for(data, run), force=True)
    assert list(run.glob(".paths-partial-*"))
    monkeypatch.setattr(collect, "_pair_record", original)
    collect_paths(config_for(data, run))  # up to date: the partial folder is removed, not left for ever
    assert not list(run.glob(".paths-partial-*"))


def test_evaluate_checks_the_generation_files_before_loading_any_encoder(tmp_path, monkeypatch):
    from test_evaluate import config_for as evaluation_config
    from test_evaluate import write_table

    from recbole_mmprefer.data.generations import write_generations
    from recbole_mmprefer.evaluation import evaluate as evaluation
    from recbole_mmprefer.evaluation import metrics

    write_table(tmp_path / "data" / "toy")
    config = evaluation_config(tmp_path)

    def no_encoder(*args, **kwargs):
        raise AssertionError("an encoder was loaded before the inputs were checked")

    monkeypatch.setattr(metrics.BERTScoreEvaluator, "from_settings", no_encoder)
    monkeypatch.setattr(evaluation, "nearest_neighbour_explanations", no_encoder)
    import pandas as pd

    partial = tmp_path / "partial.jsonl"
    write_generations(partial, pd.DataFrame([{"user_id": "nobody", "item_id": "x", "explanation": "e"}]))
    with pytest.raises(InputError, match="systems do not cover the same"):
        evaluation.evaluate(config, {"ours": partial}, split="test")


def test_prompt_and_model_agree_on_the_soft_token_count():
    from recbole_mmprefer.explainer.graph_encoder import soft_prompt_tokens
    from recbole_mmprefer.explainer.settings import ExplainerConfig, PromptSettings

    for keys, expected in (({"explainer_paths": 0, "explainer_soft_tokens": 3}, 0),
                           ({"explainer_paths": 2, "explainer_soft_tokens": 3}, 3),
                           ({"explainer_paths": 2}, 2), ({"explainer_graph_level": False}, 0)):
        assert PromptSettings.from_config(keys).soft_tokens == soft_prompt_tokens(keys) == expected
        assert ExplainerConfig.from_config(keys).soft_tokens == expected
        saved = ExplainerConfig.from_config(keys).to_config()
        assert ExplainerConfig.from_keys(saved).to_config() == saved  # what a trained explainer reads back


def test_ctrl_c_through_the_command_line_prints_how_to_resume_without_a_traceback(setup, monkeypatch, capsys):
    from recbole_mmprefer.cli import main as mmprefer

    data, run, _ = setup

    def interrupted(pair):
        raise KeyboardInterrupt

    monkeypatch.setattr(collect, "_pair_record", interrupted)
    code = mmprefer(["paths", "--dataset", "toy", f"--data_path={data}", f"--run_dir={run}",
                     "--path_weight=degree"])
    err = capsys.readouterr().err
    assert code == 130 and "Traceback" not in err
    assert "stopped by the user after 0 of 8 pairs" in err and "without --force resumes from them" in err
