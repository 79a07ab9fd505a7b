"""Settings of the explainer (paper section 3.4; design sections 3, 8, 9), composed like peft's ``LoraConfig``.

:class:`ExplainerConfig` is what a trained explainer depends on: the prompt
(:class:`PromptSettings`), the graph soft prompt (:class:`GraphPromptSettings`),
LoRA (:class:`LoraSettings`), the LLM (:class:`LlmSettings`) and the seed. It
is saved beside the adapter's weights as ``explainer_config.json`` and read
back from there, so generation always builds the model and prompts the adapter
was trained with. How to train (:class:`TrainingSettings`) and how to decode
(:class:`DecodingSettings`) are not part of it.
"""

from __future__ import annotations

import functools
import string
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from recbole_mmprefer.data.explanations import SPLITS
from recbole_mmprefer.errors import InputError
from recbole_mmprefer.llm import DTYPES
from recbole_mmprefer.resources import stage_setting
from recbole_mmprefer.settings import (
    StageSettings,
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_optional_int,
    check_str_list,
    read_settings_file,
    write_settings_file,
)

MAX_PATHS = 5
TEMPLATE_FIELDS = {"title", "item_profile", "user_profile", "paths", "graph"}
GNN_TYPES = ("gat", "gcn", "transformer")
SOFT_PROMPT_STARTS = ("random", "neutral")
POOLS = ("path", "all")
DECODINGS = ("greedy", "beam", "sample")
CONFIG_FILE = "explainer_config.json"
BUNDLED, ZERO_SHOT = "bundled", "zero-shot"  # the explainers that are not a folder of `mmprefer train`


@functools.lru_cache(maxsize=1)
def bf16_supported() -> bool:
    """Whether bfloat16 runs fast here: a CUDA device with bf16, or a CPU with AVX512-BF16 or AMX-BF16."""
    import torch

    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def check_bf16(value) -> bool:
    """``explainer_bf16``: True, False or "auto" (on where :func:`bf16_supported`)."""
    if value == "auto":
        return bf16_supported()
    if not isinstance(value, (bool, np.bool_)):
        raise InputError(f"explainer_bf16 must be True, False or auto, got {value!r}")
    return bool(value)


def check_template(template: str) -> None:
    """InputError unless the template has {title}, {item_profile}, {user_profile}, {paths} and no other field."""
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as error:
        raise InputError(f"explainer_instruction is not a valid template ({error})") from None
    unknown, missing = names - TEMPLATE_FIELDS, TEMPLATE_FIELDS - {"graph"} - names
    if unknown or missing:
        raise InputError(f"explainer_instruction must hold {{title}}, {{item_profile}}, {{user_profile}} and "
                         f"{{paths}} (optionally {{graph}}) and no other field: unknown {sorted(unknown)}, "
                         f"missing {sorted(missing)} (write literal braces as {{{{ and }}}})")


@dataclass
class GraphPromptSettings(StageSettings):
    """The graph level: path subgraphs -> GNN -> MoE adapter -> ``soft_prompt_tokens`` soft prompt tokens."""

    PREFIX = "explainer_"
    KEYS = {"seed": "seed"}

    graph_level: bool
    gnn: str
    gnn_layers: int
    gnn_hidden: int
    gnn_heads: int
    neighbours: int
    pool: str
    experts: int
    adapter_dropout: float
    soft_prompt_start: str
    paths: int
    soft_tokens: Optional[int]
    seed: int

    def __post_init__(self):
        self.graph_level = check_bool("explainer_graph_level", self.graph_level)
        self.gnn = check_choice("explainer_gnn", self.gnn, GNN_TYPES)
        self.pool = check_choice("explainer_pool", self.pool, POOLS)
        self.soft_prompt_start = check_choice("explainer_soft_prompt_start", self.soft_prompt_start,
                                              SOFT_PROMPT_STARTS)
        for name in ("gnn_layers", "gnn_hidden", "gnn_heads", "experts"):
            setattr(self, name, check_int(self.key(name), getattr(self, name), 1))
        self.neighbours = check_int("explainer_neighbours", self.neighbours, 0)
        self.paths = check_int("explainer_paths", self.paths, 0, MAX_PATHS)
        self.soft_tokens = check_optional_int("explainer_soft_tokens", self.soft_tokens, 0)
        self.adapter_dropout = check_float("explainer_adapter_dropout", self.adapter_dropout, 0.0, 1.0,
                                           below_maximum=True)
        self.seed = check_int("seed", self.seed)

    @property
    def soft_prompt_tokens(self) -> int:
        """Prompt positions of the soft prompt: ``explainer_soft_tokens`` (default one per path), and 0 under the
        "w/o graph-level" ablation or without paths. The prompt and the model both take this number."""
        if not self.graph_level or not self.paths:
            return 0
        return self.paths if self.soft_tokens is None else self.soft_tokens


