"""Fine-tuning the explainer (paper section 3.4; design sections 3, 8, 9): `train_explainer`.

**Data** (:mod:`.pair_data`). The run's explanation table's ``train`` rows
(the first ``explainer_max_train_pairs`` of them when set) joined with their
paths records; the validation loss is taken on the ``valid`` rows after every
epoch.

**Optimisation.** AdamW at a constant ``explainer_learning_rate`` (default
1e-4; the paper used 1e-5 for its 3B model, which leaves a 135M model with
LoRA r8 nearly untrained in 3 epochs) over the trainable parameters only
(LoRA, GNN, adapter), ``explainer_batch_size`` pairs per step and process,
``explainer_grad_accumulation`` steps per update (``accelerator.accumulate``),
optional bfloat16 autocast (``explainer_bf16``). With
``explainer_graph_warmup_steps`` N > 0 the first N training steps update the
graph soft prompt (GNN + adapter) only: the LoRA weights lose their gradient
before the optimizer step, so AdamW leaves them and their moments untouched.
``accelerate.Accelerator`` picks the device and the processes: one CPU
process, or N GPUs / nodes under ``accelerate launch`` / ``torchrun``
(batches are sharded over processes).
Every epoch is seeded by ``(seed, epoch)``: the pair order and dropout of an
epoch do not depend on whether the run was resumed.

**Checkpoints and resume** (:mod:`.checkpoints`). After every epoch a
checkpoint; a rerun with the same inputs resumes after the latest one (an
interrupted epoch is redone from its start), and raising ``explainer_epochs``
continues from the last. When all epochs are done the adapter, its
``explainer_config.json`` and, last, ``meta.json`` (input hash, settings,
losses) are written; a rerun whose input hash matches the meta skips training.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from recbole_mmprefer.artifacts import ARTIFACTS, is_fresh_at, write_meta
from recbole_mmprefer.data.node_text import NodeText
from recbole_mmprefer.errors import InputError
from recbole_mmprefer.explainer.checkpoints import (
    Checkpoint,
    diverged,
    latest_checkpoint,
    read_checkpoint,
    remove_checkpoints,
    restore_random_state,
    save_adapter,
    write_checkpoint,
)
from recbole_mmprefer.explainer.model import ExplainerModel
from recbole_mmprefer.explainer.pair_data import PairData, RunInputs, join_records, llm_identity, load_table
from recbole_mmprefer.explainer.settings import ExplainerConfig, TrainingSettings
from recbole_mmprefer.utils import json_sha256

logger = logging.getLogger(__name__)

TEXT_COLUMNS = ["user_id", "item_id", "title", "user_profile", "item_profile", "explanation"]


# -- inputs --------------------------------------------------------------------------------------------


@dataclass
class TrainingInputs:
    """The rows, prompt records, node text and path subgraph builder one training run reads."""

    train_rows: pd.DataFrame
    valid_rows: pd.DataFrame
    train_records: List[dict]
    valid_records: List[dict]
    node_text: NodeText
    builder: Optional[object]
    dataset: Optional[str] = None  # the run's data set (recorded with a graph soft prompt's vectors)

    def fingerprint(self, settings: ExplainerConfig, training: TrainingSettings) -> Tuple[str, str]:
        """(resume hash: everything but the epoch count, input hash: everything)."""
        inputs = {"train": self.train_rows[TEXT_COLUMNS].to_dict(orient="records"),
                  "valid": self.valid_rows[TEXT_COLUMNS].to_dict(orient="records"),
                  "paths": [record.get("paths", []) for record in self.train_records + self.valid_records],
                  "node_text": self.node_text.fingerprint(),
                  "graph": self.builder.fingerprint() if self.builder is not None else None,
                  "llm": llm_identity(settings.llm), "settings": settings.to_config(),
                  "training": training.results_keys()}
        resume_hash = json_sha256(inputs)
        return resume_hash, json_sha256({"resume_hash": resume_hash, "epochs": training.epochs})


def _head(rows: pd.DataFrame, cap: Optional[int]) -> pd.DataFrame:
    return rows.head(cap) if cap is not None else rows


def training_inputs(config, settings: ExplainerConfig, training: TrainingSettings, table=None, records=None,
                    node_text=None, builder=None) -> TrainingInputs:
    """The run's inputs, or those given (tests, benchmarks); a builder only where there is a soft prompt."""
    table = load_table(config) if table is None else table
    run = RunInputs.load(config, settings, records, node_text, builder)
    train_rows = _head(table[table["split"] == "train"].reset_index(drop=True), training.max_train_pairs)
    valid_rows = _head(table[table["split"] == "valid"].reset_index(drop=True), training.max_valid_pairs)
    if train_rows.empty:
        raise InputError("the explanation table has no train rows to fine-tune the explainer on")
    dataset = str(config["dataset"]) if config is not None and "dataset" in config else None
    return TrainingInputs(train_rows, valid_rows, join_records(train_rows, run.records),
                          join_records(valid_rows, run.records), run.node_text, run.builder, dataset)


