"""Cold start (issue 16): new-user and new-item splits without leaks, the knowledge base against a hand
computation, its words, and the content-based and demographic-popularity baselines."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from recbole_mmprefer.cli import main as mmprefer
from recbole_mmprefer.config import Config
from recbole_mmprefer.data.cold_start import build_cold_start, cold_samples, support_set
from recbole_mmprefer.data.preferences import read_preferences
from recbole_mmprefer.preference.cold_baselines import content_scores, demographic_scores, like_share_scores
from recbole_mmprefer.preference.knowledge import (
    KnowledgeBase,
    age_bucket,
    attach_knowledge,
    build_knowledge,
    knowledge_text,
)
from recbole_mmprefer.preference.score import auc

GENRES = ["Comedy", "Drama", "Horror", "Action"]
USERS, ITEMS = 30, 40


def write_world(root: Path, seed: int = 0) -> Path:
    """30 users with 8-14 rated interactions over 40 items (each with one or two genres), and their attributes;
    user u7 has no .user row and u8 no age."""
    rng = np.random.default_rng(seed)
    folder = root / "world"
    folder.mkdir(parents=True)
    lines, time = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"], 0
    for user in range(USERS):
        for item in rng.choice(ITEMS, size=int(rng.integers(8, 15)), replace=False):
            time += 1
            lines.append(f"u{user}\ti{item}\t{int(rng.integers(1, 6))}\t{time}")
    (folder / "world.inter").write_text("\n".join(lines) + "\n")
    (folder / "world.item").write_text("item_id:token\ttitle:token_seq\tgenre:token_seq\n" + "".join(
        f"i{item}\tFilm {item}\t{' '.join(rng.choice(GENRES, size=1 + item % 2, replace=False))}\n"
        for item in range(ITEMS)))
    rows = [f"u{user}\t{'' if user == 8 else 15 + user}\t{'MF'[user % 2]}\t{['student', 'writer'][user % 3 == 0]}"
            for user in range(USERS) if user != 7]
    (folder / "world.user").write_text("user_id:token\tage:token\tgender:token\toccupation:token\n"
                                       + "\n".join(rows) + "\n")
    return root


def world_config(root: Path, tmp_path: Path, **overrides) -> Config:
    return Config(model="MMPSASRec", dataset="world", config_dict={
        "data_path": str(root), "run_dir": str(tmp_path / "run"), "text_fields": ["title"], "load_col": None,
        "preference_history_length": 3, "preference_windows": 10000, "coldstart_share": 0.2,
        "coldstart_support": 2, "coldstart_min_item_interactions": 3, **overrides})


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return write_world(tmp_path_factory.mktemp("cold"))


def interactions_by_user(root: Path) -> dict:
    by_user = {}
    for line in (root / "world" / "world.inter").read_text().splitlines()[1:]:
        user, item, rating, _ = line.split("\t")
        by_user.setdefault(user, []).append((item, float(rating)))
    return by_user


def test_new_users_are_held_out_entirely_and_shown_their_support_set(world, tmp_path):
    config = world_config(world, tmp_path)
    samples = read_preferences(config, name=Path(build_cold_start(config, "users")).name)
    report = json.loads((Path(config["run_dir"]) / "preferences" / "cold-users" / "report.json").read_text())
    held_out = set(report["held_out"])
    assert len(held_out) == 6 and report["held_out_count"] == 6
    splits = cold_samples(samples)
    assert splits["train"] and splits["valid"] and splits["test"]
    warm_users = {s["user_id"] for s in splits["train"] + splits["valid"]}
    assert not warm_users & held_out and {s["user_id"] for s in splits["test"]} == held_out
    by_user = interactions_by_user(world)
    for sample in splits["test"]:
        support = by_user[sample["user_id"]][:2]
        assert [(h["item_id"], h["rating"]) for h in sample["history"]] == support
        assert [h["liked"] for h in sample["history"]] == [rating > 3 for _, rating in support]
        assert sample["cold"] == "user" and sample["support_size"] == 2 and sample["shot_rank"] is None
    assert len(splits["test"]) == sum(len(by_user[user]) - 2 for user in held_out)
    assert all(s["cold"] is None and s["shot_rank"] is not None for s in splits["train"])
    assert [s["index"] for s in samples] == list(range(len(samples)))


def test_new_items_never_reach_train_or_valid_and_histories_never_show_one(world, tmp_path):
    config = world_config(world, tmp_path)
    samples = read_preferences(config, name=Path(build_cold_start(config, "items")).name)
    report = json.loads((Path(config["run_dir"]) / "preferences" / "cold-items" / "report.json").read_text())
    held_out = set(report["held_out"])
    splits = cold_samples(samples)
    for sample in splits["train"] + splits["valid"]:
        assert sample["item_id"] not in held_out
        assert not {h["item_id"] for h in sample["history"]} & held_out
    assert splits["test"] and all(s["item_id"] in held_out and s["cold"] == "item" for s in splits["test"])
    assert all(len(s["history"]) == 3 and not {h["item_id"] for h in s["history"]} & held_out
               for s in splits["test"])
    assert report["dropped_windows"] > 0
    knowledge = KnowledgeBase.load(config, build_knowledge(config, "cold-items", samples))
    assert not set(knowledge.temporal["items"]) & held_out  # K never saw a new item


def test_a_support_set_larger_than_configured_is_cut_and_counted():
    entries = [{"item_id": f"i{n}"} for n in range(5)]
    kept, cut = support_set(entries, 3)
    assert [e["item_id"] for e in kept] == ["i0", "i1", "i2"] and cut == 2
    assert support_set(entries[:2], 3) == (entries[:2], 0)


def hand_samples():
    """Two train samples and a test one; u1 (25, F) likes Comedy, u2 (40, M) does not."""
    return [
        {"index": 0, "split": "train", "user_id": "u1", "item_id": "a", "label": 1, "groups": ["Comedy"],
         "timestamp": 10, "history": [{"item_id": "b", "liked": True, "groups": ["Comedy"]},
                                      {"item_id": "c", "liked": False, "groups": ["Drama"]}]},
        {"index": 1, "split": "train", "user_id": "u2", "item_id": "a", "label": 0, "groups": ["Comedy"],
         "timestamp": 20, "history": [{"item_id": "b", "liked": False, "groups": ["Comedy"]},
                                      {"item_id": "c", "liked": True, "groups": ["Drama"]}]},
        {"index": 2, "split": "test", "user_id": "u3", "item_id": "z", "label": 1, "groups": ["Comedy"],
         "timestamp": 30, "history": [{"item_id": "a", "liked": True, "groups": ["Comedy"]}]}]


def hand_config(tmp_path: Path, users: str) -> dict:
    folder = tmp_path / "hand"
    folder.mkdir()
    (folder / "hand.user").write_text("user_id:token\tage:token\tgender:token\n" + users)
    return {"data_path": str(folder), "dataset": "hand", "run_dir": str(tmp_path / "run"),
            "knowledge_user_attributes": ["age", "gender"], "knowledge_smoothing": 2.0}


def test_the_demographic_prior_equals_a_hand_computation(tmp_path):
    config = hand_config(tmp_path, "u1\t25\tF\nu2\t40\tM\nu3\t30\tF\n")
    knowledge = KnowledgeBase.load(config, build_knowledge(config, "hand", hand_samples()))
    demographic = knowledge.demographic
    # train only: (u1,a,+) (u1,b,+) (u1,c,-) (u2,a,-) (u2,b,-) (u2,c,+); the test sample never counts
    assert demographic["overall"] == {"interactions": 6, "liked": 3}
    assert demographic["groups"]["Comedy"] == {"interactions": 4, "liked": 2}
    assert demographic["values"]["gender"]["F"]["groups"]["Comedy"] == {"interactions": 2, "liked": 2}
    assert demographic["values"]["age"]["25-34"]["interactions"] == 3
    # u3 (30, F) on a Comedy: every user's Comedy rate (2 + 2 * 0.5) / (4 + 2) = 0.5 (overall rate 0.5);
    # age 25-34 (u1 only) Comedy: (2 + 2 * 0.5) / (2 + 2) = 0.75; gender F (u1 only): the same; the prior: 0.75
    prior, rates, unknown = knowledge.demographic_prior("u3", ["Comedy"])
    assert rates == {"age=25-34": pytest.approx(0.75), "gender=F": pytest.approx(0.75)} and unknown == []
    assert prior == pytest.approx(0.75)
    assert knowledge.temporal["items"]["a"] == {"interactions": 2, "liked": 1, "recent": 1}
    assert knowledge.temporal["recent_from"] == pytest.approx(18.0)  # the 0.8 quantile of the times 10, 20


def test_no_train_prompt_is_told_its_own_answer_by_the_item_rate(tmp_path):
    config = hand_config(tmp_path, "u1\t25\tF\nu2\t40\tM\nu3\t30\tF\n")
    samples = hand_samples() + [{"index": 3, "split": "test", "user_id": "u3", "item_id": "a", "label": 1,
                                 "groups": ["Comedy"], "timestamp": 40, "history": []}]
    texts = [sample["knowledge"] for sample in attach_knowledge(config, "hand", samples, "movie")]
    # item a: u1 liked it, u2 did not; the Comedy rate is 0.5 and m = 2. u1's train sample sees u2's answer only:
    # (0 + 2 * 0.5) / (1 + 2); u2's sees u1's: (1 + 1) / 3; a test sample sees both: (1 + 1) / (2 + 2)
    assert "This movie was liked by 33% of its 1 raters." in texts[0]
    assert "This movie was liked by 67% of its 1 raters." in texts[1]
    assert "This movie was liked by 50% of its 2 raters." in texts[3]
    alone = [{**samples[0], "history": []}]  # the only rater of a: its train prompt says a has no ratings yet
    assert "This movie has no ratings yet" in attach_knowledge(config, "alone", alone, "movie")[0]["knowledge"]


def test_missing_attributes_fall_back_and_say_so(tmp_path):
    config = hand_config(tmp_path, "u1\t25\tF\nu2\t40\tM\nu4\t\tM\n")
    knowledge = KnowledgeBase.load(config, build_knowledge(config, "hand", hand_samples()))
    prior, rates, unknown = knowledge.demographic_prior("nobody", ["Comedy"])
    assert rates == {} and unknown == ["age", "gender"] and prior == pytest.approx(knowledge.group_rate(["Comedy"]))
    text = knowledge_text({"user_id": "nobody", "item_id": "z", "groups": ["Comedy"]}, knowledge)
    assert "Unknown for this user: age, gender (the prior is every user's)." in text
    assert "This movie has no ratings yet; Comedy movies were liked 50% of the time." in text
    _, rates, unknown = knowledge.demographic_prior("u4", ["Comedy"])
    assert list(rates) == ["gender=M"] and unknown == ["age"]
    seen = knowledge_text({"user_id": "u1", "item_id": "a", "groups": ["Comedy"]}, knowledge)
    assert "This movie was liked by 50% of its 2 raters." in seen and "25-34 (age)" in seen
    assert age_bucket("17", [18, 25]) == "under 18" and age_bucket("60", [18, 25]) == "25+"
    assert age_bucket("x", [18]) is None


def test_the_baselines_order_a_separable_fixture_and_follow_the_prior():
    features = {"like1": np.array([1.0, 0.0]), "like2": np.array([0.9, 0.1]), "hate": np.array([0.0, 1.0]),
                "good": np.array([1.0, 0.05]), "bad": np.array([0.05, 1.0])}
    history = [{"item_id": "like1", "liked": True}, {"item_id": "like2", "liked": True},
               {"item_id": "hate", "liked": False}, {"item_id": "unknown", "liked": True}]
    samples = [{"item_id": "good", "label": 1, "history": history}, {"item_id": "bad", "label": 0, "history": history},
               {"item_id": "nofeature", "label": 0, "history": history}]
    scores = content_scores(samples, features)
    assert scores[0] > 0 > scores[1] and scores[2] == 0.0
    assert auc([1, 0], scores[:2]) == 1.0


def test_the_history_like_share_is_the_share_of_liked_items_shown():
    def sample(*liked):
        return {"item_id": "t", "history": [{"item_id": str(n), "liked": value} for n, value in enumerate(liked)]}

    scores = like_share_scores([sample(True, False, True, True), sample(False, False, True), sample()])
    assert scores == [0.75, pytest.approx(1 / 3), 0.5]
    assert auc([1, 0, 0], scores) == 1.0


def test_demographic_popularity_scores_seen_items_by_their_rate_and_new_ones_by_the_peers(tmp_path):
    config = hand_config(tmp_path, "u1\t25\tF\nu2\t40\tM\nu3\t30\tF\n")
    knowledge = KnowledgeBase.load(config, build_knowledge(config, "hand", hand_samples()))
    new_item, seen_item = demographic_scores([{"user_id": "u3", "item_id": "z", "groups": ["Comedy"]},
                                              {"user_id": "u3", "item_id": "a", "groups": ["Comedy"]}], knowledge)
    assert new_item == pytest.approx(0.75)  # the peers' prior alone
    assert seen_item == pytest.approx((1 + 2 * 0.75) / (2 + 2))  # item a: 1 of 2 liked, smoothed toward it


def test_the_command_line_builds_both_splits(world, tmp_path, capsys):
    common = ["--dataset", "world", f"--data_path={world}", f"--run_dir={tmp_path / 'run'}", "--text_fields=['title']",
              "--preference_history_length=3", "--coldstart_share=0.2", "--coldstart_support=2",
              "--coldstart_min_item_interactions=3"]
    assert mmprefer(["preferences", *common, "--cold", "users"]) == 0
    assert "cold-users/samples.jsonl" in capsys.readouterr().out
    assert mmprefer(["preferences", *common, "--cold", "items"]) == 0
    assert (tmp_path / "run" / "preferences" / "cold-items" / "samples.jsonl").is_file()
    with pytest.raises(SystemExit):  # argparse names the choices
        mmprefer(["preferences", *common, "--cold", "friends"])
    assert "invalid choice: 'friends' (choose from 'users', 'items')" in capsys.readouterr().err


def test_tallrec_tunes_and_scores_new_users_with_the_knowledge_in_its_prompt(world, tmp_path):
    from test_preference_model import write_answer_llama

    from recbole_mmprefer.preference.prompts import preference_input
    from recbole_mmprefer.preference.score import score_preferences
    from recbole_mmprefer.preference.train import train_preference_model

    config = world_config(world, tmp_path, llm_path=str(write_answer_llama(tmp_path / "llama")),
                          preference_knowledge=True, preference_shots=4, preference_epochs=1,
                          preference_bf16=False)
    build_cold_start(config, "users")
    model_dir = train_preference_model(config, samples_name="cold-users")
    assert model_dir.name == "tallrec-knowledge-4shot-cold-users"
    out = score_preferences(config, model_dir, samples_name="cold-users", max_samples=6)
    meta = json.loads(Path(f"{out}.meta.json").read_text())
    assert meta["samples"] == 6 and meta["samples_name"] == "cold-users"
    folder = Path(config["run_dir"]) / "preference_knowledge" / "cold-users"
    assert {p.name for p in folder.iterdir()} >= {"demographic.json", "temporal.json", "cross_domain.json"}
    sample = next(s for s in read_preferences(config, "cold-users") if s["split"] == "test")
    knowledge = KnowledgeBase.load(config, folder)
    prompt = preference_input({**sample, "knowledge": knowledge_text(sample, knowledge)}, "movie", sample["history"])
    assert "\nPreference knowledge: Users like this one liked" in prompt
    assert preference_input(sample, "movie", sample["history"]).count("Preference knowledge") == 0


def newcomer(user: str, target: str, label: int, support=(("Alpha", True), ("Beta", False), ("Gamma", True))) -> dict:
    return {"index": f"{user}-{target}", "user_id": user, "item_id": target, "title": target, "label": label,
            "cold": "user", "history": [{"item_id": t, "title": t, "liked": liked} for t, liked in support]}


def test_support_samples_leave_one_out_and_count_what_is_cut():
    from recbole_mmprefer.preference.meta import support_samples

    samples, cut = support_samples(newcomer("a", "comedy", 1), size=2)
    assert cut == 1 and [s["item_id"] for s in samples] == ["Alpha", "Beta"] and [s["label"] for s in samples] == [1, 0]
    assert [[h["item_id"] for h in s["history"]] for s in samples] == [["Beta"], ["Alpha"]]


def test_the_inner_loop_changes_only_adapter_weights_and_restores_them_per_user(tmp_path):
    from test_preference_model import model_for, write_answer_llama

    from recbole_mmprefer.preference.meta import AdaptationSettings, adapted_scores, reptile
    from recbole_mmprefer.preference.score import score_samples

    model = model_for(write_answer_llama(tmp_path / "llama"), preference_lora_dropout=0.0)
    start = model.trainable_state_dict()
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
    moved = []

    def score_batch(current, rows):
        now = current.trainable_state_dict()
        moved.append(sum(float((now[name] - start[name]).abs().sum()) for name in start))
        assert all(torch.equal(p, frozen[name]) for name, p in current.named_parameters() if not p.requires_grad)
        return score_samples(current, rows, 4, bf16=False)

    settings = AdaptationSettings(support=3, adaptation_steps=3, adaptation_lr=0.5, meta_steps=0, meta_lr=0.1)
    samples = [newcomer("a", "comedy", 1), newcomer("b", "comedy", 1), newcomer("a", "horror", 0)]
    scores, counts = adapted_scores(model, samples, settings, score_batch)
    assert counts == {"users": 2, "support_cut": 0} and moved[0] > 0 and moved[0] == pytest.approx(moved[1])
    assert scores[0] == pytest.approx(scores[1])  # b adapted from the same start as a, not from a's weights
    after = model.trainable_state_dict()
    assert all(torch.equal(after[name], start[name]) for name in start)  # restored
    unadapted, _ = adapted_scores(model, samples, AdaptationSettings(3, 0, 0.5, 0, 0.1), score_batch)
    assert moved[-1] == 0 and unadapted[0] != pytest.approx(scores[0])

    warm = [{**newcomer("w", target, label), "cold": None, "index": n}
            for n, (target, label) in enumerate([("comedy", 1), ("horror", 0), ("comedy", 1)])]
    assert reptile(model, warm, settings, seed=0) == []  # meta_steps 0: nothing
    log = reptile(model, warm, AdaptationSettings(3, 2, 0.5, meta_steps=2, meta_lr=0.5), seed=0)
    assert len(log) == 2 and log[0]["support"] == 3
    shifted = model.trainable_state_dict()
    assert any(not torch.equal(shifted[name], start[name]) for name in start)
    assert all(torch.equal(p, frozen[name]) for name, p in model.named_parameters() if not p.requires_grad)


def test_scoring_new_users_adapts_to_each_support_set(world, tmp_path):
    from test_preference_model import write_answer_llama

    from recbole_mmprefer.preference.score import score_preferences
    from recbole_mmprefer.preference.train import train_preference_model

    config = world_config(world, tmp_path, llm_path=str(write_answer_llama(tmp_path / "llama")), preference_shots=4,
                          preference_epochs=1, preference_bf16=False, coldstart_adaptation_steps=1,
                          coldstart_meta_steps=2)
    build_cold_start(config, "users")
    model_dir = train_preference_model(config, samples_name="cold-users")
    assert model_dir.name == "tallrec-4shot-meta-cold-users"
    assert json.loads((model_dir / "meta.json").read_text())["meta_steps"] == 2
    out = score_preferences(config, model_dir, samples_name="cold-users", max_samples=5)
    adaptation = json.loads(Path(f"{out}.meta.json").read_text())["adaptation"]
    assert adaptation["users"] >= 1 and adaptation["coldstart_adaptation_steps"] == 1


class TitleEncoder:
    """Unit vectors by title: the two Jurassic Parks nearly coincide, everything else is orthogonal."""

    def encode(self, texts):
        rows = []
        for n, text in enumerate(texts):
            vector = np.zeros(64)
            vector[0 if "jurassic" in text.lower() else 1 + (sum(map(ord, text)) % 60)] = 1.0
            if "(1993)" in text:
                vector[63] = 0.3
            rows.append(vector / np.linalg.norm(vector))
        return np.stack(rows)


def test_the_cross_domain_part_tells_a_target_the_like_rate_of_its_closest_other_domain_item(tmp_path):
    from recbole_mmprefer.jsonl import write_jsonl
    from recbole_mmprefer.preference.knowledge import cross_domain_matches

    books = tmp_path / "books.jsonl"
    write_jsonl(books, [{"index": 0, "split": "test", "title": "Jurassic Park written by Michael Crichton", "label": 1,
                         "groups": [], "history": [{"title": "Emma written by Jane Austen", "liked": False},
                                                   {"title": "Jurassic Park written by Michael Crichton",
                                                    "liked": True}]}])
    config = {**hand_config(tmp_path, "u1\t25\tF\n"), "knowledge_cross_domain": str(books)}
    knowledge = KnowledgeBase.load(config, build_knowledge(config, "hand", hand_samples()))
    items = knowledge.cross_domain["items"]
    assert items["Jurassic Park written by Michael Crichton"] == {"interactions": 2, "liked": 2}
    matches = cross_domain_matches(["Jurassic Park (1993)", "Heat (1995)"], knowledge, TitleEncoder(), 0.85)
    assert list(matches) == ["Jurassic Park (1993)"] and matches["Jurassic Park (1993)"][0].startswith("Jurassic")
    text = knowledge_text({"user_id": "u1", "item_id": "z", "title": "Jurassic Park (1993)", "groups": []},
                          knowledge, matches=matches)
    # (2 + 2 * 0.6) / (2 + 2), smoothed toward the other domain's overall rate (2 + 2 * 0.5) / (3 + 2) = 0.6
    assert 'In the other domain, "Jurassic Park written by Michael Crichton" (a close title) was liked by 80% of ' \
           "its 2 raters." in text
    assert cross_domain_matches(["Heat (1995)"], knowledge, TitleEncoder(), 0.85) == {}
