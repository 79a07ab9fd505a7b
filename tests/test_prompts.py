"""Explainer prompts (paper section 3.4): path text, the instruction, the token budget, labels, soft positions."""

from __future__ import annotations

import pytest
from tiny_models import word_tokenizer, write_tiny_llama

from recbole_mmprefer.data.node_text import NodeText
from recbole_mmprefer.errors import InputError
from recbole_mmprefer.explainer.prompts import SOFT_MARKER, verbalise_path
from recbole_mmprefer.explainer.settings import PromptSettings
from recbole_mmprefer.explainer.tokens import IGNORE_INDEX, build_example, collate

CHAT_TEMPLATE = ("<s>{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
                 "{% if add_generation_prompt %}assistant :{% endif %}")
EXPLANATION = "the user would enjoy this movie ."
LONG = " ".join(["drama comedy horror action story night"] * 10)  # 60 words, one token each


def node_text(path_profile: str = "a story of the night") -> NodeText:
    return NodeText(user_profiles={"u0": "likes drama and comedy", "u5": "likes horror", "u6": path_profile},
                    item_profiles={"i9": "an action movie", "i1": path_profile, "i2": path_profile},
                    titles={"i1": "Book one", "i2": "Book two", "i9": "Movie nine"})


def record(paths: int = 2) -> dict:
    chains = [["u0", "i1", "u5", "i9"], ["u0", "i3", "u7", "i9"], ["u0", "i2", "u6", "i9"]]
    return {"user_id": "u0", "item_id": "i9", "status": "ok",
            "paths": [{"types": ["user", "item", "user", "item"], "tokens": chain, "cost": 1.0 + n}
                      for n, chain in enumerate(chains[:paths])]}


def settings(**overrides) -> PromptSettings:
    keys = {f"explainer_{key}": value for key, value in overrides.items()}
    return PromptSettings.from_config(keys)


def tokenizer(chat: bool = False):
    tok = word_tokenizer()
    if chat:
        tok.chat_template = CHAT_TEMPLATE
    return tok


def supervised(example, tok) -> str:
    return tok.decode([i for i, label in zip(example.input_ids, example.labels) if label != IGNORE_INDEX])


def test_path_verbalised_with_relations_profiles_and_placeholders():
    text = node_text()
    assert verbalise_path(record()["paths"][0], text) == (
        "the user -> buys -> Book one: a story of the night -> bought by -> likes horror -> buys -> Movie nine")
    # an item without a title or profile, a user without a profile
    assert verbalise_path(record(2)["paths"][1], text) == (
        "the user -> buys -> an item -> bought by -> a user -> buys -> Movie nine")
    five = {"types": ["user", "item", "user", "item", "user", "item"], "tokens": ["u0", "i2", "u5", "i1", "u6", "i9"]}
    assert " -> bought by -> likes horror -> buys -> Book one: " in verbalise_path(five, text)


def test_prompt_holds_title_profiles_and_paths_in_the_papers_order():
    example = build_example(record(), node_text(), tokenizer(), settings())
    prompt = example.prompt_text
    order = ["Given the item title, item profile, user profile and some retrieval paths",
             "Item title: Movie nine", "Item profile: an action movie", "User Profile: likes drama and comedy",
             "Here are several related paths which may reflect his/her preference.", SOFT_MARKER,
             "Path 1: the user -> buys -> Book one", "Path 2: the user -> buys -> an item", "Explanations:"]
    places = [prompt.index(part) for part in order]
    assert places == sorted(places) and prompt.endswith("Explanations:")
    assert example.labels == [IGNORE_INDEX] * len(example)  # generation: nothing supervised
    assert set(example.truncation.values()) == {0}


@pytest.mark.parametrize("chat", [False, True])
def test_only_the_explanation_and_eos_are_supervised(chat):
    tok = tokenizer(chat)
    example = build_example(record(), node_text(), tok, settings(), explanation=EXPLANATION)
    assert supervised(example, tok) == EXPLANATION + " </s>"
    first = example.labels.index(next(label for label in example.labels if label != IGNORE_INDEX))
    assert all(label == IGNORE_INDEX for label in example.labels[:first])
    assert example.labels[first:] == example.input_ids[first:] and example.attention_mask == [1] * len(example)
    prompt = tok.decode(example.input_ids[:first])
    assert prompt.startswith("<s> user :") == chat and prompt.endswith("[UNK] :")  # "assistant :" / "Explanations:"


