"""Causal LM loading (design sections 3, 6): the bundled SmolLM2 converted once, local models, chat text, backends."""

from __future__ import annotations

import json
import time

import pytest
import torch
from tiny_models import (
    GREEDY_TOKENS,
    greedy_reply,
    serve_chat,
    smollm2_once,
    torch_threads,
    word_tokenizer,
    write_tiny_bart,
    write_tiny_llama,
)

from recbole_mmprefer import llm
from recbole_mmprefer.errors import InputError, MissingInputError
from recbole_mmprefer.llm import cache_root, chat_text, load_causal_lm, model_name, prepare_tokenizer
from recbole_mmprefer.llm_backends import ApiLM, LocalLM, ReplyCache
from recbole_mmprefer.resources import stage_setting as setting


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory) -> dict:
    return smollm2_once(tmp_path_factory)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp("llm") / "tiny-llama")


@pytest.fixture
def chat_server(monkeypatch):
    yield from serve_chat(monkeypatch)


# ----------------------------------------------------------------------------- settings and names

def test_defaults_and_names(tmp_path, monkeypatch):
    assert setting(None, "llm_path") is None and setting({}, "llm_dtype") == "float32"
    assert setting({"llm_dtype": "bfloat16"}, "llm_dtype") == "bfloat16"
    assert setting({"eval_max_length": None}, "eval_max_length") == 512  # ~ keeps the default
    assert model_name(None) == "SmolLM2-135M-Instruct.Q4_1"
    assert model_name("/models/my-llama/") == "my-llama" and model_name("HuggingFaceTB/SmolLM2-135M") == "SmolLM2-135M"
    assert model_name("/x/model.Q8_0.gguf") == "model.Q8_0"
    monkeypatch.setenv("RECBOLE_MMPREFER_CACHE", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env" and cache_root(tmp_path / "given") == tmp_path / "given"
    monkeypatch.delenv("RECBOLE_MMPREFER_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "recbole_mmprefer"


def test_recbole_config_knows_the_keys(tmp_path):
    from recbole_mmprefer.config import Config

    config = Config(model="MMPSASRec", dataset="ml-100k",
                    config_dict={"llm_dtype": "bfloat16", "eval_judge_max_new_tokens": 8})
    assert config["llm_path"] is None and config["llm_dtype"] == "bfloat16"
    assert setting(config, "eval_judge_max_new_tokens") == 8 and setting(config, "eval_max_length") == 512


# ----------------------------------------------------------------------------- local models

def test_load_a_local_model_by_path(tiny_llama):
    model, tokenizer = load_causal_lm(str(tiny_llama))
    assert not model.training and model.dtype == torch.float32
    assert tokenizer.padding_side == "left" and tokenizer.pad_token == "[PAD]"
    model, _ = load_causal_lm(tiny_llama, dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    with pytest.raises(InputError, match="llm_dtype 'int8' is not one of"):
        load_causal_lm(tiny_llama, dtype="int8")
    with pytest.raises(MissingInputError, match="is not a causal LM that loads offline"):
        load_causal_lm(str(tiny_llama.parent / "absent"))


def test_an_encoder_or_seq2seq_checkpoint_is_refused_as_the_llm(tmp_path):
    from transformers import BertConfig, BertModel

    bert = tmp_path / "bert"
    word_tokenizer().save_pretrained(bert)
    BertModel(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=16)).save_pretrained(bert)
    with pytest.raises(InputError, match=r"bert' is not a causal LM \(architectures \['BertModel'\]\).*at random"):
        load_causal_lm(bert)
    with pytest.raises(InputError, match=r"is not a causal LM \(architectures \['BartForConditionalGeneration'\]\)"):
        load_causal_lm(write_tiny_bart(tmp_path / "bart"))


def test_pad_token_falls_back_to_end_of_text():
    tokenizer = word_tokenizer()
    tokenizer.pad_token = None
    assert prepare_tokenizer(tokenizer).pad_token == "</s>" and tokenizer.padding_side == "left"
    tokenizer.pad_token, tokenizer.eos_token = None, None
    assert prepare_tokenizer(tokenizer).pad_token == "[UNK]"


def test_chat_text():
    plain = word_tokenizer()
    assert chat_text(plain, "user likes drama") == "user likes drama"
    assert chat_text(plain, "user likes drama", system="a movie") == "a movie\n\nuser likes drama"
    chat = word_tokenizer()
    chat.chat_template = ("<s>{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
                          "{% if add_generation_prompt %}assistant :{% endif %}")
    assert chat_text(chat, "user likes drama") == "<s>user : user likes drama assistant :"
    assert chat_text(chat, "hi", system="be brief") == "<s>system : be brief user : hi assistant :"
    chat.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system') }}"
                          "{% endif %}{{ m['content'] }}{% endfor %}")
    assert chat_text(chat, "hi", system="be brief") == "be brief\n\nhi"


def test_local_lm_generates_in_left_padded_batches(tiny_llama):
    lm = LocalLM.from_config({"llm_path": str(tiny_llama)}, max_new_tokens=4)
    assert lm.name == "tiny-llama"
    prompts = ["user likes drama", "who would enjoy this story of the night : drama , horror , action ."]
    replies = lm.generate(prompts)
    assert replies == [lm.generate([prompt])[0] for prompt in prompts]
    assert all(len(reply.split()) <= 4 for reply in replies)
    assert all(len(reply.split()) <= 2 for reply in lm.generate(prompts, max_new_tokens=2))


# ----------------------------------------------------------------------------- reply cache and endpoint

def test_reply_cache(tmp_path):
    path = tmp_path / "cache" / "replies.jsonl"
    cache = ReplyCache(path, "judge-a", 16)
    assert cache.get("q") is None
    cache.put("q", "Score: 80")
    ReplyCache(path, "judge-b", 16).put("q", "other model")
    with open(path, "a") as handle:
        handle.write('{"model": "judge-a", "key": "cut sh')  # an interrupted write
    again = ReplyCache(path, "judge-a", 16)
    assert again.get("q") == "Score: 80" and ReplyCache(path, "judge-b", 16).get("q") == "other model"
    assert ReplyCache(path, "judge-a", 32).get("q") is None  # another token budget is another question
    assert [json.loads(line)["model"] for line in path.read_text().splitlines()[:2]] == ["judge-a", "judge-b"]
    memory = ReplyCache(None, "judge-a", 16)
    memory.put("q", "70")
    assert memory.get("q") == "70"


def test_api_backend_sends_system_and_retries(chat_server, monkeypatch):
    server = chat_server(lambda body: f"{len(body['messages'])} messages", failures=1)
    monkeypatch.setenv("TEST_JUDGE_KEY", "k")
    api = ApiLM(server.base + "/", "judge-7b", 20, key_env="TEST_JUDGE_KEY", retry_wait=0.0, system="Be strict.")
    assert api.generate(["first"], max_new_tokens=5) == ["2 messages"]
    path, auth, body = server.requests[-1]
    assert len(server.requests) == 2 and path == "/v1/chat/completions" and auth == "Bearer k"
    assert body["messages"] == [{"role": "system", "content": "Be strict."}, {"role": "user", "content": "first"}]
    assert body["max_tokens"] == 5 and body["temperature"] == 0 and body["model"] == "judge-7b"
    failing = chat_server("never", failures=10)
    with pytest.raises(InputError, match="no reply after 2 tries"):
        ApiLM(failing.base, "m", 8, retries=1, retry_wait=0.0).generate(["x"])


# ----------------------------------------------------------------------------- the bundled SmolLM2

def test_default_llm_is_converted_once(smollm2, monkeypatch):
    path = smollm2["path"]
    gguf = llm.bundled_gguf()
    assert path.parent == smollm2["cache_dir"] / "llm" and smollm2["conversions"] == 1
    assert path.name.startswith(f"{gguf.stem}-{gguf.stat().st_size}-") and len(path.name.rsplit("-", 1)[1]) == 12
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
    assert not [entry for entry in path.parent.iterdir() if entry.name.startswith(".")]  # no staging left

    def refuse(*args):
        raise AssertionError("converted again")

    monkeypatch.setattr(llm, "convert_gguf", refuse)
    assert llm.default_llm_path(smollm2["cache_dir"]) == path


def test_converted_smollm2_generates_what_the_gguf_does(smollm2):
    started = time.perf_counter()
    model, tokenizer = load_causal_lm(None, cache_dir=smollm2["cache_dir"])
    print(f"conversion {smollm2['seconds']:.1f} s, loading the copy {time.perf_counter() - started:.1f} s")
    assert tokenizer.chat_template and tokenizer.pad_token is not None
    with torch_threads(1):
        reply = greedy_reply(model, tokenizer)
    assert reply == smollm2["gguf_reply"]
    assert len(tokenizer(reply, add_special_tokens=False)["input_ids"]) >= GREEDY_TOKENS // 2


def test_local_lm_defaults_to_the_bundled_smollm2(smollm2):
    lm = LocalLM.from_config({"llm_cache_dir": str(smollm2["cache_dir"])}, max_new_tokens=4)
    assert lm.name == "SmolLM2-135M-Instruct.Q4_1" and lm.tokenizer.padding_side == "left"
    with torch_threads(1):
        assert lm.generate(["What is 2 + 2?"])[0]
