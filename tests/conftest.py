"""Shared fixtures: a tiny atomic data set, a tiny random-init text encoder, an isolated cwd.

RecBole's Config reads ``--key=value`` from sys.argv and writes ./log and
./saved into the working directory, so every test runs with a clean argv in
its own temporary directory.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import recbole_mmprefer.registry  # noqa: F401  first: RecBole's models, imported with anomaly detection kept off

GENRES = ["Action", "Comedy", "Drama", "Horror"]
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def isolated_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["pytest"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def write_tiny_dataset(root: Path, name: str = "tiny", n_users: int = 30, n_items: int = 40,
                       seed: int = 0) -> Path:
    """Atomic files of a data set where each user mostly watches one genre, in time order."""
    rng = np.random.default_rng(seed)
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    genres = [GENRES[item % len(GENRES)] for item in range(n_items)]
    with open(folder / f"{name}.item", "w") as handle:
        handle.write("item_id:token\ttitle:token_seq\tgenre:token_seq\n")
        for item in range(n_items):
            handle.write(f"i{item}\t{genres[item]} movie number {item}\t{genres[item]}\n")
    with open(folder / f"{name}.inter", "w") as handle:
        handle.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for user in range(n_users):
            favourite = user % len(GENRES)
            liked = [i for i in range(n_items) if i % len(GENRES) == favourite]
            others = [i for i in range(n_items) if i % len(GENRES) != favourite]
            chosen = list(rng.choice(liked, size=7, replace=False)) + list(rng.choice(others, size=2, replace=False))
            for step, item in enumerate(sorted(chosen)):
                handle.write(f"u{user}\ti{item}\t{1000 + 10 * step}\n")
    return folder


def tiny_config(root: Path, **overrides) -> dict:
    """A config dict that trains everything on the tiny data set in seconds."""
    config = {
        "data_path": str(root),
        "checkpoint_dir": str(root / "saved"),
        "text_fields": ["title", "genre"],
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "hidden_size": 16, "inner_size": 32, "n_layers": 1, "n_heads": 1,
        "feature_mlp_hidden": 32, "feature_out_size": 16,
        "MAX_ITEM_LIST_LENGTH": 10, "train_batch_size": 64, "eval_batch_size": 64,
        "epochs": 1, "show_progress": False, "seed": 7,
        "rq_levels": 2, "rq_codebook_size": 8, "rq_code_dim": 8, "rq_hidden_sizes": [16], "rq_epochs": 5,
    }
    config.update(overrides)
    return config


def write_config_file(path: Path, config: dict) -> Path:
    with open(path, "w") as handle:
        yaml.safe_dump(config, handle)
    return path


def write_tiny_text_encoder(folder: Path) -> Path:
    """A random-init BERT with a word-level vocabulary: any HF encoder loads by local path."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "movie", "number", ":", ";", "title", "genre"]
    words += [g.lower() for g in GENRES] + [str(n) for n in range(100)]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    config = BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_tiny_dataset(root)
    return root


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> Path:
    return write_tiny_text_encoder(tmp_path_factory.mktemp("encoder") / "bert")
