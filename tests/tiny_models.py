"""Tiny random-init models saved like any Hugging Face model, and a local OpenAI-compatible chat endpoint.

Shared by the tests of profiles, the LLM backends, likelihood scores and the
LLM judge: a Llama with a word-level tokenizer and a chat template, a BART
with the same vocabulary, a BERT regression head (the BLEURT stand-in).
"""

from __future__ import annotations

import contextlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator, List, Union

WORDS = ["[PAD]", "[UNK]", "<s>", "</s>", "user", "item", "likes", "drama", "comedy", "horror", "action", "story",
         "night", "the", "a", "of", "and", "who", "enjoy", "would", "this", "movie", ".", ",", ":"]


def word_tokenizer(bos_eos: bool = False):
    """A word-level fast tokenizer over WORDS; with ``bos_eos`` every text is wrapped in ``<s> ... </s>``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({word: n for n, word in enumerate(WORDS)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos_eos:
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> $B </s>", special_tokens=[("<s>", 2), ("</s>", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                   bos_token="<s>", eos_token="</s>")


def write_tiny_llama(folder: Path) -> Path:
    """A random-init Llama and a word-level tokenizer with a chat template, saved like any HF model."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True)
    tokenizer = word_tokenizer()
    tokenizer.chat_template = ("<s>{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
                               "{% if add_generation_prompt %}assistant :{% endif %}")
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(WORDS), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                         pad_token_id=0, bos_token_id=2, eos_token_id=None)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def write_tiny_bart(folder: Path) -> Path:
    """A random-init BART (seq2seq) whose tokenizer wraps texts in ``<s> ... </s>``."""
    import torch
    from transformers import BartConfig, BartForConditionalGeneration

    folder.mkdir(parents=True)
    word_tokenizer(bos_eos=True).save_pretrained(folder)
    torch.manual_seed(0)
    config = BartConfig(vocab_size=len(WORDS), d_model=16, encoder_layers=1, decoder_layers=1,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                        decoder_ffn_dim=32, max_position_embeddings=64, pad_token_id=0, bos_token_id=2,
                        eos_token_id=3, decoder_start_token_id=3, forced_eos_token_id=3)
    BartForConditionalGeneration(config).save_pretrained(folder)
    return folder


def write_tiny_regressor(folder: Path) -> Path:
    """A random-init BERT with one output logit: a BLEURT-style checkpoint scoring (reference, candidate)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    folder.mkdir(parents=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [word for word in WORDS if not word.startswith(("[", "<"))]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, num_labels=1)
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


Reply = Union[str, Callable[[dict], str]]


class ChatServer:
    """A local OpenAI-compatible endpoint: a fixed reply (or one computed from the request body), optional
    failures first, every request recorded."""

    def __init__(self, reply: Reply, failures: int = 0):
        self.reply, self.failures, self.requests = reply, failures, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append((self.path, self.headers.get("Authorization"), body))
                if server.failures:
                    server.failures -= 1
                    self.send_error(503)
                    return
                content = server.reply(body) if callable(server.reply) else server.reply
                payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(payload.encode())

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def serve_chat(monkeypatch) -> Iterator[Callable[..., ChatServer]]:
    """The body of a ``chat_server`` fixture: ``start(reply, failures=0)`` servers, closed afterwards."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    servers: List[ChatServer] = []

    def start(reply: Reply, failures: int = 0) -> ChatServer:
        servers.append(ChatServer(reply, failures))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


# ----------------------------------------------------------------------------- the bundled SmolLM2

GREEDY_PROMPT = "Name three fruits that are red."
GREEDY_TOKENS = 10
_SMOLLM2: dict = {}


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run torch on ``count`` threads: on a CPU shared with other jobs, two OpenMP threads that wait for each
    other make a 135M model several times slower than one thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def smollm2_once(tmp_path_factory) -> dict:
    """The bundled SmolLM2 converted once per test session into a temporary cache (skips when not installed).

    Returns ``path`` (the safetensors copy), ``cache_dir``, ``seconds`` (conversion time) and ``gguf_reply``:
    the GGUF-loaded model's greedy reply to GREEDY_PROMPT, taken from the very model that was converted.
    """
    import time

    import pytest

    from recbole_mmprefer import llm
    from recbole_mmprefer.errors import MissingInputError

    if not _SMOLLM2:
        try:
            llm.bundled_gguf()
        except MissingInputError as error:
            pytest.skip(f"the bundled SmolLM2 GGUF is not installed: {error}")
        cache_dir = tmp_path_factory.mktemp("llm_cache")
        original = llm.load_gguf
        loaded = []

        def spy(gguf):
            loaded.append(original(gguf))
            return loaded[-1]

        llm.load_gguf = spy
        started = time.perf_counter()
        try:
            with torch_threads(1):
                path = llm.default_llm_path(cache_dir)
                seconds = time.perf_counter() - started
                model, tokenizer = loaded[0]
                reply = greedy_reply(model, llm.prepare_tokenizer(tokenizer))
        finally:
            llm.load_gguf = original
        _SMOLLM2.update(path=path, cache_dir=cache_dir, seconds=seconds, gguf_reply=reply, conversions=len(loaded))
    return _SMOLLM2


def greedy_reply(model, tokenizer) -> str:
    """The greedy continuation of GREEDY_PROMPT in the chat template, special tokens kept."""
    import torch

    from recbole_mmprefer.llm import chat_text

    batch = tokenizer(chat_text(tokenizer, GREEDY_PROMPT), return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        output = model.generate(**batch, max_new_tokens=GREEDY_TOKENS, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(output[0, batch["input_ids"].shape[1]:])