@dataclass
class PromptSettings(StageSettings):
    """The prompt keys of ``properties/explainer.yaml``; ``soft_tokens`` comes from the graph settings."""

    PREFIX = "explainer_"
    KEYS = {"paths_intro": "explainer_paths_intro"}

    instruction: str
    paths_intro: str
    paths: int
    soft_tokens: int
    max_length: int
    max_new_tokens: int
    path_profile_min_tokens: int
    related_nodes: int
    related_intro: str

    def __post_init__(self):
        self.instruction = str(self.instruction)
        check_template(self.instruction)
        self.paths_intro = str(self.paths_intro or "")
        self.paths = check_int("explainer_paths", self.paths, 0, MAX_PATHS)
        self.related_nodes = check_int("explainer_related_nodes", self.related_nodes, 0, MAX_PATHS)
        self.related_intro = str(self.related_intro or "")
        if self.related_nodes and not all(f"{{{name}}}" in self.related_intro for name in ("users", "items")):
            raise InputError("explainer_related_intro must hold {users} and {items} (or set explainer_related_nodes: 0)"
                             f"; it is {self.related_intro!r}")
        self.soft_tokens = check_int("explainer_soft_tokens", self.soft_tokens, 0)
        self.max_length = check_int("explainer_max_length", self.max_length, 2)
        self.path_profile_min_tokens = check_int("explainer_path_profile_min_tokens", self.path_profile_min_tokens, 0)
        self.max_new_tokens = check_int("explainer_max_new_tokens", self.max_new_tokens)
        if not 0 < self.max_new_tokens < self.max_length:
            raise InputError(f"explainer_max_new_tokens ({self.max_new_tokens}) must be positive and below "
                             f"explainer_max_length ({self.max_length})")

    @classmethod
    def from_config(cls, config=None, **overrides) -> "PromptSettings":
        if "soft_tokens" not in overrides:
            overrides["soft_tokens"] = GraphPromptSettings.from_config(config).soft_prompt_tokens
        return super().from_config(config, **overrides)

    def model_keys(self) -> Dict[str, object]:
        """The keys a trained explainer depends on (the generation budget is the decoder's)."""
        keys = self.to_config()
        for name in ("soft_tokens", "max_new_tokens"):
            keys.pop(self.key(name))
        return keys


@dataclass
class LoraSettings(StageSettings):
    """LoRA on the LLM (peft); ``enabled: False`` is the "w/o LoRA" ablation (a frozen LLM)."""

    PREFIX = "explainer_lora_"
    KEYS = {"enabled": "explainer_lora"}

    enabled: bool
    r: int
    alpha: int
    dropout: float
    targets: List[str]

    def __post_init__(self):
        self.enabled = check_bool(self.key("enabled"), self.enabled)
        self.r = check_int(self.key("r"), self.r, 1)
        self.alpha = check_int(self.key("alpha"), self.alpha, 1)
        self.dropout = check_float(self.key("dropout"), self.dropout, 0.0, 1.0, below_maximum=True)
        self.targets = check_str_list(self.key("targets"), self.targets)
        if not self.targets:
            raise InputError(f"{self.key('targets')} must name at least one module (Llama: q_proj, v_proj, ...)")


@dataclass
class LlmSettings(StageSettings):
    """The causal LM: ``llm_path`` (None: the bundled SmolLM2), ``llm_dtype`` and ``llm_cache_dir``."""

    PREFIX = "llm_"

    path: Optional[str]
    dtype: str
    cache_dir: Optional[str]

    def __post_init__(self):
        self.path = None if self.path is None else str(self.path)
        self.dtype = check_choice("llm_dtype", self.dtype, DTYPES)
        self.cache_dir = None if self.cache_dir is None else str(self.cache_dir)

    def identity(self) -> Dict[str, object]:
        """The keys that decide which weights load (the cache folder does not)."""
        return {"llm_path": self.path, "llm_dtype": self.dtype}


@dataclass
class TrainingSettings(StageSettings):
    """How the explainer trains (not part of what it is)."""

    PREFIX = "explainer_"

    learning_rate: float
    weight_decay: float
    epochs: int
    batch_size: int
    grad_accumulation: int
    bucket_batches: int
    checkpoint_steps: int
    max_train_pairs: Optional[int]
    max_valid_pairs: Optional[int]
    bf16: bool
    graph_warmup_steps: int

    def __post_init__(self):
        self.learning_rate = check_float("explainer_learning_rate", self.learning_rate, 0.0, above_minimum=True)
        self.weight_decay = check_float("explainer_weight_decay", self.weight_decay, 0.0)
        self.epochs = check_int("explainer_epochs", self.epochs, 0)
        self.batch_size = check_int("explainer_batch_size", self.batch_size, 1)
        self.grad_accumulation = check_int("explainer_grad_accumulation", self.grad_accumulation, 1)
        self.checkpoint_steps = check_int("explainer_checkpoint_steps", self.checkpoint_steps, 0)
        self.bucket_batches = check_int("explainer_bucket_batches", self.bucket_batches, 0)
        self.max_train_pairs = check_optional_int("explainer_max_train_pairs", self.max_train_pairs, 1)
        self.max_valid_pairs = check_optional_int("explainer_max_valid_pairs", self.max_valid_pairs, 0)
        self.bf16 = check_bf16(self.bf16)
        self.graph_warmup_steps = check_int("explainer_graph_warmup_steps", self.graph_warmup_steps, 0)

    def results_keys(self) -> Dict[str, object]:
        """The keys that change what training computes (not how often it checkpoints, nor for how long)."""
        keys = self.to_config()
        keys.pop("explainer_checkpoint_steps")
        keys["explainer_epochs"] = None
        if not self.graph_warmup_steps:  # as before the key existed: trained explainers stay up to date
            keys.pop("explainer_graph_warmup_steps")
        return keys

    def checkpoint_due(self, step: int) -> bool:
        """Whether a mid-epoch checkpoint follows ``step`` (only after a whole optimizer update)."""
        every = self.checkpoint_steps
        return every > 0 and step % every == 0 and step % self.grad_accumulation == 0


