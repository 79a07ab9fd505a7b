"""LLM replies for XRec-style profiles (paper section 4.1) and the LLM judge (paper section 4.2).

Both stages ask an LLM for one short text per prompt. They share:

- :class:`BackendSettings`: which backend (a local causal LM, or an
  OpenAI-compatible endpoint with its model name, key variable, timeout and
  retries), the token budget and the batch size, read once from the
  profiles' keys (:meth:`BackendSettings.for_profiles`) or the judge's
  (:meth:`BackendSettings.for_judge`) and validated;
- :func:`make_backend`: the :class:`LocalLM` (greedy, left-padded batches,
  the chat template when the tokenizer has one) or :class:`ApiLM`
  (``/chat/completions`` over urllib, with retries) of those settings;
- :class:`ReplyCache`: replies by model and prompt hash in a JSON-lines file,
  so a rerun generates nothing twice;
- :class:`ReplyBatcher`: cached replies reused, the rest generated in batches
  by a backend made only when a reply is missing, an empty reply asked again
  once where the caller wants that, and counts of what it did.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Protocol, Sequence, Union

from tqdm import tqdm

from recbole_mmprefer.errors import InputError
from recbole_mmprefer.jsonl import dump_line, read_records
from recbole_mmprefer.llm import DTYPES, PathLike, chat_text, load_causal_lm, model_name
from recbole_mmprefer.resources import stage_setting
from recbole_mmprefer.settings import StageSettings, check_choice, check_float, check_int

RETRY_HTTP_CODES = (408, 429, 500, 502, 503, 504)


class Backend(Protocol):
    """What the stages need of an LLM: a name and one reply per prompt."""

    name: str

    def generate(self, prompts: Sequence[str], max_new_tokens: Optional[int] = None) -> List[str]:
        ...


# --------------------------------------------------------------------------- settings

def optional_text(value: object) -> Optional[str]:
    """None for an unset (or empty) key, else the value as a string."""
    return None if value is None or str(value).strip() == "" else str(value)


@dataclass
class BackendSettings(StageSettings):
    """One LLM backend: the local causal LM ``llm_path`` unless ``api_base`` names an endpoint.

    Built by :meth:`for_profiles` or :meth:`for_judge`, whose subclasses map the
    fields to each stage's keys (so a validation error names the key read).
    """

    llm_path: Optional[str]
    dtype: str
    cache_dir: Optional[str]
    api_base: Optional[str]
    api_model: Optional[str]
    api_key_env: Optional[str]
    api_timeout: float
    api_retries: int
    api_retry_wait: float
    max_new_tokens: int
    llm_batch_size: int

    def __post_init__(self):
        for name in ("llm_path", "cache_dir", "api_base", "api_model", "api_key_env"):
            setattr(self, name, optional_text(getattr(self, name)))
        self.dtype = check_choice(self.key("dtype"), self.dtype, DTYPES)
        self.api_timeout = check_float(self.key("api_timeout"), self.api_timeout, 0.0, above_minimum=True)
        self.api_retries = check_int(self.key("api_retries"), self.api_retries, 0)
        self.api_retry_wait = check_float(self.key("api_retry_wait"), self.api_retry_wait, 0.0)
        self.max_new_tokens = check_int(self.key("max_new_tokens"), self.max_new_tokens, 1)
        self.llm_batch_size = check_int(self.key("llm_batch_size"), self.llm_batch_size, 1)

    @staticmethod
    def for_profiles(config=None) -> "BackendSettings":
        """The ``profile_*`` backend keys of ``properties/profiles.yaml``."""
        return ProfileBackendSettings.from_config(config)

    @staticmethod
    def for_judge(config=None) -> "BackendSettings":
        """The judge's ``eval_judge_*`` keys, ``eval_llm_batch_size`` and the local LM of ``llm_path``."""
        return JudgeBackendSettings.from_config(config)

    @property
    def kind(self) -> str:
        return "api" if self.api_base else "local"

    def model_name(self) -> str:
        """The endpoint's model name (which must be set with an endpoint), else the local LM's short name."""
        if self.api_base:
            if not self.api_model:
                raise InputError(f"{self.key('api_base')} is set but {self.key('api_model')} is not: "
                                 "name the model to call")
            return self.api_model
        return model_name(self.llm_path)


@dataclass
class ProfileBackendSettings(BackendSettings):
    """The profiles' keys (``profile_llm_path`` loads as ``profile_llm_dtype``; converted models live in the shared
    ``llm_cache_dir``)."""

    PREFIX = "profile_"
    KEYS = {"dtype": "profile_llm_dtype", "cache_dir": "llm_cache_dir"}


