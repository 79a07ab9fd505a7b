"""Item modality features: text through any local HF encoder, images through CLIP or a .npy."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from conftest import tiny_config, write_tiny_dataset
from recbole_mmprefer.artifacts import ARTIFACTS
from recbole_mmprefer.config import Config
from recbole_mmprefer.data import features as features_module
from recbole_mmprefer.data.features import TextEncoder, build_features, load_features
from recbole_mmprefer.errors import InputError, MissingInputError


def make_config(root, **overrides):
    return Config(model="MMPSASRec", dataset="tiny", config_dict=tiny_config(root, **overrides))


@pytest.fixture
def data_root(tmp_path):
    write_tiny_dataset(tmp_path / "data")
    return tmp_path / "data"


def test_text_features_are_deterministic_and_cached(data_root, tiny_encoder, monkeypatch):
    config = make_config(data_root, text_encoder=str(tiny_encoder))
    out_dir = build_features(config, "text")
    first = np.load(out_dir / "features.npy")
    assert first.shape == (40, 32)
    assert np.allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    assert (out_dir / "items.txt").read_text().split() == [f"i{n}" for n in range(40)]

    encodes = []
    monkeypatch.setattr(features_module.TextEncoder, "encode", lambda *a, **k: encodes.append(1))
    build_features(config, "text")  # inputs unchanged: nothing is encoded again
    assert encodes == []

    monkeypatch.undo()
    os.chdir(data_root.parent)
    again = build_features(config, "text", force=True)
    assert np.array_equal(np.load(again / "features.npy"), first)


def test_repeated_texts_are_encoded_once_with_the_same_vectors(tiny_encoder, monkeypatch):
    encoder = TextEncoder(str(tiny_encoder))
    texts = ["a long comedy title here", "", "drama", "", "a long comedy title here"]
    one_by_one = np.concatenate([encoder.encode([text]) for text in texts])
    batch_sizes = []
    original = encoder.model.forward
    monkeypatch.setattr(encoder.model, "forward",
                        lambda **kw: batch_sizes.append(len(kw["input_ids"])) or original(**kw))
    together = encoder.encode(texts, batch_size=2)
    assert batch_sizes == [2, 1]  # three distinct texts
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)
    assert (together[1] == together[3]).all() and (together[0] == together[4]).all()


def test_changed_fields_invalidate_the_cache(data_root, tiny_encoder):
    build_features(make_config(data_root, text_encoder=str(tiny_encoder)), "text")
    config = make_config(data_root, text_encoder=str(tiny_encoder), text_fields=["title"])
    meta_before = json.loads((ARTIFACTS["features"].dir(config, modality="text") / "meta.json").read_text())
    build_features(config, "text")
    meta_after = json.loads((ARTIFACTS["features"].dir(config, modality="text") / "meta.json").read_text())
    assert meta_before["input_hash"] != meta_after["input_hash"]
    assert meta_after["inputs"]["fields"] == ["title"]


def test_bundled_minilm_encodes_items(data_root):
    out_dir = build_features(make_config(data_root), "text")
    matrix = np.load(out_dir / "features.npy")
    assert matrix.shape == (40, 384)
    # Items of the same genre are closer than items of different genres.
    same, other = matrix[0] @ matrix[4], matrix[0] @ matrix[1]
    assert same > other


def test_missing_text_field_is_named_and_nothing_is_written(data_root, tiny_encoder):
    config = make_config(data_root, text_encoder=str(tiny_encoder), text_fields=["title", "plot"])
    with pytest.raises(InputError, match=r"tiny\.item.*'plot'.*title"):
        build_features(config, "text")
    assert not ARTIFACTS["features"].dir(config, modality="text").parent.exists()


def test_failure_while_writing_keeps_previous_outputs(data_root, tiny_encoder, monkeypatch):
    config = make_config(data_root, text_encoder=str(tiny_encoder))
    out_dir = build_features(config, "text")
    before = np.load(out_dir / "features.npy")

    def broken_save(path, array):
        raise OSError("disk full")

    monkeypatch.setattr(features_module.np, "save", broken_save)
    with pytest.raises(OSError):
        build_features(config, "text", force=True)
    monkeypatch.undo()
    assert np.array_equal(np.load(out_dir / "features.npy"), before)
    assert [p.name for p in out_dir.parent.iterdir()] == ["text"]


def test_duplicate_item_is_reported_with_its_line(data_root, tiny_encoder):
    item_file = data_root / "tiny" / "tiny.item"
    lines = item_file.read_text().splitlines()
    item_file.write_text("\n".join(lines + [lines[3]]) + "\n")
    with pytest.raises(InputError, match=r"line 42: item 'i2' is listed twice"):
        build_features(make_config(data_root, text_encoder=str(tiny_encoder)), "text")


def test_missing_feature_file_names_the_command(tmp_path):
    with pytest.raises(MissingInputError, match="mmprefer features --dataset tiny"):
        load_features(tmp_path / "nowhere", ["[PAD]", "i0"], "mmprefer features --dataset tiny")


def test_feature_rows_must_cover_the_items(data_root, tiny_encoder):
    out_dir = build_features(make_config(data_root, text_encoder=str(tiny_encoder)), "text")
    with pytest.raises(InputError, match="no row for 1 item"):
        load_features(out_dir, ["[PAD]", "i0", "i999"], "mmprefer features --dataset tiny")
    aligned = load_features(out_dir, ["[PAD]", "i3", "i0"], "cmd")
    matrix = np.load(out_dir / "features.npy")
    assert np.array_equal(aligned[0], np.zeros(32)) and np.array_equal(aligned[1:], matrix[[3, 0]])


def test_precomputed_image_features_are_aligned_by_index(data_root, tmp_path):
    tokens = [f"i{n}" for n in range(40)][::-1]
    matrix = np.arange(40 * 3, dtype=np.float32).reshape(40, 3)
    np.save(tmp_path / "img.npy", matrix)
    (tmp_path / "img.txt").write_text("\n".join(tokens) + "\n")
    config = make_config(data_root, image_features=str(tmp_path / "img.npy"),
                         image_features_index=str(tmp_path / "img.txt"))
    stored = np.load(build_features(config, "image") / "features.npy")
    assert np.array_equal(stored[0], matrix[39]) and np.array_equal(stored[39], matrix[0])


def test_precomputed_features_with_wrong_row_count_are_refused(data_root, tmp_path):
    np.save(tmp_path / "img.npy", np.zeros((39, 3), dtype=np.float32))
    config = make_config(data_root, image_features=str(tmp_path / "img.npy"))
    with pytest.raises(InputError, match=r"img\.npy has 39 rows but the \.item file order lists 40 items"):
        build_features(config, "image")
    assert not ARTIFACTS["features"].dir(config, modality="image").exists()


def write_tiny_clip(folder):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    config = CLIPConfig(
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "vocab_size": 100},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        projection_dim=12)
    CLIPModel(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def test_image_modality_through_a_tiny_clip(data_root, tmp_path):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for n in range(38):  # two items have no image
        colour = (n * 6 % 256, 50 if n % 2 else 200, 100)
        Image.new("RGB", (40, 40), colour).save(images / f"i{n}.png")
    clip = write_tiny_clip(tmp_path / "clip")
    config = make_config(data_root, modalities=["text", "image"], image_encoder=str(clip), image_dir=str(images))
    out_dir = build_features(config, "image")
    matrix = np.load(out_dir / "features.npy")
    meta = json.loads((out_dir / "meta.json").read_text())
    assert matrix.shape == (40, 12)
    assert np.allclose(np.linalg.norm(matrix[:38], axis=1), 1.0, atol=1e-5)
    assert meta["items_without_feature"] == ["i38", "i39"] and not matrix[38:].any()


def test_empty_item_file_is_an_error(data_root, tiny_encoder):
    (data_root / "tiny" / "tiny.item").write_text("item_id:token\ttitle:token_seq\tgenre:token_seq\n")
    with pytest.raises(InputError, match="lists no items"):
        build_features(make_config(data_root, text_encoder=str(tiny_encoder)), "text")
