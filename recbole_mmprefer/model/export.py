"""User and item vectors for the retriever (paper section 3.3 uses them in eq. 7).

After training, a sequential model's item vectors are its item embedding table
and a user's vector is the model's sequence representation of the user's whole
history before the test item (the test loader's input). Both go to
``<run_dir>/recommender/`` as ``.npy`` with one token per row in a ``.txt``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from recbole_mmprefer.config import run_dir
from recbole_mmprefer.utils import atomic_directory, write_json, write_lines

logger = logging.getLogger(__name__)


def recommender_dir(config) -> Path:
    return run_dir(config) / "recommender"


@torch.no_grad()
def export_embeddings(config, model, dataset, eval_data, model_file: str) -> Path:
    """Write user_embeddings.npy / user_tokens.txt and item_embeddings.npy / item_tokens.txt."""
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

    out_dir = recommender_dir(config)
    with atomic_directory(out_dir) as staging:
        np.save(staging / "user_embeddings.npy", torch.cat(user_vectors).numpy().astype(np.float32))
        write_lines(staging / "user_tokens.txt", user_tokens)
        np.save(staging / "item_embeddings.npy", item_vectors.astype(np.float32))
        write_lines(staging / "item_tokens.txt", item_tokens)
        write_json(staging / "meta.json", {"model": config["model"], "model_file": str(model_file),
                                           "users": len(user_tokens), "items": len(item_tokens),
                                           "dim": int(item_vectors.shape[1])})
    logger.info("Wrote %d user and %d item vectors to %s", len(user_tokens), len(item_tokens), out_dir)
    return out_dir
