"""run_recbole and mmprefer end to end on a tiny atomic data set made in the test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_config, write_config_file, write_tiny_dataset
from recbole_mmprefer.errors import InputError
from recbole_mmprefer.quick_start import load_data_and_model, run_recbole

BIN = Path(sys.executable).parent


def run_console(command: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / command), *args], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_run_recbole_console_trains_mmpsasrec_from_nothing(tmp_path, tiny_encoder):
    root = tmp_path / "data"
    write_tiny_dataset(root)
    config_file = write_config_file(tmp_path / "tiny.yaml", tiny_config(root, text_encoder=str(tiny_encoder)))
    result = run_console("run_recbole", "--model=MMPSASRec", "--dataset=tiny", f"--config_files={config_file}",
                         "--epochs=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test result" in result.stdout + result.stderr

    run_dir = root / "saved" / "tiny"
    assert np.load(run_dir / "features" / "text" / "features.npy").shape == (40, 32)
    assert np.load(run_dir / "quantizer" / "text.semantic_ids.npy").shape == (40, 2)
    users = np.load(run_dir / "recommender" / "user_embeddings.npy")
    items = np.load(run_dir / "recommender" / "item_embeddings.npy")
    assert users.shape == (30, 16) and items.shape == (40, 16)
    user_tokens = (run_dir / "recommender" / "user_tokens.txt").read_text().split()
    assert sorted(user_tokens) == sorted(f"u{n}" for n in range(30))

    checkpoint = next((root / "saved").glob("MMPSASRec-*.pth"))
    config, model, dataset, _, _, test_data = load_data_and_model(str(checkpoint))
    assert type(model).__name__ == "MMPSASRec"
    model.eval()
    batch = next(iter(test_data))[0]
    with torch.no_grad():
        vectors = model.forward(batch["item_id_list"], batch["item_length"]).numpy()
    tokens = dataset.field2id_token["user_id"][batch["user_id"].numpy()]
    rows = [user_tokens.index(token) for token in tokens]
    assert np.allclose(vectors, users[rows], atol=1e-5)


@pytest.mark.slow
def test_mmprefer_stage_commands_write_their_outputs(tmp_path, tiny_encoder):
    root = tmp_path / "data"
    write_tiny_dataset(root)
    config_file = write_config_file(tmp_path / "tiny.yaml", tiny_config(root, text_encoder=str(tiny_encoder)))
    features = run_console("mmprefer", "features", "--dataset", "tiny", "--config_files", str(config_file),
                           cwd=tmp_path)
    assert features.returncode == 0, features.stderr[-3000:]
    quantize = run_console("mmprefer", "quantize", "--dataset", "tiny", "--config_files", str(config_file),
                           "--rq_levels=3", cwd=tmp_path)
    assert quantize.returncode == 0, quantize.stderr[-3000:]
    assert np.load(root / "saved" / "tiny" / "quantizer" / "text.semantic_ids.npy").shape == (40, 3)
    assert "collision rate" in quantize.stdout + quantize.stderr


def test_unknown_model_through_the_console_lists_models(tmp_path):
    result = run_console("run_recbole", "--model=NoSuchRec", "--dataset=ml-100k", cwd=tmp_path)
    assert result.returncode == 2
    assert "Unknown model 'NoSuchRec'" in result.stderr and "MMPSASRec" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_dataset_name_that_is_a_path_is_refused_before_anything_runs(tmp_path):
    from recbole_mmprefer.quick_start import main

    assert main(["--model=MMPSASRec", "--dataset=../escaped"]) == 2
    assert not (tmp_path / "saved").exists() and not (tmp_path.parent / "escaped").exists()


def test_missing_quantizer_input_through_the_console_names_the_command(tmp_path):
    root = tmp_path / "data"
    write_tiny_dataset(root)
    config_file = write_config_file(tmp_path / "tiny.yaml", tiny_config(root))
    result = run_console("mmprefer", "quantize", "--dataset", "tiny", "--config_files", str(config_file),
                         cwd=tmp_path)
    assert result.returncode == 2
    assert "run `mmprefer features" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("model", ["SASRec", "GRU4Rec", "BERT4Rec", "LightGCN"])
def test_recbole_baselines_run_through_our_run_recbole(tmp_path, model):
    root = tmp_path / "data"
    write_tiny_dataset(root)
    result = run_recbole(model=model, dataset="tiny", config_dict=tiny_config(root, embedding_size=16))
    assert set(result["test_result"]) >= {"recall@10", "ndcg@10", "mrr@10"}
    assert Path(result["model_file"]).is_file()
    assert "embeddings_dir" not in result


def test_empty_interaction_file_is_an_error_before_training(tmp_path):
    root = tmp_path / "data"
    folder = write_tiny_dataset(root)
    (folder / "tiny.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n")
    with pytest.raises(InputError, match=r"tiny\.inter has no interactions"):
        run_recbole(model="SASRec", dataset="tiny", config_dict=tiny_config(root))
    assert not (root / "saved").exists()
