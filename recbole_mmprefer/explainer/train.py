"""Fine-tuning the explainer (paper section 3.4; design sections 3, 8, 9): `train_explainer`.

**Data.** The explanation table's ``train`` rows (the first
``explainer_max_train_pairs`` of them when set) joined by (user_id, item_id)
with the records of ``<run_dir>/paths/paths.jsonl``; a pair without a record
has no paths (its prompt has no path lines, its soft prompt is the learned
"no path" vectors). The table's title and profiles win over the node profiles.
The validation loss is taken on the ``valid`` rows after every epoch.

**Optimisation.** AdamW at a constant ``explainer_learning_rate`` (default
1e-4; the paper used 1e-5 for its 3B model, which leaves a 135M model with
LoRA r8 nearly untrained in 3 epochs) over the trainable parameters only
(LoRA, GNN, adapter), ``explainer_batch_size`` pairs per step and process,
``explainer_grad_accumulation`` steps per update (``accelerator.accumulate``),
optional bfloat16 autocast (``explainer_bf16``). ``accelerate.Accelerator``
picks the device and the processes: one CPU process, or N GPUs / nodes under
``accelerate launch`` / ``torchrun`` (batches are sharded over processes).
Every epoch is seeded by ``(seed, epoch)``: the pair order and dropout of an
epoch do not depend on whether the run was resumed.

**Checkpoints and resume.** After every epoch ``out_dir/checkpoint-epoch{n}/``
holds the trainable weights (``trainable.pt``), the optimizer state
(``optimizer.pt``) and ``state.json`` (epoch, loss history, the hash of the
inputs without the epoch count). A rerun with the same inputs resumes after the
latest such checkpoint; an interrupted epoch is redone from its start. Raising
``explainer_epochs`` continues from the last checkpoint. When all epochs are
done, ``out_dir/adapter.pt`` (the trainable weights) and ``out_dir/meta.json``
(input hash, settings, losses) are written, each atomically, meta.json last; a
rerun whose input hash matches meta.json skips training.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from recbole_mmprefer.errors import InputError, MissingInputError, TrainingDiverged
from recbole_mmprefer.explainer.model import ExplainerModel, setting
from recbole_mmprefer.explainer.prompts import Example, NodeText, PromptSettings, build_example, collate
from recbole_mmprefer.utils import is_up_to_date, json_sha256, read_json, write_json

logger = logging.getLogger(__name__)

Pair = Tuple[str, str]
ADAPTER_FILE = "adapter.pt"
CHECKPOINT = re.compile(r"^checkpoint-epoch(\d+)$")
# the keys that shape the model and its prompts: a trained adapter is only valid under the same ones
MODEL_KEYS = ("explainer_lora", "explainer_lora_r", "explainer_lora_alpha", "explainer_lora_dropout",
              "explainer_lora_targets", "explainer_graph_level", "explainer_gnn", "explainer_gnn_layers",
              "explainer_gnn_hidden", "explainer_gnn_heads", "explainer_neighbours", "explainer_pool",
              "explainer_experts", "explainer_adapter_dropout", "explainer_paths", "explainer_soft_tokens",
              "explainer_instruction", "explainer_paths_intro", "explainer_max_length",
              "explainer_path_profile_min_tokens", "seed", "llm_path", "llm_dtype")
TRAINING_KEYS = ("explainer_learning_rate", "explainer_weight_decay", "explainer_epochs", "explainer_batch_size",
                 "explainer_grad_accumulation", "explainer_max_train_pairs", "explainer_max_valid_pairs",
                 "explainer_bf16", "explainer_max_new_tokens")


class Overlay:
    """A config seen through overrides (``key in`` and ``[key]`` like a RecBole Config or a dict)."""

    def __init__(self, config, overrides: Dict[str, object]):
        self.config, self.overrides = config, dict(overrides)

    def __contains__(self, key) -> bool:
        return key in self.overrides or (self.config is not None and key in self.config)

    def __getitem__(self, key):
        if key in self.overrides:
            return self.overrides[key]
        if self.config is None:
            raise KeyError(key)
        return self.config[key]


def explainer_dir(config) -> Path:
    from recbole_mmprefer.config import run_dir

    return run_dir(config) / "explainer"


def model_settings(config) -> Dict[str, object]:
    return {key: setting(config, key) for key in MODEL_KEYS}


# -- inputs --------------------------------------------------------------------------------------------


def load_table(config) -> pd.DataFrame:
    from recbole_mmprefer.data.explanations import explanation_table_path, read_explanation_table

    return read_explanation_table(explanation_table_path(Path(config["data_path"]), config["dataset"]))


def load_path_records(config) -> List[dict]:
    """The records of ``<run_dir>/paths/paths.jsonl``; [] (every pair without paths) when there is none."""
    from recbole_mmprefer.retrieval.collect import paths_dir, read_paths

    try:
        return read_paths(paths_dir(config))
    except MissingInputError:
        logger.warning("No paths in %s: every pair is explained without retrieval paths (run `mmprefer paths`)",
                       paths_dir(config))
        return []


def join_records(rows: pd.DataFrame, records: Sequence[dict]) -> List[dict]:
    """One prompt record per table row: its paths.jsonl record (or no paths) with the row's title and profiles."""
    by_pair = {(str(record["user_id"]), str(record["item_id"])): record for record in records}
    joined = []
    for row in rows.to_dict(orient="records"):
        pair = (str(row["user_id"]), str(row["item_id"]))
        record = dict(by_pair.get(pair, {"status": "no_record", "paths": []}))
        record.update(user_id=pair[0], item_id=pair[1])
        for key in ("title", "user_profile", "item_profile"):
            if row.get(key):
                record[key] = row[key]
        joined.append(record)
    return joined