def test_budget_cuts_path_profiles_first_then_paths_then_profiles():
    tok, text, rec = tokenizer(), node_text(LONG), record(3)
    full = build_example(rec, text, tok, settings(max_length=2048), explanation=EXPLANATION)
    assert set(full.truncation.values()) == {0}
    target = len(tok(" " + EXPLANATION)["input_ids"]) + 1

    shorter = build_example(rec, text, tok, settings(max_length=len(full) - 100), explanation=EXPLANATION)
    assert len(shorter) == len(full) - 100  # fits exactly (a word-level tokenizer adds up)
    counts = shorter.truncation
    assert counts["path_profiles_shortened"] == 3 and counts["path_profile_tokens_cut"] == 100
    assert counts["paths_dropped"] == counts["path_profiles_dropped"] == counts["overflow_tokens"] == 0
    assert counts["user_profile_tokens_cut"] == counts["item_profile_tokens_cut"] == 0
    assert "Item title: Movie nine" in shorter.prompt_text and supervised(shorter, tok) == EXPLANATION + " </s>"

    floor = build_example(rec, text, tok, settings(max_length=len(full) - 3 * 52 - 10), explanation=EXPLANATION)
    assert floor.truncation["path_profiles_dropped"] >= 1 and floor.truncation["paths_dropped"] == 0
    assert len(floor) <= len(full) - 3 * 52 - 10

    few = build_example(rec, text, tok, settings(max_length=120, max_new_tokens=10), explanation=EXPLANATION)
    assert few.truncation["paths_dropped"] == 1 and len(few) <= 120 and "Path 2:" in few.prompt_text
    assert few.truncation["user_profile_tokens_cut"] == 0 and "Path 3:" not in few.prompt_text

    text.user_profiles["u0"] = LONG
    tight = build_example(rec, text, tok, settings(max_length=80, max_new_tokens=10), explanation=EXPLANATION)
    assert tight.truncation["paths_dropped"] == 3 and "Path 1:" not in tight.prompt_text
    assert tight.truncation["user_profile_tokens_cut"] > 0 and tight.truncation["item_profile_tokens_cut"] == 0
    assert len(tight) == 80 and tight.truncation["overflow_tokens"] == 0
    assert "Item title: Movie nine" in tight.prompt_text and supervised(tight, tok) == EXPLANATION + " </s>"
    assert len(tight.soft_positions) == 3  # the soft prompt keeps its positions whatever is cut

    over = build_example(rec, node_text(LONG), tok, settings(max_length=50, max_new_tokens=10),
                         explanation=EXPLANATION)
    assert over.truncation["overflow_tokens"] == len(over) - 50 > 0 and target < len(over)

    generation = build_example(rec, node_text(LONG), tok, settings(max_length=len(full) - 100 + 96 - target))
    assert len(generation) == len(full) - 100 - target  # room left for explainer_max_new_tokens
    assert generation.truncation["path_profile_tokens_cut"] == 100


def test_no_paths_block_for_zero_paths():
    example = build_example(record(), node_text(), tokenizer(), settings(paths=0), explanation=EXPLANATION)
    assert "Here are several related paths" not in example.prompt_text and "Path 1" not in example.prompt_text
    assert SOFT_MARKER not in example.prompt_text and example.soft_positions == []
    assert "User Profile: likes drama and comedy\nExplanations:" in example.prompt_text
    no_soft = build_example(record(), node_text(), tokenizer(), settings(soft_tokens=0))
    assert SOFT_MARKER not in no_soft.prompt_text and "Path 2:" in no_soft.prompt_text


@pytest.mark.parametrize("chat", [False, True])
def test_soft_positions_count_and_placeholder_ids(chat):
    tok = tokenizer(chat)
    example = build_example(record(), node_text(), tok, settings(paths=2, soft_tokens=4), explanation=EXPLANATION)
    positions = example.soft_positions
    assert positions == list(range(positions[0], positions[0] + 4))
    assert {example.input_ids[p] for p in positions} == {tok.pad_token_id}
    assert tok.pad_token_id not in example.input_ids[:positions[0]] + example.input_ids[positions[-1] + 1:]
    assert tok.decode(example.input_ids[positions[0] - 1]) == "."  # "... his/her preference." then the run
    default = build_example(record(), node_text(), tok, settings(paths=2))
    assert len(default.soft_positions) == 2  # one per path


def test_graph_placeholder_in_template_places_the_soft_prompt():
    template = "{graph} Item title: {title} {item_profile} {user_profile} {paths}Explanations:"
    example = build_example(record(), node_text(), tokenizer(), settings(instruction=template, soft_tokens=2))
    assert example.prompt_text.startswith(SOFT_MARKER) and example.prompt_text.count(SOFT_MARKER) == 1
    assert example.soft_positions == [0, 1]


