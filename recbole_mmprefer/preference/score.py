"""Scoring preference samples (TALLRec's evaluation; ExplainRec, design section 4): `score_preferences`, AUC.

Each sample of a split gets P(Yes) (:meth:`PreferenceModel.p_yes`) from a tuned
model folder, or zero-shot from the frozen LLM (no folder); batches are formed
from samples of similar length, left-padded. The scores are written as JSON
lines (``index``, ``user_id``, ``item_id``, ``label``, ``p_yes``) in sample
order with a side-car meta holding the AUC (scikit-learn's
``roc_auc_score``; NaN when the split has one label only). A tuned model
scoring new users (cold-start samples) first adapts to each user's support
set and is restored after (:mod:`.meta`; ``coldstart_adaptation_steps: 0``
scores without).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from safetensors.torch import load_file
from tqdm import tqdm

from recbole_mmprefer.artifacts import ARTIFACTS, is_fresh_at, read_meta_at, write_meta
from recbole_mmprefer.data.preferences import WINDOWS, read_preferences
from recbole_mmprefer.errors import InputError
from recbole_mmprefer.explainer.pair_data import llm_identity
from recbole_mmprefer.jsonl import write_jsonl
from recbole_mmprefer.preference.meta import AdaptationSettings, adapted_scores
from recbole_mmprefer.preference.model import PreferenceModel
from recbole_mmprefer.preference.settings import PreferenceModelConfig, PreferenceTrainingSettings
from recbole_mmprefer.preference.train import (
    ADAPTER_FILE,
    build_preference_model,
    features_fingerprint,
    prompt_samples,
    sample_keys,
)
from recbole_mmprefer.resources import stage_setting
from recbole_mmprefer.utils import file_sha256, json_sha256

logger = logging.getLogger(__name__)


def auc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """ROC AUC (scikit-learn); NaN when only one label occurs."""
    from sklearn.metrics import roc_auc_score

    if len(set(int(label) for label in labels)) < 2:
        return math.nan
    return float(roc_auc_score(np.asarray(labels, dtype=int), np.asarray(scores, dtype=float)))


def load_preference_model(config, model_dir: Optional[Path]) -> PreferenceModel:
    """The tuned model of ``model_dir`` (its saved settings), or the frozen LLM of ``config`` (None) with the
    configured system's prompt (TALLRec's, or ExplainRec's)."""
    if model_dir is None:
        return build_preference_model(PreferenceModelConfig.from_config(config).zero_shot(), config).eval()
    model_dir = Path(model_dir)
    if read_meta_at(model_dir) is None or not (model_dir / ADAPTER_FILE).is_file():
        raise ARTIFACTS["preference_model"].missing(model_dir, str(config["dataset"]))
    model = build_preference_model(PreferenceModelConfig.load(model_dir, config), config)
    model.load_trainable_state_dict(load_file(str(model_dir / ADAPTER_FILE)))
    return model.eval()


def score_samples(model: PreferenceModel, samples: Sequence[dict], batch_size: int, bf16: bool) -> List[float]:
    """P(Yes) per sample, in sample order."""
    examples = [model.examples(sample, with_answers=False)[0] for sample in samples]
    order = np.argsort([len(example) for example in examples], kind="stable")
    scores = np.zeros(len(samples))
    for start in tqdm(range(0, len(order), batch_size), desc="P(Yes)", unit="batch"):
        chunk = order[start:start + batch_size]
        batch = model.collate([examples[n] for n in chunk])
        with torch.no_grad(), torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=bf16):
            scores[chunk] = model.score(batch).float().cpu().numpy()
    return scores.tolist()


