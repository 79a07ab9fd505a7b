"""MMPSASRec (paper section 3.2, eq. 5-6): SASRec over multimodal quantized items.

An item is represented, for each modality m, by concat[MLP(e_m), sum_l c_{m,l}]:
an MLP of its raw feature (from ``mmprefer features``) and the sum of the
codebook vectors its semantic ID picks (from ``mmprefer quantize``). The
codebooks start from the RQ-VAE's and keep learning. Each part is
layer-normalised, and the concatenation over modalities is projected to
``hidden_size`` and fed to SASRec's transformer.
Training is InfoNCE over all items (eq. 6): a softmax cross-entropy over
temperature-scaled similarities. ``use_semantic_ids: False`` is the paper's
"w/o Multi-SID" ablation (raw features only). ``item_id_embedding_size > 0``
adds a learned per-item ID embedding as one more part (not in the paper): it
tells apart items whose features coincide, e.g. items without any text.
"""

from __future__ import annotations

import logging
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from recbole_mmprefer.artifacts import ARTIFACTS
from recbole_mmprefer.data.features import load_features
from recbole_mmprefer.errors import InputError
from recbole_mmprefer.model.quantizer import load_semantic_ids
from recbole_mmprefer.registry import recbole_sequential_models

logger = logging.getLogger(__name__)


def warn_if_constant(features: Dict[str, torch.Tensor], id_embedding_size: int) -> None:
    """A loud warning when a modality gives (nearly) every item the same feature vector and no item-ID part tells
    them apart: the model would then learn from popularity alone."""
    for modality, matrix in features.items():
        rows = matrix[1:]  # row 0 is [PAD]
        share = 1.0 - len(torch.unique(rows, dim=0)) / max(len(rows), 1)
        if share > 0.5 and id_embedding_size == 0:
            logger.warning("%.0f%% of the items share one %s feature vector with another item (items without "
                           "text?): MMPSASRec can hardly tell them apart; set item_id_embedding_size > 0 or give "
                           "the items text", 100 * share, modality)


class MultimodalItemEmbedding(nn.Module):
    """Drop-in for ``nn.Embedding``: ``forward(ids)`` and ``weight`` give item representations."""

    def __init__(self, features: Dict[str, torch.Tensor], semantic_ids: Optional[Dict[str, torch.Tensor]],
                 codebooks: Optional[Dict[str, torch.Tensor]], mlp_hidden: int, out_size: int,
                 hidden_size: int, dropout: float, id_embedding_size: int = 0):
        super().__init__()
        self.modalities = list(features)
        self.use_semantic_ids = semantic_ids is not None
        self.mlps = nn.ModuleDict({
            m: nn.Sequential(nn.Linear(f.shape[1], mlp_hidden), nn.GELU(), nn.Dropout(dropout),
                             nn.Linear(mlp_hidden, out_size))
            for m, f in features.items()
        })
        for m, matrix in features.items():
            self.register_buffer(f"features_{m}", matrix.float())
        if self.use_semantic_ids:
            for m in self.modalities:
                self.register_buffer(f"semantic_ids_{m}", semantic_ids[m].long())
            self.codebooks = nn.ParameterDict({m: nn.Parameter(codebooks[m].float().clone()) for m in self.modalities})
        part_sizes = []
        for m in self.modalities:
            part_sizes.append(out_size)
            if self.use_semantic_ids:
                part_sizes.append(codebooks[m].shape[-1])
        n_items = len(next(iter(features.values())))
        self.id_embedding = nn.Embedding(n_items, id_embedding_size) if id_embedding_size > 0 else None
        if self.id_embedding is not None:
            part_sizes.append(id_embedding_size)
        # Raw-feature MLP outputs start near zero while RQ-VAE codes have norm ~1-3:
        # normalising each part keeps both halves in play from the first step.
        self.part_norms = nn.ModuleList(nn.LayerNorm(size) for size in part_sizes)
        self.projection = nn.Linear(sum(part_sizes), hidden_size)
        not_padding = torch.ones(n_items, 1)
        not_padding[0] = 0.0
        self.register_buffer("not_padding", not_padding)

    def code_sum(self, modality: str) -> torch.Tensor:
        """Sum over levels of each item's codebook vectors: [n_items, code_dim]."""
        ids = getattr(self, f"semantic_ids_{modality}")
        levels = torch.arange(ids.shape[1], device=ids.device)
        return self.codebooks[modality][levels, ids].sum(dim=1)

    @property
    def weight(self) -> torch.Tensor:
        parts = []
        for m in self.modalities:
            parts.append(self.mlps[m](getattr(self, f"features_{m}")))
            if self.use_semantic_ids:
                parts.append(self.code_sum(m))
        if self.id_embedding is not None:
            parts.append(self.id_embedding.weight)
        parts = [norm(part) for norm, part in zip(self.part_norms, parts)]
        return self.projection(torch.cat(parts, dim=-1)) * self.not_padding

    def forward(self, item_ids: torch.Tensor) -> torch.Tensor:
        return self.weight[item_ids]


