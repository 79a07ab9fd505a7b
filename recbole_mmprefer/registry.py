"""Model and trainer lookup: this package's models first, then RecBole's; and the explainers by name.

Follows RecBole-GNN (``recbole_gnn/utils.py``): RecBole's own ``get_model``
only searches inside ``recbole.model``, so our models are resolved here.
Explainers resolve the same way (issue 14): ``MMPRefer`` (this toolkit's
LLM explainer, ``mmprefer train``'s default) or a baseline class ``<Name>`` in
``recbole_mmprefer/explainer/models/<name>.py`` with its
``properties/model/<Name>.yaml``.

RecBole 1.2.1's ``sequential_recommender/sine.py`` calls
``torch.autograd.set_detect_anomaly(True)`` when it is imported, i.e. whenever
any of RecBole's sequential models is: every later backward pass of the process
(MMPSASRec's, the explainer's, the preference models') then records a traceback
per operation and checks every gradient for NaN: about 1.5x slower training steps
on CPU (results/bench_anomaly_mode.md).
RecBole's models are therefore imported here, once, with the process's anomaly
mode put back as it was (:func:`recbole_sequential_models`).
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import List, Type

import recbole
import torch
from recbole.utils import get_model as recbole_get_model
from recbole.utils import get_trainer as recbole_get_trainer

from recbole_mmprefer.errors import InputError
from recbole_mmprefer.resources import properties_dir

OUR_MODEL_SUBMODULES = ["sequential_recommender"]
EXPLAINER_SUBMODULE = "recbole_mmprefer.explainer.models"
OUR_EXPLAINER = "MMPRefer"


def recbole_sequential_models() -> ModuleType:
    """``recbole.model.sequential_recommender``, its import leaving autograd's anomaly mode as it was."""
    enabled, check_nan = torch.is_anomaly_enabled(), torch.is_anomaly_check_nan_enabled()
    module = importlib.import_module("recbole.model.sequential_recommender")
    torch.autograd.set_detect_anomaly(enabled, check_nan)
    return module


recbole_sequential_models()  # before anything else imports it: RecBole's get_model does, in every Config


class UnknownModelError(InputError):
    """Raised for a model name that neither this package nor RecBole defines."""


def _has_module(package: str, model_name: str) -> bool:
    return importlib.util.find_spec(f"{package}.{model_name.lower()}") is not None


def our_model_names() -> List[str]:
    """Our recommenders (the model YAMLs that are not explainers)."""
    return sorted(p.stem for p in (properties_dir() / "model").glob("*.yaml")
                  if not _has_module(EXPLAINER_SUBMODULE, p.stem))


def explainer_names() -> List[str]:
    """``MMPRefer`` and the explanation baselines."""
    baselines = sorted(p.stem for p in (properties_dir() / "model").glob("*.yaml")
                       if _has_module(EXPLAINER_SUBMODULE, p.stem))
    return [OUR_EXPLAINER, *baselines]


def get_explainer_model(name: str) -> Type:
    """The baseline explainer class ``name`` (``MMPRefer`` is not a class here: it has its own stage)."""
    if name in explainer_names()[1:]:
        return getattr(importlib.import_module(f"{EXPLAINER_SUBMODULE}.{name.lower()}"), name)
    raise UnknownModelError(f"Unknown explainer {name!r}. Available explainers: {', '.join(explainer_names())}")


def recbole_model_names() -> List[str]:
    model_dir = Path(recbole.__file__).parent / "properties" / "model"
    return sorted(p.stem for p in model_dir.glob("*.yaml"))


def available_models() -> List[str]:
    return our_model_names() + [m for m in recbole_model_names() if m not in our_model_names()]


def _find_our_model(model_name: str):
    for submodule in OUR_MODEL_SUBMODULES:
        module_path = f"recbole_mmprefer.model.{submodule}.{model_name.lower()}"
        if importlib.util.find_spec(module_path) is not None:
            return getattr(importlib.import_module(module_path), model_name, None)
    return None


def get_model(model_name: str) -> Type:
    """Return the model class named ``model_name``: ours first, then RecBole's."""
    model_class = _find_our_model(model_name)
    if model_class is not None:
        return model_class
    try:
        return recbole_get_model(model_name)
    except (ValueError, ImportError, AttributeError) as error:
        # RecBole reports an unknown name as a missing optional dependency
        # (e.g. "No module named 'lightgbm'"): name the real problem instead.
        raise UnknownModelError(
            f"Unknown model {model_name!r}. Available models: {', '.join(available_models())}"
        ) from error


def get_trainer(model_type, model_name: str) -> Type:
    """Return the trainer class for a model (RecBole's: none of ours needs its own yet)."""
    return recbole_get_trainer(model_type, model_name)
