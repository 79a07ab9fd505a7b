"""Explanation text metrics (paper section 4.2): BERTScore, BLEU, ROUGE-L, USR on the bundled MiniLM."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from recbole_mmprefer.evaluation.metrics import (
    BERTScoreEvaluator,
    MetricResult,
    TextMetricSettings,
    bleu,
    rouge_l,
    split_sentences,
    text_metrics,
    unique_sentence_ratio,
)
from recbole_mmprefer.resources import properties_dir

REFERENCE = "The user would enjoy this book because it is a thrilling mystery with a clever detective."
PARAPHRASE = "The user would like this book since it is an exciting mystery featuring a smart detective."
UNRELATED = "This vacuum cleaner has strong suction and a battery that lasts through large homes."
REFERENCE_2 = "She will love this jacket since the warm wool keeps her dry on cold rainy walks."
PARAPHRASE_2 = "She would love this coat because its warm wool keeps her dry during cold wet walks."
UNRELATED_2 = "The recipe book explains how to bake sourdough bread with a crisp crust."
PAIR_METRICS = ["bertscore_precision", "bertscore_recall", "bertscore_f1", "bleu_1", "bleu_4", "rouge_l"]
LONG_TEXT = " ".join(f"The detective examined clue number {index} in the old library." for index in range(250))


@pytest.fixture(scope="module")
def evaluator():
    return BERTScoreEvaluator(batch_size=8)


@pytest.mark.parametrize("reference, paraphrase, unrelated", [(REFERENCE, PARAPHRASE, UNRELATED),
                                                              (REFERENCE_2, PARAPHRASE_2, UNRELATED_2)],
                         ids=["book", "jacket"])
def test_identical_beats_paraphrase_beats_unrelated(evaluator, reference, paraphrase, unrelated):
    results = text_metrics([reference, paraphrase, unrelated], [reference] * 3, bertscore=evaluator)
    for name in PAIR_METRICS:
        identical, similar, different = results[name].per_sample
        assert identical > similar > different, name
    assert results["bertscore_f1"].per_sample[0] == pytest.approx(1.0, abs=1e-5)
    assert results["bleu_4"].per_sample[0] == pytest.approx(100.0)
    assert results["rouge_l"].per_sample[0] == pytest.approx(1.0)


def test_bertscore_precision_is_the_candidate_side(evaluator):
    short, long = "a thrilling mystery", REFERENCE
    forward = evaluator.score([short], [long])
    backward = evaluator.score([long], [short])
    assert forward["bertscore_precision"].mean > forward["bertscore_recall"].mean
    assert backward["bertscore_precision"].mean == pytest.approx(forward["bertscore_recall"].mean, abs=1e-5)
    assert backward["bertscore_recall"].mean == pytest.approx(forward["bertscore_precision"].mean, abs=1e-5)


def test_bertscore_names_encoder_and_layer(evaluator):
    notes = evaluator.score([PARAPHRASE], [REFERENCE])["bertscore_f1"].notes
    assert notes["layer"] == 6 and notes["layer_source"].startswith("last layer")
    assert notes["encoder"].endswith("model") and notes["max_length"] == 512
    assert notes["rescaled_with_baseline"] is False and notes["baseline"] is None


def test_usr_is_computed_on_candidates():
    same_candidates = text_metrics([REFERENCE] * 4, [REFERENCE, PARAPHRASE, UNRELATED, REFERENCE_2],
                                   TextMetricSettings.from_config(None, metrics=["usr"]))["usr"]
    assert same_candidates.mean == pytest.approx(0.25)
    assert list(same_candidates.per_sample) == [0.0] * 4
    varied_candidates = text_metrics([REFERENCE, PARAPHRASE, UNRELATED, REFERENCE_2], [REFERENCE] * 4,
                                     TextMetricSettings.from_config(None, metrics=["usr"]))["usr"]
    assert varied_candidates.mean == 1.0
    assert list(varied_candidates.per_sample) == [1.0] * 4


def test_usr_definition_and_population_std():
    candidates = ["A great book. It is fun!", "a  great   BOOK.", "Nice pen? Yes"]
    assert split_sentences(candidates[0]) == ["a great book.", "it is fun!"]
    result = unique_sentence_ratio(candidates)
    assert result.notes["sentences"] == 5 and result.notes["unique_sentences"] == 4
    assert result.mean == pytest.approx(4 / 5)
    np.testing.assert_allclose(result.per_sample, [0.5, 0.0, 1.0])
    assert result.std == pytest.approx(np.std([0.5, 0.0, 1.0], ddof=0))


def test_std_is_population_std_over_scored_samples():
    result = MetricResult.from_samples("x", [1.0, 2.0, float("nan"), 4.0])
    assert result.mean == pytest.approx(7 / 3)
    assert result.std == pytest.approx(np.std([1.0, 2.0, 4.0], ddof=0))
    assert result.notes["samples"] == 4 and result.notes["scored_samples"] == 3
    scores = bleu([PARAPHRASE, UNRELATED, REFERENCE], [REFERENCE] * 3, max_ngram_order=1)
    assert scores.std == pytest.approx(np.std(scores.per_sample, ddof=0))


def test_empty_candidates_are_scored_and_counted(evaluator):
    candidates, references = ["", "   ", PARAPHRASE], [REFERENCE] * 3
    results = text_metrics(candidates, references, bertscore=evaluator)
    for name in PAIR_METRICS:
        assert results[name].notes["empty_candidates"] == 2, name
        assert list(results[name].per_sample[:2]) == [0.0, 0.0], name
        assert results[name].per_sample[2] > 0, name
    assert results["usr"].notes["empty_candidates"] == 2
    assert np.isnan(results["usr"].per_sample[:2]).all() and results["usr"].mean == 1.0


def test_long_text_is_truncated_not_fatal(evaluator):
    results = evaluator.score([LONG_TEXT, PARAPHRASE], [REFERENCE, LONG_TEXT])
    notes = results["bertscore_f1"].notes
    assert notes["truncated_candidates"] == 1 and notes["truncated_references"] == 1
    assert np.isfinite(results["bertscore_f1"].per_sample).all()
    shortened = evaluator.truncate(LONG_TEXT)
    assert LONG_TEXT.startswith(shortened) and LONG_TEXT[len(shortened)] == " "  # cut between words
    assert evaluator.max_length - 3 <= len(evaluator.tokenizer(shortened)["input_ids"]) <= evaluator.max_length
    assert evaluator.truncate(REFERENCE) is None


def test_an_encoder_saved_without_a_length_limit_scores_long_texts(tiny_encoder):
    """A tokenizer without model_max_length (transformers gives ~1e30) takes the encoder's position limit."""
    evaluator = BERTScoreEvaluator(str(tiny_encoder))
    assert evaluator.tokenizer.model_max_length > 1e20 and evaluator.max_length == 64
    long = " ".join(["drama movie"] * 100)
    results = evaluator.score([long, "comedy movie"], ["drama movie", long])
    assert np.isfinite(results["bertscore_f1"].per_sample).all()
    assert results["bertscore_f1"].notes["truncated_candidates"] == 1


