"""Settings of the preference models (ExplainRec, design section 4): prompt, LoRA and training.

:class:`PreferenceModelConfig` is what a tuned preference model depends on
(prompt, LoRA, LLM, seed); it is saved beside the adapter as
``preference_config.json`` and read back when scoring.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from recbole_mmprefer.errors import InputError
from recbole_mmprefer.explainer.settings import SOFT_PROMPT_STARTS, LlmSettings, LoraSettings, check_bf16
from recbole_mmprefer.resources import stage_setting
from recbole_mmprefer.settings import (
    StageSettings,
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_optional_int,
    read_settings_file,
    write_settings_file,
)

CONFIG_FILE = "preference_config.json"
SYSTEMS = ("tallrec", "explainrec")
WEIGHTINGS = ("uncertainty", "fixed")
RATING_HEADS = ("linear", "margin", "ordinal")
TASKS = ("pred", "reason", "consistency", "rating")


@dataclass
class PreferencePromptSettings(StageSettings):
    """TALLRec's instruction and input, and the token budget."""

    PREFIX = "preference_"

    instruction: str
    item_kind: str
    max_length: int
    knowledge: bool

    def __post_init__(self):
        self.knowledge = check_bool("preference_knowledge", self.knowledge)
        self.instruction = str(self.instruction)
        if "{kind}" not in self.instruction:
            raise InputError("preference_instruction must hold {kind} (the item kind: movie, book, ...)")
        self.item_kind = str(self.item_kind).strip()
        if not self.item_kind:
            raise InputError("preference_item_kind must name the kind of item (movie, book, ...)")
        self.max_length = check_int("preference_max_length", self.max_length, 32)


class PreferenceLoraSettings(LoraSettings):
    """LoRA of the preference model: the ``preference_lora_*`` keys."""

    PREFIX = "preference_lora_"
    KEYS = {"enabled": "preference_lora"}


@dataclass
class PreferenceTrainingSettings(StageSettings):
    """How a preference model trains (not part of what it is)."""

    PREFIX = "preference_"

    shots: Optional[int]
    epochs: int
    learning_rate: float
    batch_size: int
    score_batch_size: int
    bf16: object
    gradient_checkpointing: bool
    checkpoint_steps: int

    def __post_init__(self):
        self.shots = check_optional_int("preference_shots", self.shots, 1)
        self.checkpoint_steps = check_int("preference_checkpoint_steps", self.checkpoint_steps, 0)
        self.gradient_checkpointing = check_bool("preference_gradient_checkpointing", self.gradient_checkpointing)
        self.epochs = check_int("preference_epochs", self.epochs, 1)
        self.learning_rate = check_float("preference_learning_rate", self.learning_rate, 0.0, above_minimum=True)
        self.batch_size = check_int("preference_batch_size", self.batch_size, 1)
        self.score_batch_size = check_int("preference_score_batch_size", self.score_batch_size, 1)
        self.bf16 = check_bf16(self.bf16)

    def results_keys(self) -> Dict[str, object]:
        """The keys that change what training computes (gradient checkpointing only trades time for memory;
        checkpoints on disk only make a run resumable)."""
        keys = self.to_config()
        keys.pop("preference_gradient_checkpointing")
        keys.pop("preference_checkpoint_steps")
        return keys

    def checkpoint_due(self, step: int) -> bool:
        """Whether a mid-epoch checkpoint follows ``step``."""
        return self.checkpoint_steps > 0 and step % self.checkpoint_steps == 0


