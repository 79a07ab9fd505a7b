"""Locations of the files that ship with the package: YAML defaults and the bundled explainer adapter.

``properties/`` and ``dataset_configs/`` stand at the top of the repository and
are installed as the packages ``recbole_mmprefer.properties`` and
``recbole_mmprefer.dataset_configs`` (see setup.cfg). An editable install puts
the repository itself on the path, so there the top-level folders are used.
"""

from __future__ import annotations

import functools
import importlib.resources
from pathlib import Path
from typing import Dict, List, Optional

import yaml

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent


def _data_dir(folder: str) -> Path:
    """``<repository>/<folder>`` in a checkout or editable install, else the installed package."""
    checkout = REPOSITORY_ROOT / folder
    if (checkout / "__init__.py").is_file():
        return checkout
    root = importlib.resources.files(f"recbole_mmprefer.{folder}")
    return Path(str(root))


def bundled_explainer_dir() -> Path:
    """The explainer adapter shipped in the wheel (``run_scripts/train_bundled_explainer.py`` makes it)."""
    return Path(__file__).resolve().parent / "bundled" / "explainer"


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


def recbole_default_files() -> List[Path]:
    """RecBole's own defaults for keys a plain dict config lacks (seed, checkpoint_dir, field names)."""
    import recbole

    root = Path(recbole.__file__).parent / "properties"
    return [root / "overall.yaml", root / "dataset" / "sample.yaml"]


@functools.lru_cache(maxsize=1)
def stage_defaults() -> Dict[str, object]:
    """Every key of our stage property files with its shipped default, over RecBole's own defaults."""
    defaults: Dict[str, object] = {}
    for path in [*recbole_default_files(), *stage_property_files()]:
        with open(path, encoding="utf-8") as handle:
            defaults.update(yaml.safe_load(handle) or {})
    return defaults


def stage_setting(config, key: str):
    """``config[key]`` from a RecBole Config, a dict or None; where it is missing or None, the shipped default
    (``properties/*.yaml``, then RecBole's own property files)."""
    value = config[key] if config is not None and key in config else None
    return stage_defaults().get(key) if value is None else value


STYLE_MARKER = "/* page_style.css */"


def page_style() -> str:
    """The stylesheet of the web app's page and of report.html (``recbole_mmprefer/page_style.css``)."""
    return (Path(__file__).resolve().parent / "page_style.css").read_text(encoding="utf-8")
