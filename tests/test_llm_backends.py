"""The LLM reply layer shared by profiles and the judge: backend settings, the factory, the batcher, the cache."""

from __future__ import annotations

import pytest

from recbole_mmprefer.errors import InputError
from recbole_mmprefer.llm_backends import ApiLM, BackendSettings, ReplyBatcher, ReplyCache, make_backend


class FakeBackend:
    """Answers from a table of prompt -> replies (one per ask, the last repeated); records every call."""

    name = "fake"

    def __init__(self, replies):
        self.replies, self.calls = {prompt: list(answers) for prompt, answers in replies.items()}, []

    def generate(self, prompts, max_new_tokens=None):
        self.calls.append((list(prompts), max_new_tokens))
        return [self.replies[prompt].pop(0) if len(self.replies[prompt]) > 1 else self.replies[prompt][0]
                for prompt in prompts]


# ----------------------------------------------------------------------------- settings

def test_profile_and_judge_settings_read_their_own_keys():
    profiles = BackendSettings.for_profiles({"profile_api_base": "http://x/v1", "profile_api_model": "m",
                                             "profile_llm_batch_size": 3, "llm_dtype": "bfloat16"})
    assert (profiles.api_base, profiles.model_name(), profiles.kind) == ("http://x/v1", "m", "api")
    assert profiles.llm_batch_size == 3 and profiles.max_new_tokens == 128 and profiles.dtype == "float32"
    assert "profile_api_retries" in profiles.to_config() and "profile_dtype" not in profiles.to_config()
    judge = BackendSettings.for_judge({"llm_path": "/models/tiny-llama", "llm_dtype": "bfloat16",
                                       "eval_llm_batch_size": 2})
    assert (judge.kind, judge.model_name(), judge.dtype, judge.llm_batch_size) == ("local", "tiny-llama",
                                                                                  "bfloat16", 2)
    assert judge.max_new_tokens == 32 and judge.api_retries == 3


@pytest.mark.parametrize("make, config, message", [
    (BackendSettings.for_profiles, {"profile_api_retries": -1}, r"profile_api_retries must be an integer >= 0"),
    (BackendSettings.for_profiles, {"profile_llm_batch_size": 0}, r"profile_llm_batch_size must be an integer >= 1"),
    (BackendSettings.for_profiles, {"profile_max_new_tokens": 1.5}, r"profile_max_new_tokens must be an integer"),
    (BackendSettings.for_profiles, {"profile_api_timeout": 0}, r"profile_api_timeout must be a number > 0.0"),
    (BackendSettings.for_judge, {"eval_judge_api_retry_wait": -2}, r"eval_judge_api_retry_wait must be a number "
                                                                   r">= 0.0"),
    (BackendSettings.for_judge, {"eval_llm_batch_size": 0}, r"eval_llm_batch_size must be an integer >= 1"),
    (BackendSettings.for_judge, {"eval_judge_max_new_tokens": 0}, r"eval_judge_max_new_tokens must be an integer "
                                                                  r">= 1"),
    (BackendSettings.for_judge, {"llm_dtype": "int8"}, r"llm_dtype must be one of float32, bfloat16, float16"),
])
def test_settings_errors_name_the_key_and_the_valid_range(make, config, message):
    with pytest.raises(InputError, match=message):
        make(config)


def test_an_endpoint_needs_a_model_name_and_the_factory_makes_it():
    with pytest.raises(InputError, match="eval_judge_api_base is set but eval_judge_api_model is not"):
        BackendSettings.for_judge({"eval_judge_api_base": "http://x/v1"}).model_name()
    backend = make_backend(BackendSettings.for_judge({"eval_judge_api_base": "http://x/v1/",
                                                      "eval_judge_api_model": "judge-7b",
                                                      "eval_judge_api_retries": 1}))
    assert isinstance(backend, ApiLM) and backend.url == "http://x/v1/chat/completions"
    assert (backend.name, backend.max_new_tokens, backend.retries) == ("judge-7b", 32, 1)


# ----------------------------------------------------------------------------- the batcher

def test_cached_prompts_are_not_generated_and_the_backend_is_made_lazily():
    cache = ReplyCache(None, "fake", 16)
    cache.put("a", "cached a")
    made = []
    backend = FakeBackend({"b": ["reply b"], "c": ["reply c"], "d": ["reply d"]})
    batcher = ReplyBatcher(cache, lambda: made.append(1) or backend, batch_size=2)
    assert batcher(["a"]) == ["cached a"] and made == []  # nothing missing: no backend
    assert batcher(["a", "b", "c", "d"]) == ["cached a", "reply b", "reply c", "reply d"]
    assert made == [1] and backend.calls == [(["b", "c"], 16), (["d"], 16)]  # the cache's token budget
    assert batcher(["d", "b"]) == ["reply d", "reply b"] and len(backend.calls) == 2
    assert batcher.stats.as_dict() == {"generated": 3, "cached": 4, "empty": 0, "calls": 2}


def test_an_empty_reply_is_retried_once_and_not_cached():
    backend = FakeBackend({"mute": ["", ""], "shy": [" ", "found words"], "ok": ["fine"]})
    cache = ReplyCache(None, "fake", 8)
    batcher = ReplyBatcher(cache, lambda: backend, batch_size=8, retry_empty=True)
    assert batcher(["mute", "shy", "ok"]) == ["", "found words", "fine"]
    assert [prompts for prompts, _ in backend.calls] == [["mute", "shy", "ok"], ["mute", "shy"]]
    assert cache.get("mute") is None and cache.get("shy") == "found words"
    assert batcher.stats.as_dict() == {"generated": 3, "cached": 0, "empty": 1, "calls": 2}
    batcher(["mute"])  # a later call asks again
    assert batcher.stats.as_dict() == {"generated": 4, "cached": 0, "empty": 2, "calls": 4}


def test_without_retry_an_empty_reply_is_an_answer():
    backend = FakeBackend({"mute": [""]})
    cache = ReplyCache(None, "fake", 8)
    batcher = ReplyBatcher(cache, lambda: backend, batch_size=1)
    assert batcher(["mute"]) == [""] and len(backend.calls) == 1 and cache.get("mute") == ""
    assert batcher.stats.as_dict() == {"generated": 1, "cached": 0, "empty": 1, "calls": 1}


# ----------------------------------------------------------------------------- the cache file

def test_a_cut_last_line_is_dropped_and_a_bad_line_is_named(tmp_path):
    path = tmp_path / "replies.jsonl"
    ReplyCache(path, "m", 8).put("q", "first")
    with open(path, "a") as handle:
        handle.write('{"model": "m", "key": "cut')  # a killed run
    cache = ReplyCache(path, "m", 8)
    cache.put("r", "second")
    assert [ReplyCache(path, "m", 8).get(prompt) for prompt in ("q", "r")] == ["first", "second"]
    assert path.read_text().count("\n") == 2

    path.write_text('{"model": "m", "key": "k", "reply": "x"}\nnot json\n{"model": "m", "key": "j", "reply": "y"}\n')
    with pytest.raises(InputError, match=r"replies.jsonl, line 2 \(byte 41\): not valid JSON"):
        ReplyCache(path, "m", 8)
