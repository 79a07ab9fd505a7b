"""Conventional sequential recommenders on preference samples (TALLRec's Table 1 protocol; design section 4).

A RecBole sequential model (SASRec, GRU4Rec, ...) built on the data set reads a
sample's history (item ids, oldest first) and scores its target as the dot
product of its sequence representation with the target's item embedding; it is
trained with binary cross-entropy against the Yes/No label on the same
few-shot samples as the LLMs, for ``epochs`` epochs of Adam, and its scores on
the test windows give the AUC. Items the data set does not know are padding.
"""

from __future__ import annotations

import logging
from typing import List, Sequence

import numpy as np
import torch
from torch import nn

from recbole_mmprefer.errors import InputError

logger = logging.getLogger(__name__)


class SampleScorer(nn.Module):
    """A RecBole sequential model read out as a score of (history, target)."""

    def __init__(self, model, item_ids: dict, max_length: int):
        super().__init__()
        self.model, self.item_ids, self.max_length = model, item_ids, int(max_length)

    def tensors(self, samples: Sequence[dict]):
        histories = [[self.item_ids.get(str(h["item_id"]), 0) for h in s["history"]][-self.max_length:]
                     for s in samples]
        lengths = [max(len(history), 1) for history in histories]
        padded = [history + [0] * (self.max_length - len(history)) for history in histories]
        targets = [self.item_ids.get(str(s["item_id"]), 0) for s in samples]
        return torch.tensor(padded), torch.tensor(lengths), torch.tensor(targets)

    def forward(self, samples: Sequence[dict]) -> torch.Tensor:
        sequences, lengths, targets = self.tensors(samples)
        represented = self.model.forward(sequences, lengths)
        return (represented * self.model.item_embedding(targets)).sum(-1)


def build_scorer(model_name: str, config, dataset) -> SampleScorer:
    """A fresh RecBole ``model_name`` on ``dataset`` (its item-id mapping), under the config's seed."""
    from recbole.utils import init_seed

    from recbole_mmprefer.registry import get_model

    init_seed(config["seed"], config["reproducibility"])
    model = get_model(model_name)(config, dataset)
    tokens = dataset.field2id_token[dataset.iid_field]
    return SampleScorer(model, {str(token): n for n, token in enumerate(tokens) if n > 0},
                        int(config["MAX_ITEM_LIST_LENGTH"]))


def train_scorer(scorer: SampleScorer, samples: Sequence[dict], epochs: int, learning_rate: float,
                 batch_size: int, seed: int) -> List[float]:
    """BCE on the labels; returns the mean loss per epoch."""
    if not samples:
        raise InputError("no training samples for the conventional baseline")
    optimizer = torch.optim.Adam(scorer.parameters(), lr=learning_rate)
    rng = np.random.default_rng(seed)
    labels = torch.tensor([float(s["label"]) for s in samples])
    losses = []
    scorer.train()
    for _ in range(epochs):
        order = rng.permutation(len(samples))
        epoch = []
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            loss = nn.functional.binary_cross_entropy_with_logits(scorer([samples[n] for n in chunk]), labels[chunk])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            epoch.append(float(loss.detach()))
        losses.append(float(np.mean(epoch)))
    scorer.eval()
    return losses


@torch.no_grad()
def score_with(scorer: SampleScorer, samples: Sequence[dict], batch_size: int = 256) -> List[float]:
    """Sigmoid scores of the samples, in order."""
    scores: List[float] = []
    for start in range(0, len(samples), batch_size):
        scores += torch.sigmoid(scorer(samples[start:start + batch_size])).tolist()
    return scores
