"""Settings of the explanation baselines (issue 14): what a model is, and how it trains.

Shared defaults live in ``properties/explainer_baselines.yaml``; each model's
own values (its paper's sizes and loss weights) in
``properties/model/<Model>.yaml``, loaded on top for ``mmprefer train --model
<Model>`` (:func:`recbole_mmprefer.config.stage_config`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

from recbole_mmprefer.settings import (
    StageSettings,
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_optional_int,
)


@dataclass
class BaselineModelSettings(StageSettings):
    """What a baseline explainer is; saved beside its weights and enough to rebuild it."""

    PREFIX = "baseline_"

    embedding_size: int
    hidden_size: int
    layers: int
    heads: int
    dropout: float
    vocab_size: int
    max_words: int
    use_ratings: bool
    rating_weight: float
    context_weight: float
    text_weight: float
    coherence_weight: float

    def __post_init__(self):
        for name in ("embedding_size", "hidden_size", "layers", "heads", "vocab_size", "max_words"):
            setattr(self, name, check_int(self.key(name), getattr(self, name), 1))
        self.dropout = check_float(self.key("dropout"), self.dropout, 0.0, 1.0, below_maximum=True)
        self.use_ratings = check_bool(self.key("use_ratings"), self.use_ratings)
        for name in ("rating_weight", "context_weight", "text_weight", "coherence_weight"):
            setattr(self, name, check_float(self.key(name), getattr(self, name), 0.0))


@dataclass
class BaselineTrainingSettings(StageSettings):
    """How a baseline trains (PEPLER: ``prompt_epochs`` of its first stage, the LLM frozen, then the rest)."""

    PREFIX = "baseline_"

    optimizer: str
    learning_rate: float
    prompt_learning_rate: float
    lr_decay: float
    epochs: int
    prompt_epochs: int
    batch_size: int
    clip_norm: float
    checkpoint_steps: int
    max_train_pairs: Optional[int]
    max_valid_pairs: Optional[int]
    generation_batch_size: int

    def __post_init__(self):
        for name in ("learning_rate", "prompt_learning_rate"):
            setattr(self, name, check_float(self.key(name), getattr(self, name), 0.0, above_minimum=True))
        self.optimizer = check_choice(self.key("optimizer"), self.optimizer, ("adam", "sgd"))
        self.lr_decay = check_float(self.key("lr_decay"), self.lr_decay, 0.0, 1.0, above_minimum=True)
        self.epochs = check_int(self.key("epochs"), self.epochs, 1)
        self.prompt_epochs = check_int(self.key("prompt_epochs"), self.prompt_epochs, 0)
        self.batch_size = check_int(self.key("batch_size"), self.batch_size, 1)
        self.generation_batch_size = check_int(self.key("generation_batch_size"), self.generation_batch_size, 1)
        self.clip_norm = check_float(self.key("clip_norm"), self.clip_norm, 0.0)
        self.checkpoint_steps = check_int(self.key("checkpoint_steps"), self.checkpoint_steps, 0)
        self.max_train_pairs = check_optional_int(self.key("max_train_pairs"), self.max_train_pairs, 1)
        self.max_valid_pairs = check_optional_int(self.key("max_valid_pairs"), self.max_valid_pairs, 0)

    def results_keys(self) -> Dict[str, object]:
        """The keys that change what training computes (not how often it checkpoints, nor generation)."""
        keys = self.to_config()
        for name in ("checkpoint_steps", "generation_batch_size"):
            keys.pop(self.key(name))
        return keys
