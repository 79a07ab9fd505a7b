"""The preference model (TALLRec, and ExplainRec's base; design section 4): a causal LM with LoRA read out at the
first answer token.

``p_yes`` is P(Yes) from a softmax over the logits of the tokenizer's own first
tokens of "Yes." and "No." (:func:`~recbole_mmprefer.preference.prompts.answer_token_ids`)
at the position after the prompt; ``loss`` is the NLL of the answer tokens
(TALLRec's tuning). Only the LoRA matrices train.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from recbole_mmprefer.errors import InputError
from recbole_mmprefer.explainer.model import add_lora
from recbole_mmprefer.explainer.tokens import IGNORE_INDEX
from recbole_mmprefer.preference.prompts import PreferenceExample, answer_token_ids, build_example, collate_left
from recbole_mmprefer.preference.settings import PreferenceModelConfig


def position_ids(attention_mask: Tensor) -> Tensor:
    """Positions counted from each row's first real token (left padding does not shift them)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class PreferenceModel(nn.Module):
    """A causal LM (with LoRA unless disabled) scored by P(Yes) at the first answer token."""

    def __init__(self, llm, tokenizer, settings: PreferenceModelConfig):
        super().__init__()
        for parameter in llm.parameters():
            parameter.requires_grad_(False)
        self.settings = settings
        self.lora = settings.lora.enabled
        self.llm = add_lora(llm, settings.lora) if self.lora else llm
        self.tokenizer = tokenizer
        self.yes_id, self.no_id = answer_token_ids(tokenizer)

    @classmethod
    def build(cls, settings: PreferenceModelConfig, device: Optional[str] = None, llm=None, tokenizer=None,
              **parts) -> "PreferenceModel":
        """The LLM of ``settings`` (or the given one) wrapped as this class; ``parts`` go to the constructor.
        New parameters are initialised under the seed."""
        from recbole_mmprefer.llm import load_causal_lm

        if llm is None:
            llm, tokenizer = load_causal_lm(settings.llm.path, settings.llm.dtype, settings.llm.cache_dir,
                                            device=device)
        torch.manual_seed(settings.seed)
        return cls(llm, tokenizer, settings, **parts)

    @property
    def device(self) -> torch.device:
        return self.llm.get_input_embeddings().weight.device

    def causal_lm(self):
        return self.llm.get_base_model() if self.lora else self.llm

    def hidden_states(self, batch: Dict[str, Tensor]) -> Tensor:
        mask = batch["attention_mask"].to(self.device)
        return self.causal_lm().base_model(input_ids=batch["input_ids"].to(self.device), attention_mask=mask,
                                           position_ids=position_ids(mask)).last_hidden_state

    def loss(self, batch: Dict[str, Tensor]) -> Tensor:
        """NLL of the answer tokens (the vocabulary head only where a label is)."""
        hidden = self.hidden_states(batch)
        targets = batch["labels"].to(self.device)[:, 1:]
        supervised = targets != IGNORE_INDEX
        logits = self.causal_lm().get_output_embeddings()(hidden[:, :-1][supervised])
        return nn.functional.cross_entropy(logits.float(), targets[supervised])

    def answer_logits(self, batch: Dict[str, Tensor]) -> Tensor:
        """[batch, 2] logits of (Yes, No) after each left-padded prompt."""
        hidden = self.hidden_states(batch)[:, -1]
        head = self.causal_lm().get_output_embeddings()
        rows = head.weight[[self.yes_id, self.no_id]]
        logits = hidden @ rows.T
        if getattr(head, "bias", None) is not None:
            logits = logits + head.bias[[self.yes_id, self.no_id]]
        return logits.float()

    @torch.no_grad()
    def p_yes(self, batch: Dict[str, Tensor]) -> Tensor:
        return torch.softmax(self.answer_logits(batch), dim=-1)[:, 0]

    # -- what training and scoring call (ExplainRecModel overrides them) ---------------------------------

    def examples(self, sample: dict, with_answers: bool) -> List[PreferenceExample]:
        """The sample's token sequences: for training (``with_answers``) or for scoring."""
        return [build_example(sample, self.tokenizer, self.settings.prompt, with_answer=with_answers)]

    def collate(self, examples: Sequence[PreferenceExample]) -> Dict[str, Tensor]:
        return collate_left(examples, int(self.tokenizer.pad_token_id))

    def training_loss(self, batch: Dict[str, Tensor]) -> Tuple[Tensor, Dict[str, float]]:
        """(the loss to minimise, its parts by name for the log)."""
        loss = self.loss(batch)
        return loss, {"answer_nll": float(loss.detach())}

    def score(self, batch: Dict[str, Tensor]) -> Tensor:
        return self.p_yes(batch)

    def trainable_state_dict(self) -> Dict[str, Tensor]:
        return {name: parameter.detach().cpu().clone() for name, parameter in self.named_parameters()
                if parameter.requires_grad}

    def load_trainable_state_dict(self, state: Dict[str, Tensor]) -> None:
        parameters = {name: parameter for name, parameter in self.named_parameters() if parameter.requires_grad}
        if set(parameters) != set(state):
            raise InputError(f"the preference adapter does not fit this model (LoRA settings differ?): "
                             f"{len(set(parameters) ^ set(state))} parameter names differ")
        with torch.no_grad():
            for name, value in state.items():
                parameters[name].copy_(value.to(parameters[name].device, parameters[name].dtype))
