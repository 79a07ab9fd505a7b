"""Explanation text metrics (paper section 4.2, design section 5): BERTScore, BLEU, ROUGE-L and USR.

Every pair metric takes a list of (candidate, reference) pairs: the candidate is
the generated explanation, the reference the ground truth. (G-Refer passed them
the other way round; we do not, so BERTScore precision is the candidate's side.)
Each metric returns a :class:`MetricResult` with one score per sample, their
mean and their population standard deviation (ddof=0, over the samples that
have a score), which is the paper's "stability".

Definitions:

- **BERTScore P/R/F1** (``bertscore_precision``, ``bertscore_recall``,
  ``bertscore_f1``, scale 0-1): ``bert_score.BERTScorer`` with any local HF
  encoder (default the bundled all-MiniLM-L6-v2), the embeddings of one layer
  (default the last, ``num_hidden_layers``), no idf weighting, rescaled with a
  baseline only when a baseline file is given. Texts longer than the encoder's
  max length (the smaller of the tokenizer's ``model_max_length`` and the
  model's ``max_position_embeddings``, special tokens included) are cut before
  the last word that fits and counted as truncated. A pair whose candidate or
  reference is empty or whitespace only scores 0 on P, R and F1 (bert-score's
  own rule for empty input; under transformers 5 its code path for empty text
  raises, so we apply the rule ourselves) and, with a baseline, is rescaled
  like every other score.
- **BLEU-1 / BLEU-4** (``bleu_1``, ``bleu_4``, scale 0-100 as sacrebleu
  reports it): sacrebleu sentence BLEU of each candidate against its one
  reference, ``max_ngram_order`` 1 or 4, sacrebleu's sentence-level defaults:
  ``13a`` tokenisation, case-sensitive, ``exp`` smoothing, effective order.
- **ROUGE-L** (``rouge_l``, scale 0-1): the F1 of rouge-score's ``rougeL``
  (longest common subsequence) with the Porter stemmer.
- **USR** (``usr``, scale 0-1, candidates only): each candidate is split into
  sentences after ``.``, ``!`` or ``?`` followed by whitespace; each sentence
  is lowercased, stripped and its whitespace collapsed; empty pieces are
  dropped. USR = distinct sentences / all sentences over the whole list; that
  corpus value is ``mean``. ``per_sample`` holds, per candidate, the fraction
  of its sentences that occur exactly once in the whole list (1.0 when all are
  unique; NaN for a candidate without sentences), and ``std`` is their
  population std.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from recbole_mmprefer.errors import InputError, MissingInputError
from recbole_mmprefer.settings import StageSettings, check_int, check_optional_int, check_str_list

TEXT_METRICS = ("bertscore", "bleu", "rouge_l", "usr")
BLEU_ORDERS = (1, 4)
SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+")
SENTENCE_RULE = "split after . ! or ? followed by whitespace; lowercase, strip, collapse whitespace"
BERTSCORE_NAMES = ("bertscore_precision", "bertscore_recall", "bertscore_f1")
BATCHES_PER_CALL = 8  # batches of pairs given to bert-score per call (one progress step)
PROGRESS_MIN_SAMPLES = 1000  # per-sample loops show a progress bar from this many pairs


@dataclass
class MetricResult:
    """One metric over a list of samples: per-sample scores (NaN = no score), mean and population std."""

    name: str
    per_sample: np.ndarray
    mean: float
    std: float
    notes: Dict[str, object] = field(default_factory=dict)

    @classmethod
    def from_samples(cls, name: str, per_sample: Iterable[float], notes: Optional[Dict[str, object]] = None,
                     mean: Optional[float] = None) -> "MetricResult":
        """Mean (unless given) and std (ddof=0) over the non-NaN samples; NaN when there are none."""
        values = np.asarray(list(per_sample), dtype=float)
        scored = values[~np.isnan(values)]
        sample_mean = float(scored.mean()) if scored.size else float("nan")
        std = float(scored.std(ddof=0)) if scored.size else float("nan")
        counts = {"samples": int(values.size), "scored_samples": int(scored.size)}
        return cls(name, values, sample_mean if mean is None else float(mean), std, {**counts, **(notes or {})})

    def summary(self) -> Dict[str, object]:
        """Everything but the per-sample scores, ready for a JSON report."""
        return {"name": self.name, "mean": self.mean, "std": self.std, "notes": dict(self.notes)}


@dataclass
class TextMetricSettings(StageSettings):
    """What :func:`text_metrics` computes and with which encoder (``properties/evaluation.yaml``)."""

    KEYS = {"bertscore_model": "eval_bertscore_model", "bertscore_layer": "eval_bertscore_layer",
            "bertscore_baseline": "eval_bertscore_baseline", "batch_size": "eval_text_batch_size",
            "metrics": "eval_metrics", "device": "device"}

    bertscore_model: Optional[str]
    bertscore_layer: Optional[int]
    bertscore_baseline: Optional[str]
    batch_size: int
    metrics: Sequence[str]
    device: Optional[str]

    def __post_init__(self):
        self.bertscore_layer = check_optional_int("eval_bertscore_layer", self.bertscore_layer, 0)
        self.batch_size = check_int("eval_text_batch_size", self.batch_size, 1)
        self.metrics = tuple(check_str_list("eval_metrics", self.metrics))
        self.device = None if self.device is None else str(self.device)


def check_texts(texts: Sequence[str], role: str) -> None:
    """Raise InputError naming the first item of ``texts`` that is not a str."""
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputError(f"{role} {index} is {type(text).__name__}, not str")


def check_pairs(candidates: Sequence[str], references: Sequence[str]) -> None:
    """Raise InputError (a ValueError) unless the lists pair up one to one and hold only str."""
    if len(candidates) != len(references):
        raise InputError(f"{len(candidates)} candidates but {len(references)} references: "
                         "each candidate needs exactly one reference")
    check_texts(candidates, "candidate")
    check_texts(references, "reference")


def _is_empty(text: str) -> bool:
    return not text.strip()


def _pair_notes(candidates: Sequence[str], references: Sequence[str]) -> Dict[str, object]:
    return {"empty_candidates": sum(map(_is_empty, candidates)),
            "empty_references": sum(map(_is_empty, references))}


def _progress(pairs: List[Tuple[str, str]], description: str):
    return tqdm(pairs, desc=description, unit="pair", disable=len(pairs) < PROGRESS_MIN_SAMPLES)


def bleu(candidates: Sequence[str], references: Sequence[str], max_ngram_order: int = 4) -> MetricResult:
    """Sentence BLEU-n of each candidate against its reference, 0-100 (sacrebleu's sentence-level defaults)."""
    from sacrebleu.metrics import BLEU

    check_pairs(candidates, references)
    scorer = BLEU(max_ngram_order=max_ngram_order, effective_order=True)
    pairs = list(zip(candidates, references))
    scores = [scorer.sentence_score(candidate, [reference]).score
              for candidate, reference in _progress(pairs, f"BLEU-{max_ngram_order}")]
    notes = {**_pair_notes(candidates, references), "scale": "0-100",
             "sacrebleu_signature": str(scorer.get_signature())}
    return MetricResult.from_samples(f"bleu_{max_ngram_order}", scores, notes)


def rouge_l(candidates: Sequence[str], references: Sequence[str]) -> MetricResult:
    """ROUGE-L F1 of each candidate against its reference, 0-1 (rouge-score, Porter stemmer)."""
    from rouge_score import rouge_scorer

    check_pairs(candidates, references)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    pairs = list(zip(candidates, references))
    scores = [scorer.score(target=reference, prediction=candidate)["rougeL"].fmeasure
              for candidate, reference in _progress(pairs, "ROUGE-L")]
    notes = {**_pair_notes(candidates, references), "scale": "0-1", "stemmer": True}
    return MetricResult.from_samples("rouge_l", scores, notes)


def normalise_sentence(sentence: str) -> str:
    """Lowercase, strip and collapse runs of whitespace to one space."""
    return " ".join(sentence.lower().split())


def split_sentences(text: str) -> List[str]:
    """Normalised sentences of ``text``: split after . ! or ? followed by whitespace, empty pieces dropped."""
    pieces = (normalise_sentence(piece) for piece in SENTENCE_BREAK.split(text))
    return [piece for piece in pieces if piece]


def unique_sentence_ratio(candidates: Sequence[str]) -> MetricResult:
    """USR of the generated explanations: distinct sentences / all sentences over the whole list.

    ``mean`` is that corpus ratio; ``per_sample`` is, per candidate, the
    fraction of its sentences that occur exactly once in the whole list (NaN
    when it has no sentence); ``std`` is the population std of ``per_sample``.
    """
    check_texts(candidates, "candidate")
    sentences = [split_sentences(candidate) for candidate in candidates]
    counts = Counter(sentence for group in sentences for sentence in group)
    total = sum(counts.values())
    corpus_ratio = len(counts) / total if total else float("nan")
    per_sample = [np.mean([counts[sentence] == 1 for sentence in group]) if group else float("nan")
                  for group in sentences]
    notes = {"sentences": total, "unique_sentences": len(counts),
             "empty_candidates": sum(map(_is_empty, candidates)), "sentence_rule": SENTENCE_RULE,
             "mean_is": "corpus USR (unique / all sentences), not the mean of per_sample"}
    return MetricResult.from_samples("usr", per_sample, notes, mean=corpus_ratio)


def _encoder_max_length(config, tokenizer) -> int:
    """Tokens (special ones included) the encoder accepts: tokenizer and position limits, whichever is smaller."""
    limits = [tokenizer.model_max_length, getattr(config, "max_position_embeddings", None)]
    return int(min(limit for limit in limits if isinstance(limit, int) and limit > 0))


class BERTScoreEvaluator:
    """bert-score's ``BERTScorer`` on a local encoder, loaded once and reused for every batch."""

    def __init__(self, model_path: Optional[str] = None, num_layers: Optional[int] = None,
                 baseline_path: Optional[str] = None, batch_size: int = 32, device: Optional[str] = None):
        from bert_score import BERTScorer
        from transformers import AutoConfig, AutoTokenizer

        from recbole_mmprefer.data.features import default_text_encoder_path

        self.model_path = Path(model_path) if model_path else default_text_encoder_path()
        if not self.model_path.exists():
            raise MissingInputError(f"BERTScore encoder {self.model_path} does not exist")
        config = AutoConfig.from_pretrained(self.model_path)
        self.layer_source = "configured" if num_layers is not None else "last layer (num_hidden_layers)"
        self.num_layers = self._checked_layer(num_layers, config.num_hidden_layers)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.max_length = _encoder_max_length(config, self.tokenizer)
        self.baseline_path = self._checked_baseline(baseline_path)
        self.batch_size = int(batch_size)
        self.scorer = BERTScorer(
            model_type=str(self.model_path), num_layers=self.num_layers, batch_size=self.batch_size,
            device=device, lang="en" if self.baseline_path else None,  # lang only names the unused default baseline
            rescale_with_baseline=self.baseline_path is not None,
            baseline_path=str(self.baseline_path) if self.baseline_path else None)
        # bert-score truncates at its tokenizer's model_max_length, which a tokenizer saved without one gives
        # as ~1e30 (too big for the fast tokenizer): use the limit the encoder really has
        self.scorer._tokenizer.model_max_length = self.max_length
        self._check_baseline_has_layer()

    @classmethod
    def from_settings(cls, settings: TextMetricSettings) -> "BERTScoreEvaluator":
        return cls(settings.bertscore_model, settings.bertscore_layer, settings.bertscore_baseline,
                   settings.batch_size, settings.device)

    def _checked_layer(self, num_layers: Optional[int], model_layers: int) -> int:
        layer = model_layers if num_layers is None else int(num_layers)
        if not 0 <= layer <= model_layers:
            raise InputError(f"BERTScore layer {layer} is outside 0..{model_layers} of {self.model_path}")
        return layer

    @staticmethod
    def _checked_baseline(baseline_path: Optional[str]) -> Optional[Path]:
        if baseline_path is None:
            return None
        path = Path(baseline_path)
        if not path.is_file():
            raise MissingInputError(f"BERTScore baseline file {path} does not exist")
        return path

    def _check_baseline_has_layer(self) -> None:
        if self.baseline_path is None:
            return
        try:
            self.scorer.baseline_vals
        except (IndexError, ValueError, KeyError) as error:
            raise InputError(f"BERTScore baseline {self.baseline_path} has no usable row for layer "
                             f"{self.num_layers} (CSV with columns LAYER,P,R,F, one row per layer from 0)") from error

    @property
    def notes(self) -> Dict[str, object]:
        """The encoder settings every report names."""
        import bert_score

        return {"encoder": str(self.model_path), "layer": self.num_layers, "layer_source": self.layer_source,
                "max_length": self.max_length, "idf": False, "scale": "0-1",
                "rescaled_with_baseline": self.baseline_path is not None,
                "baseline": str(self.baseline_path) if self.baseline_path else None,
                "empty_rule": "a pair with an empty candidate or reference scores 0 (bert-score's rule)",
                "bert_score_version": bert_score.__version__}

    def truncate(self, text: str) -> Optional[str]:
        """``text`` cut before the first word that does not fit the encoder, or None when it all fits.

        A slow (Python) tokenizer gives no word offsets: the text is returned
        as it is and bert-score cuts its tokens at ``model_max_length``.
        """
        encoding = self.tokenizer(text, verbose=False, return_offsets_mapping=self.tokenizer.is_fast)
        if len(encoding["input_ids"]) <= self.max_length:
            return None
        if not self.tokenizer.is_fast:
            return text
        word_ids = encoding.word_ids()
        content = [position for position, word in enumerate(word_ids) if word is not None]
        first_dropped = content[self.max_length - word_ids.count(None)]
        word_start = word_ids.index(word_ids[first_dropped])
        offsets = encoding["offset_mapping"]
        cut = offsets[word_start][0] or offsets[first_dropped][0]  # one word longer than the limit: cut inside it
        return text[:cut].rstrip()

    def _fitted(self, texts: Sequence[str]) -> Tuple[List[str], int]:
        cut = [self.truncate(text) for text in texts]
        fitted = [text if shortened is None else shortened for text, shortened in zip(texts, cut)]
        return fitted, sum(shortened is not None for shortened in cut)

    def _empty_pair_score(self) -> np.ndarray:
        raw = np.zeros(3)
        if self.baseline_path is None:
            return raw
        baseline = self.scorer.baseline_vals.numpy()
        return (raw - baseline) / (1 - baseline)

    def _score_pairs(self, candidates: List[str], references: List[str]) -> np.ndarray:
        """(n, 3) array of P, R, F1; pairs go to bert-score shortest first, a few batches per call."""
        order = sorted(range(len(candidates)), key=lambda index: len(candidates[index]) + len(references[index]))
        scores = np.zeros((len(candidates), 3))
        step = self.batch_size * BATCHES_PER_CALL
        for start in tqdm(range(0, len(order), step), desc="BERTScore", unit="chunk",
                          disable=len(order) <= step):
            chunk = order[start:start + step]
            precision, recall, f1 = self.scorer.score([candidates[index] for index in chunk],
                                                      [references[index] for index in chunk],
                                                      batch_size=self.batch_size)
            scores[chunk] = np.stack([precision.numpy(), recall.numpy(), f1.numpy()], axis=1)
        return scores

    def score(self, candidates: Sequence[str], references: Sequence[str]) -> Dict[str, MetricResult]:
        """BERTScore precision, recall and F1 of each candidate against its reference."""
        check_pairs(candidates, references)
        fitted_candidates, truncated_candidates = self._fitted(candidates)
        fitted_references, truncated_references = self._fitted(references)
        scorable = [index for index, pair in enumerate(zip(candidates, references))
                    if not (_is_empty(pair[0]) or _is_empty(pair[1]))]
        scores = np.tile(self._empty_pair_score(), (len(candidates), 1))
        if scorable:
            scores[scorable] = self._score_pairs([fitted_candidates[index] for index in scorable],
                                                 [fitted_references[index] for index in scorable])
        notes = {**self.notes, **_pair_notes(candidates, references),
                 "truncated_candidates": truncated_candidates, "truncated_references": truncated_references}
        return {name: MetricResult.from_samples(name, scores[:, column], notes)
                for column, name in enumerate(BERTSCORE_NAMES)}


def text_metrics(candidates: Sequence[str], references: Sequence[str],
                 settings: Optional[TextMetricSettings] = None,
                 bertscore: Optional[BERTScoreEvaluator] = None) -> Dict[str, MetricResult]:
    """The text metrics named in ``settings.metrics`` (others, e.g. ``judge``, are left to their modules).

    Keys: ``bertscore_precision``, ``bertscore_recall``, ``bertscore_f1``,
    ``bleu_1``, ``bleu_4``, ``rouge_l``, ``usr``. The encoder is loaded once,
    or ``bertscore`` (an evaluator already loaded, whose own settings win) is used.
    """
    check_pairs(candidates, references)
    settings = settings or TextMetricSettings.from_config(None)
    wanted = set(settings.metrics)
    results: Dict[str, MetricResult] = {}
    if "bertscore" in wanted:
        evaluator = bertscore or BERTScoreEvaluator.from_settings(settings)
        results.update(evaluator.score(candidates, references))
    if "bleu" in wanted:
        for order in BLEU_ORDERS:
            results[f"bleu_{order}"] = bleu(candidates, references, max_ngram_order=order)
    if "rouge_l" in wanted:
        results["rouge_l"] = rouge_l(candidates, references)
    if "usr" in wanted:
        results["usr"] = unique_sentence_ratio(candidates)
    return results
