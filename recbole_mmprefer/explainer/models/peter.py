"""PETER (Li et al., ACL 2021, "Personalized Transformer for Explainable Recommendation"), issue 14.

One Transformer encoder reads [user, item, <bos>, w1 .. wn] (learned id and
word embeddings scaled by sqrt(size), sinusoidal positions) under the **PETER
mask** (:func:`peter_mask`): left-to-right attention, except that the user
position also sees the item position, so the two ids are encoded together
while no id sees a word. Three heads read the output:

- rating: an MLP on the user position (when the data set has ratings);
- context prediction: the item position's hidden state through the word head
  predicts every word of the explanation, order ignored (a bag of words);
- explanation: the hidden state at <bos>, w1 .. predicts the next word.

Loss ``rating_weight`` * MSE + ``context_weight`` * context NLL +
``text_weight`` * NLL; greedy decoding from <bos>.
"""

from __future__ import annotations

import math
from typing import Dict

import torch
from torch import nn

from recbole_mmprefer.explainer.models.abstract_explainer import AbstractExplainer

SOURCE_LENGTH = 2  # the user and item positions before the words


def peter_mask(total_length: int) -> torch.Tensor:
    """(T, T) bool, True where attention is blocked: causal, with the user (row 0) also seeing the item (column 1)."""
    blocked = torch.triu(torch.ones(total_length, total_length, dtype=torch.bool), diagonal=1)
    if total_length > 1:
        blocked[0, 1] = False
    return blocked


def sinusoidal_positions(length: int, size: int) -> torch.Tensor:
    position = torch.arange(length, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, size, 2, dtype=torch.float32) * (-math.log(10000.0) / size))
    table = torch.zeros(length, size)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)[:, :size // 2]
    return table


class PETER(AbstractExplainer):
    def __init__(self, settings, n_users: int, n_items: int, vocab_size: int, rating_scale) -> None:
        super().__init__(settings, n_users, n_items, vocab_size, rating_scale)
        size = settings.embedding_size
        self.user_embedding = nn.Embedding(n_users, size)
        self.item_embedding = nn.Embedding(n_items, size)
        self.word_embedding = nn.Embedding(vocab_size, size)
        layer = nn.TransformerEncoderLayer(size, settings.heads, settings.hidden_size, settings.dropout,
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, settings.layers, enable_nested_tensor=False)
        self.register_buffer("positions", sinusoidal_positions(SOURCE_LENGTH + settings.max_words + 2, size),
                             persistent=False)
        self.dropout = nn.Dropout(settings.dropout)
        self.word_head = nn.Linear(size, vocab_size)
        self.rating_head = nn.Sequential(nn.Linear(size, size), nn.Sigmoid(), nn.Linear(size, 1))
        for embedding in (self.user_embedding, self.item_embedding, self.word_embedding):
            nn.init.uniform_(embedding.weight, -0.1, 0.1)

    def encode(self, batch: Dict[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        """Hidden states (B, 2 + T, size) of [user, item, inputs]."""
        ids = torch.stack([self.user_embedding(batch["users"]), self.item_embedding(batch["items"])], dim=1)
        source = torch.cat([ids, self.word_embedding(inputs)], dim=1) * math.sqrt(self.settings.embedding_size)
        length = source.size(1)
        source = self.dropout(source + self.positions[:length])
        padding = torch.zeros(source.shape[:2], dtype=torch.bool, device=source.device)
        if inputs.size(1) == batch["tokens"].size(1) - 1:  # teacher forcing: pad positions are known
            padding[:, SOURCE_LENGTH:] = ~batch["token_mask"][:, :-1]
        return self.encoder(source, mask=peter_mask(length).to(source.device), src_key_padding_mask=padding)

    def word_logits(self, batch: Dict[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        return self.word_head(self.encode(batch, inputs)[:, SOURCE_LENGTH:])

    def predict_rating(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.rating_head(hidden[:, 0]).squeeze(-1)

    def loss_parts(self, batch: Dict[str, torch.Tensor]):
        """(hidden states, the PETER parts of the loss) of a teacher-forced batch."""
        hidden = self.encode(batch, batch["tokens"][:, :-1])
        parts = {"text": self.text_loss(self.word_head(hidden[:, SOURCE_LENGTH:]), batch),
                 "context": self.context_loss(torch.log_softmax(self.word_head(hidden[:, 1]), dim=-1), batch)}
        if self.has_ratings:
            parts["rating"] = self.rating_loss(self.predict_rating(hidden), batch)
        return hidden, parts

    def calculate_loss(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        return self.weighted(**self.loss_parts(batch)[1])
