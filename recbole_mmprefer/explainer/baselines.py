"""Training and generation of the explanation baselines (issue 14): `train_explainer_model`, `generate_with_model`.

``mmprefer train --model PETER`` (NRT, Att2Seq, PETER, PEPLER, CER; see
:mod:`recbole_mmprefer.registry`) trains on the explanation table's train split
with a word vocabulary built from it (PEPLER: the LLM's tokens) and writes the
``explainer_model`` artifact ``<run_dir>/explainer_models/<Model>/``:
``model.safetensors`` (the weights of the epoch with the lowest validation
loss; the last epoch without a valid split), ``model_config.json`` (the model
name and every setting it was built with), ``vocabulary.json`` (``null`` for
PEPLER, which reads the LLM's own tokenizer),
``indices.json`` (user and item ids, rating range) and ``training_log.jsonl``;
the meta records the inputs' hash, so a rerun with the same inputs is skipped.

Training is resumable at step granularity: every ``baseline_checkpoint_steps``
steps (and at each epoch end) the weights, optimizer, position and random
state go to ``checkpoint.pt``; the same command resumes from it. Each epoch's
order is a permutation drawn from ``seed`` and the epoch, so a resumed run
sees the batches an uninterrupted one would.

``mmprefer generate --model PETER`` writes the ``generations`` file
``<Model>-<split>.jsonl`` (greedy decoding, ``baseline_max_words`` tokens),
the format every explainer writes and ``mmprefer evaluate`` reads.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from recbole_mmprefer.artifacts import ARTIFACTS, META, is_fresh_at, write_meta
from recbole_mmprefer.data.generations import write_generations
from recbole_mmprefer.errors import InputError, Interrupted, TrainingDiverged
from recbole_mmprefer.explainer.baseline_data import (
    IdIndex,
    RatingScale,
    load_indices,
    pair_ratings,
    pairs_of,
    save_indices,
    with_explanations,
)
from recbole_mmprefer.explainer.baseline_settings import BaselineModelSettings, BaselineTrainingSettings
from recbole_mmprefer.explainer.pair_data import load_table
from recbole_mmprefer.explainer.settings import LlmSettings, LoraSettings
from recbole_mmprefer.explainer.vocabulary import Vocabulary
from recbole_mmprefer.jsonl import dump_line
from recbole_mmprefer.registry import get_explainer_model
from recbole_mmprefer.resources import stage_setting
from recbole_mmprefer.settings import read_settings_file, write_settings_file
from recbole_mmprefer.utils import file_sha256, json_sha256

logger = logging.getLogger(__name__)

WEIGHTS, SETTINGS, VOCABULARY, LOG, CHECKPOINT = ("model.safetensors", "model_config.json", "vocabulary.json",
                                                  "training_log.jsonl", "checkpoint.pt")


@dataclass
class TrainedParts:
    """A baseline ready to train or generate: the model, its codec, indices and settings."""

    name: str
    model: torch.nn.Module
    codec: object
    users: IdIndex
    items: IdIndex
    settings: BaselineModelSettings
    llm: LlmSettings


def build_model(name: str, settings: BaselineModelSettings, users: IdIndex, items: IdIndex,
                scale: Optional[RatingScale], llm: LlmSettings, lora: LoraSettings, codec=None) -> TrainedParts:
    """The model class ``name`` at its initial weights (under ``seed``); ``codec`` None builds PEPLER's."""
    model_class = get_explainer_model(name)
    if model_class.uses_llm:
        model, codec = model_class.with_llm(settings, len(users), len(items), scale, llm, lora)
    else:
        model = model_class(settings, len(users), len(items), codec.size, scale)
    return TrainedParts(name, model, codec, users, items, settings, llm)


def _rating_scale(ratings: Optional[Dict[Tuple[str, str], float]]) -> Optional[RatingScale]:
    if not ratings:
        return None
    values = list(ratings.values())
    return RatingScale(float(min(values)), float(max(values)))


def _split_rows(table: pd.DataFrame, split: str, cap: Optional[int]) -> Tuple[pd.DataFrame, int]:
    rows = table[table["split"] == split]
    kept = with_explanations(rows, split)
    return (kept.head(cap) if cap is not None else kept), len(rows) - len(kept)


def _input_hash(name: str, settings, training, llm, lora, train, valid, ratings) -> str:
    columns = ["user_id", "item_id", "explanation"]
    uses_llm = get_explainer_model(name).uses_llm
    return json_sha256({"model": name, "settings": settings.to_config(), "training": training.results_keys(),
                        "llm": llm.identity() if uses_llm else None, "lora": lora.to_config() if uses_llm else None,
                        "train": train[columns].to_dict(orient="records"),
                        "valid": valid[columns].to_dict(orient="records"),
                        "ratings": sorted(f"{u}\t{i}\t{r}" for (u, i), r in ratings.items()) if ratings else None})