@dataclass
class ExplainRecSettings(StageSettings):
    """The ``explainrec_*`` keys: the three components as switches and the task weights."""

    PREFIX = "explainrec_"

    instruction: str
    attribution: bool
    history_summary: bool
    multimodal: bool
    multitask: bool
    soft_tokens: int
    fusion_hidden: int
    soft_prompt_start: str
    task_weighting: str
    pred_weight: float
    reason_weight: float
    consistency_weight: float
    rating_weight: float
    rating_center: Optional[float]
    rating_head: str
    rating_levels: List[float]

    def __post_init__(self):
        if self.rating_center is not None:
            self.rating_center = check_float("explainrec_rating_center", self.rating_center)
        self.instruction = str(self.instruction)
        if "{kind}" not in self.instruction:
            raise InputError("explainrec_instruction must hold {kind} (the item kind: movie, book, ...)")
        for name in ("attribution", "history_summary", "multimodal", "multitask"):
            setattr(self, name, check_bool(self.key(name), getattr(self, name)))
        self.soft_tokens = check_int("explainrec_soft_tokens", self.soft_tokens, 1)
        self.fusion_hidden = check_int("explainrec_fusion_hidden", self.fusion_hidden, 1)
        self.soft_prompt_start = check_choice("explainrec_soft_prompt_start", self.soft_prompt_start,
                                              SOFT_PROMPT_STARTS)
        self.task_weighting = check_choice("explainrec_task_weighting", self.task_weighting, WEIGHTINGS)
        self.rating_head = check_choice("explainrec_rating_head", self.rating_head, RATING_HEADS)
        self.rating_levels = check_rating_levels(self.rating_levels)
        for task in TASKS:
            setattr(self, f"{task}_weight", check_float(self.key(f"{task}_weight"), getattr(self, f"{task}_weight"),
                                                        0.0))

    @property
    def tasks(self) -> List[str]:
        """The losses this configuration trains."""
        return ["pred"] + (["reason", "consistency"] if self.attribution else []) + (
            ["rating"] if self.multitask else [])

    @property
    def adaptive(self) -> bool:
        return self.multitask and self.task_weighting == "uncertainty"


def check_rating_levels(value) -> List[float]:
    """``explainrec_rating_levels``: at least two distinct numbers, ascending."""
    key = "explainrec_rating_levels"
    if not isinstance(value, (list, tuple)) or len(value) < 2:
        raise InputError(f"{key} must be a list of at least two ratings (e.g. [1, 2, 3, 4, 5]), got {value!r}")
    levels = [check_float(key, level) for level in value]
    if any(later <= earlier for earlier, later in zip(levels, levels[1:])):
        raise InputError(f"{key} must be strictly ascending, got {levels}")
    return levels


@dataclass
class PreferenceModelConfig:
    """Everything a tuned preference model depends on; saved as ``preference_config.json``."""

    system: str
    prompt: PreferencePromptSettings
    lora: PreferenceLoraSettings
    llm: LlmSettings
    explainrec: Optional[ExplainRecSettings]  # None for TALLRec
    seed: int

    @classmethod
    def from_config(cls, config=None) -> "PreferenceModelConfig":
        system = check_choice("preference_system", stage_setting(config, "preference_system"), SYSTEMS)
        explainrec = ExplainRecSettings.from_config(config) if system == "explainrec" else None
        if explainrec is not None and explainrec.rating_center is None:
            explainrec.rating_center = check_float("preference_like_threshold",
                                                   stage_setting(config, "preference_like_threshold"))
        return cls(system, PreferencePromptSettings.from_config(config), PreferenceLoraSettings.from_config(config),
                   LlmSettings.from_config(config), explainrec, check_int("seed", stage_setting(config, "seed")))

    def to_config(self) -> Dict[str, object]:
        return {"preference_system": self.system, **self.prompt.to_config(), **self.lora.to_config(),
                **self.llm.to_config(), **(self.explainrec.to_config() if self.explainrec else {}), "seed": self.seed}

    def save(self, folder: Path) -> Path:
        return write_settings_file(Path(folder) / CONFIG_FILE, self.to_config())

    @classmethod
    def load(cls, folder: Path, config=None) -> "PreferenceModelConfig":
        """The saved config; ``config`` only says where converted LLMs are cached (``llm_cache_dir``)."""
        keys = read_settings_file(Path(folder) / CONFIG_FILE, "tuned preference model",
                                  "mmprefer preference-train")
        return cls.from_config({**keys, "llm_cache_dir": stage_setting(config, "llm_cache_dir")})

    def zero_shot(self) -> "PreferenceModelConfig":
        """The frozen LLM with this system's prompt (ExplainRec's without its soft tokens: an untrained fusion
        would only add noise)."""
        from dataclasses import replace

        explainrec = replace(self.explainrec, multimodal=False) if self.explainrec is not None else None
        return replace(self, lora=replace(self.lora, enabled=False), explainrec=explainrec)


def shots_name(shots: Optional[int]) -> str:
    return "all" if shots is None else f"{shots}shot"

