"""Recommend and explain for a user (issue 17): the session, the CLI, the JSON API, a bounded load test on
127.0.0.1 and the page in a real headless Chromium."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from test_collect_paths import N_USERS, config_for, write_data_set, write_vectors
from test_node_retrieval import write_profiles
from tiny_models import write_tiny_llama

from recbole_mmprefer.cli import main as mmprefer
from recbole_mmprefer.retrieval.graph import InteractionGraph
from recbole_mmprefer.serving.session import RecommendSession, UnknownNodeError

NO_VECTOR = "u3"  # the recommender never saw this user: popularity instead


def make_run(root: Path) -> dict:
    write_data_set(root)
    graph = InteractionGraph.from_atomic(root / "toy" / "toy.inter")
    write_profiles(root / "toy", "toy", {token: f"likes story {token}" for token in graph.user_tokens},
                   {token: f"a movie {token}" for token in graph.item_tokens})
    users = [f"u{u}" for u in range(N_USERS) if f"u{u}" != NO_VECTOR] + ["lonely"]
    write_vectors(root / "run", users, list(graph.item_tokens))
    return config_for(root, root / "run", pipeline_explainer="zero-shot")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    return make_run(tmp_path_factory.mktemp("serving"))


def vectors(config: dict, kind: str) -> dict:
    folder = Path(config["run_dir"]) / "recommender"
    tokens = (folder / f"{kind}_tokens.txt").read_text().split()
    return dict(zip(tokens, np.load(folder / f"{kind}_embeddings.npy")))


def test_recommendations_are_the_full_sort_top_k_without_the_history(run):
    session = RecommendSession(run)
    users, items = vectors(run, "user"), vectors(run, "item")
    seen = {entry["item_id"] for entry in session.history("u0")["history"]}
    expected = sorted((token for token in items if token not in seen), key=lambda t: -float(items[t] @ users["u0"]))
    found = session.recommend("u0", topk=4)
    assert found["source"] == "mmpsasrec" and [item["item_id"] for item in found["items"]] == expected[:4]
    assert [item["rank"] for item in found["items"]] == [1, 2, 3, 4]
    assert np.allclose([item["score"] for item in found["items"]], [items[t] @ users["u0"] for t in expected[:4]])
    for item in found["items"]:
        assert item["paths"]["user_id"] == "u0" and item["paths"]["item_id"] == item["item_id"]
        for path in item["paths"]["paths"]:
            assert path["tokens"][0] == "u0" and path["tokens"][-1] == item["item_id"] and len(path["tokens"]) > 2
    assert any(item["paths"]["status"] == "ok" for item in found["items"])
    assert session.recommend("u0", topk=100)["items"][-1]["item_id"] == expected[-1]  # every unseen item, no more


def test_cosine_recommender_is_ranked_by_cosine(tmp_path):
    config = make_run(tmp_path)
    meta = Path(config["run_dir"]) / "recommender" / "meta.json"
    meta.write_text(json.dumps({"model": "test", "similarity": "cos"}))
    session = RecommendSession(config)
    users, items = vectors(config, "user"), vectors(config, "item")
    seen = session.seen_items("u1")

    def cosine(token):
        return float(items[token] @ users["u1"] / np.linalg.norm(items[token]) / np.linalg.norm(users["u1"]))

    expected = sorted((token for token in items if token not in seen), key=lambda t: -cosine(t))
    assert [item["item_id"] for item in session.recommend("u1", 3)["items"]] == expected[:3]


def test_a_user_without_a_vector_gets_the_most_interacted_unseen_items(run):
    session = RecommendSession(run)
    found = session.recommend(NO_VECTOR, topk=3)
    assert found["source"] == "popularity" and all(item["score"] is None for item in found["items"])
    graph = session.graph
    degree = {token: graph.degree(graph.item_node(token)) for token in graph.item_tokens}
    chosen = [item["item_id"] for item in found["items"]]
    assert not set(chosen) & session.seen_items(NO_VECTOR)
    assert [degree[token] for token in chosen] == sorted(degree[t] for t in degree
                                                         if t not in session.seen_items(NO_VECTOR))[::-1][:3]


def test_unknown_ids_and_bad_topk_are_refused_with_how_to_list_them(run):
    session = RecommendSession(run)
    with pytest.raises(UnknownNodeError, match=r"unknown user 'nobody'.*GET /api/users"):
        session.recommend("nobody")
    with pytest.raises(UnknownNodeError, match=r"unknown item 'nothing'"):
        session.paths("u0", "nothing")
    with pytest.raises(Exception, match="topk must be between 1 and 100"):
        session.recommend("u0", topk=0)


class ScriptedExplainer:
    """Writes "why <user> <item>" in three pieces, slowly, recording which pairs it was asked for."""

    description = "a scripted explainer"

    def __init__(self, delay: float = 0.01):
        self.delay, self.asked, self.active, self.most_active = delay, [], 0, 0

    def explain(self, record, on_text=None):
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        pieces = ["why ", f"{record['user_id']} ", f"{record['item_id']}"]
        for piece in pieces:
            time.sleep(self.delay)
            if on_text is not None:
                on_text(piece)
        self.asked.append((record["user_id"], record["item_id"]))
        self.active -= 1
        return "".join(pieces)


def client_for(config: dict, explainer=None):
    from fastapi.testclient import TestClient

    from recbole_mmprefer.serving.app import create_app

    explainer = explainer or ScriptedExplainer()
    return TestClient(create_app(config, make_explainer=lambda: explainer)), explainer


def test_the_api_answers_users_history_recommendations_paths_and_explanations(run):
    client, explainer = client_for(run)
    status = client.get("/api/status").json()
    assert status["ready"] and status["users"] == N_USERS + 1 and status["error"] is None
    found = client.get("/api/users", params={"query": "u1"}).json()
    assert [user["user_id"] for user in found["users"]] == ["u1", "u10", "u11"] and found["total"] == 3
    history = client.get("/api/users/u0/history").json()
    assert history["history"] and all(entry["title"] for entry in history["history"])
    recommendations = client.get("/api/users/u0/recommendations", params={"topk": 3}).json()
    assert [item["item_id"] for item in recommendations["items"]] == [
        item["item_id"] for item in RecommendSession(run).recommend("u0", 3)["items"]]
    drawn = [item for item in recommendations["items"] if item["paths"]["status"] == "ok"]
    assert drawn and all('class="legend"' in item["svg"] and "path 1" in item["svg"] for item in drawn)
    assert all(len(item["path_text"]) == len(item["paths"]["paths"]) for item in recommendations["items"])
    item = drawn[0]["item_id"]
    paths = client.get("/api/paths", params={"user": "u0", "item": item}).json()
    assert paths["paths"] == drawn[0]["paths"]["paths"] and paths["svg"].startswith("<svg")
    streamed = client.get("/api/explain", params={"user": "u0", "item": item})
    assert streamed.status_code == 200 and streamed.text == f"why u0 {item}"
    whole = client.get("/api/explain", params={"user": "u0", "item": item, "stream": False}).json()
    assert whole["explanation"] == f"why u0 {item}" and explainer.asked == [("u0", item)]  # the second: cached
    assert client.get("/api/evaluations").json() == {"evaluations": [], "report": None}
    assert "recbole-mmprefer" in client.get("/").text


def test_unknown_ids_answer_404_and_a_run_without_its_stages_503_with_the_command(run, tmp_path):
    client, _ = client_for(run)
    for url, params in [("/api/users/nobody/history", {}), ("/api/users/nobody/recommendations", {}),
                        ("/api/paths", {"user": "u0", "item": "nothing"}),
                        ("/api/explain", {"user": "nobody", "item": "i0"})]:
        answer = client.get(url, params=params)
        assert answer.status_code == 404 and "unknown" in answer.json()["detail"], url
        assert "nobody" in answer.json()["detail"] or "nothing" in answer.json()["detail"]
    assert client.get("/api/users/u0/recommendations", params={"topk": 0}).status_code == 422
    assert client.get("/evaluations/../table").status_code == 404

    write_data_set(tmp_path / "data")
    bare, _ = client_for(config_for(tmp_path / "data", tmp_path / "empty-run"))
    status = bare.get("/api/status").json()
    assert not status["ready"] and "run_recbole --model=MMPSASRec" in status["error"]
    answer = bare.get("/api/users")
    assert answer.status_code == 503 and "mmprefer run --dataset toy" in answer.json()["detail"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def live_server(run):
    """The app under uvicorn on 127.0.0.1 (a free port), in a thread; yields (base url, explainer)."""
    import uvicorn

    from recbole_mmprefer.serving.app import create_app

    explainer = ScriptedExplainer(delay=0.005)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(run, make_explainer=lambda: explainer), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    assert server.started, "the server did not start"
    yield f"http://127.0.0.1:{port}", explainer
    server.should_exit = True
    thread.join(timeout=10)


def test_concurrent_requests_lose_nothing_and_mix_nothing_up(run, live_server):
    import httpx

    base, explainer = live_server
    session = RecommendSession(run)
    users = [f"u{u}" for u in range(N_USERS)]
    expected = {user: [item["item_id"] for item in session.recommend(user, 3)["items"]] for user in users}

    def ask(n: int):
        user = users[n % len(users)]
        with httpx.Client(base_url=base, timeout=30) as client:
            found = client.get(f"/api/users/{user}/recommendations", params={"topk": 3}).json()
            item = found["items"][0]["item_id"]
            text = client.get("/api/explain", params={"user": user, "item": item}).text
        return user, found, item, text

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(ask, range(48)))
    assert len(answers) == 48
    for user, found, item, text in answers:
        assert found["user_id"] == user and [entry["item_id"] for entry in found["items"]] == expected[user]
        assert text == f"why {user} {item}"
    assert explainer.most_active == 1  # one worker owns the model: requests wait, they never overlap
    assert sorted(set(explainer.asked)) == sorted(explainer.asked)  # each pair explained once, then cached


def test_recommend_and_explain_from_the_command_line(run, tmp_path, capsys):
    llama = write_tiny_llama(tmp_path / "llama")
    common = ["--dataset", "toy", f"--data_path={Path(run['data_path']).parent}", f"--run_dir={run['run_dir']}",
              "--pipeline_explainer=zero-shot", f"--llm_path={llama}", "--explainer_max_new_tokens=4",
              "--explainer_max_length=300"]
    assert mmprefer(["recommend", *common, "--user", "u0", "--topk", "2", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert [item["item_id"] for item in found["items"]] == [
        item["item_id"] for item in RecommendSession(run).recommend("u0", 2)["items"]]
    assert mmprefer(["recommend", *common, "--user", "u0", "--topk", "2", "--explain"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("Top 2 items for user u0") and text.count("explanation: ") == 2
    assert mmprefer(["explain", *common, "--user", "u0", "--item", found["items"][0]["item_id"], "--json"]) == 0
    explained = json.loads(capsys.readouterr().out)
    assert explained["explainer"].startswith("the zero-shot") or "zero" in explained["explainer"]
    assert isinstance(explained["explanation"], str)
    assert mmprefer(["recommend", *common, "--user", "nobody"]) == 2
    assert "unknown user 'nobody'" in capsys.readouterr().err
    assert mmprefer(["recommend", *common, "--list_users", "--query", "u1"]) == 0
    assert "3 users matching 'u1'" in capsys.readouterr().out


def test_the_streamed_explanation_is_the_generated_one(run, tmp_path):
    from recbole_mmprefer.explainer.generate import generate_explanations
    from recbole_mmprefer.serving.explain import PairExplainer
    from recbole_mmprefer.utils import read_lines

    llama = write_tiny_llama(tmp_path / "llama")
    config = {**run, "llm_path": str(llama), "explainer_max_new_tokens": 6, "explainer_min_new_tokens": 6,
              "explainer_max_length": 300, "explainer_bf16": False}
    session = RecommendSession(config)
    item = session.recommend("u0", 1)["items"][0]
    explainer = PairExplainer(config, node_text=session.node_text)
    pieces = []
    text = explainer.explain(item["paths"], on_text=pieces.append)
    assert "".join(pieces).strip() == text and len(pieces) >= 2
    assert explainer.explain(item["paths"]) == text
    out = generate_explanations(config, None, pairs=[("u0", item["item_id"])], out_file=tmp_path / "g.jsonl",
                                records=[item["paths"]])
    assert json.loads(read_lines(out)[0])["explanation"] == text


CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; "
                    ".ci/run installs them)")
def test_the_page_in_a_headless_chromium(live_server):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    base, _ = live_server
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        browser.get(base + "/")
        wait = WebDriverWait(browser, 30)
        wait.until(ready.element_to_be_clickable((By.CSS_SELECTOR, "#user-list button[data-user='u0']"))).click()
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#recommendations article.rec")) == 5)
        cards = browser.find_elements(By.CSS_SELECTOR, "#recommendations article.rec")
        assert browser.find_elements(By.CSS_SELECTOR, "#recommendations .drawing svg .legend")
        assert "History of user u0" in browser.find_element(By.ID, "history").text
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "article.rec.explained")) == 5)
        for card in cards:
            item = card.get_attribute("data-item")
            assert card.find_element(By.CSS_SELECTOR, ".explanation").text == f"why u0 {item}"
        width = browser.execute_script("return document.documentElement.scrollWidth")
        assert width <= browser.execute_script("return window.innerWidth")  # nothing runs off the page
    finally:
        browser.quit()
