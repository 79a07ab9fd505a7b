"""LLM judge of explanations, GPTScore as XRec and G-Refer use it (paper section 4.2; design section 5).

An LLM reads the reference (ground-truth) explanation and the predicted one
and answers a score from 0 to 100 for how well the prediction matches the
reference in meaning. The answer is parsed robustly (``85``, ``Score: 85/100``,
``I'd give it 85 out of 100.``, ``85.5``); a number outside 0..100, a score on
another scale (``8/10``) or no number is unparsed. An unparsed answer is asked
again once with a stricter instruction; still unparsed, the pair has no score
(NaN, counted as ``missing`` in the notes), never 0.

Backends (:mod:`recbole_mmprefer.llm_backends`, shared with the LLM
profiles): the local causal LM of ``llm_path`` (default the bundled
SmolLM2-135M-Instruct, greedy decoding) or, when ``eval_judge_api_base`` is
set, an OpenAI-compatible endpoint (``eval_judge_api_model``, key from the
environment variable ``eval_judge_api_key_env``, temperature 0). Replies go
through a :class:`~recbole_mmprefer.llm_backends.ReplyBatcher`, cached in a
JSON-lines file keyed by (model, prompt hash), by default
``<run_dir>/judge_cache.jsonl``, so scoring again generates nothing twice and
a fully cached run does not even load the model.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

from recbole_mmprefer.evaluation.metrics import MetricResult, check_pairs
from recbole_mmprefer.llm_backends import (
    ApiLM,
    Backend,
    BackendSettings,
    LocalLM,
    ReplyBatcher,
    ReplyCache,
    ReplyStats,
    make_backend,
)

JUDGE_PROMPT = (
    "You are judging an explanation written by a recommender system. It says why a user would enjoy an item.\n\n"
    "Reference explanation (ground truth): {reference}\n"
    "Predicted explanation: {prediction}\n\n"
    "How well does the predicted explanation match the reference in meaning: the same reasons, item features and "
    "user preferences, whatever the wording? Rate it from 0 (unrelated or contradicting) to 100 (the same "
    "meaning).\n"
    'Answer with the score only, in the form "Score: <number>".')
STRICT_INSTRUCTION = ("\n\nYour reply must be a single number from 0 to 100 (for example 40), "
                      "with no other words or symbols.")
CACHE_NAME = "judge_cache.jsonl"

NUMBER = r"(?<![\w.])[-+]?\d+(?:\.\d+)?"
_SCALE_MENTION = re.compile(r"(?<![\w.])0\s*(?:-|–|to)\s*100(?![\w.])", re.IGNORECASE)
_OUT_OF = re.compile(rf"({NUMBER})\s*(?:/|out of)\s*(\d+(?:\.\d+)?)", re.IGNORECASE)
_LABELLED = re.compile(rf"\b(?:score|rating|rate|rated|give|grade)\w*\b[^\d+-]{{0,24}}?({NUMBER})", re.IGNORECASE)
_LEADING = re.compile(rf"^[^\w+-]*({NUMBER})")
_ANY = re.compile(NUMBER)


# --------------------------------------------------------------------------- prompts and parsing

def judge_prompt(prediction: str, reference: str) -> str:
    """The question put to the judge for one pair."""
    return JUDGE_PROMPT.format(prediction=prediction.strip(), reference=reference.strip())


def strict_prompt(prediction: str, reference: str) -> str:
    """The follow-up question after an unparsed answer: the same, demanding a bare number."""
    return judge_prompt(prediction, reference) + STRICT_INSTRUCTION


def _score(text: str) -> Optional[float]:
    value = float(text)
    return value if 0.0 <= value <= 100.0 else None


def parse_score(reply: Optional[str]) -> Optional[float]:
    """The 0-100 score in a judge's reply, or None when there is none (or it is out of range / another scale).

    In order: ``N/100`` or ``N out of 100`` (any other denominator: None); a
    number after score / rating / rate / give / grade; a number opening the
    reply; the only number of the reply. A mention of the scale ("0-100",
    "0 to 100") is ignored.
    """
    text = _SCALE_MENTION.sub(" ", reply or "")
    fractions = _OUT_OF.findall(text)
    if fractions:
        on_100 = [numerator for numerator, denominator in fractions if float(denominator) == 100]
        return _score(on_100[0]) if on_100 else None
    for pattern in (_LABELLED, _LEADING):
        match = pattern.search(text)
        if match:
            return _score(match.group(1))
    numbers = {float(number) for number in _ANY.findall(text)}
    return _score(str(numbers.pop())) if len(numbers) == 1 else None


# --------------------------------------------------------------------------- scoring

def judge_model_name(config=None) -> str:
    """The judge's model: the endpoint's model name, else the local LM's short name."""
    return BackendSettings.for_judge(config).model_name()


def _cache_file(run_dir, cache_path) -> Optional[Path]:
    if cache_path is not None:
        return Path(cache_path)
    return Path(run_dir) / CACHE_NAME if run_dir is not None else None


def judge_scores(candidates: Sequence[str], references: Sequence[str], config=None,
                 run_dir: Optional[Union[str, Path]] = None, cache_path: Optional[Union[str, Path]] = None,
                 backend: Optional[Backend] = None) -> MetricResult:
    """``llm_judge``: the judge's 0-100 score per pair (NaN where no answer parsed, even after one retry).

    ``backend`` is any object with ``name`` and ``generate(prompts, max_new_tokens=...)``
    (default: :func:`~recbole_mmprefer.llm_backends.make_backend` of the judge's settings, made only when a
    reply is not cached). Replies are cached in ``cache_path``, else ``<run_dir>/judge_cache.jsonl``,
    else only in memory.
    """
    check_pairs(candidates, references)
    settings = BackendSettings.for_judge(config)
    name = backend.name if backend is not None else settings.model_name()
    cache_file = _cache_file(run_dir, cache_path)
    replies = ReplyBatcher(ReplyCache(cache_file, name, settings.max_new_tokens),
                           lambda: backend if backend is not None else make_backend(settings), settings.llm_batch_size)
    scores = [parse_score(reply) for reply in replies([judge_prompt(*pair) for pair in zip(candidates, references)])]
    unparsed = [index for index, score in enumerate(scores) if score is None]
    again = replies([strict_prompt(candidates[index], references[index]) for index in unparsed])
    for index, reply in zip(unparsed, again):
        scores[index] = parse_score(reply)
    missing = sum(1 for score in scores if score is None)
    notes = _notes(settings, name, backend, cache_file, replies.stats, retried=len(unparsed), missing=missing)
    return MetricResult.from_samples("llm_judge", [math.nan if score is None else score for score in scores], notes)


def _notes(settings: BackendSettings, name: str, backend: Optional[Backend], cache_file: Optional[Path],
           stats: ReplyStats, retried: int, missing: int) -> Dict[str, object]:
    if backend is not None:
        kind = "api" if isinstance(backend, ApiLM) else "local" if isinstance(backend, LocalLM) else "custom"
    else:
        kind = settings.kind
    return {"judge": name, "backend": kind, "scale": "0-100", "missing": missing, "retried": retried,
            "generated": stats.generated, "cached": stats.cached, "cache": str(cache_file) if cache_file else None,
            "prompt_sha256": hashlib.sha256(JUDGE_PROMPT.encode()).hexdigest()[:12],
            "max_new_tokens": settings.max_new_tokens}
