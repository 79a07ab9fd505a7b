"""ExplainRec (part 1): attention fusion over modalities, preference attribution, its prompts and sequences, the
three losses and the task weights, and a tuning run through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_preference_model import WORDS, write_answer_llama
from test_preferences import write_rated_dataset
from torch import nn

from recbole_mmprefer.cli import main as mmprefer
from recbole_mmprefer.errors import InputError
from recbole_mmprefer.explainer.prompts import SOFT_MARKER
from recbole_mmprefer.preference.explainrec import ExplainRecModel, build_explainrec_examples, explainrec_input
from recbole_mmprefer.preference.fusion import ModalityFeatures, ModalityFusion
from recbole_mmprefer.preference.reasons import attribution, reference_reason
from recbole_mmprefer.preference.settings import ExplainRecSettings, PreferenceModelConfig

SAMPLE = {"index": 7, "user_id": "u", "item_id": "i9", "title": "Gamma", "groups": ["Comedy", "Drama"], "label": 1,
          "rating": 4.0, "history": [
              {"item_id": "i1", "title": "Alpha", "groups": ["Comedy"], "liked": True},
              {"item_id": "i2", "title": "Beta", "groups": ["Horror"], "liked": False},
              {"item_id": "i3", "title": "Delta", "groups": ["Drama", "War"], "liked": False},
              {"item_id": "i4", "title": "Eps", "groups": ["Drama"], "liked": True}]}


def test_fusion_weights_sum_to_one_and_ignore_an_absent_modality():
    torch.manual_seed(0)
    fusion = ModalityFusion({"text": 4, "image": 3}, hidden=8, soft_tokens=2, llm_hidden=6)
    features = {"text": torch.randn(3, 4), "image": torch.randn(3, 3)}
    present = torch.tensor([[True, True], [True, False], [False, False]])
    tokens, weights = fusion(features, present)
    assert tokens.shape == (3, 2, 6)
    assert torch.allclose(weights[0].sum(), torch.tensor(1.0)) and (weights[0] > 0).all()
    assert weights[1].tolist() == [1.0, 0.0] and weights[2].tolist() == [0.0, 0.0]
    changed = {"text": features["text"], "image": features["image"] + 5.0}
    again, _ = fusion(changed, present)
    assert torch.equal(again[1], tokens[1]) and not torch.equal(again[0], tokens[0])
    tokens.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in fusion.parameters() if p.grad is not None)


def test_a_neutral_start_gives_every_item_the_neutral_token_and_learns_from_the_features(tmp_path):
    model = ExplainRecModel.build(settings_for(write_answer_llama(tmp_path / "llama"),
                                               explainrec_soft_prompt_start="neutral"), item_features=item_features())
    mean = model.llm.get_input_embeddings().weight.float().mean(dim=0)
    features, present = model.item_features.batch(["i9", "i1", "i2"])
    tokens, _ = model.fusion(features, present)
    assert torch.allclose(tokens, mean.expand_as(tokens))  # equal for every item: no noise, no item signal yet
    other = {**SAMPLE, "index": 8, "item_id": "i1", "title": "Alpha", "label": 0, "rating": 2.0}
    batch = batch_of(model, [SAMPLE, other])
    model.task_losses(batch, batch["features"])["pred"].backward()
    assert model.fusion.to_tokens.weight.grad.abs().sum() > 0 and model.fusion.neutral.grad.abs().sum() > 0
    torch.manual_seed(0)
    random = ModalityFusion({"text": 4, "image": 3}, hidden=8, soft_tokens=2, llm_hidden=6)
    random.start_at(torch.ones(6))  # a no-op on the random start
    assert random.neutral is None and random.to_tokens.weight.abs().sum() > 0


def test_feature_rows_mark_items_a_modality_lacks():
    features = ModalityFeatures({"text": np.eye(3), "image": np.ones((1, 2))}, {"text": ["a", "b", "c"],
                                                                                "image": ["b"]})
    matrices, present = features.batch(["b", "c", "zz"])
    assert present.tolist() == [[True, True], [True, False], [False, False]]
    assert matrices["text"][0].tolist() == [0, 1, 0] and matrices["image"][1].tolist() == [0, 0]


def test_attribution_names_the_history_items_that_share_a_genre():
    found = attribution(SAMPLE)
    assert [e["title"] for e in found.liked] == ["Alpha", "Eps"] and [e["title"] for e in found.disliked] == ["Delta"]
    assert found.shared_groups == ["Comedy", "Drama"] and found.stance == 1
    assert reference_reason(SAMPLE) == ('It is Comedy, Drama, like "Alpha", "Eps", which the user liked, and like '
                                        '"Delta", which the user disliked.')
    lonely = {**SAMPLE, "groups": ["Western"]}
    assert attribution(lonely).stance == 0
    assert reference_reason(lonely) == "It shares no genre with the items the user rated."
    assert reference_reason(lonely, "movie") == ("The user liked 2 of these 4 movies. "
                                                 "It shares no genre with the items the user rated.")
    assert reference_reason({**SAMPLE, "review": "great fun."}, "movie") == "great fun."


def settings_for(llama, **keys) -> PreferenceModelConfig:
    return PreferenceModelConfig.from_config({"llm_path": str(llama), "preference_system": "explainrec",
                                              "explainrec_fusion_hidden": 8, "preference_lora_dropout": 0.0,
                                              **keys})


def item_features() -> ModalityFeatures:
    rng = np.random.default_rng(0)
    return ModalityFeatures({"text": rng.normal(size=(5, 4)), "image": rng.normal(size=(2, 3))},
                            {"text": ["i1", "i2", "i3", "i4", "i9"], "image": ["i9", "i1"]})


def test_prompts_and_sequences_follow_the_switches(tmp_path):
    llama = write_answer_llama(tmp_path / "llama")
    full = settings_for(llama)
    model = ExplainRecModel.build(full, item_features=item_features())
    text = explainrec_input(SAMPLE, full.prompt, full.explainrec, SAMPLE["history"])
    assert '"Alpha" (Comedy)' in text and '"Gamma" (Comedy, Drama) ' + SOFT_MARKER in text
    assert "\nThe user liked 2 of these 4 movies.\n" in text
    assert "liked 1 of these 2 movies." in explainrec_input(SAMPLE, full.prompt, full.explainrec, SAMPLE["history"][2:])
    unsummarised = ExplainRecSettings.from_config({"explainrec_history_summary": False})
    assert "The user liked" not in explainrec_input(SAMPLE, full.prompt, unsummarised, SAMPLE["history"])
    true, flipped = build_explainrec_examples(SAMPLE, model.tokenizer, full.prompt, full.explainrec, True)
    prompt_length = true.answer_position + 1
    assert true.input_ids[:prompt_length] == flipped.input_ids[:prompt_length]
    assert true.input_ids[prompt_length] == WORDS.index("Yes") and flipped.input_ids[prompt_length] == WORDS.index("No")
    assert (true.answer, flipped.answer, true.label, flipped.label) == (1, 0, 1, 1)
    reason = [token for token in true.labels if token != -100]
    assert reason == [token for token in flipped.labels if token != -100] and reason[-1] == WORDS.index("</s>")
    assert len(true.soft_positions) == 2 and all(true.input_ids[p] == 0 for p in true.soft_positions)

    bare = ExplainRecSettings.from_config({"explainrec_attribution": False, "explainrec_multimodal": False})
    assert bare.tasks == ["pred", "rating"]
    text = explainrec_input(SAMPLE, full.prompt, bare, SAMPLE["history"])
    assert "(Comedy)" not in text and SOFT_MARKER not in text and "The user liked" not in text
    only, = build_explainrec_examples(SAMPLE, model.tokenizer, full.prompt, bare, True)
    assert only.soft_positions == [] and all(token == -100 for token in only.labels)
    assert ExplainRecSettings.from_config({"explainrec_multitask": False}).tasks == ["pred", "reason", "consistency"]


def batch_of(model, samples, shared=False):
    """Training pairs as whole sequences, or (``shared``) in the shared-prompt layout model.collate uses in
    training mode; the tests' LLM has no dropout, so the mode changes nothing else."""
    model.train(shared)
    return model.collate([example for sample in samples for example in model.examples(sample, with_answers=True)])


