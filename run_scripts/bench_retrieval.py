"""Retrieval paths: our CSR/Yen implementation vs the plain networkx reference, side by side.

    python run_scripts/bench_retrieval.py --dataset xrec-amazon [--data_path dataset] [--pairs 500]
        [--reference_pairs 500] [--memory_pairs 50] [--out results/bench_retrieval.md]

The data set must be imported (`mmprefer import xrec ../shared/data/xrec/amazon
--name xrec-amazon`). Pairs are the first N explained pairs of the table (a
seeded shuffle). MMPSASRec vectors come from saved/<dataset>/recommender/ when
present (`run_recbole --model=MMPSASRec --dataset=...`), else seeded random
vectors (said so in the report: timing hardly depends on them).

Measured in this one run, on the same pairs and settings (L=3, 2-core, k=3,
eq. 7 weights), the two implementations alternating pair by pair so that load
changes hit both alike: median and mean ms per pair for both, the
speed-up, whether every path and cost agree, and the peak memory per pair
(tracemalloc, on --memory_pairs pairs, in a separate pass so it does not slow
the timed one) against the size of the whole graph's arrays. Then how our time
grows with L (1..3) and k (1..5). Writes a markdown table to --out.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def load(dataset: str, data_path: str, saved: str):
    from recbole_mmprefer.data.explanations import explanation_table_path, read_explanation_table
    from recbole_mmprefer.model.export import read_vectors
    from recbole_mmprefer.retrieval.graph import InteractionGraph

    folder = Path(data_path) / dataset
    graph = InteractionGraph.from_atomic(folder / f"{dataset}.inter")
    table = read_explanation_table(explanation_table_path(folder, dataset))
    order = np.random.default_rng(2020).permutation(len(table))
    pairs = [(table["user_id"].iloc[row], table["item_id"].iloc[row]) for row in order]
    vectors_dir = Path(saved) / dataset / "recommender"
    if (vectors_dir / "meta.json").is_file():
        users, _ = read_vectors(vectors_dir, "user", graph.user_tokens)
        items, _ = read_vectors(vectors_dir, "item", graph.item_tokens)
        source = f"MMPSASRec vectors from {vectors_dir}"
    else:
        rng = np.random.default_rng(0)
        users = rng.normal(size=(graph.num_users, 64)).astype(np.float32)
        items = rng.normal(size=(graph.num_items, 64)).astype(np.float32)
        source = "seeded random vectors (no MMPSASRec vectors found)"
    return graph, pairs, users, items, source


def timed(function, pairs, **kwargs):
    times, results = [], []
    for user, item in pairs:
        started = time.perf_counter()
        results.append(function(user, item, **kwargs))
        times.append((time.perf_counter() - started) * 1000)
    return times, results


def timed_side_by_side(first, second, pairs):
    """Both implementations on each pair in turn, so a change in machine load hits both alike."""
    first_times, first_results, second_times, second_results = [], [], [], []
    for pair in pairs:
        for function, times, results in ((first, first_times, first_results), (second, second_times, second_results)):
            started = time.perf_counter()
            results.append(function(*pair))
            times.append((time.perf_counter() - started) * 1000)
    return first_times, first_results, second_times, second_results


def peak_memory(function, pairs, **kwargs) -> float:
    """Median over pairs of the peak traced allocation (MiB) while finding one pair's paths."""
    peaks = []
    tracemalloc.start()
    for user, item in pairs:
        tracemalloc.reset_peak()
        baseline = tracemalloc.get_traced_memory()[0]
        function(user, item, **kwargs)
        peaks.append((tracemalloc.get_traced_memory()[1] - baseline) / 2 ** 20)
    tracemalloc.stop()
    return statistics.median(peaks)


