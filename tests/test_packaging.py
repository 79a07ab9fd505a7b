"""properties/, dataset_configs/ and the bundled explainer ship inside the wheel and are found from a non-editable
install."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_ships_yaml_defaults_and_finds_them(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPOSITORY), "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path / "dist")], check=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("recbole_mmprefer-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "recbole_mmprefer/properties/model/MMPSASRec.yaml" in names
    assert "recbole_mmprefer/dataset_configs/ml-100k.yaml" in names
    for name in ("adapter.safetensors", "explainer_config.json", "meta.json"):
        assert f"recbole_mmprefer/bundled/explainer/{name}" in names
    for package in (REPOSITORY / "recbole_mmprefer").rglob("__init__.py"):  # every package, none forgotten
        assert package.relative_to(REPOSITORY).as_posix() in names
    assert "recbole_mmprefer/properties/model/PETER.yaml" in names
    assert {"recbole_mmprefer/serving/page.html", "recbole_mmprefer/page_style.css"} <= set(names)

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, timeout=300)
    probe = ("from recbole_mmprefer.resources import model_property_file, dataset_config_file;"
             "print(model_property_file('MMPSASRec')); print(dataset_config_file('ml-100k'));"
             "from recbole_mmprefer.explainer.checkpoints import resolve_explainer;"
             "print(resolve_explainer('bundled'));"
             "from recbole_mmprefer.serving.app import page_html; print(len(page_html()) > 10000)")
    env = {**os.environ, "PYTHONPATH": str(target)}
    output = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                            check=True).stdout.split()
    assert output == [str(target / "recbole_mmprefer" / "properties" / "model" / "MMPSASRec.yaml"),
                      str(target / "recbole_mmprefer" / "dataset_configs" / "ml-100k.yaml"),
                      str(target / "recbole_mmprefer" / "bundled" / "explainer"), "True"]