def test_each_loss_reaches_its_own_parameters(tmp_path):
    model = ExplainRecModel.build(settings_for(write_answer_llama(tmp_path / "llama"), explainrec_rating_head="linear"),
                                  item_features=item_features())
    other = {**SAMPLE, "index": 8, "item_id": "i1", "title": "Alpha", "label": 0, "rating": 2.0}
    batch = batch_of(model, [SAMPLE, other])
    groups = {"lora": [p for n, p in model.named_parameters() if "lora_" in n],
              "fusion": list(model.fusion.parameters()), "rating": list(model.rating_head.parameters())}

    def reached(task):
        model.zero_grad()
        model.task_losses(batch, batch["features"])[task].backward()
        return {name: any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
                for name, params in groups.items()}

    # peft starts every LoRA B at zero: at first the gradient reaches the B matrices (and not A)
    assert reached("pred") == {"lora": True, "fusion": True, "rating": False}
    assert reached("reason") == {"lora": True, "fusion": True, "rating": False}
    assert reached("consistency") == {"lora": True, "fusion": True, "rating": False}
    assert reached("rating")["rating"] is True
    # the head starts at zero, so its first loss is that of predicting the like threshold (3): (4-3)^2, (2-3)^2
    assert float(model.task_losses(batch, batch["features"])["rating"].detach()) == pytest.approx(1.0)
    assert model.explainrec.rating_center == 3.0


