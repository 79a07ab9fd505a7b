"""Tuning a preference model (TALLRec's recipe; ExplainRec, design section 4): `train_preference_model`.

The few-shot training set (``preference_shots`` samples of the train split in
their seeded ``shot_rank`` order; None: all of them) is tokenised with
TALLRec's prompt, and LoRA is tuned on the NLL of the answer ("Yes." / "No.")
for ``preference_epochs`` epochs with AdamW at ``preference_learning_rate``,
``preference_batch_size`` samples per step in an order seeded by (seed, epoch),
bfloat16 autocast where ``preference_bf16`` (auto: where the CPU has it).
While it trains, the folder holds a checkpoint after each epoch and every
``preference_checkpoint_steps`` steps (LoRA and fusion weights, optimizer
and random state); a rerun with the same inputs resumes from the latest and
takes the steps it would have taken. When it ends, the folder gets
``adapter.safetensors`` (the LoRA weights), its ``preference_config.json`` and,
last, ``meta.json`` (input hash, losses); a rerun with the same inputs is
skipped.
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
from recbole_mmprefer.explainer.checkpoints import (
    latest_checkpoint,
    read_checkpoint,
    remove_checkpoints,
    restore_random_state,
    write_checkpoint,
)
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
    inputs = {"train": sample_keys(train), "settings": settings.to_config(), "training": training.results_keys(),
              "llm": llm_identity(settings.llm), "features": features_fingerprint(settings, config),
              **({"meta": adaptation.to_config()} if adaptation.meta_steps else {})}
    input_hash = json_sha256(inputs)
    if not force and is_fresh_at(out_dir, input_hash, ARTIFACTS["preference_model"].files):
        logger.info("The preference model is up to date in %s", out_dir)
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "meta.json").unlink(missing_ok=True)
    if force:
        remove_checkpoints(out_dir)
    started = time.perf_counter()
    model = build_preference_model(settings, config)
    examples = [model.examples(sample, with_answers=True) for sample in train]
    history = tune(model, examples, training, settings.seed, out_dir, resume_hash(inputs))
    meta_log = reptile(model, train, adaptation, settings.seed, bf16=training.bf16) if adaptation.meta_steps else []
    save_file(model.trainable_state_dict(), str(out_dir / ADAPTER_FILE))
    settings.save(out_dir)
    write_meta(out_dir, input_hash, {
        "system": settings.system, "shots": training.shots, "train_samples": len(train), "history": history,
        "meta_steps": len(meta_log),
        "settings": settings.to_config(), "training": training.to_config(), "llm": llm_identity(settings.llm),
        "seconds": round(time.perf_counter() - started, 3)})
    remove_checkpoints(out_dir)
    logger.info("Wrote the preference model (%d train samples, final loss %.4f) to %s", len(train),
                history[-1]["train_loss"], out_dir)
    return out_dir


def resume_hash(inputs: dict) -> str:
    """The inputs without the epoch count: a run asked for more epochs continues after the last checkpoint."""
    training = {key: value for key, value in inputs["training"].items() if key != "preference_epochs"}
    return json_sha256({**inputs, "training": training})


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


class TuningRun:
    """The training loop over samples (each a list of its token sequences), checkpointed in ``out_dir`` after
    every epoch and every ``preference_checkpoint_steps`` steps, and resumed from the latest checkpoint of
    the same inputs (``resume_hash``): a resumed run takes the same steps, in the same order, with the same
    random state as one that never stopped."""

    def __init__(self, model: PreferenceModel, examples: Sequence[list], training: PreferenceTrainingSettings,
                 seed: int, out_dir: Optional[Path] = None, resume_hash: Optional[str] = None):
        self.model, self.examples, self.training, self.seed = model, examples, training, seed
        self.out_dir, self.resume_hash = out_dir, resume_hash
        self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                           lr=training.learning_rate)
        self.sampler = EpochBatches([sum(len(example) for example in sample) for sample in examples],
                                    training.batch_size, seed)
        self.history: List[dict] = []
        self.first_epoch, self.mid_epoch, self.mid_epoch_steps = 1, None, []

    def resume(self) -> None:
        found = latest_checkpoint(self.out_dir, self.resume_hash, self.training.epochs) if self.out_dir else None
        if found is None:
            return
        state = read_checkpoint(found, self.model, self.optimizer)
        self.history = list(state["history"])
        self.first_epoch = found.epoch + 1 if found.step is None else found.epoch
        if found.step is not None:
            self.mid_epoch, self.mid_epoch_steps = found, list(state["step_losses"])
        logger.info("Resuming the preference model at epoch %d, step %d, from %s", self.first_epoch,
                    len(self.mid_epoch_steps), found.folder)

    def run(self) -> List[dict]:
        """Per epoch, the mean loss and the mean of each logged part (task losses, task weights, modality
        weights)."""
        self.resume()
        self.model.train()
        if self.training.gradient_checkpointing:  # less memory, but no key/value cache: ExplainRec then runs whole
            self.model.causal_lm().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        for epoch in range(self.first_epoch, self.training.epochs + 1):
            steps = self.epoch_steps(epoch)
            means = {key: float(np.mean([step[key] for step in steps])) for key in steps[0]}
            self.history.append({"epoch": epoch, **means})
            logger.info("preference epoch %d/%d: loss %.4f (%s)", epoch, self.training.epochs, means["train_loss"],
                        ", ".join(f"{key} {value:.3f}" for key, value in means.items() if key != "train_loss"))
            if self.out_dir is not None:
                write_checkpoint(self.out_dir, epoch, self.model, self.optimizer, self.resume_hash, self.history)
        if self.training.gradient_checkpointing:
            self.model.causal_lm().gradient_checkpointing_disable()
        self.model.eval()
        return self.history

    def epoch_steps(self, epoch: int) -> List[dict]:
        """Each step's loss and logged parts, continuing after the mid-epoch checkpoint it resumes from."""
        self.sampler.set_epoch(epoch)
        torch.manual_seed(self.seed * 1_000_003 + epoch)
        batches = list(self.sampler)
        resuming = self.mid_epoch is not None and self.mid_epoch.epoch == epoch
        steps = list(self.mid_epoch_steps) if resuming else []
        if resuming:
            restore_random_state(self.mid_epoch)
        progress = tqdm(batches[len(steps):], desc=f"preference epoch {epoch}/{self.training.epochs}", unit="batch",
                        initial=len(steps), total=len(batches))
        for step, indices in enumerate(progress, start=len(steps) + 1):
            steps.append(self.step(epoch, indices))
            if self.out_dir is not None and step < len(batches) and self.training.checkpoint_due(step):
                write_checkpoint(self.out_dir, epoch, self.model, self.optimizer, self.resume_hash, self.history,
                                 step=step, step_losses=steps)
        return steps

    def step(self, epoch: int, indices: Sequence[int]) -> dict:
        batch = self.model.collate([example for n in indices for example in self.examples[n]])
        with torch.autocast(self.model.device.type, dtype=torch.bfloat16, enabled=self.training.bf16):
            loss, logged = self.model.training_loss(batch)
        if not torch.isfinite(loss.detach()):
            raise InputError(f"preference loss is {float(loss)} at epoch {epoch}: lower preference_learning_rate")
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        return {"train_loss": float(loss.detach()), **logged}


def tune(model: PreferenceModel, examples: Sequence[list], training: PreferenceTrainingSettings, seed: int,
         out_dir: Optional[Path] = None, resume_hash: Optional[str] = None) -> List[dict]:
    """Tune ``model`` on ``examples`` (see :class:`TuningRun`); with ``out_dir``, checkpointed and resumable."""
    return TuningRun(model, examples, training, seed, out_dir, resume_hash).run()
