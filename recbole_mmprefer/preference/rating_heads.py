"""ExplainRec's rating task (arXiv 2511.14770, multi-task tuning; design section 4): the heads behind L_rating.

L_rating is computed over the samples whose target rating is known, from the
(Yes, No) logits at the first answer token and the hidden state there.

* ``linear``: squared error of a linear map of the answer state, starting at
  zero, against the rating minus ``explainrec_rating_center`` (the like
  threshold by default). Raw stars against such a head gave a loss ~10x
  L_pred whose gradient moved the answer position's state along a direction
  unrelated to Yes/No; centred, the target is small and its sign is the label's.
* ``margin``: grades the quantity that is scored instead: the rating is
  a*(logit_Yes - logit_No) + b, a = 1 and b = 0 at first, so the rating task
  asks for a margin as large as the stars are far from the threshold, along
  the Yes/No direction itself.
* ``ordinal``: reads the margin m as an ordinal regression over the stars
  (``explainrec_rating_levels``): P(rating > level_k) = sigmoid(a*m - c_k),
  with the all-threshold loss (Rennie and Srebro, 2005: the mean binary
  cross-entropy over the cuts). The cut above ``explainrec_rating_center`` is
  pinned at c = 0 and a = 1 there, so it is exactly P(Yes): the rating task
  agrees with L_pred at the like threshold and only adds the order within the
  liked and the disliked stars (5 above 4, 3 above 1), where the squared error
  pulls every margin toward a set value.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from recbole_mmprefer.errors import InputError
from recbole_mmprefer.preference.settings import ExplainRecSettings


class OrdinalRatingHead(nn.Module):
    """P(rating > level_k) = sigmoid(a * margin - c_k) for the cuts between consecutive rating levels; the cut
    above ``center`` (the like threshold) is the answer itself (a = 1, c = 0), the others are learned, kept in
    order (c grows by a softplus step per level, 2 at first) and share one learned scale a."""

    def __init__(self, levels: Sequence[float], center: float):
        super().__init__()
        levels = sorted(float(level) for level in levels)
        below = [level for level in levels[:-1] if level <= center]
        if not below or center >= levels[-1]:
            raise InputError(f"explainrec_rating_levels {levels} must have a level at or below the rating centre "
                             f"{center} and one above it")
        self.register_buffer("lower_levels", torch.tensor(levels[:-1]), persistent=False)
        self.like_cut = len(below) - 1
        step = float(torch.log(torch.expm1(torch.tensor(2.0))))  # softplus(step) = 2
        self.steps_up = nn.Parameter(torch.full((len(levels) - 2 - self.like_cut,), step))
        self.steps_down = nn.Parameter(torch.full((self.like_cut,), step))
        self.log_scale = nn.Parameter(torch.zeros(()))

    def cut_logits(self, margin: Tensor) -> Tensor:
        """(n, cuts) logits of rating > level_k, from (n,) Yes/No margins."""
        up = torch.cumsum(nn.functional.softplus(self.steps_up), 0)
        down = -torch.cumsum(nn.functional.softplus(self.steps_down), 0).flip(0)
        cuts = torch.cat([down, up.new_zeros(1), up])
        scale = torch.exp(self.log_scale).expand(len(cuts)).clone()
        scale[self.like_cut] = 1.0
        return margin.unsqueeze(1) * scale - cuts

    def loss(self, margin: Tensor, ratings: Tensor) -> Tensor:
        """The all-threshold loss over samples with a known rating."""
        targets = (ratings.unsqueeze(1) > self.lower_levels).float()
        return nn.functional.binary_cross_entropy_with_logits(self.cut_logits(margin), targets)


def rating_head(explainrec: ExplainRecSettings, hidden: int) -> nn.Module:
    """The rating head: over the answer state (``linear``, starting at zero: it predicts the centred rating 0
    whatever the stars), over the Yes/No margin (``margin``, starting as the identity), or the ordinal cuts on
    that margin (``ordinal``)."""
    kind = explainrec.rating_head
    if kind == "ordinal":
        return OrdinalRatingHead(explainrec.rating_levels, float(explainrec.rating_center))
    head = nn.Linear(hidden if kind == "linear" else 1, 1)
    nn.init.zeros_(head.bias)
    if kind == "linear":
        nn.init.zeros_(head.weight)
    else:
        nn.init.ones_(head.weight)
    return head


def rating_loss(head: nn.Module, explainrec: ExplainRecSettings, logits: Tensor, answer_rows: Tensor,
                ratings: Tensor) -> Tensor:
    """L_rating of ``head`` over the samples whose rating is known (zero, with a graph, when none is);
    ``logits``: (n, 2) Yes/No logits, ``answer_rows``: (n, hidden) states at the first answer token."""
    known = ~torch.isnan(ratings)
    margin = logits[:, 0] - logits[:, 1]
    if not known.any():
        return margin.sum() * 0.0
    if explainrec.rating_head == "ordinal":
        return head.loss(margin[known], ratings[known])
    read = margin.unsqueeze(1) if explainrec.rating_head == "margin" else answer_rows.float()
    predicted = head(read).squeeze(-1)
    centred = ratings - float(explainrec.rating_center or 0.0)
    return ((predicted - centred) ** 2)[known].mean()
