"""MMPSASRec against RecBole's sequential baselines on ml-100k, one shared small config.

    python run_scripts/bench_recommender.py [--epochs N] [--seeds S ...] [--out results/bench_recommender.md]

Every model trains with the same seed, epochs, hidden size and sequence length
(run_scripts/configs/cpu_small.yaml) through our run_recbole, in this one run,
and is tested on RecBole's leave-one-out split with full ranking. Prints a
markdown table with Recall@10, NDCG@10, MRR@10, seconds per training epoch
(fit time / epochs, validation included) and each figure's ratio to SASRec,
and writes it to --out. ``--models`` also takes the variants of ``VARIANTS``
(``MMPSASRec+ID``: with a 64-wide item-ID part). MMPSASRec's feature and quantizer stages run before
its training (timed apart, not counted per epoch). With several --seeds every
model runs once per seed (for MMPSASRec the seed also draws the semantic IDs)
and the table gives the mean over seeds, NDCG@10 with its population std.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODELS = ["MMPSASRec", "SASRec", "GRU4Rec", "BERT4Rec"]
# Config variants benchmarked like models: name -> (model, its overrides).
VARIANTS = {"MMPSASRec+ID": ("MMPSASRec", {"item_id_embedding_size": 64})}
METRICS = ["recall@10", "ndcg@10", "mrr@10"]


def run_model(model: str, config_files, overrides: dict) -> dict:
    from recbole_mmprefer.quick_start import run_recbole

    started = time.perf_counter()
    result = run_recbole(model=model, dataset="ml-100k", config_file_list=config_files, config_dict=overrides)
    result["total_seconds"] = time.perf_counter() - started
    return result


def mean_of(runs: list, key: str) -> float:
    return statistics.fmean(run["test_result"][key] for run in runs)


def seconds_per_epoch(runs: list) -> float:
    return statistics.fmean(run["fit_seconds"] / max(run["epochs_trained"], 1) for run in runs)


def markdown_table(results: dict) -> str:
    """One row per model: means over its runs (one per seed) and ratios to SASRec's means."""
    base_ndcg, base_epoch = mean_of(results["SASRec"], "ndcg@10"), seconds_per_epoch(results["SASRec"])
    header = ("| model | Recall@10 | NDCG@10 | NDCG@10 std | MRR@10 | s/epoch | epochs | "
              "NDCG@10 / SASRec | s/epoch / SASRec |")
    lines = [header, "|" + "---|" * 9]
    for model, runs in results.items():
        ndcg, per_epoch = mean_of(runs, "ndcg@10"), seconds_per_epoch(runs)
        ndcg_std = statistics.pstdev(run["test_result"]["ndcg@10"] for run in runs)
        epochs = "/".join(str(run["epochs_trained"]) for run in runs)
        lines.append(
            f"| {model} | {mean_of(runs, 'recall@10'):.4f} | {ndcg:.4f} | {ndcg_std:.4f} | "
            f"{mean_of(runs, 'mrr@10'):.4f} | {per_epoch:.1f} | {epochs} | {ndcg / base_ndcg:.2f} | "
            f"{per_epoch / base_epoch:.2f} |")
    return "\n".join(lines)


def per_seed_table(results: dict, seeds: list) -> str:
    lines = ["| model | " + " | ".join(f"NDCG@10 seed {seed}" for seed in seeds) + " |",
             "|" + "---|" * (len(seeds) + 1)]
    for model, runs in results.items():
        lines.append(f"| {model} | " + " | ".join(f"{run['test_result']['ndcg@10']:.4f}" for run in runs) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="override the shared config's epochs")
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[2020])
    parser.add_argument("--out", default=str(HERE.parent / "results" / "bench_recommender.md"))
    args = parser.parse_args()
    sys_args, sys.argv = sys.argv[1:], sys.argv[:1]  # RecBole's Config would read our flags as config keys
    overrides = {"show_progress": False}
    if args.epochs:
        overrides["epochs"] = args.epochs
    config_files = [str(HERE / "configs" / "cpu_small.yaml")]
    models = ["SASRec"] + [m for m in args.models if m != "SASRec"]
    results = {}
    for name in models:
        model, variant = VARIANTS.get(name, (name, {}))
        results[name] = [run_model(model, config_files, {**overrides, **variant, "seed": seed}) for seed in args.seeds]
    table = markdown_table(results)
    if len(args.seeds) > 1:
        table += "\n\n" + per_seed_table(results, args.seeds)
    command = "python run_scripts/bench_recommender.py " + " ".join(sys_args)
    report = (f"# MMPSASRec vs RecBole baselines on ml-100k\n\nCommand: `{command.strip()}`\n"
              f"Shared config: run_scripts/configs/cpu_small.yaml, seeds {', '.join(map(str, args.seeds))}, "
              "2 CPU cores.\n"
              "Target: MMPSASRec NDCG@10 >= SASRec's at <= 1.5x its time per epoch. "
              "Settings tried and run-to-run spread: results/recommender_tuning.md.\n\n"
              f"{table}\n")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report)
    print(report)


if __name__ == "__main__":
    main()
