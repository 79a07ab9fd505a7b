"""Two cheap explanation baselines every learned explainer must beat (paper section 4.2, baselines).

- ``item-template``: a fixed sentence around the item's title and profile,
  with no knowledge of the user: ``The user would enjoy "<title>". <item profile>``.
- ``nearest-neighbour``: the ground-truth explanation of the training pair
  whose profiles are most similar (cosine of the sentence embeddings of
  "user profile + item profile", the bundled MiniLM by default), never the
  pair itself.

Both return generation frames (user_id, item_id, explanation) for the rows given.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd

from recbole_mmprefer.errors import InputError


def item_template_explanations(rows: pd.DataFrame) -> pd.DataFrame:
    """``The user would enjoy "<title>". <item profile>`` per row (title or profile left out when empty)."""
    texts = []
    for title, profile in zip(rows["title"], rows["item_profile"]):
        opening = f'The user would enjoy "{title.strip()}".' if title.strip() else "The user would enjoy this item."
        texts.append(f"{opening} {profile.strip()}".strip())
    return pd.DataFrame({"user_id": rows["user_id"], "item_id": rows["item_id"], "explanation": texts})


def _profile_texts(frame: pd.DataFrame) -> list:
    return [f"{user} {item}".strip() for user, item in zip(frame["user_profile"], frame["item_profile"])]


def nearest_neighbour_explanations(rows: pd.DataFrame, table: pd.DataFrame, encoder_path: Optional[str] = None,
                                   batch_size: int = 64) -> pd.DataFrame:
    """For each row, the explanation of the most similar train-split pair of ``table`` (not the row's own pair)."""
    from recbole_mmprefer.data.features import TextEncoder

    pool = table[table["split"] == "train"].reset_index(drop=True)
    if pool.empty:
        raise InputError("the nearest-neighbour baseline needs train-split rows in the explanation table")
    encoder = TextEncoder(encoder_path)
    pool_vectors = encoder.encode(_profile_texts(pool), batch_size)
    row_vectors = encoder.encode(_profile_texts(rows), batch_size)
    similarity = row_vectors @ pool_vectors.T
    own = (rows["user_id"].to_numpy()[:, None] == pool["user_id"].to_numpy()[None, :]) & (
        rows["item_id"].to_numpy()[:, None] == pool["item_id"].to_numpy()[None, :])
    similarity[own] = -np.inf
    best = similarity.argmax(axis=1)  # the first of equally similar pairs: deterministic
    return pd.DataFrame({"user_id": rows["user_id"].to_numpy(), "item_id": rows["item_id"].to_numpy(),
                         "explanation": pool["explanation"].to_numpy()[best]})