def test_the_margin_rating_head_grades_the_yes_no_margin(tmp_path):
    settings = settings_for(write_answer_llama(tmp_path / "llama"), explainrec_rating_head="margin",
                            explainrec_attribution=False, explainrec_multimodal=False)
    model = ExplainRecModel.build(settings)
    other = {**SAMPLE, "index": 8, "item_id": "i1", "title": "Alpha", "label": 0, "rating": 2.0}
    batch = batch_of(model, [SAMPLE, other])
    logits, _, _, _ = model.full_sequence_pass(batch)
    margin = (logits[:, 0] - logits[:, 1]).detach()
    # a = 1, b = 0 at first: the predicted centred rating is the margin itself
    expected = ((margin - torch.tensor([1.0, -1.0])) ** 2).mean()
    assert float(model.task_losses(batch)["rating"].detach()) == pytest.approx(float(expected), rel=1e-5)
    model.zero_grad()
    model.task_losses(batch)["rating"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.rating_head.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_" in n)
    assert model.rating_head.weight.shape == (1, 1)


def test_the_ordinal_rating_head_orders_the_stars_around_the_answer(tmp_path):
    settings = settings_for(write_answer_llama(tmp_path / "llama"), explainrec_rating_head="ordinal",
                            explainrec_attribution=False, explainrec_multimodal=False)
    model = ExplainRecModel.build(settings)
    other = {**SAMPLE, "index": 8, "item_id": "i1", "title": "Alpha", "label": 0, "rating": 2.0}
    batch = batch_of(model, [SAMPLE, other])
    logits, _, _, _ = model.full_sequence_pass(batch)
    margin = (logits[:, 0] - logits[:, 1]).detach()
    head = model.rating_head
    cuts = head.cut_logits(margin).detach()
    # cuts between 1|2, 2|3, 3|4, 4|5 start 2 apart; the one above the like threshold (3) is the answer's margin
    assert head.like_cut == 2
    assert torch.allclose(cuts, margin.unsqueeze(1) - torch.tensor([-4.0, -2.0, 0.0, 2.0]), atol=1e-5)
    targets = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])  # ratings 4 and 2
    expected = nn.functional.binary_cross_entropy_with_logits(cuts, targets)
    assert float(model.task_losses(batch)["rating"].detach()) == pytest.approx(float(expected), rel=1e-5)
    model.zero_grad()
    model.task_losses(batch)["rating"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_" in n)
    # a learned step never reorders the cuts, and the answer's cut stays the margin itself
    with torch.no_grad():
        head.steps_up.fill_(-30.0)
        head.log_scale.fill_(1.0)
    moved = head.cut_logits(margin).detach()
    assert (moved[:, :-1] >= moved[:, 1:] - 1e-6).all()
    assert torch.allclose(moved[:, 2], margin)


def test_the_ordinal_rating_levels_must_surround_the_like_threshold(tmp_path):
    llama = write_answer_llama(tmp_path / "llama")
    with pytest.raises(InputError, match="explainrec_rating_levels"):
        ExplainRecModel.build(settings_for(llama, explainrec_rating_head="ordinal", explainrec_multimodal=False,
                                           explainrec_rating_levels=[4, 5]))
    with pytest.raises(InputError, match="strictly ascending"):
        settings_for(llama, explainrec_rating_head="ordinal", explainrec_rating_levels=[1, 3, 2])


def test_the_shared_prompt_pass_gives_the_same_losses_and_gradients(tmp_path):
    model = ExplainRecModel.build(settings_for(write_answer_llama(tmp_path / "llama")), item_features=item_features())
    other = {**SAMPLE, "index": 8, "item_id": "i1", "title": "Alpha", "label": 0, "rating": 2.0,
             "history": SAMPLE["history"][1:]}  # a shorter prompt: the shared layout pads prompts and answers
    full, shared = batch_of(model, [SAMPLE, other]), batch_of(model, [SAMPLE, other], shared=True)
    assert "continuation_ids" not in full and shared["input_ids"].shape[0] == 2
    assert shared["continuation_ids"].shape[0] == 4 and shared["continuation_ids"].shape[1] < full["input_ids"].shape[1]

    def losses_and_gradients(batch):
        model.zero_grad()
        losses = model.task_losses(batch, batch["features"])
        model.combine(losses).backward()
        return ({task: float(value.detach()) for task, value in losses.items()},
                {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})

    (full_losses, full_grads), (shared_losses, shared_grads) = losses_and_gradients(full), losses_and_gradients(shared)
    assert full_losses.keys() == shared_losses.keys() == {"pred", "reason", "consistency", "rating"}
    for task, value in full_losses.items():
        assert shared_losses[task] == pytest.approx(value, rel=1e-4, abs=1e-6), task
    assert full_grads.keys() == shared_grads.keys() and len(full_grads) > 0
    for name, value in full_grads.items():
        assert torch.allclose(value, shared_grads[name], atol=1e-5), name
    model.causal_lm().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert "continuation_ids" not in batch_of(model, [SAMPLE, other], shared=True)  # no cache: whole sequences
    with pytest.raises(InputError, match="gradient checkpointing"):
        model.task_losses(shared, shared["features"])


def test_gradient_checkpointing_gives_the_same_gradients(tmp_path):
    model = ExplainRecModel.build(settings_for(write_answer_llama(tmp_path / "llama")), item_features=item_features())
    other = {**SAMPLE, "index": 8, "item_id": "i1", "title": "Alpha", "label": 0, "rating": 2.0}
    batch = batch_of(model, [SAMPLE, other])
    model.train()
    for module in model.modules():  # LoRA dropout off: both passes must see the same function
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0

    def gradients():
        model.zero_grad()
        model.combine(model.task_losses(batch, batch["features"])).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = gradients()
    model.causal_lm().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert model.causal_lm().model.gradient_checkpointing
    checkpointed = gradients()
    assert plain.keys() == checkpointed.keys() and len(plain) > 0
    for name, value in plain.items():
        assert torch.allclose(value, checkpointed[name], atol=1e-6), name


def test_consistency_is_the_kl_from_the_reasons_verdict_to_the_answer(tmp_path):
    model = ExplainRecModel.build(settings_for(write_answer_llama(tmp_path / "llama"),
                                               explainrec_multimodal=False))
    batch = batch_of(model, [SAMPLE, {**SAMPLE, "index": 8, "label": 0}])
    losses = model.task_losses(batch)
    with torch.no_grad():
        hidden = model.hidden_of(batch)
        logits, _ = model.answer_logits_at(hidden, batch["answer_position"])
        reason = model.reason_log_probs(hidden, batch["labels"])
    # rows: sample 1 under Yes (its label), under No; sample 2 under No (its label), under Yes
    verdict = torch.stack([torch.stack([reason[0], reason[1]]), torch.stack([reason[3], reason[2]])])
    q, p = torch.softmax(verdict, dim=1), torch.softmax(logits[0::2], dim=1)
    expected = (q * (q.log() - p.log())).sum(dim=1).mean()
    assert torch.allclose(losses["consistency"], expected, atol=1e-5)
    assert torch.allclose(losses["pred"], torch.nn.functional.cross_entropy(logits[0::2], torch.tensor([0, 1])),
                          atol=1e-6)


def test_task_weights_learned_or_fixed(tmp_path):
    llama = write_answer_llama(tmp_path / "llama")
    losses = {"pred": torch.tensor(0.7), "reason": torch.tensor(2.0), "consistency": torch.tensor(0.1),
              "rating": torch.tensor(4.0)}
    adaptive = ExplainRecModel.build(settings_for(llama, explainrec_multimodal=False,
                                                  explainrec_task_weighting="uncertainty"))
    with torch.no_grad():
        adaptive.log_variances.copy_(torch.tensor([0.0, 1.0, -1.0, 2.0]))
    expected = sum(np.exp(-s) * v + s for s, v in zip([0.0, 1.0, -1.0, 2.0], [0.7, 2.0, 0.1, 4.0]))
    assert float(adaptive.combine(losses).detach()) == pytest.approx(expected, rel=1e-5)
    fixed = ExplainRecModel.build(settings_for(llama, explainrec_multimodal=False,
                                               explainrec_task_weighting="fixed"))
    assert fixed.log_variances is None
    assert float(fixed.combine(losses)) == pytest.approx(1.0 * 0.7 + 0.5 * 2.0 + 0.1 * 0.1 + 0.1 * 4.0)


def test_the_cli_tunes_explainrec_and_logs_modality_weights(tmp_path, tiny_encoder):
    root = write_rated_dataset(tmp_path / "data")
    llama = write_answer_llama(tmp_path / "llama")
    common = ["--dataset", "rated", f"--data_path={root}", f"--run_dir={tmp_path / 'run'}",
              "--text_fields=['title', 'year']", "--load_col=None", "--preference_history_length=2",
              "--preference_split_ratios=[0.6, 0.0, 0.4]", f"--llm_path={llama}", "--preference_epochs=2",
              "--preference_system=explainrec", "--explainrec_fusion_hidden=8", f"--text_encoder={tiny_encoder}"]
    assert mmprefer(["features", *common]) == 0
    assert mmprefer(["preferences", *common]) == 0
    assert mmprefer(["preference-train", *common]) == 0
    model_dir = tmp_path / "run" / "preference_models" / "explainrec-all"
    history = json.loads((model_dir / "meta.json").read_text())["history"]
    assert len(history) == 2 and history[-1]["modality_weight_text"] == pytest.approx(1.0)
    assert {"pred", "reason", "consistency", "rating"} <= set(history[-1])
    assert not any(key.startswith("log_variance") for key in history[-1])  # fixed task weights by default
    assert mmprefer(["preference-score", *common, "--model_dir", str(model_dir)]) == 0
    scores = tmp_path / "run" / "preference_scores" / "explainrec-all-windows-test.jsonl"
    assert len(scores.read_text().splitlines()) == 2


def test_mmprefer_run_task_preference_reports_every_systems_auc(tmp_path, tiny_encoder):
    root = write_rated_dataset(tmp_path / "data")
    llama = write_answer_llama(tmp_path / "llama")
    assert mmprefer(["run", "--task", "preference", "--dataset", "rated", f"--data_path={root}",
                     f"--run_dir={tmp_path / 'run'}", "--text_fields=['title', 'year']", "--load_col=None",
                     "--preference_history_length=2", "--preference_split_ratios=[0.6, 0.0, 0.4]",
                     f"--llm_path={llama}", "--preference_epochs=1", "--explainrec_fusion_hidden=8",
                     f"--text_encoder={tiny_encoder}", "--pipeline_preference_shots=2"]) == 0
    report = (tmp_path / "run" / "preference_report" / "preference.md").read_text()
    for system in ("zero-shot (frozen LLM)", "TALLRec", "ExplainRec"):
        assert f"| {system} | " in report
    assert report.count("- user a, target") == 2
    models = sorted(folder.name for folder in (tmp_path / "run" / "preference_models").iterdir())
    assert models == ["explainrec-2shot", "tallrec-2shot"]


def test_reviews_become_reasons_and_generated_reasons_are_scored(tmp_path, tiny_encoder):
    from test_preferences import INTERACTIONS

    from recbole_mmprefer.data.preferences import read_preferences
    from recbole_mmprefer.preference.reasons import reference_reason

    root = write_rated_dataset(tmp_path / "data")
    reviews = [{"user_id": u, "item_id": i, "text": f"{'comedy' if r > 3 else 'horror'} story. More words here.",
                "timestamp": t} for u, i, r, t in INTERACTIONS]
    (root / "rated" / "rated.reviews.jsonl").write_text("".join(json.dumps(line) + "\n" for line in reviews))
    llama = write_answer_llama(tmp_path / "llama")
    common = ["--dataset", "rated", f"--data_path={root}", f"--run_dir={tmp_path / 'run'}",
              "--text_fields=['title', 'year']", "--load_col=None", "--preference_history_length=2",
              "--preference_split_ratios=[0.6, 0.0, 0.4]", f"--llm_path={llama}", "--preference_epochs=1",
              "--preference_system=explainrec", "--explainrec_multimodal=False", "--preference_reason_samples=2",
              "--preference_reason_max_tokens=4", f"--eval_bertscore_model={tiny_encoder}"]
    assert mmprefer(["preferences", *common]) == 0
    first = read_preferences(__import__("recbole_mmprefer.config", fromlist=["Config"]).Config(
        model="MMPSASRec", dataset="rated", config_dict={"data_path": str(root), "run_dir": str(tmp_path / "run")}))[0]
    assert first["review"] == "horror story." and first["history"][0]["reason"] == "comedy story."
    assert reference_reason(first) == "horror story."
    assert mmprefer(["preference-train", *common]) == 0
    model_dir = tmp_path / "run" / "preference_models" / "explainrec-no_multimodal-all"
    assert mmprefer(["preference-score", *common, "--model_dir", str(model_dir)]) == 0
    out_file = tmp_path / "run" / "preference_scores" / "explainrec-no_multimodal-all-windows-test.jsonl"
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert all(isinstance(row["reason"], str) for row in rows)
    reasons = json.loads(Path(f"{out_file}.meta.json").read_text())["reasons"]
    assert reasons["generated"] == 2 and reasons["with_reference"] == 2
    assert 0 <= reasons["bleu_4"] <= 100 and -1 <= reasons["bertscore_f1"] <= 1


def test_zero_shot_scores_with_explainrecs_prompt_and_no_soft_tokens(tmp_path):
    from recbole_mmprefer.preference.score import load_preference_model

    config = {"llm_path": str(write_answer_llama(tmp_path / "llama")), "preference_system": "explainrec"}
    model = load_preference_model(config, None)
    assert isinstance(model, ExplainRecModel) and not model.lora and model.fusion is None
    assert not any(p.requires_grad for p in model.llm.parameters())
    example = model.examples(SAMPLE, with_answers=False)[0]
    prompt = model.tokenizer.decode(example.input_ids)
    assert SOFT_MARKER not in prompt and example.soft_positions == []
    tallrec = load_preference_model({**config, "preference_system": "tallrec"}, None)
    assert type(tallrec).__name__ == "PreferenceModel"
