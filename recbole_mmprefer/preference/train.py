"""Tuning a preference model (TALLRec's recipe; ExplainRec, design section 4): `train_preference_model`.

The few-shot training set (``preference_shots`` samples of the train split in
their seeded ``shot_rank`` order; None: all of them) is tokenised with
TALLRec's prompt, and LoRA is tuned on the NLL of the answer ("Yes." / "No.")
for ``preference_epochs`` epochs with AdamW at ``preference_learning_rate``,
``preference_batch_size`` samples per step in an order seeded by (seed, epoch),
bfloat16 autocast where ``preference_bf16`` (auto: where the CPU has it).
The folder gets ``adapter.safetensors`` (the LoRA weights), its
``preference_config.json`` and, last, ``meta.json`` (input hash, losses); a
rerun with the same inputs is skipped.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from recbole_mmprefer.artifacts import ARTIFACTS, is_fresh_at, write_meta
from recbole_mmprefer.data.preferences import WINDOWS, few_shot, read_preferences
from recbole_mmprefer.errors import InputError
from recbole_mmprefer.explainer.pair_data import llm_identity
from recbole_mmprefer.explainer.train import EpochBatches
from recbole_mmprefer.preference.meta import AdaptationSettings, reptile
from recbole_mmprefer.preference.model import PreferenceModel
from recbole_mmprefer.preference.settings import (
    PreferenceModelConfig,
    PreferenceTrainingSettings,
    shots_name,
)
from recbole_mmprefer.utils import json_sha256

logger = logging.getLogger(__name__)

ADAPTER_FILE = "adapter.safetensors"


def sample_keys(samples: Sequence[dict]) -> List[list]:
    """What the model sees of each sample (for input hashes)."""
    return [[s["index"], s["item_id"], s["title"], s["label"], [[h["item_id"], h["title"], h["liked"]]
                                                                 for h in s["history"]]]
            + ([s["knowledge"]] if s.get("knowledge") else []) for s in samples]


def prompt_samples(config, settings: PreferenceModelConfig, samples_name: str, samples: Sequence[dict]) -> List[dict]:
    """The samples as the prompts see them: with the knowledge base's priors under ``preference_knowledge``."""
    if not settings.prompt.knowledge:
        return list(samples)
    from recbole_mmprefer.preference.knowledge import attach_knowledge

    return attach_knowledge(config, samples_name, samples, settings.prompt.item_kind)


def train_preference_model(config, out_dir: Optional[Path] = None, *, samples: Optional[Sequence[dict]] = None,
                           samples_name: str = WINDOWS, force: bool = False) -> Path:
    """Tune LoRA on the few-shot training set; returns the model folder (default
    ``<run_dir>/preference_models/tallrec-<shots>``)."""
    settings, training = PreferenceModelConfig.from_config(config), PreferenceTrainingSettings.from_config(config)
    if not settings.lora.enabled:
        raise InputError("preference_lora: False leaves nothing to tune; score zero-shot instead (no model folder)")
    samples = read_preferences(config, samples_name) if samples is None else list(samples)
    samples = prompt_samples(config, settings, samples_name, samples)
    train = few_shot(samples, training.shots)
    if not train:
        raise InputError("the preference samples have no train split to tune on")
    adaptation = AdaptationSettings.from_config(config)
    name = model_name(settings, training.shots) + ("-meta" if adaptation.meta_steps else "") + (
        "" if samples_name == WINDOWS else f"-{samples_name}")
    out_dir = Path(out_dir) if out_dir is not None else ARTIFACTS["preference_model"].dir(config, name=name)
    input_hash = json_sha256({"train": sample_keys(train), "settings": settings.to_config(),
                              "training": training.results_keys(), "llm": llm_identity(settings.llm),
                              "features": features_fingerprint(settings, config),
                              **({"meta": adaptation.to_config()} if adaptation.meta_steps else {})})
    if not force and is_fresh_at(out_dir, input_hash, ARTIFACTS["preference_model"].files):
        logger.info("The preference model is up to date in %s", out_dir)
        return out_dir
    started = time.perf_counter()
    model = build_preference_model(settings, config)
    examples = [model.examples(sample, with_answers=True) for sample in train]
    history = tune(model, examples, training, settings.seed)
    meta_log = reptile(model, train, adaptation, settings.seed, bf16=training.bf16) if adaptation.meta_steps else []
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "meta.json").unlink(missing_ok=True)
    save_file(model.trainable_state_dict(), str(out_dir / ADAPTER_FILE))
    settings.save(out_dir)
    write_meta(out_dir, input_hash, {
        "system": settings.system, "shots": training.shots, "train_samples": len(train), "history": history,
        "meta_steps": len(meta_log),
        "settings": settings.to_config(), "training": training.to_config(), "llm": llm_identity(settings.llm),
        "seconds": round(time.perf_counter() - started, 3)})
    logger.info("Wrote the preference model (%d train samples, final loss %.4f) to %s", len(train),
                history[-1]["train_loss"], out_dir)
    return out_dir


