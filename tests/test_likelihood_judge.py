"""Likelihood scores (BARTScore / causal-LM likelihood), BLEURT and the LLM judge (paper section 4.2)."""

from __future__ import annotations

import json
import math
import re
import time

import numpy as np
import pytest
import torch
from tiny_models import (
    serve_chat,
    smollm2_once,
    torch_threads,
    write_tiny_bart,
    write_tiny_llama,
    write_tiny_regressor,
)

from recbole_mmprefer.errors import InputError
from recbole_mmprefer.evaluation.judge import (
    judge_prompt,
    judge_scores,
    parse_score,
    strict_prompt,
)
from recbole_mmprefer.evaluation.likelihood import LikelihoodScorer, bleurt_scores, likelihood_scores
from recbole_mmprefer.evaluation.metrics import MetricResult
from recbole_mmprefer.llm_backends import LocalLM

CANDIDATES = ["user likes drama and comedy .", "", "the night story of a horror movie",
              "who would enjoy this action movie : the user"]
REFERENCES = ["the user likes drama", "a comedy", "a horror story of the night", "this movie"]
NAMES = ["ref_given_cand", "cand_given_ref", "f"]

REFERENCE = ["The user would enjoy this book because it is a thrilling mystery with a clever detective.",
             "She will love this jacket since the warm wool keeps her dry on cold rainy walks.",
             "He likes this game because the puzzles are hard and the story is funny."]
PARAPHRASE = ["The user would like this book since it is an exciting mystery featuring a smart detective.",
              "She would love this coat because its warm wool keeps her dry during cold wet walks.",
              "He enjoys this game since its puzzles are difficult and its story is amusing."]
UNRELATED = ["This vacuum cleaner has strong suction and a battery that lasts through large homes.",
             "The recipe book explains how to bake sourdough bread with a crisp crust.",
             "The hotel is close to the station and breakfast is served until ten."]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"llama": write_tiny_llama(root / "tiny-llama"), "bart": write_tiny_bart(root / "tiny-bart"),
            "bleurt": write_tiny_regressor(root / "tiny-bleurt")}


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory) -> dict:
    return smollm2_once(tmp_path_factory)


@pytest.fixture
def chat_server(monkeypatch):
    yield from serve_chat(monkeypatch)


# ----------------------------------------------------------------------------- likelihood

def test_causal_lm_likelihood_is_named_as_such(models):
    config = {"llm_path": str(models["llama"]), "eval_llm_batch_size": 3}
    results = likelihood_scores(CANDIDATES, REFERENCES, config)
    assert list(results) == [f"lm_likelihood_{name}" for name in NAMES]
    assert all(isinstance(result, MetricResult) and result.per_sample.shape == (4,) for result in results.values())
    forward, backward, f = (results[f"lm_likelihood_{name}"].per_sample for name in NAMES)
    assert np.isnan(backward[1]) and np.isnan(f[1]) and not np.isnan(forward[1])  # the empty candidate
    assert np.all(forward <= 0) and np.allclose(f, (forward + backward) / 2, equal_nan=True)
    notes = results["lm_likelihood_f"].notes
    assert notes["model"] == "tiny-llama" and notes["model_kind"] == "causal LM (not BARTScore)"
    assert notes["empty_candidates"] == 1 and notes["scored_samples"] == 3 and notes["truncated_ref_given_cand"] == 0
    result = results["lm_likelihood_cand_given_ref"]
    assert result.mean == pytest.approx(np.nanmean(backward)) and result.std == pytest.approx(np.nanstd(backward))