def test_baseline_rescales_scores_and_empty_pairs(evaluator, tmp_path):
    baseline = tmp_path / "baseline.tsv"
    baseline.write_text("LAYER,P,R,F\n" + "".join(f"{layer},0.5,0.5,0.5\n" for layer in range(7)))
    rescaled = BERTScoreEvaluator(baseline_path=str(baseline), batch_size=8)
    raw = evaluator.score([PARAPHRASE, ""], [REFERENCE, REFERENCE])["bertscore_f1"].per_sample
    scaled = rescaled.score([PARAPHRASE, ""], [REFERENCE, REFERENCE])["bertscore_f1"]
    np.testing.assert_allclose(scaled.per_sample, (raw - 0.5) / 0.5, atol=1e-5)
    assert scaled.notes["rescaled_with_baseline"] is True


def test_mismatched_or_non_text_inputs_raise():
    with pytest.raises(ValueError, match="3 candidates but 2 references"):
        text_metrics([REFERENCE] * 3, [REFERENCE] * 2, TextMetricSettings.from_config(None, metrics=["bleu"]))
    with pytest.raises(ValueError, match="reference 1 is NoneType"):
        rouge_l([REFERENCE, PARAPHRASE], [REFERENCE, None])


def test_settings_from_config_and_shipped_defaults():
    shipped = yaml.safe_load((properties_dir() / "evaluation.yaml").read_text())
    defaults = TextMetricSettings.from_config(shipped)
    assert defaults.bertscore_model is None and defaults.bertscore_layer is None and defaults.batch_size == 32
    assert {"bertscore", "bleu", "rouge_l", "usr"} <= set(defaults.metrics)
    settings = TextMetricSettings.from_config({"eval_bertscore_layer": 3, "eval_metrics": ["bleu"]})
    assert settings.bertscore_layer == 3 and settings.metrics == ("bleu",)
    assert set(text_metrics([PARAPHRASE], [REFERENCE], settings)) == {"bleu_1", "bleu_4"}