def train_explainer_model(config, name: str, out_dir: Optional[Path] = None, force: bool = False) -> Path:
    """Train baseline ``name`` on the run's explanation table; returns its folder (see the module docstring)."""
    model_class = get_explainer_model(name)
    settings, training = BaselineModelSettings.from_config(config), BaselineTrainingSettings.from_config(config)
    llm, lora = LlmSettings.from_config(config), LoraSettings.from_config(config)
    table = load_table(config)
    train_rows, skipped_train = _split_rows(table, "train", training.max_train_pairs)
    valid_rows, skipped_valid = _split_rows(table, "valid", training.max_valid_pairs)
    if train_rows.empty:
        raise InputError(f"{name}: the explanation table has no train pair with an explanation")
    ratings = pair_ratings(config, settings.use_ratings)
    input_hash = _input_hash(name, settings, training, llm, lora, train_rows, valid_rows, ratings)
    out_dir = Path(out_dir) if out_dir is not None else ARTIFACTS["explainer_model"].dir(config, name=name)
    if not force and is_fresh_at(out_dir, input_hash, ARTIFACTS["explainer_model"].files):
        logger.info("%s is up to date in %s", name, out_dir)
        return out_dir
    torch.manual_seed(int(stage_setting(config, "seed")))
    codec = None if model_class.uses_llm else Vocabulary.build(train_rows["explanation"], settings.vocab_size)
    parts = build_model(name, settings, IdIndex.of(table["user_id"]), IdIndex.of(table["item_id"]),
                        _rating_scale(ratings), llm, lora, codec)
    data = {split: pairs_of(rows, parts.users, parts.items, ratings, parts.codec, settings.max_words)
            for split, rows in (("train", train_rows), ("valid", valid_rows))}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / META).unlink(missing_ok=True)  # the old meta must not vouch for files being rewritten
    started = time.perf_counter()
    run = BaselineRun(parts, training, data, out_dir, input_hash, int(stage_setting(config, "seed")))
    best = run.train()
    _save(out_dir, parts, training, best)
    report = {"model": name, "train_pairs": len(train_rows), "valid_pairs": len(valid_rows),
              "skipped_empty": {"train": skipped_train, "valid": skipped_valid},
              "has_ratings": parts.model.has_ratings, "vocabulary": parts.codec.size,
              "train_unknown_word_share": (parts.codec.unknown_share(train_rows["explanation"])
                                           if isinstance(parts.codec, Vocabulary) else 0.0),
              "minutes": round((time.perf_counter() - started) / 60, 2), "best_valid_loss": run.best_valid}
    write_meta(out_dir, input_hash, report)
    (out_dir / CHECKPOINT).unlink(missing_ok=True)
    logger.info("%s trained in %.1f min (%d train pairs, %d empty skipped): %s", name, report["minutes"],
                len(train_rows), skipped_train, out_dir)
    return out_dir


def _save(out_dir: Path, parts: TrainedParts, training: BaselineTrainingSettings,
          state: Dict[str, torch.Tensor]) -> None:
    save_file({key: value.contiguous() for key, value in state.items()}, str(out_dir / WEIGHTS))
    write_settings_file(out_dir / SETTINGS, {"model": parts.name, **parts.settings.to_config(),
                                             **training.to_config(), **parts.llm.identity(),
                                             **getattr(parts.model, "lora_keys", lambda: {})()})
    if isinstance(parts.codec, Vocabulary):
        parts.codec.save(out_dir / VOCABULARY)
    else:
        (out_dir / VOCABULARY).write_text("null\n", encoding="utf-8")
    save_indices(out_dir, parts.users, parts.items, parts.model.rating_scale)