# -- the training loop ---------------------------------------------------------------------------------


class EpochBatches(torch.utils.data.Sampler):
    """Batches of indices 0..n-1, in an order seeded by (seed, epoch) alone.

    With ``bucket_batches`` > 0 the shuffled indices are cut into chunks of
    that many batches, each chunk sorted by example length before it is cut
    into batches, and the batches shuffled: pairs of similar length share a
    batch, so little of it is padding (the way Hugging Face's
    ``group_by_length`` does it). 0 batches the shuffled order as it is.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, bucket_batches: int = 0):
        self.lengths, self.batch_size = np.asarray(lengths), int(batch_size)
        self.seed, self.bucket, self.epoch = int(seed), int(bucket_batches), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _batches(self) -> List[List[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.lengths))
        if self.bucket <= 0:
            return [order[start:start + self.batch_size].tolist() for start in range(0, len(order), self.batch_size)]
        chunk = self.bucket * self.batch_size
        batches = []
        for start in range(0, len(order), chunk):
            part = order[start:start + chunk]
            part = part[np.argsort(-self.lengths[part], kind="stable")]
            batches += [part[at:at + self.batch_size].tolist() for at in range(0, len(part), self.batch_size)]
        return [batches[n] for n in rng.permutation(len(batches))]

    def __iter__(self):
        return iter(self._batches())

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)


def _indices(batch):
    return [int(index) for index in batch]


def make_accelerator(training: TrainingSettings):
    """An Accelerator for these settings (device, processes, accumulation, bf16 autocast).

    Accelerate keeps one mixed-precision setting per process; a second training
    in the same process with another ``explainer_bf16`` resets it (the process
    group, if any, is kept).
    """
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.state import AcceleratorState

    def make():
        return Accelerator(cpu=not torch.cuda.is_available(), gradient_accumulation_steps=training.grad_accumulation,
                           mixed_precision="bf16" if training.bf16 else "no",
                           kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])

    try:
        return make()
    except ValueError as error:
        if "already been initialized" not in str(error):
            raise
        AcceleratorState._reset_state(reset_partial_state=False)
        return make()


def validation_loss(model, accelerator, data: PairData, batch_size: int, pad_id: int) -> Optional[float]:
    """Token-weighted mean NLL of the explanation tokens over ``data`` (all processes together)."""
    if not len(data):
        return None
    total = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
    rank, world = accelerator.process_index, accelerator.num_processes
    mine = list(range(rank, len(data), world))
    unwrapped = accelerator.unwrap_model(model)
    model.eval()
    with torch.no_grad():
        for start in range(0, len(mine), batch_size):
            batch, graphs = data.batch(mine[start:start + batch_size], pad_id, False, unwrapped.soft_tokens > 0)
            with accelerator.autocast():
                loss = unwrapped(batch, graphs)
            tokens = int((batch["labels"][:, 1:] != -100).sum())
            total += torch.tensor([float(loss) * tokens, tokens], dtype=torch.float64, device=total.device)
    model.train()
    total = accelerator.reduce(total, reduction="sum") if world > 1 else total
    return float(total[0] / total[1]) if total[1] > 0 else None


class TrainingRun:
    """One training of the explainer: the model, optimizer and data prepared by Accelerate, resumed if possible."""

    def __init__(self, settings: ExplainerConfig, training: TrainingSettings, inputs: TrainingInputs, out_dir: Path,
                 resume_hash: str):
        self.settings, self.training, self.out_dir, self.resume_hash = settings, training, out_dir, resume_hash
        self.accelerator = make_accelerator(training)
        self.started = time.perf_counter()
        feature_dim = inputs.builder.feature_dim if inputs.builder is not None else None
        model = ExplainerModel.build(settings, feature_dim, device=str(self.accelerator.device))
        if not model.trainable_names():
            raise InputError("explainer_lora: False with no graph soft prompt leaves nothing to train; generate "
                             "zero-shot instead (no model folder)")
        tokenizer = model.tokenizer
        self.pad_id = int(tokenizer.pad_token_id)
        self.train_data = PairData(inputs.train_records, inputs.node_text, tokenizer, settings.prompt, inputs.builder,
                                   list(inputs.train_rows["explanation"]))
        self.valid_data = PairData(inputs.valid_records, inputs.node_text, tokenizer, settings.prompt, inputs.builder,
                                   list(inputs.valid_rows["explanation"]))
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                      lr=training.learning_rate, weight_decay=training.weight_decay)
        self.sampler = EpochBatches([len(example) for example in self.train_data.examples], training.batch_size,
                                    settings.seed, training.bucket_batches)
        loader = torch.utils.data.DataLoader(list(range(len(self.train_data))), batch_sampler=self.sampler,
                                             collate_fn=_indices)
        self.model, self.optimizer, self.loader = self.accelerator.prepare(model, optimizer, loader)
        self.unwrapped = self.accelerator.unwrap_model(self.model)
        self.warmup_steps = self._graph_warmup_steps()
        self.held_in_warmup = self.unwrapped.lora_parameters() if self.warmup_steps else []
        self.history: List[Dict[str, object]] = []
        self.first_epoch = 1
        self.mid_epoch: Optional[Checkpoint] = None  # resuming inside this checkpoint's epoch
        self.mid_epoch_losses: List[float] = []

    def _graph_warmup_steps(self) -> int:
        """The training steps in which only the graph soft prompt learns (0 when there is no graph or no LoRA)."""
        steps = self.training.graph_warmup_steps
        if steps and (self.unwrapped.soft_prompt is None or not self.unwrapped.lora_parameters()):
            logger.info("explainer_graph_warmup_steps: %d is inert without %s", steps,
                        "a graph soft prompt" if self.unwrapped.soft_prompt is None else "LoRA")
            return 0
        if steps:
            logger.info("Graph warm-up: training steps 1-%d train the GNN and the adapter only, LoRA held", steps)
        return steps

    def resume(self, force: bool) -> None:
        """Continue after the latest checkpoint of these inputs (``force``: remove every checkpoint instead)."""
        if force:
            remove_checkpoints(self.out_dir)
        found = None if force else latest_checkpoint(self.out_dir, self.resume_hash, self.training.epochs)
        if found is not None:
            state = read_checkpoint(found, self.unwrapped, self.optimizer)
            self.history = list(state["history"])
            self.first_epoch = found.epoch + 1 if found.step is None else found.epoch
            if found.step is not None:
                self.mid_epoch, self.mid_epoch_losses = found, list(state["step_losses"])
            logger.info("Resuming the explainer after epoch %d%s from %s", found.epoch if found.step is None else
                        found.epoch - 1, "" if found.step is None else f" and {found.step} steps of epoch "
                        f"{found.epoch}", found.folder)
        if self.accelerator.is_main_process:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "meta.json").unlink(missing_ok=True)

    def train_epoch(self, epoch: int, step_callback: Optional[Callable[[int, int, float], None]]) -> None:
        """One epoch, its validation loss and its checkpoint."""
        started = time.perf_counter()
        torch.manual_seed(self.settings.seed * 1_000_003 + epoch)
        self.sampler.set_epoch(epoch)
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(epoch)
        self.model.train()
        losses = self._epoch_steps(epoch, step_callback)
        train_loss = float(np.mean(losses)) if losses else math.nan
        if self.accelerator.num_processes > 1:
            train_loss = float(self.accelerator.reduce(torch.tensor(train_loss, device=self.accelerator.device),
                                                       reduction="mean"))
        valid_loss = validation_loss(self.model, self.accelerator, self.valid_data, self.training.batch_size,
                                     self.pad_id)
        self.history.append({"epoch": epoch, "train_loss": train_loss, "valid_loss": valid_loss,
                             "seconds": round(time.perf_counter() - started, 3)})
        if self.accelerator.is_main_process:
            logger.info("explainer epoch %d/%d: train loss %.4f, valid loss %s", epoch, self.training.epochs,
                        train_loss, "n/a" if valid_loss is None else f"{valid_loss:.4f}")
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            write_checkpoint(self.out_dir, epoch, self.unwrapped, self.optimizer, self.resume_hash, self.history)
        self.accelerator.wait_for_everyone()

    def _epoch_steps(self, epoch: int, step_callback) -> List[float]:
        """The step losses of an epoch, continuing after the mid-epoch checkpoint it resumes from."""
        resuming = self.mid_epoch if self.mid_epoch is not None and self.mid_epoch.epoch == epoch else None
        done, losses = (resuming.step, list(self.mid_epoch_losses)) if resuming is not None else (0, [])
        steps = len(self.loader)
        loader = self.accelerator.skip_first_batches(self.loader, done) if done else self.loader
        progress = tqdm(loader, desc=f"explainer epoch {epoch}/{self.training.epochs}", unit="batch",
                        initial=done, total=steps, disable=not self.accelerator.is_local_main_process)
        for step, indices in enumerate(progress, start=done + 1):
            if resuming is not None and step == done + 1:
                # after the loader started (starting it draws from the random state), as when the checkpoint was
                # written
                restore_random_state(resuming)
            losses.append(self._step(epoch, step, indices, step_callback))
            if step < steps and self.training.checkpoint_due(step):
                self.accelerator.wait_for_everyone()
                if self.accelerator.is_main_process:
                    write_checkpoint(self.out_dir, epoch, self.unwrapped, self.optimizer, self.resume_hash,
                                     self.history, step=step, step_losses=losses)
        return losses

    def _step(self, epoch: int, step: int, indices: Sequence[int], step_callback) -> float:
        batch, graphs = self.train_data.batch(indices, self.pad_id, False, self.unwrapped.soft_tokens > 0)
        with self.accelerator.accumulate(self.model):
            with self.accelerator.autocast():
                loss = self.model(batch, graphs)
            if not torch.isfinite(loss.detach()):
                raise diverged(loss, epoch, step, [self.train_data.records[n] for n in indices], self.out_dir)
            self.accelerator.backward(loss)
            if (epoch - 1) * len(self.loader) + step <= self.warmup_steps:
                for parameter in self.held_in_warmup:
                    parameter.grad = None  # AdamW skips a parameter without a gradient: weights and moments held
            self.optimizer.step()
            self.optimizer.zero_grad()
        value = float(loss.detach())
        if step_callback is not None:
            step_callback(epoch, step, value)
        return value

    def finish(self, input_hash: str, inputs: TrainingInputs) -> None:
        """The adapter, its config and, last, the meta (main process)."""
        if self.accelerator.is_main_process:
            save_adapter(self.out_dir, self.unwrapped, self.settings)
            parameters = int(sum(value.numel() for value in self.unwrapped.trainable_state_dict().values()))
            graph = None if inputs.builder is None else {"dataset": inputs.dataset,
                                                         "fingerprint": inputs.builder.fingerprint()}
            meta = {"resume_hash": self.resume_hash, "settings": self.settings.to_config(), "graph": graph,
                    "training": self.training.to_config(), "llm": llm_identity(self.settings.llm),
                    "history": self.history, "train_pairs": len(self.train_data), "valid_pairs": len(self.valid_data),
                    "trainable_parameters": parameters, "soft_tokens": self.unwrapped.soft_tokens,
                    "world_size": self.accelerator.num_processes, "resumed_after_epoch": self.first_epoch - 1,
                    "resumed_at_step": self.mid_epoch.step if self.mid_epoch is not None else 0,
                    "seconds_this_run": round(time.perf_counter() - self.started, 3),
                    "truncation": self.train_data.truncation_summary()}
            write_meta(self.out_dir, input_hash, meta)
            logger.info("Wrote the explainer adapter (%d trainable parameters) to %s", parameters, self.out_dir)
        self.accelerator.wait_for_everyone()


def train_explainer(config, out_dir: Optional[Path] = None, *, table: Optional[pd.DataFrame] = None,
                    records: Optional[Sequence[dict]] = None, node_text: Optional[NodeText] = None, builder=None,
                    force: bool = False, step_callback: Optional[Callable[[int, int, float], None]] = None) -> Path:
    """Fine-tune the explainer; returns ``out_dir`` (default ``<run_dir>/explainer``), a trained explainer folder.

    ``table`` (the explanation table), ``records`` (paths.jsonl records),
    ``node_text`` and ``builder`` (:class:`PathSubgraphBuilder`) default to the
    config's run; ``step_callback(epoch, step, loss)`` is called after every
    training step (progress hooks, tests).
    """
    out_dir = Path(out_dir) if out_dir is not None else ARTIFACTS["explainer"].dir(config)
    settings, training = ExplainerConfig.from_config(config), TrainingSettings.from_config(config)
    inputs = training_inputs(config, settings, training, table, records, node_text, builder)
    resume_hash, input_hash = inputs.fingerprint(settings, training)
    if not force and is_fresh_at(out_dir, input_hash, ARTIFACTS["explainer"].files):
        logger.info("The explainer is up to date in %s", out_dir)
        return out_dir
    run = TrainingRun(settings, training, inputs, out_dir, resume_hash)
    run.resume(force)
    for epoch in range(run.first_epoch, training.epochs + 1):
        run.train_epoch(epoch, step_callback)
    run.finish(input_hash, inputs)
    return out_dir


def main(argv: Optional[Sequence[str]] = None) -> None:
    """``python -m recbole_mmprefer.explainer.train CONFIG.yaml [--out_dir DIR] [--force]`` (also under
    ``torchrun`` / ``accelerate launch``): CONFIG.yaml is a RecBole config file naming the ``dataset``; it is read
    by :class:`~recbole_mmprefer.config.Config`, so unknown keys are refused as everywhere else."""
    import argparse

    from recbole_mmprefer.config import config_from_file
    from recbole_mmprefer.jsonl import distributed

    parser = argparse.ArgumentParser(description="Fine-tune the explainer (LoRA + graph soft prompt)")
    parser.add_argument("config", help="YAML config file (RecBole keys and this package's)")
    parser.add_argument("--out_dir", default=None, help="default: <run_dir>/explainer")
    parser.add_argument("--force", action="store_true", help="train again from scratch")
    args = parser.parse_args(argv)
    config = config_from_file(args.config)
    out = train_explainer(config, args.out_dir, force=args.force)
    if distributed()[0] == 0:
        print(out)


if __name__ == "__main__":
    main()
