"""The TALLRec preference model (ExplainRec part 1): P(Yes) from the tokenizer's own answer ids, left padding,
tuning that learns the labels, prompt budgets, and the CLI's files and AUC."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_preferences import write_rated_dataset

from recbole_mmprefer.cli import main as mmprefer
from recbole_mmprefer.errors import InputError
from recbole_mmprefer.preference.model import PreferenceModel
from recbole_mmprefer.preference.prompts import answer_token_ids, build_example, collate_left
from recbole_mmprefer.preference.score import auc, score_samples
from recbole_mmprefer.preference.settings import PreferenceModelConfig, PreferencePromptSettings

WORDS = ["[PAD]", "[UNK]", "<s>", "</s>", "No", "User", "Preference", "Unpreference", "Whether", "the", "user",
         "will", "like", "target", "movie", "Yes", ":", '"', ",", "?", ".", "Alpha", "Beta", "Gamma", "Delta", "Eps",
         "comedy", "horror", "assistant", "Given", "answer"]


def write_answer_llama(folder: Path, words=WORDS) -> Path:
    """A random-init Llama whose word-level vocabulary puts Yes and No where the test says (weights drawn wide
    enough that its frozen head can give one answer a clear majority)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder.mkdir(parents=True)
    backend = Tokenizer(models.WordLevel({word: n for n, word in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                        bos_token="<s>", eos_token="</s>")
    tokenizer.chat_template = ("<s>{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
                               "{% if add_generation_prompt %}assistant :{% endif %}")
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                                 pad_token_id=0, bos_token_id=2, eos_token_id=3,
                                 initializer_range=0.3)).save_pretrained(folder)
    return folder


def sample(target: str, label: int, history=(("Alpha", True), ("Beta", False))) -> dict:
    return {"index": 0, "user_id": "u", "item_id": target, "title": target, "label": label,
            "history": [{"item_id": t, "title": t, "liked": liked} for t, liked in history]}


def model_for(llama: Path, **keys) -> PreferenceModel:
    return PreferenceModel.build(PreferenceModelConfig.from_config({"llm_path": str(llama), **keys}))


def test_p_yes_reads_the_tokenizers_own_answer_ids(tmp_path):
    swapped = list(WORDS)
    swapped[4], swapped[15] = "Yes", "No"
    for folder, words in ((tmp_path / "a", WORDS), (tmp_path / "b", swapped)):
        model = model_for(write_answer_llama(folder, words))
        yes, no = answer_token_ids(model.tokenizer)
        assert (yes, no) == (words.index("Yes"), words.index("No"))
        example = build_example(sample("Gamma", 1), model.tokenizer, model.settings.prompt, with_answer=False)
        batch = collate_left([example], 0)
        with torch.no_grad():
            logits = model.llm(input_ids=batch["input_ids"]).logits[0, -1]
        expected = torch.softmax(logits[[yes, no]], dim=-1)[0]
        assert torch.allclose(model.p_yes(batch)[0], expected, atol=1e-5)


def test_left_padding_leaves_p_yes_unchanged(tmp_path):
    model = model_for(write_answer_llama(tmp_path / "llama"))
    short = sample("Gamma", 1, history=(("Alpha", True),))
    long = sample("Delta", 0, history=(("Alpha", True), ("Beta", False), ("Gamma", True), ("Eps", False)))
    examples = [build_example(s, model.tokenizer, model.settings.prompt, with_answer=False) for s in (short, long)]
    alone = model.p_yes(collate_left(examples[:1], 0))[0]
    together = model.p_yes(collate_left(examples, 0))[0]
    assert len(examples[1]) > len(examples[0]) and torch.allclose(alone, together, atol=1e-5)


def test_tuning_learns_the_labels(tmp_path):
    from recbole_mmprefer.preference.settings import PreferenceTrainingSettings
    from recbole_mmprefer.preference.train import tune

    model = model_for(write_answer_llama(tmp_path / "llama"), preference_lora_dropout=0.0)
    samples = [sample(target, label) for target, label in (("comedy", 1), ("horror", 0))] * 4
    examples = [model.examples(s, with_answers=True) for s in samples]
    assert examples[0][0].labels[-3:] == [WORDS.index("Yes"), WORDS.index("."), WORDS.index("</s>")]
    before = score_samples(model, samples[:2], 2, bf16=False)
    frozen = {name: p.clone() for name, p in model.llm.named_parameters() if not p.requires_grad}
    training = PreferenceTrainingSettings.from_config({"preference_epochs": 60, "preference_learning_rate": 0.02,
                                                       "preference_batch_size": 4, "preference_bf16": False})
    history = tune(model, examples, training, seed=1)
    after = score_samples(model, samples[:2], 2, bf16=False)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert after[0] > 0.9 and after[1] < 0.1 and abs(before[0] - before[1]) < 0.1  # the target decides now
    assert all(torch.equal(p, frozen[name]) for name, p in model.llm.named_parameters() if not p.requires_grad)


