"""The explainer's files (paper section 3.4): epoch checkpoints while it trains, the adapter and its config after.

``<out_dir>/checkpoint-epoch{n}/`` holds the trainable weights
(``trainable.pt``), the optimizer state (``optimizer.pt``) and ``state.json``
(epoch, loss history, the hash of the inputs without the epoch count). Inside
an epoch, every ``explainer_checkpoint_steps`` steps,
``checkpoint-epoch{n}-step{s}/`` holds the same after ``s`` steps of epoch
``n``, plus the step losses so far and the random state (``rng.pt``), so a
resumed run skips those steps and continues as if it had never stopped; it is
replaced by the next one and removed when the epoch ends. When
training ends, ``adapter.safetensors`` (the trainable weights only), ``explainer_config.json``
(:class:`~recbole_mmprefer.explainer.settings.ExplainerConfig`, as peft saves
``adapter_config.json``) and, last, ``meta.json`` are written; a folder is a
trained explainer once its meta is there. :func:`load_explainer` needs nothing
but that folder (and the node feature width for a graph soft prompt).
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch
from safetensors.torch import load_file, save_file

from recbole_mmprefer.artifacts import ARTIFACTS, read_meta_at
from recbole_mmprefer.errors import MissingInputError, TrainingDiverged
from recbole_mmprefer.explainer.model import ExplainerModel
from recbole_mmprefer.explainer.settings import BUNDLED, ZERO_SHOT, ExplainerConfig
from recbole_mmprefer.resources import bundled_explainer_dir
from recbole_mmprefer.utils import atomic_directory, read_json, write_json

ADAPTER_FILE = "adapter.safetensors"
CHECKPOINT = re.compile(r"^checkpoint-epoch(\d+)(?:-step(\d+))?$")
END_OF_EPOCH = 1 << 62  # sorts an epoch's own checkpoint after its mid-epoch ones


@dataclass
class Checkpoint:
    """A checkpoint folder: after ``step`` steps of ``epoch``, or (step None) after the whole epoch."""

    epoch: int
    step: Optional[int]
    folder: Path

    @property
    def order(self) -> Tuple[int, int]:
        return self.epoch, END_OF_EPOCH if self.step is None else self.step


def checkpoints(out_dir: Path) -> List[Checkpoint]:
    """Every checkpoint in ``out_dir``, oldest first."""
    if not Path(out_dir).is_dir():
        return []
    found = [Checkpoint(int(match.group(1)), int(match.group(2)) if match.group(2) else None, folder)
             for folder in Path(out_dir).iterdir() for match in [CHECKPOINT.match(folder.name)] if match]
    return sorted(found, key=lambda checkpoint: checkpoint.order)


def remove_checkpoints(out_dir: Path) -> None:
    """Every checkpoint in ``out_dir`` (a forced restart, or a training that has written its result)."""
    for checkpoint in checkpoints(out_dir):
        shutil.rmtree(checkpoint.folder, ignore_errors=True)


def latest_checkpoint(out_dir: Path, resume_hash: str, epochs: int) -> Optional[Checkpoint]:
    """The latest checkpoint written from these inputs, within the first ``epochs`` epochs."""
    found = [checkpoint for checkpoint in checkpoints(out_dir)
             if checkpoint.epoch <= epochs and (checkpoint.folder / "state.json").is_file()
             and read_json(checkpoint.folder / "state.json").get("resume_hash") == resume_hash]
    return found[-1] if found else None


def write_checkpoint(out_dir: Path, epoch: int, model: ExplainerModel, optimizer, resume_hash: str,
                     history: List[dict], step: Optional[int] = None, step_losses: Sequence[float] = ()) -> Path:
    """An epoch checkpoint, or (``step``) a mid-epoch one that replaces the epoch's previous mid-epoch one."""
    name = f"checkpoint-epoch{epoch}" + (f"-step{step}" if step is not None else "")
    state = {"epoch": epoch, "resume_hash": resume_hash, "history": history}
    if step is not None:
        state.update(step=step, step_losses=list(step_losses))
    with atomic_directory(Path(out_dir) / name) as staging:
        torch.save(model.trainable_state_dict(), staging / "trainable.pt")
        torch.save(optimizer.state_dict(), staging / "optimizer.pt")
        if step is not None:
            torch.save(torch.get_rng_state(), staging / "rng.pt")
        write_json(staging / "state.json", state)
    for older in checkpoints(out_dir):
        if older.epoch == epoch and older.step is not None and older.step != step:
            shutil.rmtree(older.folder, ignore_errors=True)
    return Path(out_dir) / name