@dataclass
class DecodingSettings(StageSettings):
    """How explanations are decoded."""

    PREFIX = "explainer_"

    decoding: str
    num_beams: int
    temperature: float
    top_p: float
    max_new_tokens: int
    min_new_tokens: int
    repetition_penalty: float
    no_repeat_ngram_size: int
    copy_bias: float
    generation_batch_size: int
    bf16: bool

    def __post_init__(self):
        self.decoding = check_choice("explainer_decoding", self.decoding, DECODINGS)
        self.num_beams = check_int("explainer_num_beams", self.num_beams, 1)
        self.temperature = check_float("explainer_temperature", self.temperature, 0.0, above_minimum=True)
        self.top_p = check_float("explainer_top_p", self.top_p, 0.0, 1.0, above_minimum=True)
        self.max_new_tokens = check_int("explainer_max_new_tokens", self.max_new_tokens, 1)
        self.min_new_tokens = check_int("explainer_min_new_tokens", self.min_new_tokens, 0)
        self.repetition_penalty = check_float("explainer_repetition_penalty", self.repetition_penalty, 0.0,
                                              above_minimum=True)
        self.no_repeat_ngram_size = check_int("explainer_no_repeat_ngram_size", self.no_repeat_ngram_size, 0)
        self.copy_bias = check_float("explainer_copy_bias", self.copy_bias, 0.0)
        self.generation_batch_size = check_int("explainer_generation_batch_size", self.generation_batch_size, 1)
        self.bf16 = check_bf16(self.bf16)

    def generate_options(self) -> Dict[str, object]:
        """The keyword arguments of :meth:`ExplainerModel.generate`."""
        return {"max_new_tokens": self.max_new_tokens, "decoding": self.decoding, "num_beams": self.num_beams,
                "temperature": self.temperature, "top_p": self.top_p, "min_new_tokens": self.min_new_tokens,
                "repetition_penalty": self.repetition_penalty, "no_repeat_ngram_size": self.no_repeat_ngram_size,
                "copy_bias": self.copy_bias}


def generation_split(config) -> str:
    """``explainer_generation_split``: a table split or "all"."""
    return check_choice("explainer_generation_split", stage_setting(config, "explainer_generation_split"),
                        (*SPLITS, "all"))


@dataclass
class ExplainerConfig:
    """Everything a trained explainer depends on; saved as ``explainer_config.json`` beside its weights."""

    prompt: PromptSettings
    graph: GraphPromptSettings
    lora: LoraSettings
    llm: LlmSettings

    @classmethod
    def from_config(cls, config=None) -> "ExplainerConfig":
        return cls(PromptSettings.from_config(config), GraphPromptSettings.from_config(config),
                   LoraSettings.from_config(config), LlmSettings.from_config(config))

    @classmethod
    def from_keys(cls, keys: Dict[str, object], config=None) -> "ExplainerConfig":
        """From saved keys; the cache folder of the LLM (where its converted copy lives) is the config's."""
        keys = {**keys, "llm_cache_dir": stage_setting(config, "llm_cache_dir")}
        return cls.from_config(keys)

    def to_config(self) -> Dict[str, object]:
        return {**self.prompt.model_keys(), **self.graph.to_config(), **self.lora.to_config(),
                **self.llm.identity()}

    @property
    def seed(self) -> int:
        return self.graph.seed

    @property
    def soft_tokens(self) -> int:
        return self.graph.soft_prompt_tokens

    def zero_shot(self) -> "ExplainerConfig":
        """The frozen LLM with the paths as text only: no LoRA, no soft prompt."""
        graph = replace(self.graph, graph_level=False)
        return replace(self, graph=graph, lora=replace(self.lora, enabled=False),
                       prompt=replace(self.prompt, soft_tokens=0))

    def with_generation_budget(self, max_new_tokens: int) -> "ExplainerConfig":
        return replace(self, prompt=replace(self.prompt, max_new_tokens=max_new_tokens))

    def save(self, folder: Path) -> Path:
        return write_settings_file(Path(folder) / CONFIG_FILE, self.to_config())

    @classmethod
    def load(cls, folder: Path, config=None) -> "ExplainerConfig":
        """The config saved with a trained explainer (``explainer_config.json``)."""
        return cls.from_keys(read_settings_file(Path(folder) / CONFIG_FILE, "trained explainer folder",
                                                "mmprefer train"), config)
