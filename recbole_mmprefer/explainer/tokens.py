"""Token ids of the explainer's examples (paper section 3.4): prompt and explanation ids, labels, batches.

**Token ids.** With a chat template (:func:`recbole_mmprefer.llm.chat_text`)
the prompt is the user message and the explanation the assistant reply; without
one the explanation follows ``Explanations:`` after a space. Labels are -100
everywhere but the explanation's tokens and the EOS after them.

The soft prompt's positions hold placeholder ids (:func:`placeholder_id`); :attr:`Example.soft_positions`
gives their indices and :func:`collate` a ``soft_mask``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from recbole_mmprefer.data.node_text import NodeText
from recbole_mmprefer.errors import InputError
from recbole_mmprefer.explainer.prompts import (
    SOFT_MARKER,
    PromptParts,
    fit,
    prompt_parts,
    render_prompt,
    truncation_counts,
)
from recbole_mmprefer.explainer.settings import PromptSettings
from recbole_mmprefer.llm import chat_text

IGNORE_INDEX = -100


def uses_chat(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def placeholder_id(tokenizer) -> int:
    """The id at soft-prompt positions: pad, else end-of-text, else unknown, else 0."""
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id):
        if value is not None:
            return int(value)
    return 0


def leading_special_ids(tokenizer) -> List[int]:
    """The ids the tokenizer puts before a text (e.g. BOS), without those it appends."""
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return list(full[:start])
    return []


def encode_prompt(text: str, tokenizer, soft_tokens: int) -> Tuple[List[int], List[int]]:
    """``(ids, soft_positions)`` of a prompt text: chat-wrapped when the tokenizer has a template; the marker
    becomes ``soft_tokens`` placeholder ids."""
    chat = uses_chat(tokenizer)
    full = chat_text(tokenizer, text) if chat else text
    before, marker, after = full.partition(SOFT_MARKER)
    ids = ([] if chat else leading_special_ids(tokenizer)) + _ids(tokenizer, before)
    positions = list(range(len(ids), len(ids) + soft_tokens)) if marker else []
    ids += [placeholder_id(tokenizer)] * len(positions) + _ids(tokenizer, after)
    return ids, positions


def template_token_ids(settings, tokenizer) -> List[int]:
    """The ids of the prompt's fixed words (the instruction and the paths intro, chat-wrapped as prompts are, with
    every field empty): what grounded decoding (``explainer_copy_bias``) leaves unbiased."""
    skeleton = settings.instruction.format(title="", item_profile="", user_profile="", paths=settings.paths_intro,
                                           graph="")
    return sorted(set(encode_prompt(skeleton, tokenizer, 0)[0]))


_WORDLESS: dict = {}


def wordless_token_ids(tokenizer) -> List[int]:
    """Ids of the vocabulary's tokens without a letter (digits, punctuation, spaces), computed once per tokenizer.
    Grounded decoding leaves them unbiased: biased digits recombine into numbers (years) no input holds."""
    key = (getattr(tokenizer, "name_or_path", ""), len(tokenizer))
    if key not in _WORDLESS:
        pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        texts = [tokenizer.convert_tokens_to_string([piece]) if piece is not None else "" for piece in pieces]
        _WORDLESS[key] = [n for n, text in enumerate(texts) if not any(ch.isalpha() for ch in text)]
    return _WORDLESS[key]


def _ids(tokenizer, text: str) -> List[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def encode_target(explanation: str, tokenizer) -> List[int]:
    """The explanation's ids and EOS: the assistant reply with a chat template, else after a space."""
    text = str(explanation).replace(SOFT_MARKER, " ").strip()
    ids = _ids(tokenizer, text if uses_chat(tokenizer) else f" {text}")
    return ids + ([int(tokenizer.eos_token_id)] if tokenizer.eos_token_id is not None else [])


@dataclass
class Example:
    """One tokenised example; ``labels`` are -100 but on the explanation and its EOS."""

    input_ids: List[int]
    attention_mask: List[int]
    labels: List[int]
    soft_positions: List[int]
    truncation: Dict[str, int]
    prompt_text: str

    def __len__(self) -> int:
        return len(self.input_ids)


def build_example(record: dict, node_text: NodeText, tokenizer, settings: PromptSettings,
                  explanation: Optional[str] = None) -> Example:
    """A ``paths.jsonl`` record as token ids within the budget: for training with ``explanation``, else for
    generation (room left for ``max_new_tokens``)."""
    parts = prompt_parts(record, node_text, tokenizer, settings)
    target = encode_target(explanation, tokenizer) if explanation is not None else []
    budget = settings.max_length - (len(target) if explanation is not None else settings.max_new_tokens)

    def length(current: PromptParts) -> int:
        return len(encode_prompt(render_prompt(current, settings), tokenizer, settings.soft_tokens)[0])

    overflow = fit(parts, settings, length, budget)
    text = render_prompt(parts, settings)
    prompt_ids, positions = encode_prompt(text, tokenizer, settings.soft_tokens)
    return Example(input_ids=prompt_ids + target, attention_mask=[1] * (len(prompt_ids) + len(target)),
                   labels=[IGNORE_INDEX] * len(prompt_ids) + target, soft_positions=positions,
                   truncation=truncation_counts(parts, overflow), prompt_text=text)


def collate(examples: Sequence[Example], pad_id: int, left_pad: bool) -> Dict[str, object]:
    """A padded batch of tensors: ``input_ids``, ``attention_mask``, ``labels`` (-100 at padding),
    ``soft_positions`` (batch x soft tokens, shifted by left padding) and ``soft_mask`` (batch x length)."""
    import torch

    if not examples:
        raise InputError("collate needs at least one example")
    counts = {len(example.soft_positions) for example in examples}
    if len(counts) > 1:
        raise InputError(f"Examples of one batch must have as many soft positions each, got {sorted(counts)}")
    width = max(len(example) for example in examples)
    batch = {"input_ids": [], "attention_mask": [], "labels": [], "soft_positions": []}
    for example in examples:
        pad = width - len(example)
        for key, value in (("input_ids", pad_id), ("attention_mask", 0), ("labels", IGNORE_INDEX)):
            row, filler = getattr(example, key), [value] * pad
            batch[key].append(filler + row if left_pad else row + filler)
        batch["soft_positions"].append([position + (pad if left_pad else 0) for position in example.soft_positions])
    tensors = {key: torch.tensor(rows, dtype=torch.long) for key, rows in batch.items()}
    mask = torch.zeros(tensors["input_ids"].shape, dtype=torch.bool)
    if counts != {0}:
        mask.scatter_(1, tensors["soft_positions"], True)
    tensors["soft_mask"] = mask
    return tensors
