"""Multimodal attention fusion (ExplainRec, design section 4): an item's modality features as soft prompt tokens.

For each modality m of the feature store (``mmprefer features``: text, image
where there are images) the item's feature f_m is projected, h_m = tanh(W_m
f_m + b_m); a learned query q scores each modality, and the weights
softmax_m(q . h_m) over the modalities the item *has* (an absent one, e.g. an
item without an image, is masked out) mix them into one vector, which a linear
map turns into ``explainrec_soft_tokens`` tokens of the LLM's embedding width.
The weights are returned with the tokens so that training can log them.

With ``start="neutral"`` (``explainrec_soft_prompt_start``) the tokens are a
learned neutral token (set by :meth:`ModalityFusion.start_at`, e.g. to the
LLM's mean input embedding) plus that map, whose weights start at zero: every
item's tokens start equal and carry no noise, and the map's gradient is not
zero, so the features enter as tuning finds them useful.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from recbole_mmprefer.artifacts import ARTIFACTS
from recbole_mmprefer.errors import InputError, MissingInputError
from recbole_mmprefer.utils import read_lines


class ModalityFeatures:
    """Feature rows by item token for each modality; an item a modality lacks is marked absent."""

    def __init__(self, matrices: Dict[str, np.ndarray], tokens: Dict[str, Sequence[str]]):
        if not matrices:
            raise InputError("multimodal fusion needs at least one modality's features")
        self.modalities = list(matrices)
        self.matrices = {m: np.asarray(matrix, dtype=np.float32) for m, matrix in matrices.items()}
        self.rows = {m: {str(token): row for row, token in enumerate(tokens[m])} for m in self.modalities}

    @classmethod
    def from_config(cls, config) -> "ModalityFeatures":
        """The run's feature store (``modalities``), through the ``features`` artifact."""
        matrices, tokens = {}, {}
        for modality in config["modalities"]:
            folder = Path(ARTIFACTS["features"].dir(config, modality=modality))
            if not (folder / "features.npy").is_file():
                raise MissingInputError(f"No {modality} features in {folder}: run `mmprefer features --dataset "
                                        f"{config['dataset']}` first (explainrec_multimodal needs them)")
            matrices[modality] = np.load(folder / "features.npy")
            tokens[modality] = read_lines(folder / "items.txt")
        return cls(matrices, tokens)

    @property
    def dims(self) -> Dict[str, int]:
        return {m: int(matrix.shape[1]) for m, matrix in self.matrices.items()}

    def batch(self, items: Sequence[str]) -> Tuple[Dict[str, Tensor], Tensor]:
        """({modality: [batch, dim] features}, [batch, modalities] present mask) of these items."""
        features, present = {}, []
        for modality in self.modalities:
            rows = [self.rows[modality].get(str(item)) for item in items]
            matrix = np.zeros((len(items), self.matrices[modality].shape[1]), dtype=np.float32)
            for n, row in enumerate(rows):
                if row is not None:
                    matrix[n] = self.matrices[modality][row]
            features[modality] = torch.from_numpy(matrix)
            present.append([row is not None for row in rows])
        return features, torch.tensor(present, dtype=torch.bool).T


class ModalityFusion(nn.Module):
    """Attention over an item's modalities, into soft prompt tokens (see the module docstring)."""

    def __init__(self, dims: Dict[str, int], hidden: int, soft_tokens: int, llm_hidden: int,
                 start: str = "random"):
        super().__init__()
        self.modalities = list(dims)
        self.projections = nn.ModuleDict({m: nn.Linear(dim, hidden) for m, dim in dims.items()})
        self.query = nn.Parameter(torch.randn(hidden) / hidden ** 0.5)
        self.soft_tokens, self.llm_hidden = int(soft_tokens), int(llm_hidden)
        self.to_tokens = nn.Linear(hidden, self.soft_tokens * self.llm_hidden)
        self.neutral = None
        if start == "neutral":
            nn.init.zeros_(self.to_tokens.weight)
            nn.init.zeros_(self.to_tokens.bias)
            self.neutral = nn.Parameter(torch.zeros(self.soft_tokens, self.llm_hidden))

    def start_at(self, token_embedding: Tensor) -> None:
        """Set the neutral token (``start="neutral"``; nothing otherwise)."""
        if self.neutral is not None:
            with torch.no_grad():
                self.neutral.copy_(token_embedding.detach().to(self.neutral.dtype).expand_as(self.neutral))

    def forward(self, features: Dict[str, Tensor], present: Tensor) -> Tuple[Tensor, Tensor]:
        """([batch, soft_tokens, llm_hidden] tokens, [batch, modalities] weights; 0 where absent)."""
        device = self.query.device
        hidden = torch.stack([torch.tanh(self.projections[m](features[m].to(device))) for m in self.modalities],
                             dim=1)
        present = present.to(device)
        none = ~present.any(dim=-1, keepdim=True)  # an item without any feature: zero weights, no NaN
        scores = (hidden @ self.query).masked_fill(~present, float("-inf")).masked_fill(none, 0.0)
        weights = torch.softmax(scores, dim=-1) * (~none)
        fused = (weights.unsqueeze(-1) * hidden).sum(dim=1)
        tokens = self.to_tokens(fused).view(-1, self.soft_tokens, self.llm_hidden)
        return (tokens if self.neutral is None else tokens + self.neutral), weights
