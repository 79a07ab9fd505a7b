"""The explainer model (paper section 3.4): a causal LM with LoRA, fed a graph soft prompt through ``inputs_embeds``.

:class:`ExplainerModel` holds

* the causal LM of ``llm_path`` (:func:`recbole_mmprefer.llm.load_causal_lm`),
  wrapped with LoRA by peft (``explainer_lora_*``); ``explainer_lora: False``
  is the "w/o LoRA" ablation: the LLM stays frozen;
* the :class:`~recbole_mmprefer.explainer.graph_encoder.GraphSoftPrompt` (GNN
  over path subgraphs + MoE adapter), None under the "w/o graph-level"
  ablation (``explainer_graph_level: False``) or without paths.

Only the LoRA matrices, the GNN and the adapter require grad; the LLM's own
weights never do. :meth:`ExplainerModel.trainable_state_dict` holds exactly
those parameters, so a checkpoint is small (a few MB for SmolLM2-135M).

``forward`` embeds the prompt's token ids with the LLM's input embeddings,
writes the soft prompt at the reserved positions (:func:`place_soft_prompts`)
and returns the LM's loss with the batch's ``labels`` (-100 on the prompt, so
the NLL is taken on the explanation tokens and their EOS only). The vocabulary
head runs on the labelled positions only: the same loss as the LM's own, without
the prompt's logits (the largest tensor of a training step).
"""

from __future__ import annotations

import logging
import warnings
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn
from transformers import LogitsProcessor, LogitsProcessorList

from recbole_mmprefer.errors import InputError
from recbole_mmprefer.explainer.graph_encoder import GraphSoftPrompt, place_soft_prompts
from recbole_mmprefer.explainer.settings import DECODINGS, ExplainerConfig, LoraSettings
from recbole_mmprefer.explainer.tokens import IGNORE_INDEX

logger = logging.getLogger(__name__)


def add_lora(llm, settings: LoraSettings):
    """The LLM wrapped by peft with LoRA on ``settings.targets`` (its own weights frozen)."""
    from peft import LoraConfig, get_peft_model

    names = {name.rsplit(".", 1)[-1] for name, _ in llm.named_modules()}
    missing = [target for target in settings.targets if target not in names]
    if missing:
        raise InputError(f"explainer_lora_targets {missing} name no module of the LLM "
                         f"({type(llm).__name__}); e.g. Llama has q_proj, k_proj, v_proj, o_proj")
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=list(settings.targets), bias="none", task_type="CAUSAL_LM")
    return get_peft_model(llm, config)


class PromptCopyBias(LogitsProcessor):
    """Adds ``bias`` to the logits of the tokens each row's prompt holds (grounded decoding): the explanation is
    steered toward the words of its own inputs. Special tokens (the soft prompt's placeholders are pad ids) get
    none; ``num_beams`` rows of the expanded batch belong to each prompt."""

    def __init__(self, input_ids: Tensor, attention_mask: Tensor, bias: float, special_ids: Sequence[int],
                 num_beams: int = 1):
        vocabulary = int(input_ids.max()) + 1
        mask = torch.zeros(len(input_ids), vocabulary, dtype=torch.bool)
        rows = torch.arange(len(input_ids)).unsqueeze(1).expand_as(input_ids)
        real = attention_mask.bool()
        mask[rows[real], input_ids[real]] = True
        special = [int(token) for token in special_ids if int(token) < vocabulary]
        mask[:, special] = False
        self.mask = mask.repeat_interleave(num_beams, dim=0)
        self.bias = bias

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        width = self.mask.shape[1]
        scores[:, :width] = scores[:, :width] + self.bias * self.mask.to(scores.device, scores.dtype)
        return scores


