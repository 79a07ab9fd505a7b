"""Joint residual encoding (paper section 3.2, eq. 1-4): semantic IDs per modality.

One RQ-VAE per modality: an MLP encoder maps the item feature to a latent, a
stack of codebooks quantizes it residually (level l quantizes what levels < l
left over), and an MLP decoder reconstructs the feature. The modalities are
trained jointly: sum over modalities of reconstruction + codebook/commitment
loss, plus a symmetric InfoNCE between the latents of every pair of modalities
so that one item's text and image codes agree. Codebooks start from k-means on
their level's residuals and unused codes are moved onto live residuals after
each epoch (codebook collapse guard). The stage writes, per modality, the
semantic IDs (items x levels) and the codebooks (levels x codes x dim) that
MMPSASRec starts from, and a report of code usage and ID collisions.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from recbole_mmprefer import __version__
from recbole_mmprefer.artifacts import ARTIFACTS
from recbole_mmprefer.errors import InputError, MissingInputError
from recbole_mmprefer.settings import StageSettings, check_bool, check_float, check_int
from recbole_mmprefer.utils import (
    align_rows,
    json_sha256,
    read_json,
    read_lines,
    write_json,
    write_lines,
)

logger = logging.getLogger(__name__)

KMEANS_INIT_POINTS = 8192  # most residuals a codebook's k-means initialisation is fitted on


@dataclass
class QuantizerSettings(StageSettings):
    """The ``rq_*`` keys of properties/quantizer.yaml (and ``seed``), checked."""

    PREFIX = "rq_"
    KEYS = {"seed": "seed"}

    levels: int
    codebook_size: int
    code_dim: int
    hidden_sizes: Tuple[int, ...]
    beta: float
    infonce_weight: float
    temperature: float
    epochs: int
    batch_size: int
    learning_rate: float
    kmeans_init: bool
    dead_code_reset: bool
    seed: int

    def __post_init__(self):
        for name in ("levels", "codebook_size", "code_dim", "epochs", "batch_size"):
            setattr(self, name, check_int(self.key(name), getattr(self, name), 1))
        self.hidden_sizes = tuple(check_int("rq_hidden_sizes", size, 1) for size in self.hidden_sizes)
        self.beta = check_float("rq_beta", self.beta, 0.0)
        self.infonce_weight = check_float("rq_infonce_weight", self.infonce_weight, 0.0)
        self.temperature = check_float("rq_temperature", self.temperature, 0.0, above_minimum=True)
        self.learning_rate = check_float("rq_learning_rate", self.learning_rate, 0.0, above_minimum=True)
        self.kmeans_init = check_bool("rq_kmeans_init", self.kmeans_init)
        self.dead_code_reset = check_bool("rq_dead_code_reset", self.dead_code_reset)
        self.seed = check_int("seed", self.seed)


def mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers: List[nn.Module] = []
    for index, (size_in, size_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(size_in, size_out))
        if index < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class ResidualQuantizer(nn.Module):
    """``levels`` codebooks quantizing a latent residually, with a straight-through gradient."""

    def __init__(self, levels: int, codebook_size: int, dim: int, beta: float = 0.25):
        super().__init__()
        self.beta = beta
        self.codebooks = nn.Parameter(torch.randn(levels, codebook_size, dim) * 0.1)

    @property
    def levels(self) -> int:
        return self.codebooks.shape[0]

    def _nearest(self, residual: torch.Tensor, level: int) -> torch.Tensor:
        return torch.cdist(residual, self.codebooks[level]).argmin(dim=-1)

    def forward(self, latent: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (quantized latent with straight-through gradient, codes [B, L], codebook+commitment loss)."""
        residual = latent
        quantized = torch.zeros_like(latent)
        codes, loss = [], latent.new_zeros(())
        for level in range(self.levels):
            index = self._nearest(residual.detach(), level)
            # A one-hot product, not codebooks[index]: the indexing backward sums
            # gradients of repeated codes in a thread-dependent order, and that
            # noise grows over training into different semantic IDs run to run.
            code = F.one_hot(index, self.codebooks.shape[1]).to(latent.dtype) @ self.codebooks[level]
            loss = loss + F.mse_loss(code, residual.detach()) + self.beta * F.mse_loss(residual, code.detach())
            quantized = quantized + code
            residual = residual - code.detach()
            codes.append(index)
        straight_through = latent + (quantized - latent).detach()
        return straight_through, torch.stack(codes, dim=1), loss

    @torch.no_grad()
    def level_residuals(self, latent: torch.Tensor) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """The input residual of each level, and the codes [B, L]."""
        residual, residuals, codes = latent, [], []
        for level in range(self.levels):
            residuals.append(residual)
            index = self._nearest(residual, level)
            codes.append(index)
            residual = residual - self.codebooks[level][index]
        return residuals, torch.stack(codes, dim=1)

    @torch.no_grad()
    def kmeans_init(self, latent: torch.Tensor, seed: int) -> None:
        """Set each codebook to k-means centroids of its level's residuals (level by level)."""
        from sklearn.cluster import KMeans

        residual = latent
        generator = torch.Generator().manual_seed(seed)
        for level in range(self.levels):
            size = self.codebooks.shape[1]
            points = residual.cpu().numpy()
            clusters = min(size, len(np.unique(points.round(6), axis=0)))
            # k-means++ seeding costs O(points x codes); a seeded sample is as good a start
            sample = np.random.default_rng(seed + level).permutation(len(points))[:KMEANS_INIT_POINTS]
            kmeans = KMeans(n_clusters=clusters, n_init=1, random_state=seed).fit(points[np.sort(sample)])
            centroids = torch.as_tensor(kmeans.cluster_centers_, dtype=latent.dtype)
            if clusters < size:  # fewer distinct points than codes: jittered copies of live points
                extra = residual[torch.randint(len(residual), (size - clusters,), generator=generator)]
                centroids = torch.cat([centroids, extra + 1e-3 * torch.randn(extra.shape, generator=generator)])
            self.codebooks[level].copy_(centroids)
            residual = residual - centroids[torch.as_tensor(kmeans.predict(points))]

    @torch.no_grad()
    def reset_dead_codes(self, latent: torch.Tensor, generator: torch.Generator) -> int:
        """Move every code that no item uses onto a random residual of its level; return how many moved."""
        residuals, codes = self.level_residuals(latent)
        moved = 0
        for level in range(self.levels):
            used = torch.bincount(codes[:, level], minlength=self.codebooks.shape[1]) > 0
            dead = torch.nonzero(~used).flatten()
            if len(dead):
                picks = torch.randint(len(latent), (len(dead),), generator=generator)
                self.codebooks[level][dead] = residuals[level][picks]
                moved += len(dead)
        return moved