def read_checkpoint(checkpoint: Checkpoint, model: ExplainerModel, optimizer) -> dict:
    """Load a checkpoint into the model and optimizer (and the random state of a mid-epoch one); returns its
    state (``history``, and ``step``, ``step_losses`` for a mid-epoch one)."""
    folder = checkpoint.folder
    model.load_trainable_state_dict(torch.load(folder / "trainable.pt", map_location="cpu", weights_only=True))
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True))
    return read_json(folder / "state.json")


def restore_random_state(checkpoint: Checkpoint) -> None:
    """The random state a mid-epoch checkpoint was written with (dropout goes on as if never stopped)."""
    torch.set_rng_state(torch.load(checkpoint.folder / "rng.pt", weights_only=True))


def save_adapter(out_dir: Path, model: ExplainerModel, settings: ExplainerConfig) -> None:
    """``adapter.safetensors`` and ``explainer_config.json``, each replaced atomically (the meta comes after them)."""
    temporary = Path(out_dir) / f".{ADAPTER_FILE}.tmp-{os.getpid()}"
    save_file(model.trainable_state_dict(), str(temporary))
    os.replace(temporary, Path(out_dir) / ADAPTER_FILE)
    settings.save(out_dir)


def diverged(loss: torch.Tensor, epoch: int, step: int, records, out_dir: Path) -> TrainingDiverged:
    """The error for a loss that is not finite: where, which pairs, and what is left to resume from."""
    pairs = ", ".join(f"({record['user_id']}, {record['item_id']})" for record in records)
    done = checkpoints(out_dir)
    kept = (f"the last good checkpoint, {done[-1].folder}, is intact and a rerun resumes from it" if done else
            "no checkpoint was written yet")
    return TrainingDiverged(f"explainer loss is {float(loss.detach())} at epoch {epoch}, step {step}, batch of pairs "
                            f"{pairs}: training stopped before the update; {kept}. Lower explainer_learning_rate "
                            f"or turn explainer_bf16 off.")


def require_trained(model_dir: Path) -> Path:
    """``model_dir`` when it holds a trained explainer (meta, adapter and config), else the error naming the
    command that trains one."""
    model_dir = Path(model_dir)
    if read_meta_at(model_dir) is None or not all((model_dir / name).is_file()
                                                   for name in ARTIFACTS["explainer"].files):
        raise ARTIFACTS["explainer"].missing(model_dir)
    return model_dir


def resolve_explainer(choice: str) -> Optional[Path]:
    """The explainer folder a choice names: ``bundled`` (the adapter shipped in the wheel), ``zero-shot`` (None:
    the frozen LLM) or a folder of :func:`train_explainer`; the error names what is missing."""
    if choice == ZERO_SHOT:
        return None
    if choice == BUNDLED:
        folder = bundled_explainer_dir()
        if read_meta_at(folder) is None:
            raise MissingInputError(f"this installation has no bundled explainer adapter ({folder} is empty): "
                                    "`python run_scripts/train_bundled_explainer.py` makes it, or choose zero-shot")
        return require_trained(folder)
    return require_trained(Path(choice).expanduser())


def load_explainer(config, model_dir: Path, feature_dim: Optional[int] = None,
                   device: Optional[str] = None) -> Tuple[ExplainerModel, dict]:
    """The trained explainer of ``model_dir`` (built from its ``explainer_config.json``) and its meta.

    ``config`` only says where converted LLMs are cached (``llm_cache_dir``)."""
    model_dir = require_trained(model_dir)
    meta = read_meta_at(model_dir)
    model = ExplainerModel.build(ExplainerConfig.load(model_dir, config), feature_dim, device=device)
    model.load_trainable_state_dict(load_file(str(model_dir / ADAPTER_FILE)))
    return model.eval(), meta