class ExplainerModel(nn.Module):
    """A causal LM (with or without LoRA) and an optional graph soft prompt; see the module's docstring."""

    def __init__(self, llm, tokenizer, soft_prompt: Optional[GraphSoftPrompt] = None,
                 lora: Optional[LoraSettings] = None):
        super().__init__()
        for parameter in llm.parameters():
            parameter.requires_grad_(False)
        self.lora = lora
        self.llm = add_lora(llm, lora) if lora is not None else llm
        self.tokenizer = tokenizer
        self.soft_prompt = soft_prompt
        hidden = self.llm.get_input_embeddings().embedding_dim
        if soft_prompt is not None and soft_prompt.adapter.llm_hidden != hidden:
            raise InputError(f"the soft prompt has width {soft_prompt.adapter.llm_hidden}, the LLM {hidden}")

    @classmethod
    def from_config(cls, config, feature_dim: Optional[int] = None, device: Optional[str] = None,
                    llm=None, tokenizer=None) -> "ExplainerModel":
        """:meth:`build` with the :class:`ExplainerConfig` of a RecBole Config or dict."""
        return cls.build(ExplainerConfig.from_config(config), feature_dim, device, llm, tokenizer)

    @classmethod
    def build(cls, settings: ExplainerConfig, feature_dim: Optional[int] = None, device: Optional[str] = None,
              llm=None, tokenizer=None) -> "ExplainerModel":
        """The LLM of ``settings.llm`` (or the given one), LoRA per ``settings.lora`` and the graph soft prompt
        (when it has soft tokens; then ``feature_dim``, the node feature width, is needed). Parameters are
        initialised under the seed."""
        from recbole_mmprefer.llm import load_causal_lm

        if llm is None:
            llm, tokenizer = load_causal_lm(settings.llm.path, settings.llm.dtype, settings.llm.cache_dir,
                                            device=device)
        torch.manual_seed(settings.seed)
        soft_prompt = None
        if settings.soft_tokens > 0:
            if feature_dim is None:
                raise InputError("the graph soft prompt needs the node feature width (feature_dim)")
            embeddings = llm.get_input_embeddings()
            soft_prompt = GraphSoftPrompt.from_settings(settings.graph, feature_dim, embeddings.embedding_dim)
            soft_prompt.start_at(embeddings.weight.float().mean(dim=0))
            soft_prompt.to(device=llm.device)
        return cls(llm, tokenizer, soft_prompt, settings.lora if settings.lora.enabled else None)

    # -- parameters -------------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.llm.get_input_embeddings().weight.device

    @property
    def soft_tokens(self) -> int:
        return 0 if self.soft_prompt is None else int(self.soft_prompt.adapter.soft_tokens)

    def trainable_names(self) -> List[str]:
        return [name for name, parameter in self.named_parameters() if parameter.requires_grad]

    def lora_parameters(self) -> List[torch.nn.Parameter]:
        """The trainable parameters of the LLM (its LoRA weights; none without LoRA)."""
        return [parameter for parameter in self.llm.parameters() if parameter.requires_grad]

    def trainable_state_dict(self) -> Dict[str, Tensor]:
        """The LoRA, GNN and adapter parameters only (detached CPU copies)."""
        return {name: parameter.detach().cpu().clone() for name, parameter in self.named_parameters()
                if parameter.requires_grad}

    def load_trainable_state_dict(self, state: Dict[str, Tensor]) -> None:
        """Load a :meth:`trainable_state_dict`; its names must be exactly this model's trainable parameters."""
        expected = set(self.trainable_names())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise InputError(f"the explainer checkpoint does not fit this model (LoRA / graph settings differ?): "
                             f"missing {missing[:5]} ({len(missing)}), unexpected {unexpected[:5]} "
                             f"({len(unexpected)})")
        parameters = dict(self.named_parameters())
        with torch.no_grad():
            for name, value in state.items():
                if parameters[name].shape != value.shape:
                    raise InputError(f"the explainer checkpoint's {name} has shape {tuple(value.shape)}, the model "
                                     f"{tuple(parameters[name].shape)}")
                parameters[name].copy_(value.to(parameters[name].device, parameters[name].dtype))

    # -- embeddings, loss, generation --------------------------------------------------------------------

    def embed(self, input_ids: Tensor, soft_positions: Tensor, graphs: Optional[Sequence[Sequence]] = None) -> Tensor:
        """Token embeddings with the soft prompt written at ``soft_positions`` ([batch, soft])."""
        embeds = self.llm.get_input_embeddings()(input_ids.to(self.device))
        width = soft_positions.shape[1] if soft_positions.dim() == 2 else 0
        if width != self.soft_tokens:
            raise InputError(f"the prompts reserve {width} soft prompt positions, the model makes {self.soft_tokens}"
                             " (explainer_soft_tokens / explainer_graph_level of prompts and model differ)")
        if self.soft_prompt is None:
            return embeds
        if graphs is None or len(graphs) != len(input_ids):
            raise InputError("the graph soft prompt needs the path subgraphs of every pair of the batch")
        soft = self.soft_prompt(graphs)
        return place_soft_prompts(embeds, soft, soft_positions.to(self.device))

    def forward(self, batch: Dict[str, Tensor], graphs: Optional[Sequence[Sequence]] = None) -> Tensor:
        """The LM loss of a :func:`collate` batch (NLL on the labelled explanation tokens)."""
        embeds = self.embed(batch["input_ids"], batch["soft_positions"], graphs)
        attention_mask, labels = batch["attention_mask"].to(self.device), batch["labels"].to(self.device)
        causal_lm = self.llm.get_base_model() if self.lora is not None else self.llm
        if getattr(causal_lm.config, "final_logit_softcapping", None) is not None:  # e.g. Gemma 2: the LM's own head
            return self.llm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels).loss
        # The vocabulary head only where a label is: most positions are prompt, and their
        # [tokens, vocabulary] logits would take most of the step's memory.
        hidden = causal_lm.base_model(inputs_embeds=embeds, attention_mask=attention_mask).last_hidden_state
        targets = labels[:, 1:]
        supervised = targets != IGNORE_INDEX
        logits = causal_lm.get_output_embeddings()(hidden[:, :-1][supervised])
        return nn.functional.cross_entropy(logits.float(), targets[supervised])

    @torch.no_grad()
    def generate(self, batch: Dict[str, Tensor], graphs: Optional[Sequence[Sequence]] = None,
                 max_new_tokens: int = 96, decoding: str = "greedy", num_beams: int = 4, temperature: float = 0.7,
                 top_p: float = 0.9, min_new_tokens: int = 0, repetition_penalty: float = 1.0,
                 no_repeat_ngram_size: int = 0, copy_bias: float = 0.0, copy_exclude: Sequence[int] = (),
                 streamer=None) -> List[List[int]]:
        """New token ids per row of a left-padded batch (EOS and what follows dropped); EOS is barred from the
        first ``min_new_tokens`` steps. The repetition settings see only the new tokens (the prompt goes in as
        embeddings), so they stop the explanation repeating itself, not it quoting the prompt. ``streamer``
        (a transformers streamer, one-row batches) receives the tokens as they come. ``copy_bias`` > 0 adds that
        much to the logits of each row's own prompt tokens, except special ones and ``copy_exclude`` (the
        instruction's own words: :func:`~recbole_mmprefer.explainer.tokens.template_token_ids`)."""
        if decoding not in DECODINGS:
            raise InputError(f"explainer_decoding must be one of {', '.join(DECODINGS)}; got {decoding!r}")
        embeds = self.embed(batch["input_ids"], batch["soft_positions"], graphs)
        options = {"do_sample": decoding == "sample", "num_beams": num_beams if decoding == "beam" else 1,
                   "min_new_tokens": min(int(min_new_tokens), int(max_new_tokens)),
                   "repetition_penalty": float(repetition_penalty), "no_repeat_ngram_size": int(no_repeat_ngram_size)}
        if decoding == "sample":
            options.update(temperature=float(temperature), top_p=float(top_p), top_k=0)
        if copy_bias > 0:
            options["logits_processor"] = LogitsProcessorList([PromptCopyBias(
                batch["input_ids"], batch["attention_mask"], float(copy_bias),
                [*self.tokenizer.all_special_ids, *copy_exclude], num_beams if decoding == "beam" else 1)])
        eos = self.tokenizer.eos_token_id
        # LoRA layers are injected in place: the peft wrapper's base model generates with them
        llm = self.llm.get_base_model() if self.lora is not None else self.llm
        with warnings.catch_warnings():  # that the n-gram rule sees only new tokens is what we want
            warnings.filterwarnings("ignore", message=".*no_repeat_ngram_size.*inputs_embeds")
            output = llm.generate(inputs_embeds=embeds, attention_mask=batch["attention_mask"].to(self.device),
                                  max_new_tokens=int(max_new_tokens), pad_token_id=self.tokenizer.pad_token_id,
                                  eos_token_id=eos, use_cache=True, streamer=streamer, **options)
        rows = []
        for row in output.tolist():  # decoder-only from inputs_embeds: only the new tokens come back
            if eos is not None and eos in row:
                row = row[:row.index(eos)]
            rows.append(row)
        return rows