class RQVAE(nn.Module):
    """Encoder MLP -> residual quantizer -> decoder MLP for one modality."""

    def __init__(self, input_dim: int, settings: QuantizerSettings):
        super().__init__()
        sizes = [input_dim, *settings.hidden_sizes, settings.code_dim]
        self.encoder = mlp(sizes)
        self.quantizer = ResidualQuantizer(settings.levels, settings.codebook_size, settings.code_dim, settings.beta)
        self.decoder = mlp(sizes[::-1])

    def forward(self, features: torch.Tensor) -> Dict[str, torch.Tensor]:
        latent = self.encoder(features)
        quantized, codes, quantization_loss = self.quantizer(latent)
        return {"latent": latent, "codes": codes, "reconstruction": self.decoder(quantized),
                "quantization_loss": quantization_loss}


def info_nce(first: torch.Tensor, second: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE: row i of ``first`` and row i of ``second`` are the positive pair."""
    logits = F.normalize(first, dim=-1) @ F.normalize(second, dim=-1).T / temperature
    targets = torch.arange(len(first), device=first.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def unexplained_variance(reconstruction: torch.Tensor, features: torch.Tensor, total_variance: torch.Tensor):
    """Squared reconstruction error as a fraction of the features' total variance (scale-free MSE)."""
    return ((reconstruction - features) ** 2).sum(-1).mean() / total_variance


class JointRQVAE(nn.Module):
    """One RQ-VAE per modality, trained with one joint loss (eq. 4)."""

    def __init__(self, input_dims: Mapping[str, int], settings: QuantizerSettings):
        super().__init__()
        self.settings = settings
        self.modalities = list(input_dims)
        self.rqvae = nn.ModuleDict({m: RQVAE(dim, settings) for m, dim in input_dims.items()})

    def loss(self, batch: Mapping[str, torch.Tensor], total_variance: Mapping[str, torch.Tensor]):
        outputs = {m: self.rqvae[m](batch[m]) for m in self.modalities}
        parts = {}
        for m, out in outputs.items():
            parts[f"{m}/reconstruction"] = unexplained_variance(out["reconstruction"], batch[m], total_variance[m])
            parts[f"{m}/quantization"] = out["quantization_loss"]
        if self.settings.infonce_weight > 0:
            for first, second in itertools.combinations(self.modalities, 2):
                parts[f"{first}-{second}/infonce"] = self.settings.infonce_weight * info_nce(
                    outputs[first]["latent"], outputs[second]["latent"], self.settings.temperature)
        return sum(parts.values()), parts

    @torch.no_grad()
    def encode(self, features: Mapping[str, torch.Tensor]) -> Dict[str, Dict[str, torch.Tensor]]:
        return {m: self.rqvae[m](features[m]) for m in self.modalities}


def _total_variance(matrix: torch.Tensor) -> torch.Tensor:
    return matrix.var(dim=0, unbiased=False).sum().clamp(min=1e-12)


def train_joint_rqvae(features: Mapping[str, np.ndarray], settings: QuantizerSettings,
                      show_progress: bool = True) -> Tuple[JointRQVAE, List[float]]:
    """Train the joint RQ-VAE on item-aligned feature matrices; return it and the loss per epoch."""
    sizes = {len(matrix) for matrix in features.values()}
    if len(sizes) != 1:
        raise InputError(f"Feature matrices of all modalities must have one row per item; got row counts {sizes}")
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    tensors = {m: torch.as_tensor(matrix, dtype=torch.float32) for m, matrix in features.items()}
    variance = {m: _total_variance(t) for m, t in tensors.items()}
    model = JointRQVAE({m: t.shape[1] for m, t in tensors.items()}, settings)
    if settings.kmeans_init:
        with torch.no_grad():
            for m, t in tensors.items():
                model.rqvae[m].quantizer.kmeans_init(model.rqvae[m].encoder(t), settings.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    n_items = sizes.pop()
    history = []
    epochs = tqdm(range(settings.epochs), desc="training RQ-VAE", unit="epoch", disable=not show_progress)
    log_every = max(settings.epochs // 10, 1)
    for epoch in epochs:
        order = torch.randperm(n_items, generator=generator)
        epoch_loss = 0.0
        for start in range(0, n_items, settings.batch_size):
            rows = order[start:start + settings.batch_size]
            loss, _ = model.loss({m: t[rows] for m, t in tensors.items()}, variance)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            epoch_loss += loss.item() * len(rows) / n_items
        if settings.dead_code_reset:
            with torch.no_grad():
                for m, t in tensors.items():
                    model.rqvae[m].quantizer.reset_dead_codes(model.rqvae[m].encoder(t), generator)
        history.append(epoch_loss)
        epochs.set_postfix(loss=f"{epoch_loss:.4f}")
        if not show_progress and (epoch + 1) % log_every == 0:
            logger.info("RQ-VAE epoch %d/%d: loss %.4f", epoch + 1, settings.epochs, epoch_loss)
    return model, history


def collision_rate(codes: np.ndarray) -> float:
    """Fraction of items whose full semantic ID is shared with at least one other item."""
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    return float((counts[inverse.reshape(-1)] > 1).mean())


def code_report(model: JointRQVAE, features: Mapping[str, np.ndarray],
                outputs: Optional[Mapping[str, Dict[str, torch.Tensor]]] = None) -> Dict[str, object]:
    """Per modality: reconstruction error, code usage per level and collision rate; and across modalities.

    ``outputs`` is ``model.encode`` of the features, when the caller already has it.
    """
    tensors = {m: torch.as_tensor(matrix, dtype=torch.float32) for m, matrix in features.items()}
    outputs = outputs if outputs is not None else model.encode(tensors)
    report: Dict[str, object] = {}
    for m, out in outputs.items():
        codes = out["codes"].numpy()
        report[m] = {
            "reconstruction_unexplained_variance": float(
                unexplained_variance(out["reconstruction"], tensors[m], _total_variance(tensors[m]))),
            "code_usage_per_level": [len(np.unique(codes[:, level])) / model.settings.codebook_size
                                     for level in range(codes.shape[1])],
            "collision_rate": collision_rate(codes),
        }
    report["joint_collision_rate"] = collision_rate(np.concatenate([o["codes"].numpy() for o in outputs.values()], 1))
    return report


def _load_features(config, modality: str) -> Tuple[np.ndarray, List[str], dict]:
    folder = ARTIFACTS["features"].require(config, modality=modality)
    return np.load(folder / "features.npy"), read_lines(folder / "items.txt"), read_json(folder / "meta.json")


def build_semantic_ids(config, force: bool = False) -> Path:
    """Train the joint RQ-VAE on the stored features and write semantic IDs + codebooks."""
    settings = QuantizerSettings.from_config(config)
    modalities = list(config["modalities"])
    loaded = {m: _load_features(config, m) for m in modalities}
    tokens = loaded[modalities[0]][1]
    for m, (_, other_tokens, _) in loaded.items():
        if other_tokens != tokens:
            raise InputError(f"The {m} features list other items than the {modalities[0]} features: rerun "
                             f"`mmprefer features --dataset {config['dataset']}`")
    input_hash = json_sha256({"settings": settings.__dict__, "recbole_mmprefer": __version__,
                              "features": {m: v[2]["input_hash"] for m, v in loaded.items()}})
    out_dir = ARTIFACTS["quantizer"].dir(config)
    if not force and ARTIFACTS["quantizer"].is_fresh(config, input_hash):
        logger.info("Semantic IDs are up to date in %s", out_dir)
        return out_dir

    features = {m: v[0] for m, v in loaded.items()}
    model, history = train_joint_rqvae(features, settings, show_progress=config["show_progress"])
    outputs = model.encode({m: torch.as_tensor(v, dtype=torch.float32) for m, v in features.items()})
    report = code_report(model, features, outputs)
    meta = {"modalities": modalities, "settings": settings.__dict__, "items": len(tokens)}
    with ARTIFACTS["quantizer"].writing(config, input_hash, meta) as staging:
        for m in modalities:
            np.save(staging / f"{m}.semantic_ids.npy", outputs[m]["codes"].numpy().astype(np.int64))
            np.save(staging / f"{m}.codebooks.npy", model.rqvae[m].quantizer.codebooks.detach().numpy())
        write_lines(staging / "items.txt", tokens)
        write_json(staging / "report.json", {**report, "final_loss": history[-1] if history else None})
    for m in modalities:
        logger.info("%s semantic IDs: code usage per level %s, collision rate %.4f", m,
                    [round(u, 3) for u in report[m]["code_usage_per_level"]], report[m]["collision_rate"])
    logger.info("Wrote semantic IDs for %d items to %s", len(tokens), out_dir)
    return out_dir


def load_semantic_ids(folder: Path, modality: str, item_tokens: Sequence[str],
                      make_command: str) -> Tuple[np.ndarray, np.ndarray]:
    """(semantic IDs aligned to ``item_tokens``, codebooks) of one modality; ``[PAD]`` gets code 0."""
    ids_path = folder / f"{modality}.semantic_ids.npy"
    if not (folder / "meta.json").is_file() or not ids_path.is_file():
        raise MissingInputError(f"No {modality} semantic IDs in {folder}: run `{make_command}` first")
    ids = align_rows(np.load(ids_path), read_lines(folder / "items.txt"), list(item_tokens), ids_path,
                     f"rerun `{make_command}`")
    return ids.astype(np.int64), np.load(folder / f"{modality}.codebooks.npy")
