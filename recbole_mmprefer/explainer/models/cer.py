"""CER (Raczyński et al., 2023, "The Problem of Coherence in Natural Language Explanations of
Recommendations"), issue 14.

PETER (:mod:`recbole_mmprefer.explainer.models.peter`) with a rating-explanation
coherence objective: a second rating MLP, of the rating head's shape, reads the
explanation (the max over time of the hidden states from <bos> on, padding
left out), and that rating must agree with the one PETER predicts from the
user position: ``coherence_weight`` * MSE(r_explanation, r_pair), added to
PETER's loss, with gradients into both (as in the authors' code, where the
term shares PETER's rating weight 0.1). The hidden states are those of the
reference explanation under teacher forcing. Without ratings in the data set
the coherence part has nothing to tie and is off, and CER trains as PETER.
"""

from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn

from recbole_mmprefer.explainer.models.peter import PETER, SOURCE_LENGTH


class CER(PETER):
    def __init__(self, settings, n_users: int, n_items: int, vocab_size: int, rating_scale) -> None:
        super().__init__(settings, n_users, n_items, vocab_size, rating_scale)
        size = settings.embedding_size
        self.explanation_rating_head = nn.Sequential(nn.Linear(size, size), nn.Sigmoid(), nn.Linear(size, 1))

    def explanation_rating(self, hidden: torch.Tensor, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        """The second rating MLP on the max over the explanation's hidden states (<bos> on, padding left out)."""
        text = hidden[:, SOURCE_LENGTH:]
        padding = ~batch["token_mask"][:, :-1, None]
        return self.explanation_rating_head(text.masked_fill(padding, float("-inf")).amax(dim=1)).squeeze(-1)

    def calculate_loss(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        hidden, parts = self.loss_parts(batch)
        if self.has_ratings:
            parts["coherence"] = F.mse_loss(self.explanation_rating(hidden, batch), self.predict_rating(hidden))
        return self.weighted(**parts)
