"""Likelihood scores of explanations, BARTScore-style, and BLEURT (paper section 4.2; design section 5).

**Likelihood.** For each (candidate, reference) pair: the mean log-likelihood
per token (natural log, so <= 0; higher is better) of

- ``*_ref_given_cand``: the reference given the candidate (candidate -> reference;
  BARTScore's paper calls this direction h -> r "recall"),
- ``*_cand_given_ref``: the candidate given the reference (r -> h, "precision"),
- ``*_f``: the average of the two.

With a seq2seq model (``eval_bartscore_model``, a local folder) this is
BARTScore: encoder input = source text, labels = target text with the
tokenizer's special tokens, as BARTScore does; the metrics are named
``bartscore_*``. Without one, the causal LM of ``llm_path`` (default the
bundled SmolLM2-135M-Instruct) scores the prompt ``"<source>\\n"`` followed by
the target, only the target's tokens counted; those metrics are named
``lm_likelihood_*`` (never BARTScore) and their notes name the model. A
direction whose target text is empty or whitespace only has no score (NaN).
Inputs longer than ``eval_max_length`` tokens are truncated and counted
(causal LM: the target keeps at least half the budget, the source the rest).

**BLEURT.** Only where ``eval_bleurt_model`` names a local BLEURT-style
regression checkpoint (loadable with ``AutoModelForSequenceClassification``,
one output): score = logit 0 of the pair (reference, candidate). Otherwise
:func:`bleurt_scores` returns None and the report says BLEURT is absent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from recbole_mmprefer.errors import MissingInputError
from recbole_mmprefer.evaluation.metrics import MetricResult, check_pairs
from recbole_mmprefer.llm import load_causal_lm, model_name
from recbole_mmprefer.llm_backends import LocalLM
from recbole_mmprefer.resources import stage_setting
from recbole_mmprefer.settings import check_int

CAUSAL_SEPARATOR = "\n"
UNIT = "mean log-likelihood per target token (nats, <= 0; higher is better)"
DIRECTION_NOTES = {"ref_given_cand": "log p(reference | candidate): candidate -> reference (BARTScore's recall)",
                   "cand_given_ref": "log p(candidate | reference): reference -> candidate (BARTScore's precision)",
                   "f": "average of the two directions (BARTScore's F)"}

Encoded = Tuple[List[int], List[int], bool]  # (source or prompt ids, target ids, truncated)


def _device(model) -> object:
    return next(model.parameters()).device


def _is_empty(text: str) -> bool:
    return not text.strip()


def _pair_notes(candidates: Sequence[str], references: Sequence[str]) -> Dict[str, int]:
    return {"empty_candidates": sum(map(_is_empty, candidates)), "empty_references": sum(map(_is_empty, references))}


def position_limit(model, max_length: int) -> int:
    """``max_length``, lowered to the model's ``max_position_embeddings`` where that is smaller."""
    limit = getattr(model.config, "max_position_embeddings", None)
    return min(max_length, int(limit)) if isinstance(limit, int) and limit > 0 else max_length


