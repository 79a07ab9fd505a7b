"""Att2Seq (Dong et al., EACL 2017, "Learning to Generate Product Reviews from Attributes"), issue 14.

The attribute encoder embeds the pair's attributes (user and item, as in the
explanation-generation benchmarks that compare against it) and sets the first
hidden state of every layer of a ``baseline_layers``-layer LSTM to
tanh(W_l [a_user; a_item]). At each step the top hidden state attends over
the attribute vectors (bilinear scores, softmax), and the word is predicted
from tanh(W [h; context]). Loss: the explanation's NLL.
"""

from __future__ import annotations

from typing import Dict

import torch
from torch import nn

from recbole_mmprefer.explainer.models.abstract_explainer import AbstractExplainer


class Att2Seq(AbstractExplainer):
    def __init__(self, settings, n_users: int, n_items: int, vocab_size: int, rating_scale) -> None:
        super().__init__(settings, n_users, n_items, vocab_size, rating_scale)
        size, hidden, layers = settings.embedding_size, settings.hidden_size, settings.layers
        self.user_embedding = nn.Embedding(n_users, size)
        self.item_embedding = nn.Embedding(n_items, size)
        self.word_embedding = nn.Embedding(vocab_size, size)
        self.encoder = nn.Linear(2 * size, hidden * layers)
        self.decoder = nn.LSTM(size, hidden, num_layers=layers, batch_first=True,
                               dropout=settings.dropout if layers > 1 else 0.0)
        self.attention = nn.Linear(size, hidden, bias=False)
        self.combine = nn.Linear(hidden + size, hidden)
        self.dropout = nn.Dropout(settings.dropout)
        self.output = nn.Linear(hidden, vocab_size)

    def attributes(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, 2, size): the user's and the item's attribute vectors."""
        return torch.stack([self.user_embedding(batch["users"]), self.item_embedding(batch["items"])], dim=1)

    def word_logits(self, batch: Dict[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        attributes = self.attributes(batch)
        layers, hidden_size = self.settings.layers, self.settings.hidden_size
        state = torch.tanh(self.encoder(attributes.flatten(1))).view(-1, layers, hidden_size).transpose(0, 1)
        hidden, _ = self.decoder(self.dropout(self.word_embedding(inputs)),
                                 (state.contiguous(), torch.zeros_like(state)))
        scores = torch.einsum("bth,bah->bta", hidden, self.attention(attributes))
        context = torch.einsum("bta,bas->bts", scores.softmax(dim=-1), attributes)
        return self.output(self.dropout(torch.tanh(self.combine(torch.cat([hidden, context], dim=-1)))))

    def calculate_loss(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        return self.weighted(text=self.text_loss(self.word_logits(batch, batch["tokens"][:, :-1]), batch))