def model_name(settings: PreferenceModelConfig, shots: Optional[int]) -> str:
    """``tallrec-64shot``, ``explainrec-64shot``, ``explainrec-no_attribution-knowledge-64shot``, ..."""
    off = [] if settings.explainrec is None else [
        f"no_{part}" for part in ("attribution", "multimodal", "multitask") if not getattr(settings.explainrec, part)]
    return "-".join([settings.system, *off, *(["knowledge"] if settings.prompt.knowledge else []), shots_name(shots)])


def features_fingerprint(settings: PreferenceModelConfig, config) -> Optional[dict]:
    """The input hash of each modality's features (the ``features`` artifact), where ExplainRec fuses them."""
    if settings.explainrec is None or not settings.explainrec.multimodal:
        return None
    return {modality: ARTIFACTS["features"].input_hash(config, modality=modality) for modality in config["modalities"]}


def build_preference_model(settings: PreferenceModelConfig, config=None) -> PreferenceModel:
    """TALLRec's model, or ExplainRec's with the run's feature store where it fuses modalities."""
    if settings.system != "explainrec":
        return PreferenceModel.build(settings)
    from recbole_mmprefer.preference.explainrec import ExplainRecModel
    from recbole_mmprefer.preference.fusion import ModalityFeatures

    features = ModalityFeatures.from_config(config) if settings.explainrec.multimodal else None
    return ExplainRecModel.build(settings, item_features=features)


def tune(model: PreferenceModel, examples: Sequence[list], training: PreferenceTrainingSettings,
         seed: int) -> List[dict]:
    """The training loop over samples (each a list of its token sequences); returns per epoch the mean loss and
    the mean of each logged part (task losses, task weights, modality weights)."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=training.learning_rate)
    sampler = EpochBatches([sum(len(example) for example in sample) for sample in examples], training.batch_size,
                           seed)
    model.train()
    if training.gradient_checkpointing:  # less memory, but no key/value cache: ExplainRec then runs whole sequences
        model.causal_lm().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    history = []
    for epoch in range(1, training.epochs + 1):
        sampler.set_epoch(epoch)
        torch.manual_seed(seed * 1_000_003 + epoch)
        losses, parts = [], []
        for indices in tqdm(list(sampler), desc=f"preference epoch {epoch}/{training.epochs}", unit="batch"):
            batch = model.collate([example for n in indices for example in examples[n]])
            with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=training.bf16):
                loss, logged = model.training_loss(batch)
            if not torch.isfinite(loss.detach()):
                raise InputError(f"preference loss is {float(loss)} at epoch {epoch}: lower preference_learning_rate")
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(float(loss.detach()))
            parts.append(logged)
        means = {key: float(np.mean([part[key] for part in parts])) for key in parts[0]}
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), **means})
        logger.info("preference epoch %d/%d: loss %.4f (%s)", epoch, training.epochs, history[-1]["train_loss"],
                    ", ".join(f"{key} {value:.3f}" for key, value in means.items()))
    if training.gradient_checkpointing:
        model.causal_lm().gradient_checkpointing_disable()
    model.eval()
    return history
