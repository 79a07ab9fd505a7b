"""Word vocabularies of the explanation baselines (issue 14; PETER, NRT, Att2Seq and CER generate words).

Explanations are lower-cased and cut into words and punctuation marks
(:func:`words_of`); the vocabulary holds the ``size`` most frequent words of
the train split (ties broken alphabetically, so it is the same on every run)
after the four special tokens. A word outside it encodes as ``<unk>``.

:class:`Vocabulary` and :class:`LlmCodec` share one small interface (a *codec*:
``encode``, ``decode``, ``pad_id``, ``bos_id``, ``eos_id``, ``size``), so the
training loop of :mod:`recbole_mmprefer.explainer.baselines` treats word models
and PEPLER, which reads the LLM's own tokens, the same way.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Sequence, Tuple

from recbole_mmprefer.errors import InputError

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")
_NO_SPACE_BEFORE = re.compile(r" ([.,!?;:)'\"%])")
_NO_SPACE_AFTER = re.compile(r"([($]) ")


def words_of(text: str) -> List[str]:
    """Lower-cased words and punctuation marks: "It's great, 5/5!" -> ["it's", "great", ",", "5", "/", "5", "!"]."""
    return _WORD.findall(str(text).lower())


def join_words(words: Sequence[str]) -> str:
    """Words back to a sentence, without the space before punctuation."""
    text = " ".join(words)
    return _NO_SPACE_AFTER.sub(r"\1", _NO_SPACE_BEFORE.sub(r"\1", text))


@dataclass(frozen=True)
class Vocabulary:
    """The special tokens, then the train split's most frequent words."""

    words: Tuple[str, ...]

    @classmethod
    def build(cls, texts: Iterable[str], size: int) -> "Vocabulary":
        if size < 1:
            raise InputError(f"explanation_vocab_size must be at least 1, got {size}")
        counts = Counter(word for text in texts for word in words_of(text))
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:size]
        return cls(SPECIALS + tuple(word for word, _ in ranked))

    @property
    def index(self) -> dict:
        return {word: position for position, word in enumerate(self.words)}

    @property
    def size(self) -> int:
        return len(self.words)

    pad_id, bos_id, eos_id, unk_id = range(4)

    def encode(self, text: str, max_tokens: int) -> List[int]:
        """The first ``max_tokens`` words as ids (``<unk>`` for a word outside the vocabulary)."""
        index = self.index
        return [index.get(word, self.unk_id) for word in words_of(text)[:max_tokens]]

    def unknown_share(self, texts: Iterable[str]) -> float:
        index = self.index
        words = [word for text in texts for word in words_of(text)]
        return sum(word not in index for word in words) / max(len(words), 1)

    def decode(self, ids: Sequence[int]) -> str:
        """Ids up to the first ``<eos>``, specials left out."""
        words = []
        for token in ids:
            if token == self.eos_id:
                break
            if token >= len(SPECIALS):
                words.append(self.words[token])
        return join_words(words)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(list(self.words[len(SPECIALS):]), ensure_ascii=False) + "\n",
                              encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> "Vocabulary":
        return cls(SPECIALS + tuple(json.loads(Path(path).read_text(encoding="utf-8"))))


class LlmCodec:
    """A Hugging Face tokenizer behind the codec interface (PEPLER): its own BOS/EOS, padding with EOS."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.eos_id = tokenizer.eos_token_id
        self.bos_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else self.eos_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self.size = len(tokenizer)

    def encode(self, text: str, max_tokens: int) -> List[int]:
        return self.tokenizer(" " + str(text).strip(), add_special_tokens=False)["input_ids"][:max_tokens]

    def decode(self, ids: Sequence[int]) -> str:
        ids = list(ids)
        if self.eos_id in ids:
            ids = ids[:ids.index(self.eos_id)]
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()