def saved_state(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """What a baseline saves: every parameter and buffer, except a frozen LLM's own weights."""
    keep = getattr(model, "saved_names", None)
    state = model.state_dict()
    names = keep() if keep else list(state)
    return {name: state[name].detach().cpu().clone() for name in names}


def load_trained(model_dir: Path) -> TrainedParts:
    """A trained baseline, rebuilt from its folder alone."""
    model_dir = Path(model_dir)
    keys = read_settings_file(model_dir / SETTINGS, "trained explanation baseline", "mmprefer train --model NAME")
    settings = BaselineModelSettings.from_keys(keys)
    llm, lora = LlmSettings.from_keys(keys), LoraSettings.from_keys(keys)
    users, items, scale = load_indices(model_dir)
    vocabulary = (model_dir / VOCABULARY).read_text(encoding="utf-8").strip()
    codec = None if vocabulary == "null" else Vocabulary.load(model_dir / VOCABULARY)
    parts = build_model(keys["model"], settings, users, items, scale, llm, lora, codec)
    state = load_file(str(model_dir / WEIGHTS))
    missing = parts.model.load_state_dict(state, strict=False)
    if missing.unexpected_keys or set(missing.missing_keys) & set(saved_state(parts.model)):
        raise InputError(f"{model_dir / WEIGHTS} does not fit {keys['model']} with its saved settings")
    parts.model.eval()
    return parts


class BaselineRun:
    """One training run: epochs of shuffled batches, step checkpoints, the best epoch by validation loss."""

    def __init__(self, parts: TrainedParts, training: BaselineTrainingSettings, data, out_dir: Path,
                 input_hash: str, seed: int) -> None:
        self.parts, self.training, self.data, self.out_dir = parts, training, data, out_dir
        self.input_hash, self.seed = input_hash, seed
        self.best_valid: Optional[float] = None
        self.best_state: Optional[Dict[str, torch.Tensor]] = None
        self.optimizer = None
        self.stage = None

    def make_optimizer(self, epoch: int) -> None:
        """A new optimizer at each stage change (PEPLER: the prompts alone, then prompts + LLM)."""
        stage = "prompt" if epoch < self.training.prompt_epochs and self.parts.model.uses_llm else "joint"
        if stage == self.stage:
            return
        model = self.parts.model
        if model.uses_llm:
            model.set_stage(stage)
        rate = self.training.prompt_learning_rate if stage == "prompt" else self.training.learning_rate
        optimizer = torch.optim.SGD if self.training.optimizer == "sgd" else torch.optim.Adam
        self.optimizer = optimizer([p for p in model.parameters() if p.requires_grad], lr=rate)
        self.stage = stage

    def order(self, epoch: int) -> List[List[int]]:
        generator = torch.Generator().manual_seed(self.seed * 1000 + epoch)
        permutation = torch.randperm(len(self.data["train"]), generator=generator).tolist()
        size = self.training.batch_size
        return [permutation[start:start + size] for start in range(0, len(permutation), size)]

    def batch(self, split: str, indices: Sequence[int]) -> Dict[str, torch.Tensor]:
        codec = self.parts.codec
        return self.data[split].batch(indices, codec.bos_id, codec.eos_id, codec.pad_id)

    def train(self) -> Dict[str, torch.Tensor]:
        epoch, step = self.resume()
        model = self.parts.model
        while epoch < self.training.epochs:
            self.make_optimizer(epoch)
            batches = self.order(epoch)
            model.train()
            progress = tqdm(batches[step:], desc=f"{self.parts.name} epoch {epoch + 1}/{self.training.epochs}",
                            unit="batch", leave=False)
            try:
                for indices in progress:
                    losses = self.step(self.batch("train", indices), epoch, step)
                    step += 1
                    progress.set_postfix(loss=f"{losses['loss']:.3f}")
                    if self.training.checkpoint_steps and step % self.training.checkpoint_steps == 0:
                        self.checkpoint(epoch, step)
            except KeyboardInterrupt:
                self.checkpoint(epoch, step)
                raise Interrupted(f"{self.parts.name}: stopped at epoch {epoch + 1}, step {step}; the same command "
                                  f"resumes from {self.out_dir / CHECKPOINT}") from None
            self.end_epoch(epoch)
            epoch, step = epoch + 1, 0
            self.checkpoint(epoch, 0)
        return self.best_state if self.best_state is not None else saved_state(model)

    def step(self, batch, epoch: int, step: int) -> Dict[str, float]:
        losses = self.parts.model.calculate_loss(batch)
        if not torch.isfinite(losses["loss"]):
            raise TrainingDiverged(f"{self.parts.name}: loss {float(losses['loss'])} at epoch {epoch + 1}, step "
                                   f"{step + 1}; lower baseline_learning_rate")
        self.optimizer.zero_grad()
        losses["loss"].backward()
        if self.training.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_([p for p in self.parts.model.parameters() if p.requires_grad],
                                           self.training.clip_norm)
        self.optimizer.step()
        return {name: float(value.detach()) for name, value in losses.items()}

    @torch.no_grad()
    def validation_losses(self) -> Optional[Dict[str, float]]:
        """Each loss part (and ``loss``, their weighted sum) averaged over the valid pairs; None without any."""
        valid = self.data["valid"]
        if len(valid) == 0:
            return None
        self.parts.model.eval()
        totals: Dict[str, float] = {}
        for start in range(0, len(valid), self.training.batch_size):
            indices = list(range(start, min(start + self.training.batch_size, len(valid))))
            for name, value in self.parts.model.calculate_loss(self.batch("valid", indices)).items():
                totals[name] = totals.get(name, 0.0) + float(value) * len(indices)
        return {name: total / len(valid) for name, total in totals.items()}

    def end_epoch(self, epoch: int) -> None:
        losses = self.validation_losses()
        valid = None if losses is None else losses["loss"]
        if valid is None or self.best_valid is None or valid < self.best_valid:
            self.best_valid = valid
            self.best_state = saved_state(self.parts.model)
        else:
            for group in self.optimizer.param_groups:
                group["lr"] *= self.training.lr_decay
        with open(self.out_dir / LOG, "a", encoding="utf-8") as handle:
            handle.write(dump_line({"epoch": epoch + 1, "stage": self.stage, "valid_loss": valid,
                                    "valid_parts": losses}))
        logger.info("%s epoch %d: valid loss %s", self.parts.name, epoch + 1,
                    "n/a" if losses is None else ", ".join(f"{k} {v:.4f}" for k, v in losses.items()))

    def checkpoint(self, epoch: int, step: int) -> None:
        temporary = self.out_dir / f".{CHECKPOINT}.tmp"
        torch.save({"input_hash": self.input_hash, "epoch": epoch, "step": step, "stage": self.stage,
                    "model": saved_state(self.parts.model), "optimizer": self.optimizer.state_dict(),
                    "best_valid": self.best_valid, "best_state": self.best_state,
                    "rng": torch.get_rng_state()}, temporary)
        temporary.replace(self.out_dir / CHECKPOINT)

    def resume(self) -> Tuple[int, int]:
        path = self.out_dir / CHECKPOINT
        if not path.is_file():
            (self.out_dir / LOG).unlink(missing_ok=True)
            return 0, 0
        saved = torch.load(path, weights_only=False)
        if saved["input_hash"] != self.input_hash:
            logger.info("%s: the checkpoint in %s is of other inputs; starting over", self.parts.name, path)
            (self.out_dir / LOG).unlink(missing_ok=True)
            return 0, 0
        self.parts.model.load_state_dict(saved["model"], strict=False)
        self.make_optimizer(min(saved["epoch"], self.training.epochs - 1))
        if saved["stage"] == self.stage:  # a new stage starts with a new optimizer
            self.optimizer.load_state_dict(saved["optimizer"])
        self.best_valid, self.best_state = saved["best_valid"], saved["best_state"]
        torch.set_rng_state(saved["rng"])
        logger.info("%s: resuming at epoch %d, step %d (%s)", self.parts.name, saved["epoch"] + 1, saved["step"],
                    path)
        return saved["epoch"], saved["step"]


def generate_with_model(config, name: str, split: Optional[str] = "test", out_file: Optional[Path] = None,
                        model_dir: Optional[Path] = None, pairs: Optional[Sequence[Tuple[str, str]]] = None,
                        force: bool = False) -> Path:
    """Explanations of trained baseline ``name`` for a split's pairs (or ``pairs``); returns the file."""
    model_dir = Path(model_dir) if model_dir is not None else ARTIFACTS["explainer_model"].require(config, name=name)
    training = BaselineTrainingSettings.from_config(config)
    table = load_table(config)
    if pairs is not None:
        rows = pd.DataFrame({"user_id": [str(u) for u, _ in pairs], "item_id": [str(i) for _, i in pairs]})
    else:
        rows = table if split in (None, "all") else table[table["split"] == split]
    label = "pairs" if pairs is not None else (split or "all")
    out_file = Path(out_file) if out_file is not None else ARTIFACTS["generations"].file(config,
                                                                                         name=f"{name}-{label}")
    input_hash = json_sha256({"weights": file_sha256(model_dir / WEIGHTS),
                              "pairs": rows[["user_id", "item_id"]].to_dict(orient="records")})
    if not force and is_fresh_at(out_file, input_hash, is_file=True):
        logger.info("Generations are up to date in %s", out_file)
        return out_file
    parts = load_trained(model_dir)
    data = pairs_of(rows.assign(explanation=""), parts.users, parts.items, None, parts.codec,
                    parts.settings.max_words)
    texts: List[str] = []
    size = training.generation_batch_size
    for start in tqdm(range(0, len(data), size), desc=f"{name} generation", unit="batch"):
        indices = list(range(start, min(start + size, len(data))))
        batch = data.batch(indices, parts.codec.bos_id, parts.codec.eos_id, parts.codec.pad_id)
        generated = parts.model.generate(batch, parts.settings.max_words, parts.codec.bos_id, parts.codec.eos_id)
        texts += [parts.codec.decode(row.tolist()) for row in generated]
    frame = rows[["user_id", "item_id"]].astype(str).assign(explanation=texts)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    write_generations(out_file, frame, [{"model": name}] * len(frame))
    write_meta(out_file, input_hash, {"model": name, "model_dir": str(model_dir), "pairs": len(frame)}, is_file=True)
    unknown = int(np.sum(data.users.numpy() == 0) + np.sum(data.items.numpy() == 0))
    logger.info("%s: %d explanations (%d unseen user/item ids) in %s", name, len(frame), unknown, out_file)
    return out_file