def test_an_interrupted_tuning_resumes_to_the_same_weights(tmp_path, monkeypatch):
    from recbole_mmprefer.explainer.checkpoints import checkpoints
    from recbole_mmprefer.preference.settings import PreferenceTrainingSettings
    from recbole_mmprefer.preference.train import TuningRun, tune

    llama = write_answer_llama(tmp_path / "llama")
    samples = [sample(target, label) for target, label in (("comedy", 1), ("horror", 0))] * 4
    training = PreferenceTrainingSettings.from_config({
        "preference_epochs": 3, "preference_learning_rate": 0.02, "preference_batch_size": 2,
        "preference_bf16": False, "preference_checkpoint_steps": 1})

    def run(out_dir):
        torch.manual_seed(5)  # the same LoRA start each time
        model = model_for(llama)  # LoRA dropout on: the random state must be restored too
        history = tune(model, [model.examples(s, with_answers=True) for s in samples], training, 1, out_dir, "h")
        return history, model.trainable_state_dict()

    expected_history, expected = run(tmp_path / "whole")
    step, taken = TuningRun.step, []

    def stop_after_six(self, epoch, indices):
        if len(taken) == 6:  # epoch 2, after its second of four steps
            raise KeyboardInterrupt
        taken.append(epoch)
        return step(self, epoch, indices)

    monkeypatch.setattr(TuningRun, "step", stop_after_six)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "stopped")
    assert [(c.epoch, c.step) for c in checkpoints(tmp_path / "stopped")] == [(1, None), (2, 2)]
    monkeypatch.setattr(TuningRun, "step", step)
    history, resumed = run(tmp_path / "stopped")
    assert history == expected_history
    assert all(torch.allclose(resumed[name], expected[name], atol=1e-6) for name in expected)


def test_a_long_history_loses_its_oldest_items_first(tmp_path):
    model = model_for(write_answer_llama(tmp_path / "llama"))
    history = [(name, True) for name in ("Alpha", "Beta", "Gamma", "Delta", "Eps")]
    full = build_example(sample("comedy", 1, history), model.tokenizer, model.settings.prompt, with_answer=True)
    settings = PreferencePromptSettings.from_config({"preference_max_length": len(full) - 2})
    cut = build_example(sample("comedy", 1, history), model.tokenizer, settings, with_answer=True)
    assert cut.dropped_history == 1 and len(cut) <= len(full) - 2
    assert WORDS.index("Alpha") not in cut.input_ids and WORDS.index("Beta") in cut.input_ids
    with pytest.raises(InputError, match="preference sample 0 .* even without its history"):
        build_example(sample("comedy", 1, history), model.tokenizer,
                      PreferencePromptSettings.from_config({"preference_max_length": 32}), with_answer=True)


def test_auc_of_one_label_is_nan_and_otherwise_sklearns():
    from sklearn.metrics import roc_auc_score

    assert auc([1, 1], [0.2, 0.3]) != auc([1, 1], [0.2, 0.3])
    labels, scores = [1, 0, 1, 0, 1], [0.9, 0.4, 0.45, 0.8, 0.7]
    assert auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores)) == pytest.approx(4 / 6)


def test_the_cli_tunes_and_scores_with_auc(tmp_path, capsys):
    root = write_rated_dataset(tmp_path / "data")
    llama = write_answer_llama(tmp_path / "llama")
    common = ["--dataset", "rated", f"--data_path={root}", f"--run_dir={tmp_path / 'run'}",
              "--text_fields=['title', 'year']", "--load_col=None", "--preference_history_length=2",
              "--preference_split_ratios=[0.6, 0.0, 0.4]", f"--llm_path={llama}", "--preference_epochs=2"]
    assert mmprefer(["preferences", *common]) == 0
    assert mmprefer(["preference-train", *common, "--preference_shots=2"]) == 0
    model_dir = tmp_path / "run" / "preference_models" / "tallrec-2shot"
    meta = json.loads((model_dir / "meta.json").read_text())
    assert meta["train_samples"] == 2 and len(meta["history"]) == 2 and (model_dir / "adapter.safetensors").is_file()
    capsys.readouterr()
    assert mmprefer(["preference-score", *common, "--model_dir", str(model_dir)]) == 0
    out_file = tmp_path / "run" / "preference_scores" / "tallrec-2shot-windows-test.jsonl"
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [row["index"] for row in rows] == [3, 4] and all(0 < row["p_yes"] < 1 for row in rows)
    written = json.loads(Path(f"{out_file}.meta.json").read_text())["auc"]
    assert written == auc([row["label"] for row in rows], [row["p_yes"] for row in rows])
    assert f"over 2 test samples: {out_file}" in capsys.readouterr().out


def test_a_recbole_sequential_model_learns_preference_samples(tmp_path):
    from recbole.data import create_dataset

    from conftest import tiny_config
    from recbole_mmprefer.config import Config
    from recbole_mmprefer.data.preferences import build_preferences, read_preferences
    from recbole_mmprefer.preference.conventional import build_scorer, score_with, train_scorer

    root = write_rated_dataset(tmp_path / "data")
    keys = tiny_config(root, checkpoint_dir=str(tmp_path / "saved"), run_dir=str(tmp_path / "run"),
                       text_fields=["title", "year"], load_col=None, preference_history_length=2,
                       hidden_dropout_prob=0.0, attn_dropout_prob=0.0, MAX_ITEM_LIST_LENGTH=4)
    config = Config(model="SASRec", dataset="rated", config_dict=keys)
    build_preferences(config)
    samples = read_preferences(config)
    scorer = build_scorer("SASRec", config, create_dataset(config))
    sequences, lengths, targets = scorer.tensors(samples[:1])
    assert lengths.tolist() == [2] and sequences.shape == (1, 4) and targets.item() == scorer.item_ids["i2"]
    distinct = [samples[n] for n in (1, 2, 4)]  # SASRec sees no user: these three differ in history or target
    losses = train_scorer(scorer, distinct, epochs=60, learning_rate=0.01, batch_size=3, seed=0)
    assert losses[-1] < losses[0] / 2
    assert auc([s["label"] for s in distinct], score_with(scorer, distinct)) == 1.0