def test_causal_lm_likelihood_batches_and_truncation(models):
    lm = LocalLM(str(models["llama"]), 4)
    one = LikelihoodScorer(lm.model, lm.tokenizer, lm.name, False, batch_size=1)
    scores, cut = one.log_likelihoods(REFERENCES, CANDIDATES)
    batched, _ = LikelihoodScorer(lm.model, lm.tokenizer, lm.name, False, batch_size=4).log_likelihoods(
        REFERENCES, CANDIDATES)
    assert cut == 0 and np.allclose(scores, batched, atol=1e-5, equal_nan=True)
    manual = _manual_causal(lm, REFERENCES[0], CANDIDATES[0])
    assert scores[0] == pytest.approx(manual, abs=1e-5)

    short = likelihood_scores(CANDIDATES, REFERENCES, {"eval_max_length": 6}, lm=lm)
    notes = short["lm_likelihood_f"].notes
    assert notes["max_length"] == 6 and notes["truncated_ref_given_cand"] == 3
    assert notes["truncated_cand_given_ref"] == 3  # the empty candidate is not scored, so not cut
    prompt, target, cut = LikelihoodScorer(lm.model, lm.tokenizer, lm.name, False, 6).encode(
        CANDIDATES[3], REFERENCES[2])
    assert cut and len(target) == 3 and len(prompt) == 3  # the target keeps half the budget at least


