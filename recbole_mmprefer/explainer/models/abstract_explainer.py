"""The interface every explanation baseline implements (issue 14), after RecBole's ``AbstractRecommender``.

A model reads a batch of :meth:`recbole_mmprefer.explainer.baseline_data.ExplanationPairs.batch`
(``users``, ``items``, ``ratings`` with NaN where unknown, ``tokens`` =
[bos, w1..wn, eos] right-padded, ``token_mask``) and implements:

- ``word_logits(batch, inputs)``: next-token logits (B, T, V) after each
  prefix of ``inputs`` (B, T), teacher forcing in training, the last row in
  decoding;
- ``calculate_loss(batch)``: a dict with ``loss`` (the weighted sum) and its
  named parts, for the training log;
- ``generate(batch, max_tokens, bos_id, eos_id)``: greedy decoding (B, <= max_tokens).

Models whose data set has no ratings (``rating_scale`` None) switch every
rating part off.
"""

from __future__ import annotations

from typing import ClassVar, Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from recbole_mmprefer.explainer.baseline_data import RatingScale
from recbole_mmprefer.explainer.baseline_settings import BaselineModelSettings


class AbstractExplainer(nn.Module):
    """Base of the explanation baselines; see the module docstring."""

    uses_llm: ClassVar[bool] = False  # PEPLER reads the LLM's tokens instead of a word vocabulary

    def __init__(self, settings: BaselineModelSettings, n_users: int, n_items: int, vocab_size: int,
                 rating_scale: Optional[RatingScale]) -> None:
        super().__init__()
        self.settings = settings
        self.vocab_size = vocab_size
        self.rating_scale = rating_scale

    @property
    def has_ratings(self) -> bool:
        return self.rating_scale is not None

    def word_logits(self, batch: Dict[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def calculate_loss(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        raise NotImplementedError

    def text_loss(self, logits: torch.Tensor, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean NLL of the words after ``<bos>`` (``logits`` predicts ``tokens[:, 1:]``), padding left out."""
        targets = batch["tokens"][:, 1:].masked_fill(~batch["token_mask"][:, 1:], -100)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)

    def rating_loss(self, predicted: torch.Tensor, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        """MSE on the pairs with a known rating (0 when none has one)."""
        known = ~torch.isnan(batch["ratings"])
        if not self.has_ratings or not known.any():
            return predicted.sum() * 0.0
        return F.mse_loss(predicted[known], batch["ratings"][known])

    def clamp_rating(self, predicted: torch.Tensor) -> torch.Tensor:
        if not self.has_ratings:
            return predicted
        return predicted.clamp(self.rating_scale.low, self.rating_scale.high)

    def weighted(self, **parts: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``loss`` = sum of each part times its ``baseline_<part>_weight``, with the parts themselves."""
        weights = {"text": self.settings.text_weight, "rating": self.settings.rating_weight,
                   "context": self.settings.context_weight, "coherence": self.settings.coherence_weight}
        total = sum(weights[name] * value for name, value in parts.items())
        return {"loss": total, **{name: value.detach() for name, value in parts.items()}}

    def context_loss(self, log_probabilities: torch.Tensor, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Bag-of-words NLL: every word of the explanation (no specials) predicted from one distribution (B, V)."""
        words = batch["tokens"][:, 1:]
        keep = batch["token_mask"][:, 1:] & (words > 3)
        picked = log_probabilities.gather(1, words) * keep
        return -picked.sum() / keep.sum().clamp(min=1)

    @torch.no_grad()
    def generate(self, batch: Dict[str, torch.Tensor], max_tokens: int, bos_id: int, eos_id: int) -> torch.Tensor:
        """Greedy decoding from ``<bos>``; rows that reached ``<eos>`` keep emitting it."""
        size = batch["users"].size(0)
        tokens = torch.full((size, 1), bos_id, dtype=torch.long, device=batch["users"].device)
        done = torch.zeros(size, dtype=torch.bool, device=tokens.device)
        for _ in range(max_tokens):
            following = self.word_logits(batch, tokens)[:, -1].argmax(-1).masked_fill(done, eos_id)
            tokens = torch.cat([tokens, following[:, None]], dim=1)
            done |= following == eos_id
            if done.all():
                break
        return tokens[:, 1:]
