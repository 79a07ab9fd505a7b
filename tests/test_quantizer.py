"""Joint residual encoding: RQ-VAE levels, codebook gradients, cross-modal InfoNCE, code reports."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recbole_mmprefer.model.quantizer import (
    JointRQVAE,
    QuantizerSettings,
    ResidualQuantizer,
    code_report,
    collision_rate,
    train_joint_rqvae,
)


def clustered_features(n_items: int = 256, dim: int = 24, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(16, dim))
    return (centres[rng.integers(16, size=n_items)] + 0.3 * rng.normal(size=(n_items, dim))).astype(np.float32)


def settings(**overrides) -> QuantizerSettings:
    base = dict(levels=3, codebook_size=16, code_dim=8, hidden_sizes=(32,), epochs=60, batch_size=64,
                learning_rate=3e-3, infonce_weight=0.0, seed=3)
    base.update(overrides)
    return QuantizerSettings.from_config(None, **base)


def test_more_levels_give_lower_reconstruction_error():
    features = {"text": clustered_features()}
    errors = []
    for levels in (1, 4):
        model, _ = train_joint_rqvae(features, settings(levels=levels), show_progress=False)
        errors.append(code_report(model, features)["text"]["reconstruction_unexplained_variance"])
    assert errors[1] < 0.8 * errors[0]


def test_residual_quantization_error_falls_level_by_level():
    quantizer = ResidualQuantizer(levels=4, codebook_size=16, dim=8)
    latent = torch.randn(200, 8)
    quantizer.kmeans_init(latent, seed=0)
    residuals, _ = quantizer.level_residuals(latent)
    norms = [r.pow(2).sum(-1).mean().item() for r in residuals]
    assert norms == sorted(norms, reverse=True) and norms[-1] < norms[0]


def test_gradients_reach_codebooks_and_encoder():
    model = JointRQVAE({"text": 24}, settings())
    batch = {"text": torch.as_tensor(clustered_features(64))}
    loss, parts = model.loss(batch, {"text": torch.tensor(1.0)})
    loss.backward()
    rqvae = model.rqvae["text"]
    assert rqvae.quantizer.codebooks.grad is not None
    assert rqvae.quantizer.codebooks.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in rqvae.encoder.parameters())
    assert set(parts) == {"text/reconstruction", "text/quantization"}


def _paired_alignment(model: JointRQVAE, features) -> tuple:
    latents = model.encode({m: torch.as_tensor(v) for m, v in features.items()})
    text = torch.nn.functional.normalize(latents["text"]["latent"], dim=-1)
    image = torch.nn.functional.normalize(latents["image"]["latent"], dim=-1)
    shuffled = image[torch.randperm(len(image), generator=torch.Generator().manual_seed(0))]
    return (text * image).sum(-1).mean().item(), (text * shuffled).sum(-1).mean().item()


def test_infonce_aligns_paired_modalities_better_than_shuffled():
    rng = np.random.default_rng(1)
    text = clustered_features(256, 24, seed=1)
    image = np.tanh(text @ rng.normal(size=(24, 20))).astype(np.float32)  # another view of the same items
    features = {"text": text, "image": image}
    aligned, _ = train_joint_rqvae(features, settings(infonce_weight=1.0), show_progress=False)
    paired, shuffled = _paired_alignment(aligned, features)
    assert paired > shuffled + 0.3
    independent, _ = train_joint_rqvae(features, settings(infonce_weight=0.0), show_progress=False)
    paired_without, _ = _paired_alignment(independent, features)
    assert paired > paired_without


def test_joint_loss_has_infonce_term_only_with_two_modalities():
    model = JointRQVAE({"text": 24, "image": 20}, settings(infonce_weight=0.5))
    batch = {"text": torch.randn(8, 24), "image": torch.randn(8, 20)}
    _, parts = model.loss(batch, {"text": torch.tensor(1.0), "image": torch.tensor(1.0)})
    assert "text-image/infonce" in parts


def test_dead_codes_move_onto_live_residuals():
    quantizer = ResidualQuantizer(levels=1, codebook_size=8, dim=2)
    with torch.no_grad():
        quantizer.codebooks.fill_(100.0)
        quantizer.codebooks[0, 0] = 0.0  # the only code near the data
    latent = torch.randn(50, 2)
    moved = quantizer.reset_dead_codes(latent, torch.Generator().manual_seed(0))
    assert moved == 7
    assert quantizer.codebooks[0].abs().max() < 10


def test_training_is_deterministic_for_a_seed():
    features = {"text": clustered_features(128)}
    first, _ = train_joint_rqvae(features, settings(epochs=5), show_progress=False)
    second, _ = train_joint_rqvae(features, settings(epochs=5), show_progress=False)
    codes = [m.encode({"text": torch.as_tensor(features["text"])})["text"]["codes"] for m in (first, second)]
    assert torch.equal(codes[0], codes[1])


def test_collision_rate_counts_items_sharing_a_full_id():
    codes = np.array([[0, 1], [0, 1], [0, 2], [1, 1]])
    assert collision_rate(codes) == pytest.approx(0.5)


def test_code_report_has_usage_per_level():
    features = {"text": clustered_features(128)}
    model, _ = train_joint_rqvae(features, settings(epochs=3), show_progress=False)
    report = code_report(model, features)
    assert len(report["text"]["code_usage_per_level"]) == 3
    assert all(0 < usage <= 1 for usage in report["text"]["code_usage_per_level"])
    assert 0 <= report["joint_collision_rate"] <= 1


DETERMINISM_PROBE = """
import hashlib, numpy as np
from recbole_mmprefer.model.quantizer import QuantizerSettings, train_joint_rqvae
features = np.random.default_rng(0).normal(size=(1700, 384)).astype(np.float32)
settings = QuantizerSettings.from_config(None, epochs=3, seed=5)  # the paper's sizes: 4 x 256 codes of dim 64
model, _ = train_joint_rqvae({"text": features}, settings, show_progress=False)
print(hashlib.md5(model.rqvae["text"].quantizer.codebooks.detach().numpy().tobytes()).hexdigest())
"""


def test_training_gives_the_same_codebooks_in_separate_processes():
    import subprocess
    import sys

    digests = [subprocess.run([sys.executable, "-c", DETERMINISM_PROBE], capture_output=True, text=True,
                              check=True, timeout=300).stdout for _ in range(2)]
    assert digests[0] == digests[1]
