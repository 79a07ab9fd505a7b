"""RecBole ``Config`` that knows this package's models and stage defaults.

Follows RecBole-GNN's ``config.py``: resolve the model through our registry and
load ``properties/model/<Model>.yaml``. On top of RecBole's internal defaults we
load our stage defaults (``properties/*.yaml``) and ``dataset_configs/<dataset>.yaml``;
user files, dicts and ``--key=value`` flags still override everything, and a key
that nobody defines is rejected with the nearest known key named.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import sys
from pathlib import Path
from typing import Dict, FrozenSet, Iterable, List, Optional, Sequence

import recbole
import yaml
from recbole.config import Config as RecBoleConfig
from recbole.utils import ModelType, init_logger, init_seed
from recbole.utils.argument_list import (
    dataset_arguments,
    evaluation_arguments,
    general_arguments,
    training_arguments,
)

from recbole_mmprefer import registry
from recbole_mmprefer.errors import InputError, MissingInputError
from recbole_mmprefer.resources import (
    dataset_config_file,
    dataset_configs_dir,
    model_property_file,
    properties_dir,
    stage_property_files,
)

# Stage commands build their config as for MMPSASRec, the model that consumes their outputs.
STAGE_MODEL = "MMPSASRec"

# Keys that RecBole's launchers put into the config without any YAML defining them.
LAUNCHER_KEYS = {
    "model", "dataset", "config_files", "nproc", "world_size", "ip", "port",
    "offset", "local_rank", "single_spec", "device", "config_file",
}


class ConfigKeyError(InputError):
    """An external config key that neither RecBole nor this package defines."""


def _yaml_keys(paths: Iterable[Path]) -> set:
    keys = set()
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            content = yaml.safe_load(handle)
        if isinstance(content, dict):
            keys.update(content)
    return keys


@functools.lru_cache(maxsize=1)
def known_config_keys() -> FrozenSet[str]:
    """Every key defined by RecBole's or our property files, or by RecBole's argument lists."""
    recbole_properties = Path(recbole.__file__).parent / "properties"
    keys = set(LAUNCHER_KEYS)
    keys.update(general_arguments + training_arguments + evaluation_arguments + dataset_arguments)
    keys.update(_yaml_keys(recbole_properties.rglob("*.yaml")))
    keys.update(_yaml_keys(properties_dir().rglob("*.yaml")))
    keys.update(_yaml_keys(dataset_configs_dir().glob("*.yaml")))
    return frozenset(keys)


def check_keys(keys: Iterable[str], source: str) -> None:
    """Raise ConfigKeyError naming the first unknown key, its source and the nearest known key."""
    known = known_config_keys()
    for key in keys:
        if key in known:
            continue
        nearest = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        hint = f"; did you mean {nearest[0]!r}?" if nearest else ""
        raise ConfigKeyError(
            f"Unknown config key {key!r} in {source}{hint} "
            "(set check_config_keys: False to allow keys of models outside RecBole and recbole-mmprefer)"
        )


class Config(RecBoleConfig):
    """RecBole's Config, resolving our models first and loading our defaults.

    ``explainer_model`` (a baseline explainer, issue 14) loads its
    ``properties/model/<Name>.yaml`` on top of the model's, below the user's
    files and flags.
    """

    def __init__(self, model=None, dataset=None, config_file_list=None, config_dict=None,
                 explainer_model: Optional[str] = None):
        self.explainer_model = explainer_model
        super().__init__(model, dataset, config_file_list, config_dict)

    def _load_config_files(self, file_list):
        self._keys_by_file: Dict[str, list] = {}
        merged = {}
        for file in file_list or []:
            if not Path(file).is_file():
                raise MissingInputError(f"Config file {file} not found")
            with open(file, "r", encoding="utf-8") as handle:
                content = yaml.load(handle.read(), Loader=self.yaml_loader) or {}
            if not isinstance(content, dict):
                raise InputError(f"Config file {file} must hold a mapping of key: value, got {type(content).__name__}")
            self._keys_by_file[str(file)] = list(content)
            merged.update(content)
        return merged

    def _merge_external_config_dict(self):
        super()._merge_external_config_dict()
        if not self.external_config_dict.get("check_config_keys", True):
            return
        for file, keys in self._keys_by_file.items():
            check_keys(keys, file)
        check_keys(self.variable_config_dict, "config_dict")
        check_keys(self.cmd_config_dict, "the command line")

    def _get_model_and_dataset(self, model, dataset):
        if model is None:
            model = self.external_config_dict.get("model")
        if model is None:
            raise InputError("model must be given as an argument, in a config file, a config dict or --model=NAME")
        if dataset is None:
            dataset = self.external_config_dict.get("dataset")
        if dataset is None:
            raise InputError("dataset must be given as an argument, in a config file, a config dict or --dataset=NAME")
        if isinstance(model, str):
            return model, registry.get_model(model), dataset
        return model.__name__, model, dataset

    def _load_internal_config_dict(self, model, model_class, dataset):
        super()._load_internal_config_dict(model, model_class, dataset)
        for path in stage_property_files():
            self._update_internal_config_dict(path)
        explainer = model_property_file(self.explainer_model) if self.explainer_model else None
        for path in (model_property_file(model), explainer, dataset_config_file(dataset)):
            if path is not None:
                self._update_internal_config_dict(path)
        # RecBole 1.2.1 ships SASRec & co. with loss_type CE but a default negative
        # sampler, then refuses that pair; CE needs no sampled negatives.
        if self.internal_config_dict.get("loss_type") == "CE" and model_class.type == ModelType.SEQUENTIAL:
            self.internal_config_dict["train_neg_sample_args"] = None



@contextlib.contextmanager
def _argv(arguments: Sequence[str]):
    """RecBole's Config reads ``--key=value`` from sys.argv: show it only the overrides."""
    saved = sys.argv
    sys.argv = [saved[0], *arguments]
    try:
        yield
    finally:
        sys.argv = saved


def stage_config(dataset: str, config_files: Optional[List[str]] = None, overrides: Sequence[str] = (),
                 explainer_model: Optional[str] = None) -> Config:
    """The Config every stage entry point uses: MMPSASRec's (plus an explainer baseline's YAML), with
    ``--key=value`` ``overrides``; seeds and RecBole's logger set up."""
    with _argv(overrides):
        config = Config(model=STAGE_MODEL, dataset=dataset, config_file_list=config_files,
                        explainer_model=explainer_model)
    init_seed(config["seed"], config["reproducibility"])
    # RecBole checks then creates ./log/<model>: two ranks starting together race on it
    Path("log", config["model"]).mkdir(parents=True, exist_ok=True)
    init_logger(config)
    return config


def config_from_file(path: str) -> Config:
    """The stage Config of a YAML file that names its ``dataset`` (the ``main()`` of train and generate)."""
    if not Path(path).is_file():
        raise MissingInputError(f"Config file {path} not found")
    with open(path, encoding="utf-8") as handle:
        content = yaml.safe_load(handle) or {}
    if not isinstance(content, dict) or not content.get("dataset"):
        raise InputError(f"{path}: a config file for this command must name the dataset (dataset: NAME)")
    return stage_config(str(content["dataset"]), [str(path)])
