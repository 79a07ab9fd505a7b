"""PEPLER, continuous-prompt variant (Li et al., TOIS 2023, "Personalized Prompt Learning for Explainable
Recommendation"), issue 14.

A learned user vector and item vector, as wide as the LLM's token embeddings
(uniform in +-0.1 at the start), are the prompt: the LLM reads [u, i, <bos>,
w1 .. wn] as input embeddings and is trained with the NLL of the explanation's
tokens (the LLM's own tokenizer; the two prompt positions carry no loss).
Training is PEPLER's sequential tuning: for ``baseline_prompt_epochs`` epochs
only the prompt vectors learn (the LLM frozen, ``baseline_prompt_learning_rate``),
then the prompt and the LLM together (``baseline_learning_rate``). Where the
paper fine-tunes the whole LLM, the second stage here tunes LoRA adapters with
this toolkit's ``explainer_lora_*`` settings, the budget of our own explainer,
so the two compare on the same footing; ``explainer_lora: False`` tunes every
LLM weight as the paper does. Greedy decoding with the KV cache.
"""

from __future__ import annotations

from typing import Dict, List

import torch
from torch import nn

from recbole_mmprefer.explainer.model import add_lora
from recbole_mmprefer.explainer.models.abstract_explainer import AbstractExplainer
from recbole_mmprefer.explainer.vocabulary import LlmCodec

PROMPT_LENGTH = 2


class PEPLER(AbstractExplainer):
    uses_llm = True

    def __init__(self, settings, n_users: int, n_items: int, vocab_size: int, rating_scale, llm, lora) -> None:
        super().__init__(settings, n_users, n_items, vocab_size, rating_scale)
        for parameter in llm.parameters():
            parameter.requires_grad_(False)
        self.lora = lora
        self.llm = add_lora(llm, lora) if lora.enabled else llm
        width = llm.get_input_embeddings().embedding_dim
        self.user_embedding = nn.Embedding(n_users, width)
        self.item_embedding = nn.Embedding(n_items, width)
        for embedding in (self.user_embedding, self.item_embedding):
            nn.init.uniform_(embedding.weight, -0.1, 0.1)
        self.to(llm.device)

    @classmethod
    def with_llm(cls, settings, n_users: int, n_items: int, rating_scale, llm_settings, lora):
        """(model, codec) on the configured LLM (``llm_path``; None: the bundled SmolLM2)."""
        from recbole_mmprefer.llm import load_causal_lm

        llm, tokenizer = load_causal_lm(llm_settings.path, llm_settings.dtype, llm_settings.cache_dir)
        return cls(settings, n_users, n_items, len(tokenizer), rating_scale, llm, lora), LlmCodec(tokenizer)

    def set_stage(self, stage: str) -> None:
        """"prompt": only the user and item vectors learn; "joint": also LoRA (or every LLM weight without it)."""
        for name, parameter in self.llm.named_parameters():
            parameter.requires_grad_(stage == "joint" and ("lora_" in name or not self.lora.enabled))

    def saved_names(self) -> List[str]:
        """The prompt vectors and what the LLM learns (LoRA; every weight when it is fully tuned)."""
        return [name for name in self.state_dict()
                if not name.startswith("llm.") or "lora_" in name or not self.lora.enabled]

    def lora_keys(self) -> Dict[str, object]:
        return self.lora.to_config()

    def prompt(self, batch: Dict[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        device = self.user_embedding.weight.device
        vectors = [self.user_embedding(batch["users"].to(device))[:, None],
                   self.item_embedding(batch["items"].to(device))[:, None],
                   self.llm.get_input_embeddings()(inputs.to(device))]
        return torch.cat(vectors, dim=1)

    def word_logits(self, batch: Dict[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        embeds = self.prompt(batch, inputs)
        attention = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        if inputs.size(1) == batch["tokens"].size(1) - 1:  # teacher forcing: right padding is known
            attention[:, PROMPT_LENGTH:] = batch["token_mask"][:, :-1].long()
        return self.llm(inputs_embeds=embeds, attention_mask=attention).logits[:, PROMPT_LENGTH:].float()

    def calculate_loss(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        logits = self.word_logits(batch, batch["tokens"][:, :-1])
        return self.weighted(text=self.text_loss(logits, {key: value.to(logits.device)
                                                          for key, value in batch.items()}))

    @torch.no_grad()
    def generate(self, batch: Dict[str, torch.Tensor], max_tokens: int, bos_id: int, eos_id: int) -> torch.Tensor:
        start = torch.full((batch["users"].size(0), 1), bos_id, dtype=torch.long)
        embeds = self.prompt(batch, start)
        attention = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        return self.llm.generate(inputs_embeds=embeds, attention_mask=attention, max_new_tokens=max_tokens,
                                 do_sample=False, eos_token_id=eos_id, pad_token_id=eos_id).cpu()