FUSED_ACTIVATIONS = {"gelu": F.gelu, "swish": F.silu}


def use_fused_activations(encoder: nn.Module, hidden_act: str) -> None:
    """Swap RecBole's element-by-element GELU / swish in the transformer's feed-forward layers for torch's fused
    kernels: the same function (equal to float rounding), about half the time of a training step on CPU."""
    fused = FUSED_ACTIVATIONS.get(hidden_act)
    if fused is None:
        return
    for module in encoder.modules():
        if hasattr(module, "intermediate_act_fn"):
            module.intermediate_act_fn = fused


SASRec = recbole_sequential_models().SASRec


class MMPSASRec(SASRec):
    """SASRec whose item embedding is MMP-Refer's multimodal quantized representation."""

    # run_recbole builds missing features and semantic IDs before creating the model.
    needs_item_features = True

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        use_fused_activations(self.trm_encoder, config["hidden_act"])
        if self.loss_type != "CE":
            raise InputError("MMPSASRec trains with InfoNCE over all items: loss_type must be 'CE'")
        if config["similarity"] not in ("cos", "dot"):
            raise InputError(f"similarity must be 'cos' or 'dot', got {config['similarity']!r}")
        self.similarity = config["similarity"]
        self.temperature = config["temperature"]
        self.item_embedding = self._build_item_embedding(config, list(dataset.field2id_token[self.ITEM_ID]))
        self.item_embedding.mlps.apply(self._init_weights)
        self.item_embedding.projection.apply(self._init_weights)
        if self.item_embedding.id_embedding is not None:
            self.item_embedding.id_embedding.apply(self._init_weights)

    def _build_item_embedding(self, config, item_tokens) -> MultimodalItemEmbedding:
        command = f"mmprefer features --dataset {config['dataset']}"
        folders = {m: ARTIFACTS["features"].dir(config, modality=m) for m in config["modalities"]}
        features = {m: torch.as_tensor(load_features(folders[m], item_tokens, command))
                    for m in config["modalities"]}
        warn_if_constant(features, int(config["item_id_embedding_size"] or 0))
        semantic_ids = codebooks = None
        if config["use_semantic_ids"]:
            command = f"mmprefer quantize --dataset {config['dataset']}"
            folder = ARTIFACTS["quantizer"].dir(config)
            loaded = {m: load_semantic_ids(folder, m, item_tokens, command) for m in features}
            semantic_ids = {m: torch.as_tensor(ids) for m, (ids, _) in loaded.items()}
            codebooks = {m: torch.as_tensor(books) for m, (_, books) in loaded.items()}
        return MultimodalItemEmbedding(features, semantic_ids, codebooks, config["feature_mlp_hidden"],
                                       config["feature_out_size"], self.hidden_size, config["feature_dropout_prob"],
                                       int(config["item_id_embedding_size"] or 0))

    def _normalise(self, vectors: torch.Tensor) -> torch.Tensor:
        return F.normalize(vectors, dim=-1) if self.similarity == "cos" else vectors

    def scores(self, seq_output: torch.Tensor, item_vectors: torch.Tensor) -> torch.Tensor:
        """Temperature-scaled similarity of each sequence [B, H] with each item [N, H]: [B, N]."""
        return self._normalise(seq_output) @ self._normalise(item_vectors).T / self.temperature

    def calculate_loss(self, interaction):
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        logits = self.scores(seq_output, self.item_embedding.weight)
        return self.loss_fct(logits, interaction[self.POS_ITEM_ID])

    def predict(self, interaction):
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        item_vectors = self.item_embedding(interaction[self.ITEM_ID])
        return (self._normalise(seq_output) * self._normalise(item_vectors)).sum(-1) / self.temperature

    def full_sort_predict(self, interaction):
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return self.scores(seq_output, self.item_embedding.weight)
