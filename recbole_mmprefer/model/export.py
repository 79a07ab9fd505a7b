"""User and item vectors for the retriever (paper section 3.3 uses them in eq. 7).

After training, a sequential model's item vectors are its item embedding table
and a user's vector is the model's sequence representation of the user's whole
history before the test item (the test loader's input). Both go to
``<run_dir>/recommender/`` as ``.npy`` with one token per row in a ``.txt``,
and :func:`read_vectors` is their one reader (later stages align them to their
own node order with it).

The folder's meta records :func:`recommender_input_hash`: the settings the
recommender trains under (RecBole's and the model's; not the later stages'),
the data set's files and the features and semantic IDs it reads. ``mmprefer
run`` retrains exactly when that hash changes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence, Set, Tuple

import numpy as np
import torch
import yaml
from tqdm import tqdm

from recbole_mmprefer.artifacts import ARTIFACTS, dataset_file
from recbole_mmprefer.errors import InputError
from recbole_mmprefer.resources import properties_dir
from recbole_mmprefer.utils import file_sha256, json_sha256, read_lines, write_lines

logger = logging.getLogger(__name__)

# Property files of the stages after the recommender: their keys never change its vectors.
# The stage files whose keys the recommender reads; every other properties/*.yaml belongs to a later stage (or
# another system), so adding one never makes trained vectors stale.
RECOMMENDER_FILES = ("overall", "features", "quantizer")
# Keys of where and how a run happens, not of what it computes.
RUN_KEYS = {"device", "gpu_id", "use_gpu", "show_progress", "state", "log_wandb", "wandb_project", "worker",
            "local_rank", "world_size", "nproc", "ip", "port", "offset", "single_spec", "config_files",
            "config_file", "checkpoint_dir", "run_dir", "data_path", "export_embeddings", "check_config_keys",
            "save_dataset", "save_dataloaders", "dataset_save_path", "dataloaders_save_path"}


def _later_stage_keys() -> Set[str]:
    keys: Set[str] = set()
    for path in sorted(properties_dir().glob("*.yaml")):
        if path.stem not in RECOMMENDER_FILES:
            with open(path, encoding="utf-8") as handle:
                keys.update(yaml.safe_load(handle) or {})
    return keys


def recommender_input_hash(config) -> str:
    """A hash of what the recommender's vectors depend on (see the module docstring)."""
    ignored = _later_stage_keys() | RUN_KEYS
    settings = {key: value for key, value in config.final_config_dict.items() if key not in ignored}
    files = {suffix: file_sha256(dataset_file(config, suffix)) for suffix in ("inter", "item", "user")
             if dataset_file(config, suffix).is_file()}
    modalities = list(config["modalities"] or [])
    upstream = {"features": {m: ARTIFACTS["features"].input_hash(config, modality=m) for m in modalities},
                "quantizer": ARTIFACTS["quantizer"].input_hash(config)}
    return json_sha256({"settings": settings, "files": files, "upstream": upstream})


def read_vectors(folder: Path, kind: str, tokens: Sequence[str]) -> Tuple[np.ndarray, int]:
    """The ``kind`` ("user" or "item") vectors of ``folder`` in the order of ``tokens`` (a zero row where a token
    has none), and how many tokens have none."""
    matrix = np.load(folder / f"{kind}_embeddings.npy")
    row_tokens = read_lines(folder / f"{kind}_tokens.txt")
    if len(row_tokens) != len(matrix):
        raise InputError(f"{folder}: {kind}_embeddings.npy has {len(matrix)} rows, {kind}_tokens.txt "
                         f"{len(row_tokens)}")
    position = {token: row for row, token in enumerate(row_tokens)}
    aligned = np.zeros((len(tokens), matrix.shape[1]), dtype=np.float32)
    rows = [(node, position[token]) for node, token in enumerate(tokens) if token in position]
    if rows:
        nodes, source_rows = map(list, zip(*rows))
        aligned[nodes] = matrix[source_rows]
    return aligned, len(tokens) - len(rows)


@torch.no_grad()
def export_embeddings(config, model, dataset, eval_data, model_file: str, test_result: Optional[dict] = None) -> Path:
    """Write user_embeddings.npy / user_tokens.txt and item_embeddings.npy / item_tokens.txt (and, in the meta,
    the model's ``test_result``)."""
    model.eval()
    user_field = config["USER_ID_FIELD"]
    user_ids, user_vectors = [], []
    for batch in tqdm(eval_data, desc="exporting user vectors", disable=not config["show_progress"]):
        interaction = batch[0].to(model.device)
        user_ids.append(interaction[user_field].cpu())
        user_vectors.append(model.forward(interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN]).cpu())
    user_ids = torch.cat(user_ids).numpy()
    item_vectors = model.item_embedding.weight[1:].cpu().numpy()  # row 0 is [PAD]
    user_tokens = dataset.field2id_token[user_field][user_ids].tolist()
    item_tokens = dataset.field2id_token[config["ITEM_ID_FIELD"]][1:].tolist()

    out_dir = ARTIFACTS["recommender"].dir(config)
    similarity = getattr(model, "similarity", "dot")  # how full_sort_predict scores these vectors
    meta = {"model": config["model"], "model_file": str(model_file), "similarity": similarity,
            "users": len(user_tokens),
            "items": len(item_tokens), "dim": int(item_vectors.shape[1]),
            "test_result": {key: float(value) for key, value in (test_result or {}).items()}}
    with ARTIFACTS["recommender"].writing(config, recommender_input_hash(config), meta) as staging:
        np.save(staging / "user_embeddings.npy", torch.cat(user_vectors).numpy().astype(np.float32))
        write_lines(staging / "user_tokens.txt", user_tokens)
        np.save(staging / "item_embeddings.npy", item_vectors.astype(np.float32))
        write_lines(staging / "item_tokens.txt", item_tokens)
    logger.info("Wrote %d user and %d item vectors to %s", len(user_tokens), len(item_tokens), out_dir)
    return out_dir
