"""NRT (Li et al., SIGIR 2017, "Neural Rating Regression with Abstractive Tips Generation"), issue 14.

User and item latent factors feed rating regression (an MLP of
``baseline_layers`` sigmoid layers over [u; i]) and the tip: a GRU whose first
hidden state is tanh(W [u; i; onehot(r)]), r the predicted rating clamped to
the data set's range and cut to its whole star (a class, not differentiable;
all zeros without ratings), generates the explanation word by word. The
paper's third task, the review's bag of words from [u; i], is here too but
off by default (``baseline_context_weight: 0`` in NRT.yaml), as in the
authors' public code. Loss ``rating_weight`` * MSE + ``context_weight`` *
bag-of-words NLL + ``text_weight`` * tip NLL.
"""

from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn

from recbole_mmprefer.explainer.models.abstract_explainer import AbstractExplainer


class NRT(AbstractExplainer):
    def __init__(self, settings, n_users: int, n_items: int, vocab_size: int, rating_scale) -> None:
        super().__init__(settings, n_users, n_items, vocab_size, rating_scale)
        size, hidden = settings.embedding_size, settings.hidden_size
        self.user_embedding = nn.Embedding(n_users, size)
        self.item_embedding = nn.Embedding(n_items, size)
        self.word_embedding = nn.Embedding(vocab_size, size)
        layers, width = [], 2 * size
        for _ in range(settings.layers):
            layers += [nn.Linear(width, hidden), nn.Sigmoid()]
            width = hidden
        self.rating_mlp = nn.Sequential(*layers, nn.Linear(width, 1))
        self.context_head = nn.Linear(2 * size, vocab_size)
        self.rating_classes = int(rating_scale.high - rating_scale.low) + 1 if rating_scale else 1
        self.initial_state = nn.Linear(2 * size + self.rating_classes, hidden)
        self.decoder = nn.GRU(size, hidden, batch_first=True)
        self.dropout = nn.Dropout(settings.dropout)
        self.output = nn.Linear(hidden, vocab_size)

    def factors(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([self.user_embedding(batch["users"]), self.item_embedding(batch["items"])], dim=-1)

    def predict_rating(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        return self.rating_mlp(self.factors(batch)).squeeze(-1)

    def rating_class(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        """One-hot of the predicted rating's whole star (B, classes); zeros without ratings."""
        size = batch["users"].size(0)
        if not self.has_ratings:
            return torch.zeros(size, self.rating_classes, device=batch["users"].device)
        stars = (self.clamp_rating(self.predict_rating(batch).detach()) - self.rating_scale.low).long()
        return F.one_hot(stars.clamp(0, self.rating_classes - 1), self.rating_classes).float()

    def word_logits(self, batch: Dict[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        factors = self.factors(batch)
        state = torch.tanh(self.initial_state(torch.cat([factors, self.rating_class(batch)], dim=-1)))
        hidden, _ = self.decoder(self.dropout(self.word_embedding(inputs)), state[None].contiguous())
        return self.output(self.dropout(hidden))

    def calculate_loss(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        logits = self.word_logits(batch, batch["tokens"][:, :-1])
        parts = {"text": self.text_loss(logits, batch)}
        if self.settings.context_weight > 0:
            context = torch.log_softmax(self.context_head(self.factors(batch)), dim=-1)
            parts["context"] = self.context_loss(context, batch)
        if self.has_ratings:
            parts["rating"] = self.rating_loss(self.predict_rating(batch), batch)
        return self.weighted(**parts)