def graph_hash(builder) -> Optional[str]:
    """A hash of the builder's graph, node features and sampling settings (None without a builder)."""
    if builder is None:
        return None
    import hashlib

    digest = hashlib.sha256()
    for array in (builder.graph.indptr, builder.graph.indices, builder.features.numpy()):
        digest.update(np.ascontiguousarray(array).tobytes())
    digest.update(f"{builder.neighbours} {builder.seed}".encode())
    return digest.hexdigest()


def llm_identity(config) -> Dict[str, object]:
    """The LLM's path and the hash of its config.json (a retrained or replaced model changes it)."""
    from recbole_mmprefer.llm import resolve_llm_path
    from recbole_mmprefer.utils import file_sha256

    path = setting(config, "llm_path")
    if path is None:
        return {"path": None}
    folder = Path(resolve_llm_path(path, setting(config, "llm_cache_dir")))
    config_file = folder / "config.json"
    return {"path": str(folder), "config": file_sha256(config_file) if config_file.is_file() else None}


def node_text_hash(node_text: NodeText) -> str:
    return json_sha256([node_text.user_profiles, node_text.item_profiles, node_text.titles])


class PairData:
    """Prompt records, tokenised examples and path subgraphs of a list of pairs."""

    def __init__(self, records: List[dict], node_text: NodeText, tokenizer, settings: PromptSettings, builder=None,
                 explanations: Optional[Sequence[str]] = None):
        self.records, self.builder, self.settings = records, builder, settings
        self.examples: List[Example] = [
            build_example(record, node_text, tokenizer, settings,
                          explanation=None if explanations is None else explanations[n])
            for n, record in enumerate(records)]
        overflow = sum(example.truncation["overflow_tokens"] > 0 for example in self.examples)
        if overflow:
            logger.warning("%d of %d prompts exceed explainer_max_length even after truncation", overflow,
                           len(self.examples))

    def __len__(self) -> int:
        return len(self.examples)

    def batch(self, indices: Sequence[int], pad_id: int, left_pad: bool, with_graphs: bool):
        """A collated batch and, when ``with_graphs``, the path subgraphs of its pairs."""
        tensors = collate([self.examples[n] for n in indices], pad_id, left_pad)
        graphs = None
        if with_graphs:
            if self.builder is None:
                raise InputError("the graph soft prompt needs a path subgraph builder (graph and node vectors)")
            graphs = [self.builder.pair(self.records[n], k=self.settings.paths) for n in indices]
        return tensors, graphs


# -- the training loop ---------------------------------------------------------------------------------