def score_preferences(config, model_dir: Optional[Path] = None, split: str = "test", out_file: Optional[Path] = None,
                      *, samples_name: str = WINDOWS, max_samples: Optional[int] = None,
                      force: bool = False) -> Path:
    """Write P(Yes) for the split's samples (the first ``max_samples``); returns the file (default
    ``<run_dir>/preference_scores/<model folder name or zeroshot>-<samples>-<split>.jsonl``)."""
    training = PreferenceTrainingSettings.from_config(config)
    settings = (PreferenceModelConfig.load(model_dir, config) if model_dir is not None
                else PreferenceModelConfig.from_config(config).zero_shot())
    samples = prompt_samples(config, settings, samples_name, read_preferences(config, samples_name))
    samples = [sample for sample in samples if sample["split"] == split]
    if max_samples is not None:
        samples = samples[:max_samples]
    if not samples:
        raise InputError(f"the preference samples {samples_name!r} have no {split!r} split to score")
    name = f"{Path(model_dir).name if model_dir is not None else 'zeroshot'}-{samples_name}-{split}"
    out_file = Path(out_file) if out_file is not None else ARTIFACTS["preference_scores"].file(config, name=name)
    adaptation = AdaptationSettings.from_config(config)
    adapting = adaptation.adaptation_steps > 0 and model_dir is not None and any(
        sample.get("cold") == "user" for sample in samples)
    input_hash = json_sha256({"samples": sample_keys(samples), "settings": settings.to_config(),
                              **({"adaptation": adaptation.to_config()} if adapting else {}),
                              "reasons": [stage_setting(config, key) for key in ("preference_reason_samples",
                                                                                 "preference_reason_max_tokens")],
                              "llm": llm_identity(settings.llm), "bf16": training.bf16,
                              "features": features_fingerprint(settings, config),
                              "adapter": file_sha256(Path(model_dir) / ADAPTER_FILE) if model_dir else None})
    if not force and is_fresh_at(out_file, input_hash, is_file=True):
        logger.info("Preference scores are up to date in %s", out_file)
        return out_file
    model = load_preference_model(config, model_dir)
    adapted = None
    if adapting:
        scores, adapted = adapted_scores(model, samples, adaptation, lambda m, rows: score_samples(
            m, rows, training.score_batch_size, training.bf16), training.bf16)
    else:
        scores = score_samples(model, samples, training.score_batch_size, training.bf16)
    records = [{"index": s["index"], "user_id": s["user_id"], "item_id": s["item_id"], "label": s["label"],
                "p_yes": score} for s, score in zip(samples, scores)]
    reasons = explain_reasons(config, model, samples, scores, records)
    write_jsonl(out_file, records)
    result = auc([s["label"] for s in samples], scores)
    write_meta(out_file, input_hash, {"auc": result, "samples": len(samples), "split": split,
                                      "samples_name": samples_name, "model_dir": str(model_dir) if model_dir else None,
                                      "zero_shot": model_dir is None, "reasons": reasons,
                                      "adaptation": {**adaptation.to_config(), **adapted} if adapted else None},
               is_file=True)
    logger.info("AUC %.4f over %d %s samples; scores in %s", result, len(samples), split, out_file)
    return out_file


def explain_reasons(config, model, samples: Sequence[dict], scores: Sequence[float],
                    records: List[dict]) -> Optional[Dict[str, object]]:
    """ExplainRec's reasons for the first ``preference_reason_samples`` samples (added to their records) and,
    where the samples carry the user's own review as a reference, their BLEU-4 and BERTScore against it."""
    count = int(stage_setting(config, "preference_reason_samples") or 0)
    if getattr(model, "explainrec", None) is None or not model.explainrec.attribution or count <= 0:
        return None
    chosen = list(range(min(count, len(samples))))
    texts = model.generate_reasons([samples[n] for n in chosen], [int(scores[n] >= 0.5) for n in chosen],
                                   int(stage_setting(config, "preference_reason_max_tokens")))
    for n, text in zip(chosen, texts):
        records[n]["reason"] = text
    pairs = [(text, samples[n]["review"]) for n, text in zip(chosen, texts) if samples[n].get("review")]
    summary: Dict[str, object] = {"generated": len(texts), "with_reference": len(pairs)}
    if pairs:
        from recbole_mmprefer.evaluation.metrics import TextMetricSettings, text_metrics

        settings = TextMetricSettings.from_config(config, metrics=["bertscore", "bleu"])
        results = text_metrics([c for c, _ in pairs], [r for _, r in pairs], settings)
        summary.update({name: results[name].mean for name in ("bleu_4", "bertscore_f1")})
    return summary


def read_auc(score_file: Path) -> Dict[str, object]:
    """The meta of a score file (``auc``, ``samples``, ...)."""
    meta = read_meta_at(Path(score_file), is_file=True)
    if meta is None:
        raise InputError(f"{score_file} has no meta: it was not written by `mmprefer preference-score`")
    return meta