def _ids(tokenizer, text: str, special: bool) -> List[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def _fit_causal(source: List[int], separator: List[int], target: List[int], max_length: int) -> Encoded:
    """Cut a long source + target: the target keeps at least half of ``max_length``, the source the rest."""
    if len(source) + len(separator) + len(target) <= max_length:
        return source + separator, target, False
    target = target[:max(max_length - len(source) - len(separator), max_length // 2)]
    source = source[:max(max_length - len(separator) - len(target), 0)]
    return source + separator, target, True


class LikelihoodScorer:
    """Mean log-likelihood per token of target texts given source texts under one model, loaded once."""

    def __init__(self, model, tokenizer, name: str, seq2seq: bool, max_length: int = 512, batch_size: int = 8):
        self.model, self.tokenizer, self.name = model.eval(), tokenizer, name
        self.seq2seq, self.batch_size = seq2seq, max(int(batch_size), 1)
        self.max_length = position_limit(model, int(max_length))
        self.base = "bartscore" if seq2seq else "lm_likelihood"
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    @classmethod
    def from_config(cls, config=None, lm: Optional[LocalLM] = None) -> "LikelihoodScorer":
        """The seq2seq model of ``eval_bartscore_model`` when set, else ``lm`` or the causal LM of ``llm_path``."""
        max_length = check_int("eval_max_length", stage_setting(config, "eval_max_length"), 2)
        batch_size = check_int("eval_llm_batch_size", stage_setting(config, "eval_llm_batch_size"), 1)
        path = stage_setting(config, "eval_bartscore_model")
        if path:
            model, tokenizer = load_seq2seq(str(path))
            return cls(model, tokenizer, model_name(path), True, max_length, batch_size)
        if lm is not None:
            return cls(lm.model, lm.tokenizer, lm.name, False, max_length, batch_size)
        llm_path = stage_setting(config, "llm_path")
        model, tokenizer = load_causal_lm(llm_path, stage_setting(config, "llm_dtype"),
                                          stage_setting(config, "llm_cache_dir"))
        return cls(model, tokenizer, model_name(llm_path), False, max_length, batch_size)

    # ------------------------------------------------------------------ encoding

    def _encode_seq2seq_text(self, text: str) -> Tuple[List[int], bool]:
        ids = _ids(self.tokenizer, text, True)
        if len(ids) <= self.max_length:
            return ids, False
        return list(self.tokenizer(text, truncation=True, max_length=self.max_length)["input_ids"]), True

    def encode(self, source: str, target: str) -> Encoded:
        """Token ids of one (source, target) pair within ``max_length`` and whether they were cut."""
        if self.seq2seq:
            (source_ids, cut_source), (target_ids, cut_target) = map(self._encode_seq2seq_text, (source, target))
            return source_ids, target_ids, cut_source or cut_target
        prompt, target_ids, truncated = _fit_causal(_ids(self.tokenizer, source, True),
                                                    _ids(self.tokenizer, CAUSAL_SEPARATOR, False),
                                                    _ids(self.tokenizer, target, False), self.max_length)
        return prompt or [self._start_id()], target_ids, truncated

    def _start_id(self) -> int:
        """A token to condition on when the prompt has none (an empty source and a separator of no tokens)."""
        for token_id in (self.tokenizer.bos_token_id, self.tokenizer.eos_token_id, self.pad_id):
            if token_id is not None:
                return int(token_id)
        return 0

    # ------------------------------------------------------------------ scoring

    def log_likelihoods(self, sources: Sequence[str], targets: Sequence[str]) -> Tuple[np.ndarray, int]:
        """Per pair the mean log-likelihood per target token (NaN for an empty target) and the truncations."""
        scores = np.full(len(sources), np.nan)
        encoded = {index: self.encode(sources[index], targets[index])
                   for index in range(len(sources)) if not _is_empty(targets[index])}
        order = sorted(encoded, key=lambda index: -len(encoded[index][0]) - len(encoded[index][1]))
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            scores[batch] = self._batch_scores([encoded[index] for index in batch])
        return scores, sum(1 for item in encoded.values() if item[2])

    def _batch_scores(self, items: List[Encoded]) -> List[float]:
        import torch

        with torch.inference_mode():
            if self.seq2seq:
                return self._seq2seq_scores(items)
            return self._causal_scores(items)

    def _padded(self, rows: List[List[int]], value: int):
        import torch

        width = max(len(row) for row in rows)
        ids = torch.full((len(rows), width), value, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, tokens in enumerate(rows):
            ids[row, :len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            mask[row, :len(tokens)] = 1
        device = _device(self.model)
        return ids.to(device), mask.to(device)

    def _causal_scores(self, items: List[Encoded]) -> List[float]:
        ids, mask = self._padded([prompt + target for prompt, target, _ in items], self.pad_id)
        logits = self.model(input_ids=ids, attention_mask=mask).logits
        scores = []
        for row, (prompt, target, _) in enumerate(items):
            start, end = len(prompt), len(prompt) + len(target)
            scores.append(_mean_log_prob(logits[row, start - 1:end - 1], ids[row, start:end]))
        return scores

    def _seq2seq_scores(self, items: List[Encoded]) -> List[float]:
        sources, source_mask = self._padded([source for source, _, _ in items], self.pad_id)
        labels, _ = self._padded([target for _, target, _ in items], -100)
        logits = self.model(input_ids=sources, attention_mask=source_mask, labels=labels).logits
        return [_mean_log_prob(logits[row, :len(target)], labels[row, :len(target)])
                for row, (_, target, _) in enumerate(items)]

    def score(self, candidates: Sequence[str], references: Sequence[str]) -> Dict[str, MetricResult]:
        """``<base>_ref_given_cand``, ``<base>_cand_given_ref`` and ``<base>_f`` per pair."""
        check_pairs(candidates, references)
        ref_given_cand, cut_forward = self.log_likelihoods(candidates, references)
        cand_given_ref, cut_backward = self.log_likelihoods(references, candidates)
        columns = {"ref_given_cand": ref_given_cand, "cand_given_ref": cand_given_ref,
                   "f": (ref_given_cand + cand_given_ref) / 2}
        notes = {**self.notes(), **_pair_notes(candidates, references),
                 "truncated_ref_given_cand": cut_forward, "truncated_cand_given_ref": cut_backward}
        return {f"{self.base}_{key}": MetricResult.from_samples(f"{self.base}_{key}", values,
                                                                {**notes, "direction": DIRECTION_NOTES[key]})
                for key, values in columns.items()}

    def notes(self) -> Dict[str, object]:
        kind = "seq2seq (BARTScore)" if self.seq2seq else "causal LM (not BARTScore)"
        form = ("encoder: source, labels: target" if self.seq2seq
                else f"source + {CAUSAL_SEPARATOR!r} + target, only the target's tokens scored")
        return {"model": self.name, "model_kind": kind, "input": form, "unit": UNIT, "max_length": self.max_length}



def _mean_log_prob(logits, targets) -> float:
    import torch

    log_probs = torch.log_softmax(logits.float(), dim=-1)
    return float(log_probs.gather(-1, targets.unsqueeze(-1)).mean())


def load_seq2seq(path: str) -> Tuple[object, object]:
    """``(model, tokenizer)`` of a local seq2seq model (e.g. BART) in eval mode, on CUDA when there is one."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    if not Path(path).expanduser().exists():
        raise MissingInputError(f"eval_bartscore_model {path!r} not found: name a local seq2seq model folder")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSeq2SeqLM.from_pretrained(path)
    return model.to("cuda" if torch.cuda.is_available() else "cpu").eval(), tokenizer


def likelihood_scores(candidates: Sequence[str], references: Sequence[str], config=None,
                      scorer: Optional[LikelihoodScorer] = None,
                      lm: Optional[LocalLM] = None) -> Dict[str, MetricResult]:
    """The three likelihood metrics of every pair (a scorer already loaded, or one made from ``config``)."""
    scorer = scorer or LikelihoodScorer.from_config(config, lm)
    return scorer.score(candidates, references)


# --------------------------------------------------------------------------- BLEURT

def bleurt_scores(candidates: Sequence[str], references: Sequence[str], config=None) -> Optional[MetricResult]:
    """BLEURT per pair with the checkpoint of ``eval_bleurt_model``; None (absent) when none is configured."""
    path = stage_setting(config, "eval_bleurt_model")
    if not path:
        return None
    check_pairs(candidates, references)
    model, tokenizer = load_regressor(str(path))
    max_length = position_limit(model, check_int("eval_max_length", stage_setting(config, "eval_max_length"), 2))
    batch_size = check_int("eval_llm_batch_size", stage_setting(config, "eval_llm_batch_size"), 1)
    scores, truncated = [], 0
    for start in range(0, len(candidates), max(batch_size, 1)):
        batch_scores, batch_cut = _bleurt_batch(model, tokenizer, references[start:start + batch_size],
                                                candidates[start:start + batch_size], max_length)
        scores.extend(batch_scores)
        truncated += batch_cut
    notes = {"model": model_name(path), "input": "(reference, candidate) pair", "score": "logit 0",
             "max_length": max_length, "truncated": truncated, **_pair_notes(candidates, references)}
    return MetricResult.from_samples("bleurt", scores, notes)


def load_regressor(path: str) -> Tuple[object, object]:
    """``(model, tokenizer)`` of a local BLEURT-style checkpoint (AutoModelForSequenceClassification)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if not Path(path).expanduser().exists():
        raise MissingInputError(f"eval_bleurt_model {path!r} not found: name a local BLEURT-style checkpoint")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path)
    return model.to("cuda" if torch.cuda.is_available() else "cpu").eval(), tokenizer


def _bleurt_batch(model, tokenizer, references: Sequence[str], candidates: Sequence[str],
                  max_length: int) -> Tuple[List[float], int]:
    import torch

    lengths = [len(ids) for ids in tokenizer(list(references), list(candidates))["input_ids"]]
    batch = tokenizer(list(references), list(candidates), truncation=True, max_length=max_length, padding=True,
                      return_tensors="pt").to(_device(model))
    with torch.inference_mode():
        logits = model(**batch).logits
    return logits[:, 0].float().tolist(), sum(1 for length in lengths if length > max_length)
