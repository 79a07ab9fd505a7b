"""Locations of the YAML files that ship with the package.

``properties/`` and ``dataset_configs/`` stand at the top of the repository and
are installed as the packages ``recbole_mmprefer.properties`` and
``recbole_mmprefer.dataset_configs`` (see setup.cfg). An editable install puts
the repository itself on the path, so there the top-level folders are used.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import List, Optional

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent


def _data_dir(folder: str) -> Path:
    """``<repository>/<folder>`` in a checkout or editable install, else the installed package."""
    checkout = REPOSITORY_ROOT / folder
    if (checkout / "__init__.py").is_file():
        return checkout
    root = importlib.resources.files(f"recbole_mmprefer.{folder}")
    return Path(str(root))


def properties_dir() -> Path:
    return _data_dir("properties")


def dataset_configs_dir() -> Path:
    return _data_dir("dataset_configs")


def stage_property_files() -> List[Path]:
    """Our stage-wide defaults (overall.yaml first), model files excluded."""
    files = sorted(properties_dir().glob("*.yaml"))
    return sorted(files, key=lambda p: p.name != "overall.yaml")


def model_property_file(model: str) -> Optional[Path]:
    path = properties_dir() / "model" / f"{model}.yaml"
    return path if path.is_file() else None


def dataset_config_file(dataset: str) -> Optional[Path]:
    path = dataset_configs_dir() / f"{dataset}.yaml"
    return path if path.is_file() else None
