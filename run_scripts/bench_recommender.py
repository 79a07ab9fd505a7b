"""MMPSASRec against RecBole's sequential baselines on ml-100k, one shared small config.

    python run_scripts/bench_recommender.py [--epochs N] [--out results/bench_recommender.md]

Every model trains with the same seed, epochs, hidden size and sequence length
(run_scripts/configs/cpu_small.yaml) through our run_recbole, in this one run,
and is tested on RecBole's leave-one-out split with full ranking. Prints a
markdown table with Recall@10, NDCG@10, MRR@10, seconds per training epoch
(fit time / epochs, validation included) and each figure's ratio to SASRec,
and writes it to --out. MMPSASRec's feature and quantizer stages run before
its training (timed apart, not counted per epoch).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODELS = ["MMPSASRec", "SASRec", "GRU4Rec", "BERT4Rec"]
METRICS = ["recall@10", "ndcg@10", "mrr@10"]


def run_model(model: str, config_files, overrides: dict) -> dict:
    from recbole_mmprefer.quick_start import run_recbole

    started = time.perf_counter()
    result = run_recbole(model=model, dataset="ml-100k", config_file_list=config_files, config_dict=overrides)
    result["total_seconds"] = time.perf_counter() - started
    return result


def markdown_table(results: dict) -> str:
    base = results["SASRec"]
    header = "| model | Recall@10 | NDCG@10 | MRR@10 | s/epoch | epochs | NDCG@10 / SASRec | s/epoch / SASRec |"
    lines = [header, "|" + "---|" * 8]
    for model, result in results.items():
        test = result["test_result"]
        per_epoch = result["fit_seconds"] / max(result["epochs_trained"], 1)
        base_epoch = base["fit_seconds"] / max(base["epochs_trained"], 1)
        lines.append(
            f"| {model} | {test['recall@10']:.4f} | {test['ndcg@10']:.4f} | {test['mrr@10']:.4f} | "
            f"{per_epoch:.1f} | {result['epochs_trained']} | {test['ndcg@10'] / base['test_result']['ndcg@10']:.2f} | "
            f"{per_epoch / base_epoch:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="override the shared config's epochs")
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--out", default=str(HERE.parent / "results" / "bench_recommender.md"))
    args = parser.parse_args()
    sys_args, sys.argv = sys.argv[1:], sys.argv[:1]  # RecBole's Config would read our flags as config keys
    overrides = {"show_progress": False}
    if args.epochs:
        overrides["epochs"] = args.epochs
    config_files = [str(HERE / "configs" / "cpu_small.yaml")]
    models = ["SASRec"] + [m for m in args.models if m != "SASRec"]
    results = {model: run_model(model, config_files, overrides) for model in models}
    table = markdown_table(results)
    command = "python run_scripts/bench_recommender.py " + " ".join(sys_args)
    report = (f"# MMPSASRec vs RecBole baselines on ml-100k\n\nCommand: `{command.strip()}`\n"
              f"Shared config: run_scripts/configs/cpu_small.yaml, seed 2020, 2 CPU cores.\n"
              "Target: MMPSASRec NDCG@10 >= SASRec's at <= 1.5x its time per epoch. "
              "Settings tried and run-to-run spread: results/recommender_tuning.md.\n\n"
              f"{table}\n")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report)
    print(report)


if __name__ == "__main__":
    main()
