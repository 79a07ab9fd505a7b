"""Prompts of the preference models (TALLRec's protocol; ExplainRec, design section 4).

A sample (:mod:`recbole_mmprefer.data.preferences`) becomes TALLRec's
instruction and input::

    User Preference: "A (1995)", "B (1996)"
    User Unpreference: "C (1994)"
    Whether the user will like the target movie "T (1997)"?

as the user message of the LLM's chat template (or, without one, the text
followed by ``Answer:``); the answer is ``Yes.`` or ``No.`` and its EOS. A
prompt over ``preference_max_length`` loses its oldest history items first
(counted); one that is too long even without a history is an error naming the
sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

from recbole_mmprefer.errors import InputError
from recbole_mmprefer.explainer.tokens import IGNORE_INDEX, leading_special_ids, uses_chat
from recbole_mmprefer.llm import chat_text
from recbole_mmprefer.preference.settings import PreferencePromptSettings

ANSWERS = {1: "Yes.", 0: "No."}


def quoted(titles: Sequence[str]) -> str:
    return ", ".join(f'"{title}"' for title in titles)


def sample_title(entry: dict) -> str:
    return entry.get("title") or f"item {entry.get('item_id')}"


def preference_input(sample: dict, kind: str, history: Sequence[dict]) -> str:
    """TALLRec's input for ``sample`` with the given (possibly shortened) history."""
    liked = quoted([sample_title(entry) for entry in history if entry["liked"]])
    disliked = quoted([sample_title(entry) for entry in history if not entry["liked"]])
    return (f"User Preference: {liked}\nUser Unpreference: {disliked}\n{knowledge_line(sample)}"
            f"Whether the user will like the target {kind} \"{sample_title(sample)}\"?")


def knowledge_line(sample: dict) -> str:
    """``Preference knowledge: ...`` where the sample carries the knowledge base's priors in words, else ""."""
    return f"Preference knowledge: {sample['knowledge']}\n" if sample.get("knowledge") else ""


def prompt_text(sample: dict, settings: PreferencePromptSettings, history: Sequence[dict], tokenizer) -> str:
    message = settings.instruction.format(kind=settings.item_kind) + "\n" + preference_input(
        sample, settings.item_kind, history)
    return chat_text(tokenizer, message) if uses_chat(tokenizer) else message + "\nAnswer:"


def answer_text(label: int, tokenizer) -> str:
    """``Yes.`` / ``No.``: the assistant reply with a chat template, else after a space."""
    return ANSWERS[int(label)] if uses_chat(tokenizer) else " " + ANSWERS[int(label)]


def answer_token_ids(tokenizer) -> Tuple[int, int]:
    """(Yes id, No id): the first token of each answer in this tokenizer (never hard-coded ids)."""
    ids = []
    for label in (1, 0):
        tokens = tokenizer(answer_text(label, tokenizer), add_special_tokens=False)["input_ids"]
        if not tokens:
            raise InputError(f"the tokenizer encodes {ANSWERS[label]!r} as no token")
        ids.append(int(tokens[0]))
    if ids[0] == ids[1]:
        raise InputError(f"the tokenizer starts {ANSWERS[1]!r} and {ANSWERS[0]!r} with the same token {ids[0]}: "
                         "P(Yes) cannot be read from the first answer token")
    return ids[0], ids[1]


@dataclass
class PreferenceExample:
    """One tokenised sample; ``labels`` are -100 but on the answer and its EOS (training only)."""

    input_ids: List[int]
    labels: List[int]
    dropped_history: int

    def __len__(self) -> int:
        return len(self.input_ids)


def _ids(tokenizer, text: str) -> List[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def build_example(sample: dict, tokenizer, settings: PreferencePromptSettings, with_answer: bool) -> \
        PreferenceExample:
    """The sample's token ids within ``max_length`` (oldest history items dropped first)."""
    answer = _ids(tokenizer, answer_text(sample["label"], tokenizer)) if with_answer else []
    if answer and tokenizer.eos_token_id is not None:
        answer.append(int(tokenizer.eos_token_id))
    lead = [] if uses_chat(tokenizer) else leading_special_ids(tokenizer)
    history = list(sample["history"])
    for dropped in range(len(history) + 1):
        prompt = lead + _ids(tokenizer, prompt_text(sample, settings, history[dropped:], tokenizer))
        if len(prompt) + len(answer) <= settings.max_length:
            return PreferenceExample(prompt + answer, [IGNORE_INDEX] * len(prompt) + answer, dropped)
    raise InputError(f"preference sample {sample.get('index')} (user {sample.get('user_id')}, item "
                     f"{sample.get('item_id')}) needs {len(prompt) + len(answer)} tokens even without its history; "
                     f"preference_max_length is {settings.max_length}")


def collate_left(examples: Sequence[PreferenceExample], pad_id: int) -> Dict[str, object]:
    """A left-padded batch: ``input_ids``, ``attention_mask``, ``labels`` (the last position is every row's last
    prompt or answer token)."""
    import torch

    width = max(len(example) for example in examples)
    ids, mask, labels = [], [], []
    for example in examples:
        pad = width - len(example)
        ids.append([pad_id] * pad + example.input_ids)
        mask.append([0] * pad + [1] * len(example))
        labels.append([IGNORE_INDEX] * pad + example.labels)
    return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask), "labels": torch.tensor(labels)}
