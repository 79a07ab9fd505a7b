"""The paper's Table 3 on CPU: retrieval seconds per pair, our paths against PaGE-Link's (G-Refer's retriever).

    python run_scripts/table3.py [--datasets xrec-amazon xrec-google] [--data_path dataset] [--pairs 50]
        [--out results/table3.md] [--key=value ...]

For each data set (imported, with MMPSASRec vectors in saved/<dataset>/recommender/
where present, else seeded random vectors, said so), PaGE-Link's link predictor
is trained once on the training graph (its minutes reported apart), then both
retrievers find paths for the same first ``--pairs`` explained pairs (a
seeded shuffle of the table), alternating pair by pair so that a change in
machine load hits both alike: ours (Algorithm 1: L = 3, 2-core, k = 3, eq. 7)
and PaGE-Link (2-hop computation graph, masks learned for 10 steps, Yen k =
10 with at most 5 edges, 2 kept; properties/retrieval.yaml). Reported: median
and mean seconds per pair, the ratio, and the share of pairs each found a
path for. Settings come from the YAML defaults; ``--key=value`` overrides them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_retrieval import load, timed_side_by_side  # noqa: E402


def measure(args, dataset: str) -> dict:
    from recbole_mmprefer.config import Config
    from recbole_mmprefer.retrieval.link_predictor import LinkPredictorSettings, train_link_predictor
    from recbole_mmprefer.retrieval.pagelink import PageLinkSettings, pagelink_paths
    from recbole_mmprefer.retrieval.paths import find_paths
    from recbole_mmprefer.retrieval.settings import RetrievalSettings

    config = Config(model="MMPSASRec", dataset=dataset, config_dict={"data_path": args.data_path})
    graph, pairs, users, items, source = load(dataset, args.data_path, args.saved)
    ours_settings, pagelink = RetrievalSettings.from_config(config), PageLinkSettings.from_config(config)
    started = time.perf_counter()
    predictor, _ = train_link_predictor(graph, LinkPredictorSettings.from_config(config), int(config["seed"]))
    training_minutes = (time.perf_counter() - started) / 60
    pairs = pairs[:args.pairs]
    our_times, our_results, their_times, their_results = timed_side_by_side(
        lambda u, i: find_paths(graph, u, i, users, items, **ours_settings.search()),
        lambda u, i: pagelink_paths(graph, predictor, u, i, pagelink, keep=2, seed=int(config["seed"])), pairs)
    found = [sum(result.status == "ok" for result in results) / len(pairs) for results in (our_results, their_results)]
    return {"dataset": dataset, "pairs": len(pairs), "vectors": source, "training_minutes": training_minutes,
            "ours": [t / 1000 for t in our_times], "pagelink": [t / 1000 for t in their_times], "found": found,
            "graph": f"{graph.num_users} users, {graph.num_items} items, {graph.num_edges} edges"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["xrec-amazon", "xrec-google"])
    parser.add_argument("--data_path", default="dataset")
    parser.add_argument("--saved", default="saved")
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--out", default=str(HERE.parent / "results" / "table3.md"))
    args, overrides = parser.parse_known_args()
    command = "python run_scripts/table3.py " + " ".join(sys.argv[1:])
    sys.argv = [sys.argv[0], *overrides]  # RecBole's Config reads --key=value from argv
    rows = [measure(args, dataset) for dataset in args.datasets]
    lines = ["# Table 3: retrieval time per pair on this CPU, ours against PaGE-Link", "",
             "Same pairs, both retrievers alternating pair by pair in one run (2 CPU cores). PaGE-Link's link "
             "predictor is trained once per data set; its time is apart.", "",
             "| data set | pairs | ours s/pair (median / mean) | PaGE-Link s/pair (median / mean) | PaGE-Link / ours "
             "(median) | pairs with a path (ours / PaGE-Link) | link predictor training (min) |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        ours, theirs = row["ours"], row["pagelink"]
        ratio = statistics.median(theirs) / max(statistics.median(ours), 1e-9)
        lines.append(f"| {row['dataset']} | {row['pairs']} | {statistics.median(ours):.4f} / "
                     f"{statistics.mean(ours):.4f} | {statistics.median(theirs):.3f} / {statistics.mean(theirs):.3f} | "
                     f"{ratio:.0f}x | {row['found'][0]:.0%} / {row['found'][1]:.0%} | {row['training_minutes']:.1f} |")
    lines += ["", "Target: ours at least 30x faster per pair (the paper: 3-6x on its machine)."]
    lines += [f"- {row['dataset']}: {row['graph']}; {row['vectors']}" for row in rows]
    lines += ["", f"Command: `{command.strip()}`", ""]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
