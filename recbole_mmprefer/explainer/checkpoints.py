"""The explainer's files (paper section 3.4): epoch checkpoints while it trains, the adapter and its config after.

``<out_dir>/checkpoint-epoch{n}/`` holds the trainable weights
(``trainable.pt``), the optimizer state (``optimizer.pt``) and ``state.json``
(epoch, loss history, the hash of the inputs without the epoch count). When
training ends, ``adapter.pt`` (the trainable weights only), ``explainer_config.json``
(:class:`~recbole_mmprefer.explainer.settings.ExplainerConfig`, as peft saves
``adapter_config.json``) and, last, ``meta.json`` are written; a folder is a
trained explainer once its meta is there. :func:`load_explainer` needs nothing
but that folder (and the node feature width for a graph soft prompt).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import List, Optional, Tuple

import torch

from recbole_mmprefer.artifacts import ARTIFACTS, read_meta_at
from recbole_mmprefer.errors import TrainingDiverged
from recbole_mmprefer.explainer.model import ExplainerModel
from recbole_mmprefer.explainer.settings import ExplainerConfig
from recbole_mmprefer.utils import atomic_directory, read_json, write_json

ADAPTER_FILE = "adapter.pt"
CHECKPOINT = re.compile(r"^checkpoint-epoch(\d+)$")


def checkpoints(out_dir: Path) -> List[Tuple[int, Path]]:
    """(epoch, folder) of every epoch checkpoint in ``out_dir``, oldest first."""
    if not Path(out_dir).is_dir():
        return []
    found = [(int(match.group(1)), folder) for folder in Path(out_dir).iterdir()
             for match in [CHECKPOINT.match(folder.name)] if match]
    return sorted(found)


def latest_checkpoint(out_dir: Path, resume_hash: str, epochs: int) -> Optional[Tuple[int, Path]]:
    """(epoch, folder) of the latest checkpoint written from these inputs, at most ``epochs``."""
    found = [(epoch, folder) for epoch, folder in checkpoints(out_dir)
             if epoch <= epochs and (folder / "state.json").is_file()
             and read_json(folder / "state.json").get("resume_hash") == resume_hash]
    return found[-1] if found else None


def write_checkpoint(out_dir: Path, epoch: int, model: ExplainerModel, optimizer, resume_hash: str,
                     history: List[dict]) -> None:
    with atomic_directory(Path(out_dir) / f"checkpoint-epoch{epoch}") as staging:
        torch.save(model.trainable_state_dict(), staging / "trainable.pt")
        torch.save(optimizer.state_dict(), staging / "optimizer.pt")
        write_json(staging / "state.json", {"epoch": epoch, "resume_hash": resume_hash, "history": history})


def read_checkpoint(folder: Path, model: ExplainerModel, optimizer) -> List[dict]:
    """Load a checkpoint into the model and optimizer; returns its loss history."""
    model.load_trainable_state_dict(torch.load(folder / "trainable.pt", map_location="cpu", weights_only=True))
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True))
    return list(read_json(folder / "state.json")["history"])


def save_adapter(out_dir: Path, model: ExplainerModel, settings: ExplainerConfig) -> None:
    """``adapter.pt`` and ``explainer_config.json``, each replaced atomically (the meta comes after them)."""
    temporary = Path(out_dir) / f".{ADAPTER_FILE}.tmp-{os.getpid()}"
    torch.save(model.trainable_state_dict(), temporary)
    os.replace(temporary, Path(out_dir) / ADAPTER_FILE)
    settings.save(out_dir)


def diverged(loss: torch.Tensor, epoch: int, step: int, records, out_dir: Path) -> TrainingDiverged:
    """The error for a loss that is not finite: where, which pairs, and what is left to resume from."""
    pairs = ", ".join(f"({record['user_id']}, {record['item_id']})" for record in records)
    done = checkpoints(out_dir)
    kept = (f"the last good checkpoint, {done[-1][1]}, is intact and a rerun resumes from it" if done else
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


def load_explainer(config, model_dir: Path, feature_dim: Optional[int] = None,
                   device: Optional[str] = None) -> Tuple[ExplainerModel, dict]:
    """The trained explainer of ``model_dir`` (built from its ``explainer_config.json``) and its meta.

    ``config`` only says where converted LLMs are cached (``llm_cache_dir``)."""
    model_dir = require_trained(model_dir)
    meta = read_meta_at(model_dir)
    model = ExplainerModel.build(ExplainerConfig.load(model_dir, config), feature_dim, device=device)
    model.load_trainable_state_dict(torch.load(model_dir / ADAPTER_FILE, map_location="cpu", weights_only=True))
    return model.eval(), meta
