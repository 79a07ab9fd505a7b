"""Latency of the front door (issue 17): recommendations with paths, and an explanation's first words.

    python run_scripts/bench_serving.py [--dataset ml-100k] [--config_files run_scripts/configs/cpu_small.yaml]
        [--users 100] [--topk 5] [--explanations 5] [--out results/bench_serving.md] [--key=value ...]

Needs a finished run (`mmprefer run --dataset ml-100k ...`). Starts the app
under uvicorn on 127.0.0.1 (a free port) exactly as `mmprefer serve` does,
then, over HTTP from this process:

* ``GET /api/users/U/recommendations?topk=5`` (top-k, each item's paths and
  drawing) for the first ``--users`` users, one request at a time, after one
  warm-up request: p50 / p95 / max seconds;
* ``GET /api/explain`` for the top item of ``--explanations`` users, streamed:
  seconds to the first piece of text and to the whole explanation (the first
  request also loads the explainer: reported apart as start-up).

Targets: recommendations p95 under 1 s; first words within 2 s. Printed and
written to ``--out`` as a markdown table with the command.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def percentile(values, share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


def start_server(config):
    import uvicorn

    from recbole_mmprefer.serving.app import create_app

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.perf_counter()
    server = uvicorn.Server(uvicorn.Config(create_app(config), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{port}", time.perf_counter() - started


def timed_stream(client, params) -> tuple:
    started = time.perf_counter()
    first, text = None, ""
    with client.stream("GET", "/api/explain", params=params) as answer:
        answer.raise_for_status()
        for piece in answer.iter_text():
            if piece and first is None:
                first = time.perf_counter() - started
            text += piece
    return first, time.perf_counter() - started, text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--config_files", default=str(HERE / "configs" / "cpu_small.yaml"))
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--explanations", type=int, default=5)
    parser.add_argument("--out", default=str(HERE.parent / "results" / "bench_serving.md"))
    args, overrides = parser.parse_known_args()
    command = "python run_scripts/bench_serving.py " + " ".join(sys.argv[1:])

    import httpx

    from recbole_mmprefer.config import stage_config

    config = stage_config(args.dataset, args.config_files.split(), overrides)
    server, base, startup = start_server(config)
    with httpx.Client(base_url=base, timeout=600) as client:
        users = [user["user_id"] for user in client.get("/api/users", params={"limit": args.users}).json()["users"]]
        client.get(f"/api/users/{users[0]}/recommendations", params={"topk": args.topk}).raise_for_status()
        seconds, tops = [], {}
        for user in users:
            started = time.perf_counter()
            answer = client.get(f"/api/users/{user}/recommendations", params={"topk": args.topk})
            answer.raise_for_status()
            seconds.append(time.perf_counter() - started)
            tops[user] = answer.json()["items"][0]["item_id"]
        load_first, load_total, _ = timed_stream(client, {"user": users[0], "item": tops[users[0]]})
        firsts, totals = [], []
        for user in users[1:1 + args.explanations]:
            first, total, _ = timed_stream(client, {"user": user, "item": tops[user]})
            firsts.append(first if first is not None else total)
            totals.append(total)
        explainer = client.get("/api/status").json()["explanations"]["explainer"]
    server.should_exit = True

    lines = [f"# Serving latency on {args.dataset} (2 CPU cores, over HTTP on 127.0.0.1)", "",
             f"Server start-up (session: graph, vectors, histories): {startup:.1f} s. Explainer: {explainer}.", "",
             "| request | n | p50 (s) | p95 (s) | max (s) | target |", "|---|---|---|---|---|---|",
             f"| top-{args.topk} with paths and drawings | {len(seconds)} | {statistics.median(seconds):.3f} | "
             f"{percentile(seconds, 0.95):.3f} | {max(seconds):.3f} | p95 < 1 s |"]
    if firsts:
        lines += [f"| explanation: first words | {len(firsts)} | {statistics.median(firsts):.2f} | "
                  f"{percentile(firsts, 0.95):.2f} | {max(firsts):.2f} | < 2 s |",
                  f"| explanation: whole | {len(totals)} | {statistics.median(totals):.2f} | "
                  f"{percentile(totals, 0.95):.2f} | {max(totals):.2f} | |"]
    lines += ["", "The first explanation also loaded the explainer: first words after "
              f"{load_first or load_total:.1f} s, whole after {load_total:.1f} s.", "", f"Command: `{command.strip()}`",
              ""]
    text = "\n".join(lines)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
