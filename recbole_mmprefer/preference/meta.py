"""Meta-learned adaptation to a new user (ExplainRec, design section 4; issue 16): Reptile on the adapter weights.

A new user arrives with a *support set*: a few rated items (``coldstart_support``,
cut to that size where more are handed in, and counted). Their **support
samples** are leave-one-out: each support item is a target, the other support
items its history. **Adaptation** takes ``coldstart_adaptation_steps`` plain
gradient steps (SGD at ``coldstart_adaptation_lr``) of the model's own
training loss on those samples, on the trainable weights only (LoRA and, for
ExplainRec, its fusion and heads; the LLM is frozen), scores the user's test
samples, and restores the weights: no user's adaptation reaches another's
scores. ``coldstart_adaptation_steps: 0`` is the ablation (no adaptation).

**Meta-training** (Reptile, Nichol et al., 2018) makes the starting weights
easy to adapt: for ``coldstart_meta_steps`` outer steps (after the usual
tuning, on the same few-shot train samples), a sample is drawn and its user
seen as a newcomer: the oldest ``coldstart_support`` items of its history are
the support set and the sample itself, shown only those, the query. The
weights are adapted on the support samples as above, the query loss takes one
more step, and the starting weights move ``coldstart_meta_lr`` of the way
toward the adapted ones.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Dict, Iterator, List, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm

from recbole_mmprefer.data.cold_start import support_set
from recbole_mmprefer.settings import StageSettings, check_float, check_int

logger = logging.getLogger(__name__)


@dataclass
class AdaptationSettings(StageSettings):
    """The ``coldstart_adaptation_*`` and ``coldstart_meta_*`` keys, checked."""

    PREFIX = "coldstart_"

    support: int
    adaptation_steps: int
    adaptation_lr: float
    meta_steps: int
    meta_lr: float

    def __post_init__(self):
        self.support = check_int("coldstart_support", self.support, 1)
        self.adaptation_steps = check_int("coldstart_adaptation_steps", self.adaptation_steps, 0)
        self.adaptation_lr = check_float("coldstart_adaptation_lr", self.adaptation_lr, 0.0)
        self.meta_steps = check_int("coldstart_meta_steps", self.meta_steps, 0)
        self.meta_lr = check_float("coldstart_meta_lr", self.meta_lr, 0.0)


def support_samples(sample: dict, size: int) -> Tuple[List[dict], int]:
    """(leave-one-out samples of the sample's support set, how many support items were cut off)."""
    support, cut = support_set(sample["history"], size)
    samples = []
    for position, entry in enumerate(support):
        samples.append({"index": f"{sample.get('index')}-support-{position}", "user_id": sample.get("user_id"),
                        "item_id": entry["item_id"], "title": entry.get("title", ""),
                        "groups": entry.get("groups") or [], "label": int(entry["liked"]),
                        "rating": entry.get("rating"), "review": entry.get("reason", ""),
                        "history": [other for n, other in enumerate(support) if n != position],
                        **({"knowledge": sample["knowledge"]} if sample.get("knowledge") else {})})
    return samples, cut


def trainable(model) -> List[torch.nn.Parameter]:
    return [parameter for parameter in model.parameters() if parameter.requires_grad]


@contextlib.contextmanager
def restored(model) -> Iterator[None]:
    """Whatever happens to the trainable weights inside is undone on the way out."""
    saved = model.trainable_state_dict()
    try:
        yield
    finally:
        model.load_trainable_state_dict(saved)


def gradient_steps(model, samples: Sequence[dict], steps: int, lr: float, bf16: bool = False) -> None:
    """``steps`` SGD steps of the model's training loss on all of ``samples`` at once."""
    if steps <= 0 or not samples:
        return
    examples = [example for sample in samples for example in model.examples(sample, with_answers=True)]
    optimizer = torch.optim.SGD(trainable(model), lr=lr)
    model.train()
    for _ in range(steps):
        batch = model.collate(examples)
        with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=bf16):
            loss, _ = model.training_loss(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def adapted_scores(model, samples: Sequence[dict], settings: AdaptationSettings, score_batch,
                   bf16: bool = False) -> Tuple[List[float], Dict[str, int]]:
    """Scores of ``samples`` (``score_batch(model, samples) -> scores``), each user's after adapting to that user's
    support set and restoring the weights; and counts (users adapted, support items cut off)."""
    by_user: Dict[str, List[int]] = {}
    for position, sample in enumerate(samples):
        by_user.setdefault(str(sample.get("user_id")), []).append(position)
    scores: List[float] = [0.0] * len(samples)
    counts = {"users": len(by_user), "support_cut": 0}
    for user, positions in tqdm(by_user.items(), desc="adapting to new users", unit="user"):
        support, cut = support_samples(samples[positions[0]], settings.support)
        counts["support_cut"] += cut
        with restored(model):
            gradient_steps(model, support, settings.adaptation_steps, settings.adaptation_lr, bf16)
            for position, score in zip(positions, score_batch(model, [samples[n] for n in positions])):
                scores[position] = float(score)
    return scores, counts


def reptile(model, train: Sequence[dict], settings: AdaptationSettings, seed: int, bf16: bool = False) -> List[dict]:
    """Reptile's outer loop over the train samples (see the module docstring); one log line per step."""
    if not train or settings.meta_steps == 0:
        return []
    rng, log = np.random.default_rng(seed), []
    for step in tqdm(range(settings.meta_steps), desc="meta-training (Reptile)", unit="step"):
        sample = train[int(rng.integers(len(train)))]
        shown, _ = support_set(sample["history"], settings.support)  # the user as a newcomer would be seen
        support, _ = support_samples({**sample, "history": shown}, settings.support)
        start = model.trainable_state_dict()
        gradient_steps(model, support, settings.adaptation_steps, settings.adaptation_lr, bf16)
        gradient_steps(model, [{**sample, "history": shown}], 1, settings.adaptation_lr, bf16)
        adapted = model.trainable_state_dict()
        model.load_trainable_state_dict({name: start[name] + settings.meta_lr * (adapted[name] - start[name])
                                         for name in start})
        log.append({"step": step, "sample": sample.get("index"), "support": len(support)})
    return log