def _manual_causal(lm, source: str, target: str) -> float:
    """log p(target | source) per token with one unpadded forward pass."""
    prompt = lm.tokenizer(source)["input_ids"]
    ids = prompt + lm.tokenizer(target, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = lm.model(torch.tensor([ids])).logits[0].log_softmax(-1)
    return float(np.mean([logits[position - 1, ids[position]] for position in range(len(prompt), len(ids))]))


def test_bartscore_with_a_seq2seq_model(models):
    results = likelihood_scores(CANDIDATES, REFERENCES, {"eval_bartscore_model": str(models["bart"])})
    assert list(results) == [f"bartscore_{name}" for name in NAMES]
    forward = results["bartscore_ref_given_cand"].per_sample
    assert np.isnan(results["bartscore_cand_given_ref"].per_sample[1]) and np.all(forward < 0)
    assert results["bartscore_f"].notes["model"] == "tiny-bart"
    assert results["bartscore_f"].notes["model_kind"] == "seq2seq (BARTScore)"
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(models["bart"])
    model = AutoModelForSeq2SeqLM.from_pretrained(models["bart"]).eval()
    source, labels = tokenizer(CANDIDATES[0], return_tensors="pt"), tokenizer(REFERENCES[0], return_tensors="pt")
    with torch.no_grad():
        loss = model(**source, labels=labels["input_ids"]).loss  # BARTScore: -mean token NLL of the labels
    assert forward[0] == pytest.approx(-float(loss), abs=1e-5)
    short = likelihood_scores(CANDIDATES, REFERENCES, {"eval_bartscore_model": str(models["bart"]),
                                                       "eval_max_length": 4})["bartscore_f"].notes
    assert short["truncated_ref_given_cand"] == 3 and short["truncated_cand_given_ref"] == 3


def test_likelihood_ranks_identical_paraphrase_unrelated_with_smollm2(smollm2):
    config = {"llm_cache_dir": str(smollm2["cache_dir"])}
    with torch_threads(1):
        started = time.perf_counter()
        scorer = LikelihoodScorer.from_config(config)
        loaded = time.perf_counter()
        scores = {name: scorer.score(candidates, REFERENCE)
                  for name, candidates in (("same", REFERENCE), ("paraphrase", PARAPHRASE), ("unrelated", UNRELATED))}
    print(f"SmolLM2: loaded in {loaded - started:.1f} s, 9 pairs scored both ways in "
          f"{time.perf_counter() - loaded:.1f} s")
    assert scores["same"]["lm_likelihood_f"].notes["model"] == "SmolLM2-135M-Instruct.Q4_1"
    for metric in ("lm_likelihood_ref_given_cand", "lm_likelihood_cand_given_ref", "lm_likelihood_f"):
        same, paraphrase, unrelated = (scores[name][metric].per_sample for name in ("same", "paraphrase", "unrelated"))
        assert np.all(same > paraphrase) and np.all(paraphrase > unrelated), metric


def test_bleurt_absent_or_from_a_checkpoint(models):
    assert bleurt_scores(CANDIDATES, REFERENCES) is None
    assert bleurt_scores(CANDIDATES, REFERENCES, {"eval_bleurt_model": None}) is None
    result = bleurt_scores(CANDIDATES, REFERENCES, {"eval_bleurt_model": str(models["bleurt"]),
                                                    "eval_llm_batch_size": 3})
    assert result.name == "bleurt" and result.per_sample.shape == (4,) and result.notes["model"] == "tiny-bleurt"
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(models["bleurt"])
    model = AutoModelForSequenceClassification.from_pretrained(models["bleurt"]).eval()
    with torch.no_grad():
        expected = model(**tokenizer(REFERENCES[2], CANDIDATES[2], return_tensors="pt")).logits[0, 0]
    assert result.per_sample[2] == pytest.approx(float(expected), abs=1e-5)
    short = bleurt_scores(CANDIDATES, REFERENCES, {"eval_bleurt_model": str(models["bleurt"]), "eval_max_length": 9})
    assert short.notes["truncated"] == 3 and not np.isnan(short.per_sample).any()
    long = bleurt_scores(["the user"], [" ".join(["drama"] * 100)], {"eval_bleurt_model": str(models["bleurt"])})
    assert long.notes["max_length"] == 64 and long.notes["truncated"] == 1  # the model's 64 positions


# ----------------------------------------------------------------------------- the judge

@pytest.mark.parametrize("reply, score", [
    ("85", 85.0), ("Score: 85/100", 85.0), ("I'd give it 85 out of 100.", 85.0), ("85.5", 85.5),
    ("**Score:** 0", 0.0), ("100%", 100.0), ("Score: 85. It names 2 of the 3 reasons.", 85.0),
    ("On a scale of 0 to 100, I would rate it 70.", 70.0), ("They share 3 points; score 60", 60.0),
    ("Rating - 42 points", 42.0), ("150", None), ("-5", None), ("Score: 101", None), ("8/10", None),
    ("Rating: 7.5/10", None), ("no number here", None), ("", None), (None, None), ("between 70 and 80", None),
])
def test_parse_score(reply, score):
    assert parse_score(reply) == score


class ScriptedJudge:
    """A judge backend answering from a table of prompt -> reply; counts what it is asked."""

    name = "scripted"

    def __init__(self, replies):
        self.replies, self.asked = replies, []

    def generate(self, prompts, max_new_tokens=None):
        self.asked.extend(prompts)
        return [self.replies[prompt] for prompt in prompts]


def test_judge_retries_once_then_records_missing_and_caches(tmp_path):
    pairs = list(zip(CANDIDATES[:3], REFERENCES[:3]))
    replies = {judge_prompt(*pairs[0]): "Score: 85/100", judge_prompt(*pairs[1]): "It is fine.",
               strict_prompt(*pairs[1]): "70", judge_prompt(*pairs[2]): "eight", strict_prompt(*pairs[2]): "8/10"}
    backend = ScriptedJudge(replies)
    result = judge_scores(CANDIDATES[:3], REFERENCES[:3], {"eval_llm_batch_size": 2}, run_dir=tmp_path,
                          backend=backend)
    assert result.name == "llm_judge" and result.per_sample[:2].tolist() == [85.0, 70.0]
    assert math.isnan(result.per_sample[2]) and result.mean == pytest.approx(77.5)
    assert result.notes["missing"] == 1 and result.notes["retried"] == 2 and result.notes["generated"] == 5
    assert result.notes["judge"] == "scripted" and result.notes["scale"] == "0-100"
    assert len(backend.asked) == 5 and "Predicted explanation: user likes drama and comedy ." in backend.asked[0]
    cache = tmp_path / "judge_cache.jsonl"
    assert len(cache.read_text().splitlines()) == 5

    again = ScriptedJudge({})
    rescored = judge_scores(CANDIDATES[:3], REFERENCES[:3], run_dir=tmp_path, backend=again)
    assert again.asked == [] and rescored.notes["cached"] == 5 and rescored.notes["generated"] == 0
    assert np.array_equal(rescored.per_sample, result.per_sample, equal_nan=True)


def test_local_judge_loads_nothing_when_cached(models, tmp_path, monkeypatch):
    config = {"llm_path": str(models["llama"]), "eval_judge_max_new_tokens": 3}
    cache = tmp_path / "judge.jsonl"
    result = judge_scores(CANDIDATES, REFERENCES, config, cache_path=cache)
    assert result.notes["judge"] == "tiny-llama" and result.notes["backend"] == "local"
    assert result.notes["missing"] == 4 and np.isnan(result.per_sample).all()  # a tiny vocabulary has no digits
    assert {json.loads(line)["model"] for line in cache.read_text().splitlines()} == {"tiny-llama"}

    def refuse(*args, **kwargs):
        raise AssertionError("the judge model was loaded again")

    monkeypatch.setattr(LocalLM, "__init__", refuse)
    again = judge_scores(CANDIDATES, REFERENCES, config, cache_path=cache)
    assert again.notes["cached"] == 8 and again.notes["generated"] == 0


def test_judge_orders_identical_paraphrase_unrelated_when_its_model_can(chat_server):
    """No judge-capable LM ships offline (SmolLM2-135M cannot judge), so a scripted endpoint that scores word
    overlap stands in for a capable judge: the prompt must give it the reference and the prediction in their
    slots, and its reply must come back as the score of the right pair."""
    def overlap_judge(body):
        prompt = body["messages"][-1]["content"]
        reference = re.search(r"ground truth\): (.*)\n", prompt).group(1).lower().split()
        prediction = re.search(r"Predicted explanation: (.*)\n", prompt).group(1).lower().split()
        return f"Score: {round(100 * len(set(reference) & set(prediction)) / len(set(reference)))}"

    config = {"eval_judge_api_base": chat_server(overlap_judge).base, "eval_judge_api_model": "overlap",
              "eval_judge_api_retry_wait": 0.0}
    same, paraphrase, unrelated = (judge_scores(candidates, REFERENCE, config).per_sample
                                   for candidates in (REFERENCE, PARAPHRASE, UNRELATED))
    assert np.all(same == 100) and np.all(same > paraphrase) and np.all(paraphrase > unrelated)


def test_judge_through_an_openai_compatible_endpoint(chat_server, monkeypatch):
    server = chat_server(lambda body: "42" if "single number" in body["messages"][-1]["content"] else "Hmm.")
    monkeypatch.setenv("TEST_JUDGE_KEY", "secret")
    config = {"eval_judge_api_base": server.base, "eval_judge_api_model": "judge-7b",
              "eval_judge_api_key_env": "TEST_JUDGE_KEY", "eval_judge_api_retry_wait": 0.0}
    result = judge_scores(CANDIDATES[:2], REFERENCES[:2], config)
    assert result.per_sample.tolist() == [42.0, 42.0] and result.notes["backend"] == "api"
    assert result.notes["judge"] == "judge-7b" and result.notes["cache"] is None and len(server.requests) == 4
    _, auth, body = server.requests[0]
    assert auth == "Bearer secret" and body["model"] == "judge-7b" and body["max_tokens"] == 32
    assert body["temperature"] == 0 and "Reference explanation (ground truth): the user likes drama" in (
        body["messages"][-1]["content"])
    with pytest.raises(InputError, match="eval_judge_api_model is not"):
        judge_scores(CANDIDATES, REFERENCES, {"eval_judge_api_base": server.base})
    with pytest.raises(InputError, match="2 candidates but 1 references"):
        judge_scores(CANDIDATES[:2], REFERENCES[:1], config)