class EpochSampler(torch.utils.data.Sampler):
    """Indices 0..n-1 in an order seeded by (seed, epoch)."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        return iter(np.random.default_rng([self.seed, self.epoch]).permutation(self.size).tolist())

    def __len__(self) -> int:
        return self.size


def _indices(batch):
    return [int(index) for index in batch]


def make_accelerator(config):
    """An Accelerator for this config (device, processes, accumulation, bf16 autocast).

    Accelerate keeps one mixed-precision setting per process; a second training
    in the same process with another ``explainer_bf16`` resets it (the process
    group, if any, is kept).
    """
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.state import AcceleratorState

    def make():
        return Accelerator(cpu=not torch.cuda.is_available(),
                           gradient_accumulation_steps=int(setting(config, "explainer_grad_accumulation")),
                           mixed_precision="bf16" if setting(config, "explainer_bf16") else "no",
                           kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])

    try:
        return make()
    except ValueError as error:
        if "already been initialized" not in str(error):
            raise
        AcceleratorState._reset_state(reset_partial_state=False)
        return make()


def latest_checkpoint(out_dir: Path, resume_hash: str, epochs: int) -> Optional[Tuple[int, Path]]:
    """(epoch, folder) of the latest checkpoint written from these inputs, at most ``epochs``."""
    found = []
    if Path(out_dir).is_dir():
        for folder in Path(out_dir).iterdir():
            match = CHECKPOINT.match(folder.name)
            state = folder / "state.json"
            if match and state.is_file() and int(match.group(1)) <= epochs:
                if read_json(state).get("resume_hash") == resume_hash:
                    found.append((int(match.group(1)), folder))
    return max(found) if found else None


def _save_atomic(value, path: Path) -> None:
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(value, temporary)
    os.replace(temporary, path)


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


def train_explainer(config, out_dir: Optional[Path] = None, *, table: Optional[pd.DataFrame] = None,
                    records: Optional[Sequence[dict]] = None, node_text: Optional[NodeText] = None, builder=None,
                    force: bool = False, step_callback: Optional[Callable[[int, int, float], None]] = None) -> Path:
    """Fine-tune the explainer; returns ``out_dir`` (default ``<run_dir>/explainer``) holding adapter.pt + meta.json.

    ``table`` (the explanation table), ``records`` (paths.jsonl records),
    ``node_text`` and ``builder`` (:class:`PathSubgraphBuilder`) default to the
    config's run; ``step_callback(epoch, step, loss)`` is called after every
    training step (progress hooks, tests).
    """
    from recbole_mmprefer.explainer.graph_encoder import PathSubgraphBuilder, soft_prompt_tokens

    out_dir = Path(out_dir) if out_dir is not None else explainer_dir(config)
    table = load_table(config) if table is None else table
    records = load_path_records(config) if records is None else list(records)
    node_text = NodeText.from_config(config) if node_text is None else node_text
    graph_level = soft_prompt_tokens(config) > 0
    if graph_level and builder is None:
        builder = PathSubgraphBuilder.from_config(config)
    if not graph_level:
        builder = None

    train_rows = table[table["split"] == "train"].reset_index(drop=True)
    cap = setting(config, "explainer_max_train_pairs")
    train_rows = train_rows.head(int(cap)) if cap is not None else train_rows
    valid_rows = table[table["split"] == "valid"].reset_index(drop=True)
    valid_cap = setting(config, "explainer_max_valid_pairs")
    valid_rows = valid_rows.head(int(valid_cap)) if valid_cap is not None else valid_rows
    if train_rows.empty:
        raise InputError("the explanation table has no train rows to fine-tune the explainer on")
    train_records, valid_records = join_records(train_rows, records), join_records(valid_rows, records)

    settings = model_settings(config)
    training = {key: setting(config, key) for key in TRAINING_KEYS}
    epochs = int(training["explainer_epochs"])
    inputs = {"train": train_rows[["user_id", "item_id", "title", "user_profile", "item_profile",
                                   "explanation"]].to_dict(orient="records"),
              "valid": valid_rows[["user_id", "item_id", "title", "user_profile", "item_profile",
                                   "explanation"]].to_dict(orient="records"),
              "paths": [record.get("paths", []) for record in train_records + valid_records],
              "node_text": node_text_hash(node_text), "graph": graph_hash(builder), "llm": llm_identity(config),
              "settings": settings, "training": {**training, "explainer_epochs": None}}
    resume_hash = json_sha256(inputs)
    input_hash = json_sha256({"resume_hash": resume_hash, "epochs": epochs})
    if not force and is_up_to_date(out_dir, input_hash) and (out_dir / ADAPTER_FILE).is_file():
        logger.info("The explainer is up to date in %s", out_dir)
        return out_dir

    accelerator = make_accelerator(config)
    seed = int(setting(config, "seed", 0))
    started = time.perf_counter()
    model = ExplainerModel.from_config(config, builder.feature_dim if builder is not None else None,
                                       device=str(accelerator.device))
    if not model.trainable_names():
        raise InputError("explainer_lora: False with no graph soft prompt leaves nothing to train; generate "
                         "zero-shot instead (no model folder)")
    tokenizer = model.tokenizer
    prompt_settings = PromptSettings.from_config(config)
    train_data = PairData(train_records, node_text, tokenizer, prompt_settings, builder,
                          list(train_rows["explanation"]))
    valid_data = PairData(valid_records, node_text, tokenizer, prompt_settings, builder,
                          list(valid_rows["explanation"]))
    pad_id = int(tokenizer.pad_token_id)
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=float(training["explainer_learning_rate"]),
                                  weight_decay=float(training["explainer_weight_decay"]))
    batch_size = int(training["explainer_batch_size"])
    sampler = EpochSampler(len(train_data), seed)
    loader = torch.utils.data.DataLoader(list(range(len(train_data))), batch_size=batch_size, sampler=sampler,
                                         collate_fn=_indices)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    unwrapped = accelerator.unwrap_model(model)

    history: List[Dict[str, object]] = []
    first_epoch = 1
    if force and out_dir.is_dir():
        for folder in out_dir.glob("checkpoint-epoch*"):
            shutil.rmtree(folder, ignore_errors=True)
    resume = None if force else latest_checkpoint(out_dir, resume_hash, epochs)
    if resume is not None:
        epoch_done, folder = resume
        unwrapped.load_trainable_state_dict(torch.load(folder / "trainable.pt", map_location="cpu",
                                                       weights_only=True))
        optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True))
        history = list(read_json(folder / "state.json")["history"])
        first_epoch = epoch_done + 1
        logger.info("Resuming the explainer after epoch %d from %s", epoch_done, folder)
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "meta.json").unlink(missing_ok=True)

    model.train()
    for epoch in range(first_epoch, epochs + 1):
        epoch_started = time.perf_counter()
        torch.manual_seed(seed * 1_000_003 + epoch)
        sampler.set_epoch(epoch)
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        losses = []
        progress = tqdm(loader, desc=f"explainer epoch {epoch}/{epochs}", unit="batch",
                        disable=not accelerator.is_local_main_process)
        for step, indices in enumerate(progress, start=1):
            batch, graphs = train_data.batch(indices, pad_id, False, unwrapped.soft_tokens > 0)
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    loss = model(batch, graphs)
                if not torch.isfinite(loss.detach()):
                    raise _diverged(loss, epoch, step, [train_data.records[n] for n in indices], out_dir)
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
            losses.append(float(loss.detach()))
            progress.set_postfix(loss=f"{losses[-1]:.4f}")
            if step_callback is not None:
                step_callback(epoch, step, losses[-1])
        train_loss = float(np.mean(losses)) if losses else math.nan
        if accelerator.num_processes > 1:
            train_loss = float(accelerator.reduce(torch.tensor(train_loss, device=accelerator.device),
                                                  reduction="mean"))
        valid_loss = validation_loss(model, accelerator, valid_data, batch_size, pad_id)
        history.append({"epoch": epoch, "train_loss": train_loss, "valid_loss": valid_loss,
                        "seconds": round(time.perf_counter() - epoch_started, 3)})
        if accelerator.is_main_process:
            logger.info("explainer epoch %d/%d: train loss %.4f, valid loss %s", epoch, epochs, train_loss,
                        "n/a" if valid_loss is None else f"{valid_loss:.4f}")
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            _write_checkpoint(out_dir, epoch, unwrapped, optimizer, resume_hash, history)
        accelerator.wait_for_everyone()

    if accelerator.is_main_process:
        _save_atomic(unwrapped.trainable_state_dict(), out_dir / ADAPTER_FILE)
        meta = {"input_hash": input_hash, "resume_hash": resume_hash, "settings": settings, "training": training,
                "llm": inputs["llm"], "history": history, "train_pairs": len(train_data),
                "valid_pairs": len(valid_data), "trainable_parameters": int(sum(
                    value.numel() for value in unwrapped.trainable_state_dict().values())),
                "soft_tokens": unwrapped.soft_tokens, "world_size": accelerator.num_processes,
                "resumed_after_epoch": first_epoch - 1, "seconds_this_run": round(time.perf_counter() - started, 3),
                "truncation": _truncation_summary(train_data.examples)}
        temporary = out_dir / f".meta.json.tmp-{os.getpid()}"
        write_json(temporary, meta)
        os.replace(temporary, out_dir / "meta.json")
        logger.info("Wrote the explainer adapter (%d trainable parameters) to %s", meta["trainable_parameters"],
                    out_dir)
    accelerator.wait_for_everyone()
    return out_dir


def _diverged(loss: torch.Tensor, epoch: int, step: int, records: Sequence[dict], out_dir: Path) -> TrainingDiverged:
    pairs = ", ".join(f"({record['user_id']}, {record['item_id']})" for record in records)
    done = sorted((int(CHECKPOINT.match(folder.name).group(1)), folder) for folder in out_dir.iterdir()
                  if CHECKPOINT.match(folder.name)) if out_dir.is_dir() else []
    kept = (f"the last good checkpoint, {done[-1][1]}, is intact and a rerun resumes from it" if done else
            "no checkpoint was written yet")
    return TrainingDiverged(f"explainer loss is {float(loss.detach())} at epoch {epoch}, step {step}, batch of pairs "
                            f"{pairs}: training stopped before the update; {kept}. Lower explainer_learning_rate "
                            f"or turn explainer_bf16 off.")


def _write_checkpoint(out_dir: Path, epoch: int, model: ExplainerModel, optimizer, resume_hash: str,
                      history: List[dict]) -> None:
    from recbole_mmprefer.utils import atomic_directory

    with atomic_directory(out_dir / f"checkpoint-epoch{epoch}") as staging:
        torch.save(model.trainable_state_dict(), staging / "trainable.pt")
        torch.save(optimizer.state_dict(), staging / "optimizer.pt")
        write_json(staging / "state.json", {"epoch": epoch, "resume_hash": resume_hash, "history": history})


def _truncation_summary(examples: Sequence[Example]) -> Dict[str, int]:
    summary: Dict[str, int] = {}
    for example in examples:
        for key, value in example.truncation.items():
            summary[key] = summary.get(key, 0) + int(value > 0)
    return summary


def load_explainer(config, model_dir: Path, feature_dim: Optional[int] = None,
                   device: Optional[str] = None) -> Tuple[ExplainerModel, dict]:
    """The trained explainer of ``model_dir`` (its model settings from meta.json) and the meta."""
    model_dir = Path(model_dir)
    if not (model_dir / "meta.json").is_file() or not (model_dir / ADAPTER_FILE).is_file():
        raise MissingInputError(f"No trained explainer in {model_dir} (adapter.pt + meta.json): run "
                                "`train_explainer` first, or generate zero-shot")
    meta = read_json(model_dir / "meta.json")
    model = ExplainerModel.from_config(Overlay(config, meta["settings"]), feature_dim, device=device)
    model.load_trainable_state_dict(torch.load(model_dir / ADAPTER_FILE, map_location="cpu", weights_only=True))
    return model.eval(), meta


def main(argv: Optional[Sequence[str]] = None) -> None:
    """``python -m recbole_mmprefer.explainer.train CONFIG.yaml [--out_dir DIR] [--force]`` (also under
    ``torchrun`` / ``accelerate launch``): the config is a plain YAML mapping (data_path, dataset, run_dir, ...)."""
    import argparse

    import yaml

    parser = argparse.ArgumentParser(description="Fine-tune the explainer (LoRA + graph soft prompt)")
    parser.add_argument("config", help="YAML file with the run's keys")
    parser.add_argument("--out_dir", default=None, help="default: <run_dir>/explainer")
    parser.add_argument("--force", action="store_true", help="train again from scratch")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    with open(args.config, encoding="utf-8") as handle:
        config = yaml.safe_load(handle) or {}
    out = train_explainer(config, args.out_dir, force=args.force)
    if int(os.environ.get("RANK", "0")) == 0:
        print(out)


if __name__ == "__main__":
    main()
