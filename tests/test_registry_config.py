"""Model lookup (ours first, RecBole's next, unknown names listed) and our Config layers."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from recbole.model.sequential_recommender.sasrec import SASRec

from conftest import tiny_config, write_config_file
from recbole_mmprefer.artifacts import run_dir
from recbole_mmprefer.config import Config, ConfigKeyError, known_config_keys
from recbole_mmprefer.model.sequential_recommender.mmpsasrec import MMPSASRec
from recbole_mmprefer.registry import UnknownModelError, available_models, get_model
from recbole_mmprefer.resources import dataset_configs_dir, properties_dir


def test_our_model_resolves_before_recbole():
    assert get_model("MMPSASRec") is MMPSASRec


def test_recbole_models_still_resolve():
    assert get_model("SASRec") is SASRec
    assert get_model("LightGCN").__name__ == "LightGCN"


def anomaly_mode_after(code: str) -> str:
    """What torch.is_anomaly_enabled() says after ``code``, in a fresh interpreter (imports happen once)."""
    script = f"import sys, torch\nsys.argv = ['x']\n{code}\nprint(torch.is_anomaly_enabled())"
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True).stdout.split()[-1]


def test_recboles_models_leave_autograd_anomaly_detection_as_the_process_set_it():
    # RecBole 1.2.1's sine.py switches it on at import: ~1.5x slower training steps everywhere
    assert anomaly_mode_after("import recbole.model.sequential_recommender") == "True"
    assert anomaly_mode_after("from recbole_mmprefer.config import Config\n"
                              "Config(model='MMPSASRec', dataset='ml-100k')\n"
                              "from recbole.model.sequential_recommender.sasrec import SASRec") == "False"
    assert anomaly_mode_after("import recbole_mmprefer.model.sequential_recommender.mmpsasrec") == "False"
    assert anomaly_mode_after("torch.autograd.set_detect_anomaly(True)\n"
                              "from recbole_mmprefer.registry import get_model\nget_model('SINE')") == "True"


def test_unknown_model_lists_available_models():
    with pytest.raises(UnknownModelError) as error:
        get_model("NoSuchRec")
    message = str(error.value)
    assert "NoSuchRec" in message and "MMPSASRec" in message and "SASRec" in message
    assert "No module named" not in message
    assert available_models()[0] == "MMPSASRec"


def test_config_loads_model_stage_and_dataset_defaults(tiny_root):
    config = Config(model="MMPSASRec", dataset="ml-100k")
    assert config["feature_dropout_prob"] == 0.0  # properties/model/MMPSASRec.yaml
    assert config["rq_codebook_size"] == 256  # properties/quantizer.yaml
    assert config["text_fields"] == ["movie_title", "release_year", "class"]  # dataset_configs/ml-100k.yaml
    assert config["MAX_ITEM_LIST_LENGTH"] == 50  # RecBole's own defaults still apply
    assert run_dir(config).parts[-2:] == ("saved", "ml-100k")


def test_user_values_override_our_defaults(tiny_root):
    config = Config(model="MMPSASRec", dataset="tiny", config_dict=tiny_config(tiny_root, temperature=0.5))
    assert config["temperature"] == 0.5
    assert config["hidden_size"] == 16


def test_unknown_key_in_yaml_names_file_key_and_nearest(tmp_path, tiny_root):
    path = write_config_file(tmp_path / "typo.yaml", {"hiden_size": 32})
    with pytest.raises(ConfigKeyError) as error:
        Config(model="MMPSASRec", dataset="tiny", config_file_list=[str(path)],
               config_dict=tiny_config(tiny_root))
    message = str(error.value)
    assert "'hiden_size'" in message and str(path) in message and "'hidden_size'" in message


def test_unknown_command_line_key_is_rejected(monkeypatch, tiny_root):
    monkeypatch.setattr("sys.argv", ["run_recbole", "--temprature=0.2"])
    with pytest.raises(ConfigKeyError, match="'temperature'"):
        Config(model="MMPSASRec", dataset="tiny", config_dict=tiny_config(tiny_root))


def test_key_check_can_be_switched_off(tiny_root):
    config = Config(model="MMPSASRec", dataset="tiny",
                    config_dict=tiny_config(tiny_root, my_plugin_key=3, check_config_keys=False))
    assert config["my_plugin_key"] == 3


def test_shipped_yaml_files_only_use_known_keys():
    for path in [*properties_dir().rglob("*.yaml"), *dataset_configs_dir().glob("*.yaml")]:
        keys = yaml.safe_load(path.read_text()) or {}
        assert set(keys) <= known_config_keys(), path
