"""`mmprefer run --task preference`: ExplainRec part 1 end to end (design section 4), each stage skipped when up to
date.

1. preference samples (TALLRec's protocol; ``mmprefer preferences``);
2. item features where ExplainRec fuses modalities (``mmprefer features``);
3. TALLRec and ExplainRec tuned on the same ``pipeline_preference_shots`` samples;
4. P(Yes) of the first ``pipeline_preference_test_samples`` test samples for the frozen LLM (zero-shot),
   TALLRec and ExplainRec, and their AUC;
5. a report, ``<run_dir>/preference_report/preference.md``: the AUC table and a few test samples with each
   model's P(Yes).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

from recbole_mmprefer.artifacts import ARTIFACTS
from recbole_mmprefer.settings import StageSettings, check_int, check_optional_int
from recbole_mmprefer.utils import json_sha256

logger = logging.getLogger(__name__)


@dataclass
class PreferencePipelineSettings(StageSettings):
    """The ``pipeline_preference_*`` keys, checked."""

    PREFIX = "pipeline_preference_"

    shots: Optional[int]
    test_samples: Optional[int]
    report_samples: int

    def __post_init__(self):
        self.shots = check_optional_int("pipeline_preference_shots", self.shots, 1)
        self.test_samples = check_optional_int("pipeline_preference_test_samples", self.test_samples, 1)
        self.report_samples = check_int("pipeline_preference_report_samples", self.report_samples, 0)


def with_keys(config, **keys):
    """A copy of a RecBole Config (or dict) with some keys changed, for one stage of the pipeline."""
    import copy

    changed = copy.deepcopy(config)
    for key, value in keys.items():
        changed[key] = value
    return changed


def run_preference_pipeline(config, force: bool = False) -> Path:
    """All preference stages for ``config["dataset"]``; returns the report file."""
    from recbole_mmprefer.data.features import build_features
    from recbole_mmprefer.data.preferences import build_preferences
    from recbole_mmprefer.preference.score import read_auc, score_preferences
    from recbole_mmprefer.preference.settings import PreferenceModelConfig
    from recbole_mmprefer.preference.train import train_preference_model

    settings = PreferencePipelineSettings.from_config(config)
    build_preferences(config, force=force)
    files: Dict[str, Path] = {"zero-shot (frozen LLM)": score_preferences(
        with_keys(config, preference_system="tallrec"), None, "test", max_samples=settings.test_samples)}
    for system, label in (("tallrec", "TALLRec"), ("explainrec", "ExplainRec")):
        stage = with_keys(config, preference_system=system, preference_shots=settings.shots)
        model = PreferenceModelConfig.from_config(stage)
        if model.explainrec is not None and model.explainrec.multimodal:
            for modality in stage["modalities"]:
                build_features(stage, modality)
        model_dir = train_preference_model(stage, force=force)
        files[label] = score_preferences(stage, model_dir, "test", max_samples=settings.test_samples)
    aucs = {label: read_auc(path) for label, path in files.items()}
    return write_preference_report(config, files, aucs, settings)


def write_preference_report(config, files: Dict[str, Path], aucs: Dict[str, dict],
                            settings: PreferencePipelineSettings) -> Path:
    """report/preference.md: the AUC per system and the first test samples with each system's P(Yes)."""
    from recbole_mmprefer.data.preferences import read_preferences
    from recbole_mmprefer.jsonl import read_records

    scores = {label: {row["index"]: row["p_yes"] for row in read_records(path)} for label, path in files.items()}
    samples = {sample["index"]: sample for sample in read_preferences(config) if sample["split"] == "test"}
    shots = "every train sample" if settings.shots is None else f"{settings.shots} train samples"
    lines = [f"# Preference prediction on {config['dataset']}", "",
             f"Tuned on {shots} (TALLRec's protocol, `preference_shot_seed` order); AUC of P(Yes) on the first "
             f"{next(iter(aucs.values()))['samples']} test samples.", "", "| system | AUC | samples | scores |",
             "|---|---|---|---|"]
    lines += [f"| {label} | {meta['auc']:.4f} | {meta['samples']} | `{files[label]}` |" for label, meta in aucs.items()]
    lines += ["", "## Test samples", ""]
    for index in list(next(iter(scores.values())))[:settings.report_samples]:
        sample = samples[index]
        liked = [entry["title"] for entry in sample["history"] if entry["liked"]]
        disliked = [entry["title"] for entry in sample["history"] if not entry["liked"]]
        lines += [f"- user {sample['user_id']}, target \"{sample['title']}\" (truth: "
                  f"{'Yes' if sample['label'] else 'No'}); liked {liked}, disliked {disliked}; P(Yes): "
                  + ", ".join(f"{label} {scores[label][index]:.3f}" for label in scores)]
    text = "\n".join(lines) + "\n"
    with ARTIFACTS["preference_report"].writing(config, json_sha256(text), {"scores": {k: str(v) for k, v in
                                                                                     files.items()}}) as staging:
        (staging / "preference.md").write_text(text, encoding="utf-8")
    out = ARTIFACTS["preference_report"].file(config)
    logger.info("Preference report: %s", out)
    return out