def same_paths(ours, theirs) -> bool:
    return all(a.status == b.status and [p.nodes for p in a.paths] == [p.nodes for p in b.paths]
               and all(abs(p.cost - q.cost) < 1e-9 for p, q in zip(a.paths, b.paths)) for a, b in zip(ours, theirs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="xrec-amazon")
    parser.add_argument("--data_path", default="dataset")
    parser.add_argument("--saved", default="saved", help="checkpoint_dir holding <dataset>/recommender/")
    parser.add_argument("--pairs", type=int, default=500)
    parser.add_argument("--reference_pairs", type=int, default=500)
    parser.add_argument("--memory_pairs", type=int, default=50)
    parser.add_argument("--sweep_pairs", type=int, default=100)
    parser.add_argument("--out", default=str(HERE.parent / "results" / "bench_retrieval.md"))
    args = parser.parse_args()

    from recbole_mmprefer.retrieval.paths import find_paths
    from recbole_mmprefer.retrieval.reference import reference_find_paths, to_networkx

    graph, pairs, users, items, source = load(args.dataset, args.data_path, args.saved)
    network = to_networkx(graph)

    def ours(user, item, **settings):
        return find_paths(graph, user, item, users, items, **settings)

    def reference(user, item, **settings):
        return reference_find_paths(graph, user, item, users, items, network=network, **settings)

    timed_pairs = pairs[:args.pairs]
    reference_pairs = timed_pairs[:args.reference_pairs]
    our_times, our_results, reference_times, reference_results = timed_side_by_side(ours, reference, reference_pairs)
    more_times, more_results = timed(ours, timed_pairs[len(reference_pairs):])
    our_times, our_results = our_times + more_times, our_results + more_results
    agree = same_paths(our_results[:len(reference_pairs)], reference_results)
    memory_pairs = timed_pairs[:args.memory_pairs]
    our_memory, reference_memory = peak_memory(ours, memory_pairs), peak_memory(reference, memory_pairs)
    graph_mib = (graph.indptr.nbytes + graph.indices.nbytes) / 2 ** 20
    statuses = {s: sum(r.status == s for r in our_results) for s in sorted({r.status for r in our_results})}
    subgraph_nodes = statistics.median(r.subgraph_nodes for r in our_results)

    sweep_pairs = timed_pairs[:args.sweep_pairs]
    sweep = []
    for hops in (1, 2, 3):
        for k in (1, 3, 5):
            times, results = timed(ours, sweep_pairs, hops=hops, k=k)
            sweep.append((hops, k, statistics.median(times), statistics.mean(times),
                          statistics.median(r.subgraph_nodes for r in results)))

    lines = [
        f"# Retrieval paths on {args.dataset}: ours vs the networkx reference",
        "",
        f"Command: `python run_scripts/bench_retrieval.py {' '.join(sys.argv[1:])}`  ",
        f"Graph: {graph.num_users:,} users, {graph.num_items:,} items, {graph.num_edges:,} training edges "
        f"(CSR arrays {graph_mib:.1f} MiB). Vectors: {source}. Settings: L=3, 2-core, k=3, eq. 7 weights. "
        f"2 CPU cores, one process.",
        "",
        f"Pairs: {len(timed_pairs)} explained pairs ({statuses}); median pruned subgraph {subgraph_nodes:,.0f} nodes.",
        "",
        "| implementation | pairs | median ms/pair | mean ms/pair | median peak MiB/pair |",
        "|---|---|---|---|---|",
        f"| ours (CSR + Yen/Dijkstra) | {len(timed_pairs)} | {statistics.median(our_times):.1f} | "
        f"{statistics.mean(our_times):.1f} | {our_memory:.1f} |",
        f"| networkx reference | {len(reference_pairs)} | {statistics.median(reference_times):.1f} | "
        f"{statistics.mean(reference_times):.1f} | {reference_memory:.1f} |",
        "",
        f"Speed-up (median, same {len(reference_pairs)} pairs): "
        f"**{statistics.median(reference_times) / statistics.median(our_times[:len(reference_pairs)]):.1f}x**; "
        f"mean: {statistics.mean(reference_times) / statistics.mean(our_times[:len(reference_pairs)]):.1f}x. "
        f"Identical paths and costs on every pair: **{agree}**. Target: >= 20x with identical paths.",
        f"Peak memory per pair measured with tracemalloc on {len(memory_pairs)} pairs (numpy buffers included).",
        "",
        f"How our time grows with L and k ({len(sweep_pairs)} pairs):",
        "",
        "| L | k | median ms/pair | mean ms/pair | median subgraph nodes |",
        "|---|---|---|---|---|",
        *[f"| {hops} | {k} | {median:.1f} | {mean:.1f} | {nodes:,.0f} |" for hops, k, median, mean, nodes in sweep],
    ]
    report = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report)
    print(report)


if __name__ == "__main__":
    main()