def test_collate_pads_and_shifts_soft_positions():
    tok = tokenizer()
    short = build_example(record(1), node_text(), tok, settings(), explanation=EXPLANATION)
    long = build_example(record(2), node_text(), tok, settings(), explanation=EXPLANATION)
    assert len(long) > len(short)
    for left in (True, False):
        batch = collate([short, long], tok.pad_token_id, left_pad=left)
        width = len(long)
        assert batch["input_ids"].shape == (2, width) and batch["soft_positions"].shape == (2, 3)
        pad = width - len(short) if left else 0
        row = batch["input_ids"][0].tolist()
        assert row[pad:pad + len(short)] == short.input_ids
        assert batch["soft_positions"][0].tolist() == [p + pad for p in short.soft_positions]
        before, after = short.soft_positions[0] - 1, short.soft_positions[-1] + 1
        moved = batch["soft_positions"][0]
        assert row[moved[0] - 1] == short.input_ids[before] and row[moved[-1] + 1] == short.input_ids[after]
        assert batch["soft_mask"].sum(dim=1).tolist() == [3, 3]
        assert batch["attention_mask"][0].sum() == len(short) and batch["attention_mask"][0, moved].all()
        assert (batch["labels"][0] != IGNORE_INDEX).sum() == (batch["labels"][1] != IGNORE_INDEX).sum()
        assert batch["labels"][0, :pad].eq(IGNORE_INDEX).all() if left else batch["labels"][0, len(short):].eq(
            IGNORE_INDEX).all()
    with pytest.raises(InputError, match="as many soft positions"):
        collate([short, build_example(record(1), node_text(), tok, settings(soft_tokens=1))], 0, True)


def test_batch_runs_through_a_tiny_llama_with_soft_embeddings(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = write_tiny_llama(tmp_path / "llama")
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    examples = [build_example(record(n), node_text(), tok, settings(max_length=256), explanation=EXPLANATION)
                for n in (1, 2)]
    batch = collate(examples, tok.pad_token_id, left_pad=False)
    embeds = model.get_input_embeddings()(batch["input_ids"]).detach()
    embeds[batch["soft_mask"]] = torch.ones(int(batch["soft_mask"].sum()), embeds.shape[-1])
    loss = model(inputs_embeds=embeds, attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    assert torch.isfinite(loss)


def test_byte_level_tokenizer_round_trips_within_budget():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    corpus = [LONG, EXPLANATION, "Given the item title, item profile, user profile and some retrieval paths"]
    backend.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "</s>"],
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>")
    rec, text = record(3), node_text(LONG)
    full = build_example(rec, text, tok, settings(max_length=4096), explanation=EXPLANATION)
    for length in (len(full) - 150, 300):
        example = build_example(rec, text, tok, settings(max_length=length), explanation=EXPLANATION)
        assert len(example) <= length and example.truncation["overflow_tokens"] == 0
        assert example.truncation["path_profiles_shortened"] + example.truncation["paths_dropped"] > 0
        assert supervised(example, tok) == " " + EXPLANATION + "</s>"
        assert "Item title: Movie nine" in tok.decode(example.input_ids)


def test_settings_are_checked():
    assert settings().max_length == 512 and settings().max_new_tokens == 96 and settings().soft_tokens == 3
    with pytest.raises(InputError, match="explainer_paths"):
        settings(paths=6)
    with pytest.raises(InputError, match="unknown \\['rating'\\]"):
        settings(instruction="{title} {item_profile} {user_profile} {paths} {rating}")
    with pytest.raises(InputError, match="missing \\['paths'\\]"):
        settings(instruction="{title} {item_profile} {user_profile}")
    with pytest.raises(InputError, match="below"):
        settings(max_length=64, max_new_tokens=64)


def test_node_text_reads_profiles_and_titles(tmp_path):
    folder = tmp_path / "toy"
    folder.mkdir()
    (folder / "toy.item").write_text("item_id:token\ttitle:token_seq\tprofile:token_seq\tprofile_source:token\n"
                                     "i1\tBook one\tFor readers.\txrec\ni2\tBook two\t\t\n")
    (folder / "toy.user").write_text("user_id:token\tprofile:token_seq\tprofile_source:token\n"
                                     "u0\tLikes novels.\txrec\n")
    config = {"data_path": str(folder), "dataset": "toy", "text_fields": ["title"], "run_dir": str(tmp_path / "run")}
    text = NodeText.from_config(config)
    assert text.titles == {"i1": "Book one", "i2": "Book two"} and text.item_profiles == {"i1": "For readers."}
    assert text.profile("user", "u0") == "Likes novels." and text.label("item", "i1") == 'item i1 "Book one"'
    assert NodeText.from_config({**config, "text_fields": None}).titles == {}


def test_without_graph_level_no_soft_positions_are_reserved():
    from recbole_mmprefer.explainer.graph_encoder import soft_prompt_tokens
    from recbole_mmprefer.explainer.settings import PromptSettings

    config = {"explainer_paths": 3, "explainer_graph_level": False}
    assert PromptSettings.from_config(config).soft_tokens == soft_prompt_tokens(config) == 0
    config["explainer_graph_level"] = True
    assert PromptSettings.from_config(config).soft_tokens == soft_prompt_tokens(config) == 3