@dataclass
class JudgeBackendSettings(BackendSettings):
    PREFIX = "eval_judge_"
    KEYS = {"llm_path": "llm_path", "dtype": "llm_dtype", "cache_dir": "llm_cache_dir",
            "llm_batch_size": "eval_llm_batch_size"}


# --------------------------------------------------------------------------- backends

class LocalLM:
    """A Hugging Face causal LM: chat template when it has one, greedy decoding, left-padded batches."""

    def __init__(self, path: Optional[PathLike], max_new_tokens: int, dtype: str = "float32",
                 cache_dir: Optional[PathLike] = None, system: Optional[str] = None):
        self.name, self.max_new_tokens, self.system = model_name(path), int(max_new_tokens), system
        self.model, self.tokenizer = load_causal_lm(path, dtype, cache_dir)
        self.device = self.model.device

    @classmethod
    def from_config(cls, config, max_new_tokens: int, system: Optional[str] = None) -> "LocalLM":
        """The LM of ``llm_path`` / ``llm_dtype`` / ``llm_cache_dir``."""
        return cls(stage_setting(config, "llm_path"), max_new_tokens, stage_setting(config, "llm_dtype"),
                   stage_setting(config, "llm_cache_dir"), system)

    def generate(self, prompts: Sequence[str], max_new_tokens: Optional[int] = None) -> List[str]:
        """One greedy reply per prompt (special tokens dropped, whitespace stripped)."""
        import torch

        chat = bool(getattr(self.tokenizer, "chat_template", None))
        texts = [chat_text(self.tokenizer, prompt, self.system) for prompt in prompts]
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not chat).to(self.device)
        with torch.inference_mode():
            output = self.model.generate(**batch, max_new_tokens=int(max_new_tokens or self.max_new_tokens),
                                         do_sample=False, pad_token_id=self.tokenizer.pad_token_id)
        new_tokens = output[:, batch["input_ids"].shape[1]:]
        return [text.strip() for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


class ApiLM:
    """An OpenAI-compatible ``/chat/completions`` endpoint, called with urllib; retries with backoff."""

    def __init__(self, base: str, model: str, max_new_tokens: int, key_env: Optional[str] = None,
                 timeout: float = 60.0, retries: int = 3, retry_wait: float = 2.0, system: Optional[str] = None):
        base = str(base).rstrip("/")
        self.url = base if base.endswith("/chat/completions") else base + "/chat/completions"
        self.name, self.max_new_tokens, self.system = str(model), int(max_new_tokens), system
        self.timeout, self.retries, self.wait = float(timeout), int(retries), float(retry_wait)
        self.key = os.environ.get(key_env) if key_env else None

    def generate(self, prompts: Sequence[str], max_new_tokens: Optional[int] = None) -> List[str]:
        return [self.complete(prompt, max_new_tokens) for prompt in prompts]

    def _request(self, prompt: str, max_new_tokens: Optional[int]) -> urllib.request.Request:
        messages = ([{"role": "system", "content": self.system}] if self.system else []) + [
            {"role": "user", "content": prompt}]
        body = {"model": self.name, "messages": messages, "max_tokens": int(max_new_tokens or self.max_new_tokens),
                "temperature": 0}
        headers = {"Content-Type": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        return urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")

    def complete(self, prompt: str, max_new_tokens: Optional[int] = None) -> str:
        """The endpoint's reply; network errors and HTTP 408/429/5xx are retried, other errors raise InputError."""
        failure = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.wait * 2 ** (attempt - 1))
            try:
                with urllib.request.urlopen(self._request(prompt, max_new_tokens), timeout=self.timeout) as response:
                    return self._reply(response.read())
            except urllib.error.HTTPError as error:
                if error.code not in RETRY_HTTP_CODES:
                    detail = error.read()[:300].decode("utf-8", "replace")
                    raise InputError(f"{self.url} answered HTTP {error.code}: {detail}") from None
                failure = f"HTTP {error.code}"
            except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
                failure = str(getattr(error, "reason", error))
        raise InputError(f"{self.url}: no reply after {self.retries + 1} tries (last: {failure})")

    def _reply(self, payload: bytes) -> str:
        try:
            content = json.loads(payload)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise InputError(f"{self.url} did not answer with a chat completion: {payload[:300]!r}") from None
        return (content or "").strip()


def make_backend(settings: BackendSettings) -> Union[ApiLM, LocalLM]:
    """The endpoint of ``settings.api_base`` when set, else the local causal LM of ``settings.llm_path``."""
    if settings.api_base:
        return ApiLM(settings.api_base, settings.model_name(), settings.max_new_tokens, key_env=settings.api_key_env,
                     timeout=settings.api_timeout, retries=settings.api_retries, retry_wait=settings.api_retry_wait)
    return LocalLM(settings.llm_path, settings.max_new_tokens, settings.dtype, settings.cache_dir)


# --------------------------------------------------------------------------- the reply cache

class ReplyCache:
    """LLM replies by (model, prompt hash), appended to a JSON-lines file as they come (in memory for no path).

    The file is read with the JSON-lines policy of an append-only file: a last
    line cut by a killed run is dropped (and cut off the file, so the next reply
    starts on a line of its own); any other bad line is an error naming it.
    """

    def __init__(self, path: Optional[PathLike], model: str, max_new_tokens: int):
        self.path = Path(path) if path is not None else None
        self.model, self.max_new_tokens = model, int(max_new_tokens)
        self.replies: Dict[str, str] = {}
        if self.path is not None and self.path.is_file():
            self.replies = {record["key"]: record["reply"] for record in read_records(self.path, partial=True)
                            if record.get("model") == self.model}
            drop_cut_line(self.path)

    def key(self, prompt: str) -> str:
        return hashlib.sha256(f"{self.max_new_tokens}\n{prompt}".encode()).hexdigest()

    def get(self, prompt: str) -> Optional[str]:
        return self.replies.get(self.key(prompt))

    def put(self, prompt: str, reply: str) -> None:
        key = self.key(prompt)
        self.replies[key] = reply
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(dump_line({"model": self.model, "key": key, "reply": reply}))


def drop_cut_line(path: Path) -> None:
    """Cut a last line without a newline (an interrupted append) off the file."""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(path, "r+b") as handle:
            handle.truncate(end)


# --------------------------------------------------------------------------- batching

@dataclass
class ReplyStats:
    """Prompts generated (retries not counted), reused from the cache, left empty, and backend calls made."""

    generated: int = 0
    cached: int = 0
    empty: int = 0
    calls: int = 0

    def as_dict(self) -> Dict[str, int]:
        return dataclasses.asdict(self)


class ReplyBatcher:
    """One reply per prompt: cached ones reused, the rest generated in batches of ``batch_size``.

    ``make`` builds the backend, called only once a reply is missing. With
    ``retry_empty`` an empty reply is a failure: it is asked again once in the
    same batch and, still empty, left out of the cache so a later run asks
    again; without it every reply is an answer and cached. Replies are
    generated with the cache's token budget, so a cached reply answers the
    same question.
    """

    def __init__(self, cache: ReplyCache, make: Callable[[], Backend], batch_size: int, retry_empty: bool = False):
        self.cache, self.make, self.batch_size = cache, make, check_int("batch size", batch_size, 1)
        self.retry_empty = retry_empty
        self.stats = ReplyStats()
        self.backend: Optional[Backend] = None

    def __call__(self, prompts: Sequence[str], description: Optional[str] = None) -> List[str]:
        """The replies in prompt order; ``description`` shows a progress bar while generating."""
        replies = [self.cache.get(prompt) for prompt in prompts]
        todo = [index for index, reply in enumerate(replies) if reply is None]
        self.stats.cached += len(prompts) - len(todo)
        with tqdm(total=len(todo), desc=description, unit="reply", disable=description is None or not todo) as bar:
            for start in range(0, len(todo), self.batch_size):
                batch = todo[start:start + self.batch_size]
                for index, reply in zip(batch, self.generate([prompts[index] for index in batch])):
                    replies[index] = reply
                    if reply.strip() or not self.retry_empty:
                        self.cache.put(prompts[index], reply)
                bar.update(len(batch))
        return replies

    def generate(self, prompts: List[str]) -> List[str]:
        """Replies to one batch from the backend (made on first need), empty ones retried once if asked."""
        replies = self._ask(prompts)
        self.stats.generated += len(prompts)
        empty = [index for index, reply in enumerate(replies) if not reply.strip()]
        if empty and self.retry_empty:
            for index, reply in zip(empty, self._ask([prompts[index] for index in empty])):
                replies[index] = reply
            empty = [index for index in empty if not replies[index].strip()]
        self.stats.empty += len(empty)
        return replies

    def _ask(self, prompts: List[str]) -> List[str]:
        if self.backend is None:
            self.backend = self.make()
        self.stats.calls += 1
        return [reply or "" for reply in self.backend.generate(prompts, max_new_tokens=self.cache.max_new_tokens)]
