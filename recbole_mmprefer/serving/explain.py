"""Explanations on demand (issue 17): one explainer loaded once, one worker thread, answers streamed.

:class:`PairExplainer` explains a single pair from its retrieval paths record,
with the run's tuned explainer (``<run_dir>/explainer/``) where there is one,
else ``pipeline_explainer`` (the bundled adapter by default, ``zero-shot`` or a
folder), the prompt and decoding exactly as ``mmprefer generate`` builds them.

:class:`ExplanationQueue` runs it off the caller's thread: requests wait in
one queue for the one worker that owns the model (an LLM on 2 cores serves one
request at a time; a second one would only slow both), and each request gets
a :class:`Stream` whose text pieces arrive as they are decoded. Finished
explanations are kept per pair, so asking again is instant.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional, Tuple

import torch
from transformers.generation.streamers import BaseStreamer

from recbole_mmprefer.artifacts import ARTIFACTS, read_meta_at
from recbole_mmprefer.data.node_text import NodeText
from recbole_mmprefer.resources import stage_setting

logger = logging.getLogger(__name__)

CACHED_EXPLANATIONS = 1024


def run_explainer_dir(config) -> Optional[Path]:
    """The run's tuned explainer where one was trained, else the ``pipeline_explainer`` choice (None: zero-shot)."""
    from recbole_mmprefer.explainer.checkpoints import resolve_explainer

    tuned = ARTIFACTS["explainer"].dir(config)
    if read_meta_at(tuned) is not None and all((tuned / name).is_file() for name in ARTIFACTS["explainer"].files):
        return tuned
    return resolve_explainer(str(stage_setting(config, "pipeline_explainer")))


class PairExplainer:
    """The run's explainer, loaded once, explaining one pair at a time."""

    def __init__(self, config, model_dir: Optional[Path] = None, node_text: Optional[NodeText] = None):
        from recbole_mmprefer.explainer.checkpoints import load_explainer
        from recbole_mmprefer.explainer.generate import check_same_graph, model_settings
        from recbole_mmprefer.explainer.model import ExplainerModel
        from recbole_mmprefer.explainer.pair_data import RunInputs
        from recbole_mmprefer.explainer.settings import DecodingSettings
        from recbole_mmprefer.pipeline import describe_explainer

        self.config = config
        self.model_dir = run_explainer_dir(config) if model_dir is None else model_dir
        self.description = describe_explainer(self.model_dir)
        self.settings = model_settings(config, self.model_dir)
        self.decoding = DecodingSettings.from_config(config)
        inputs = RunInputs.load(config, self.settings, records=[],
                                node_text=node_text or NodeText.from_config(config))
        check_same_graph(self.model_dir, inputs.builder)
        self.node_text, self.builder = inputs.node_text, inputs.builder
        feature_dim = self.builder.feature_dim if self.builder is not None else None
        if self.model_dir is not None:
            self.model = load_explainer(config, self.model_dir, feature_dim, "cpu")[0]
        else:
            self.model = ExplainerModel.build(self.settings, feature_dim, device="cpu").eval()
        self.seed = int(stage_setting(config, "seed"))
        logger.info("Explaining with %s", self.description)

    def explain(self, record: dict, on_text: Optional[Callable[[str], None]] = None) -> str:
        """The explanation of one paths record (``user_id``, ``item_id``, ``paths``); ``on_text`` receives its
        pieces as they are decoded (all at once under beam search, which cannot stream)."""
        from recbole_mmprefer.explainer.generate import decoding_options
        from recbole_mmprefer.explainer.pair_data import PairData

        tokenizer = self.model.tokenizer
        data = PairData([record], self.node_text, tokenizer, self.settings.prompt, self.builder)
        batch, graphs = data.batch([0], int(tokenizer.pad_token_id), True, self.model.soft_tokens > 0)
        options = decoding_options(self.decoding, self.settings.prompt, tokenizer)
        streamer = PieceStreamer(tokenizer, on_text) if on_text is not None and options["decoding"] != "beam" else None
        torch.manual_seed(self.seed)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.decoding.bf16)
        with autocast:
            tokens = self.model.generate(batch, graphs, streamer=streamer, **options)[0]
        text = tokenizer.decode(tokens, skip_special_tokens=True).strip()
        if on_text is not None and streamer is None:
            on_text(text)
        return text


class PieceStreamer(BaseStreamer):
    """Decodes the new tokens of a one-row generation and hands on each new piece of text."""

    def __init__(self, tokenizer, on_text: Callable[[str], None]):
        self.tokenizer, self.on_text = tokenizer, on_text
        self.tokens, self.sent = [], 0

    def put(self, value) -> None:
        eos = self.tokenizer.eos_token_id
        self.tokens += [token for token in value.reshape(-1).tolist() if token != eos]
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if not text.endswith("\ufffd"):  # else hold back: a multi-byte character is not finished yet
            self._send(text)

    def end(self) -> None:
        self._send(self.tokenizer.decode(self.tokens, skip_special_tokens=True))

    def _send(self, text: str) -> None:
        if len(text) > self.sent:
            self.on_text(text[self.sent:])
            self.sent = len(text)


_DONE = object()


@dataclass
class Stream:
    """One request's explanation: iterate it for the pieces as they come; ``text`` once it is done."""

    key: Tuple[str, str]
    pieces: "queue.Queue" = field(default_factory=queue.Queue)
    text: Optional[str] = None
    error: Optional[BaseException] = None
    position: int = 0  # requests ahead of this one when it was queued

    def __iter__(self) -> Iterator[str]:
        while True:
            piece = self.pieces.get()
            if piece is _DONE:
                if self.error is not None:
                    raise self.error
                return
            yield piece

    def result(self) -> str:
        for _ in self:
            pass
        return self.text or ""


class ExplanationQueue:
    """One worker thread owning a :class:`PairExplainer` (made on first use by ``make_explainer``)."""

    def __init__(self, make_explainer: Callable[[], PairExplainer]):
        self.make_explainer = make_explainer
        self.explainer: Optional[PairExplainer] = None
        self.requests: "queue.Queue" = queue.Queue()
        self.done: "OrderedDict[Tuple[str, str], str]" = OrderedDict()
        self.lock = threading.Lock()
        self.worker = threading.Thread(target=self._work, name="mmprefer-explainer", daemon=True)
        self.worker.start()

    def submit(self, record: dict) -> Stream:
        """A stream of the pair's explanation: from the cache at once, else queued behind earlier requests."""
        key = (str(record["user_id"]), str(record["item_id"]))
        stream = Stream(key)
        with self.lock:
            cached = self.done.get(key)
        if cached is not None:
            stream.text = cached
            stream.pieces.put(cached)
            stream.pieces.put(_DONE)
            return stream
        stream.position = self.requests.qsize()
        self.requests.put((record, stream))
        return stream

    def pending(self) -> int:
        return self.requests.qsize()

    def _work(self) -> None:
        while True:
            record, stream = self.requests.get()
            try:
                if self.explainer is None:
                    self.explainer = self.make_explainer()
                stream.text = self.explainer.explain(record, on_text=stream.pieces.put)
                with self.lock:
                    self.done[stream.key] = stream.text
                    while len(self.done) > CACHED_EXPLANATIONS:
                        self.done.popitem(last=False)
            except BaseException as error:  # the request's caller reports it; the worker keeps serving
                logger.exception("explaining %s failed", stream.key)
                stream.error = error
            finally:
                stream.pieces.put(_DONE)

    def status(self) -> Dict[str, object]:
        return {"loaded": self.explainer is not None, "queued": self.pending(),
                "explainer": self.explainer.description if self.explainer is not None else None}
