"""MMPSASRec on a tiny data set: item representation shapes, gradients, a loss that falls."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from recbole.data import create_dataset, data_preparation
from recbole.utils import init_seed

from conftest import tiny_config
from recbole_mmprefer.config import Config
from recbole_mmprefer.errors import MissingInputError
from recbole_mmprefer.model.sequential_recommender.mmpsasrec import MMPSASRec
from recbole_mmprefer.quick_start import prepare_item_inputs


@pytest.fixture(scope="module")
def prepared(tiny_root, tiny_encoder, tmp_path_factory):
    """Config and data loaders with features and semantic IDs built once for the module."""
    saved = tmp_path_factory.mktemp("saved")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.argv", ["pytest"])
        config = Config(model="MMPSASRec", dataset="tiny",
                        config_dict=tiny_config(tiny_root, text_encoder=str(tiny_encoder),
                                                checkpoint_dir=str(saved)))
    init_seed(config["seed"], config["reproducibility"])
    prepare_item_inputs(config)
    dataset = create_dataset(config)
    return config, dataset, data_preparation(config, dataset)


def build_model(config, train_data, **overrides) -> MMPSASRec:
    """A fresh model with some config values changed for it only."""
    previous = {key: config[key] for key in overrides}
    for key, value in overrides.items():
        config[key] = value
    try:
        init_seed(config["seed"], config["reproducibility"])
        return MMPSASRec(config, train_data._dataset)
    finally:
        for key, value in previous.items():
            config[key] = value


def test_item_representations_have_hidden_size_and_zero_padding(prepared):
    config, dataset, (train_data, _, test_data) = prepared
    model = build_model(config, train_data).eval()
    table = model.item_embedding.weight
    assert table.shape == (dataset.item_num, 16)
    assert torch.equal(table[0], torch.zeros(16))
    batch = next(iter(test_data))[0]
    scores = model.full_sort_predict(batch)
    assert scores.shape == (len(batch), dataset.item_num)
    pointwise = model.predict(batch)  # the item_id of each test row
    assert torch.allclose(pointwise, scores[torch.arange(len(batch)), batch["item_id"]], atol=1e-5)


def test_codebooks_start_from_the_quantizer_and_receive_gradients(prepared):
    config, _, (train_data, _, _) = prepared
    model = build_model(config, train_data)
    assert model.item_embedding.codebooks["text"].shape == (2, 8, 8)
    loss = model.calculate_loss(next(iter(train_data)))
    loss.backward()
    assert model.item_embedding.codebooks["text"].grad.abs().sum() > 0
    assert model.item_embedding.mlps["text"][0].weight.grad.abs().sum() > 0
    assert model.item_embedding.features_text.requires_grad is False


def test_without_semantic_ids_uses_raw_features_only(prepared):
    config, dataset, (train_data, _, _) = prepared
    model = build_model(config, train_data, use_semantic_ids=False)
    assert not hasattr(model.item_embedding, "codebooks")
    assert model.item_embedding.projection.in_features == 16  # one modality, MLP output only
    assert model.item_embedding.weight.shape == (dataset.item_num, 16)


def test_item_id_embedding_tells_apart_items_with_identical_features(prepared):
    config, dataset, (train_data, _, _) = prepared
    model = build_model(config, train_data, use_semantic_ids=False, item_id_embedding_size=4)
    assert model.item_embedding.projection.in_features == 16 + 4
    embedding = model.item_embedding
    embedding.features_text[2] = embedding.features_text[1]  # two items whose text is the same
    table = embedding.weight
    assert not torch.allclose(table[1], table[2])
    assert torch.equal(table[0], torch.zeros(16))
    model.calculate_loss(next(iter(train_data))).backward()
    assert embedding.id_embedding.weight.grad.abs().sum() > 0
    without = build_model(config, train_data, use_semantic_ids=False).item_embedding
    without.features_text[2] = without.features_text[1]
    assert torch.allclose(without.weight[1], without.weight[2])


def test_loss_falls_over_a_few_steps(prepared):
    config, _, (train_data, _, _) = prepared
    model = build_model(config, train_data, hidden_dropout_prob=0.0, attn_dropout_prob=0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    batch = next(iter(train_data))
    losses = []
    for _ in range(40):
        loss = model.calculate_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3  # deterministic: no dropout, one fixed batch


def test_missing_stage_outputs_name_the_command(prepared, tmp_path):
    config, _, (train_data, _, _) = prepared
    with pytest.raises(MissingInputError, match="mmprefer features --dataset tiny"):
        build_model(config, train_data, run_dir=str(tmp_path / "empty"))
    shutil.copytree(Path(config["checkpoint_dir"]) / "tiny" / "features", tmp_path / "partial" / "features")
    with pytest.raises(MissingInputError, match="mmprefer quantize --dataset tiny"):
        build_model(config, train_data, run_dir=str(tmp_path / "partial"))


def test_cosine_scores_are_bounded_by_the_temperature(prepared):
    config, _, (train_data, _, test_data) = prepared
    model = build_model(config, train_data, similarity="cos", temperature=0.5).eval()
    scores = model.full_sort_predict(next(iter(test_data))[0])
    assert scores.abs().max() <= 2.0 + 1e-5
    dot_model = build_model(config, train_data, similarity="dot", temperature=1.0).eval()
    assert not torch.allclose(dot_model.full_sort_predict(next(iter(test_data))[0]), scores)


def test_items_sharing_one_feature_vector_are_reported_loudly(caplog):
    import logging

    import torch

    from recbole_mmprefer.model.sequential_recommender.mmpsasrec import warn_if_constant

    constant = torch.zeros(11, 4)
    constant[1:3] = torch.randn(2, 4)  # 2 of 10 items with text: 8 share the empty-text vector
    with caplog.at_level(logging.WARNING):
        warn_if_constant({"text": constant}, id_embedding_size=0)
    assert "share one text feature vector" in caplog.text and "item_id_embedding_size" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        warn_if_constant({"text": constant}, id_embedding_size=16)  # an ID part tells them apart
        warn_if_constant({"text": torch.randn(11, 4)}, id_embedding_size=0)
    assert caplog.text == ""


def test_fused_activation_gives_recboles_scores_and_gradients(prepared):
    """The feed-forward GELU is torch's fused kernel; swapping RecBole's own back changes nothing but rounding."""
    config, _, (train_data, _, test_data) = prepared
    model = build_model(config, train_data).eval()
    feed_forward = model.trm_encoder.layer[0].feed_forward
    assert feed_forward.intermediate_act_fn is torch.nn.functional.gelu
    batch = next(iter(test_data))[0]

    def scores_and_gradient():
        model.zero_grad()
        scores = model.full_sort_predict(batch)
        scores.sum().backward()
        return scores.detach(), feed_forward.dense_1.weight.grad.clone()

    fused = scores_and_gradient()
    feed_forward.intermediate_act_fn = feed_forward.gelu  # RecBole's x * 0.5 * (1 + erf(x / sqrt 2))
    recbole = scores_and_gradient()
    assert torch.allclose(fused[0], recbole[0], atol=1e-5) and torch.allclose(fused[1], recbole[1], atol=1e-5)
    assert fused[1].abs().sum() > 0
