"""Settings of the preference models (ExplainRec, design section 4): prompt, LoRA and training.

:class:`PreferenceModelConfig` is what a tuned preference model depends on
(prompt, LoRA, LLM, seed); it is saved beside the adapter as
``preference_config.json`` and read back when scoring.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

from recbole_mmprefer.errors import InputError, MissingInputError
from recbole_mmprefer.explainer.settings import LlmSettings, LoraSettings, check_bf16
from recbole_mmprefer.resources import stage_setting
from recbole_mmprefer.settings import StageSettings, check_float, check_int, check_optional_int

CONFIG_FILE = "preference_config.json"


@dataclass
class PreferencePromptSettings(StageSettings):
    """TALLRec's instruction and input, and the token budget."""

    PREFIX = "preference_"

    instruction: str
    item_kind: str
    max_length: int

    def __post_init__(self):
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

    def __post_init__(self):
        self.shots = check_optional_int("preference_shots", self.shots, 1)
        self.epochs = check_int("preference_epochs", self.epochs, 1)
        self.learning_rate = check_float("preference_learning_rate", self.learning_rate, 0.0, above_minimum=True)
        self.batch_size = check_int("preference_batch_size", self.batch_size, 1)
        self.score_batch_size = check_int("preference_score_batch_size", self.score_batch_size, 1)
        self.bf16 = check_bf16(self.bf16)


@dataclass
class PreferenceModelConfig:
    """Everything a tuned preference model depends on; saved as ``preference_config.json``."""

    prompt: PreferencePromptSettings
    lora: PreferenceLoraSettings
    llm: LlmSettings
    seed: int

    @classmethod
    def from_config(cls, config=None) -> "PreferenceModelConfig":
        return cls(PreferencePromptSettings.from_config(config), PreferenceLoraSettings.from_config(config),
                   LlmSettings.from_config(config), check_int("seed", stage_setting(config, "seed")))

    def to_config(self) -> Dict[str, object]:
        return {**self.prompt.to_config(), **self.lora.to_config(), **self.llm.to_config(), "seed": self.seed}

    def save(self, folder: Path) -> Path:
        path = Path(folder) / CONFIG_FILE
        path.write_text(json.dumps(self.to_config(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, folder: Path, config=None) -> "PreferenceModelConfig":
        """The saved config; ``config`` only says where converted LLMs are cached (``llm_cache_dir``)."""
        path = Path(folder) / CONFIG_FILE
        if not path.is_file():
            raise MissingInputError(f"No {CONFIG_FILE} in {folder}: it is not a tuned preference model "
                                    "(`mmprefer preference-train` writes one)")
        keys: Dict[str, object] = json.loads(path.read_text(encoding="utf-8"))
        if config is not None:
            keys["llm_cache_dir"] = stage_setting(config, "llm_cache_dir")
        return cls.from_config(keys)

    def zero_shot(self) -> "PreferenceModelConfig":
        from dataclasses import replace

        return replace(self, lora=replace(self.lora, enabled=False))


def shots_name(shots: Optional[int]) -> str:
    return "all" if shots is None else f"{shots}shot"

