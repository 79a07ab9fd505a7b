"""The paper's Table 2 on CPU: MMP-Refer against its ablations, with paired differences on the same test rows.

    python run_scripts/table2.py --dataset xrec-amazon --data_path dataset \
        [--train_pairs 0] [--epochs 1] [--test_pairs 0] [--systems full gcn gt no_graph no_lora no_multisid no_paths] \
        [--out results/table2_xrec-amazon.md] [--generations full=FILE ...] [--key=value ...]

Rows: full (GAT), w/ GCN, w/ GT (graph transformer), w/o graph level, w/o
LoRA, w/o Multi-SID and w/o paths. "w/o Multi-SID" is a second MMPSASRec
trained with ``use_semantic_ids: False`` in its own run folder
(``<run_dir>/table2/no_multisid/run``), with its own retrieval paths and node
vectors; every other row shares the run's recommender and paths. Each system
trains on the first ``--train_pairs`` train pairs (0: all) for ``--epochs``
epochs and explains the first ``--test_pairs`` test pairs (0: all, the
paper's 300). Everything is resumable: a stopped run continues at its last
step checkpoint (``explainer_checkpoint_steps``), finished systems are
skipped as up to date, so the table can span several sessions; a row whose
generations were kept from an earlier run (``--generations SYSTEM=FILE``) is
scored from that file. The report adds each row minus the full model on BERT
P/R/F1, paired over the same rows (mean +- standard error,
:mod:`recbole_mmprefer.evaluation.paired`).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# the shared machinery of the tables
from table1 import (  # noqa: E402
    LABELS,
    add_budget_arguments,
    argv_without,
    kept_generations,
    make_config,
    paired_against,
    parse_budget,
    run_system,
    test_pairs,
)

ROWS = ["full", "gcn", "gt", "no_graph", "no_lora", "no_multisid", "no_paths"]
PAIRED_METRICS = ["bertscore_precision", "bertscore_recall", "bertscore_f1"]


OWN_RUN_KEYS = ("run_dir", "use_semantic_ids")  # the "w/o Multi-SID" row sets these itself


def no_multisid_config(args, base_dir: Path):
    """The run of the "w/o Multi-SID" row: its own MMPSASRec without semantic IDs, then its own paths."""
    from recbole_mmprefer.pipeline import ensure_recommender
    from recbole_mmprefer.retrieval.collect import collect_paths

    config = make_config(args, {"use_semantic_ids": False, "run_dir": str(base_dir / "no_multisid" / "run")})
    ensure_recommender(config, force=False)
    collect_paths(config)
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_budget_arguments(parser, train_pairs=0, test_pairs=0)
    parser.add_argument("--systems", nargs="+", default=ROWS, choices=ROWS)
    parser.add_argument("--metrics", nargs="+", default=["bertscore", "bleu", "rouge_l", "usr", "grounding"])
    args, command = parse_budget(parser, "table2.py")

    from recbole_mmprefer.artifacts import run_dir
    from recbole_mmprefer.evaluation.evaluate import evaluate

    config = make_config(args, {})
    base_dir = run_dir(config) / "table2"
    pairs = test_pairs(config, args.test_pairs)
    kept = kept_generations(args, ROWS)
    files = {LABELS[name]: path for name, path in kept.items()}
    for name in [name for name in args.systems if name not in kept]:
        with argv_without(OWN_RUN_KEYS) if name == "no_multisid" else contextlib.nullcontext():
            own = no_multisid_config(args, base_dir) if name == "no_multisid" else None
            out, train_seconds, generate_seconds = run_system(args, "full" if own is not None else name, base_dir,
                                                              pairs, config=own, folder_name=name)
        files[LABELS[name]] = out
        print(f"{name}: {out} (training {train_seconds:.0f} s, generation {generate_seconds:.0f} s)", flush=True)
    report_dir = evaluate(config, files, split="test", name="table2", published=False, baselines=False,
                          max_rows=len(pairs))
    text = (report_dir / "table.md").read_text(encoding="utf-8")
    text += "\n" + paired_against(report_dir, LABELS["full"], list(files), PAIRED_METRICS)
    text += (f"\n\nEach system trained on {args.train_pairs or 'all'} train pairs for {args.epochs} epoch(s) and "
             f"explained {len(pairs)} test pairs.\n\nCommand: `{command}`\n")
    target = Path(args.out or HERE.parent / "results" / f"table2_{args.dataset}.md")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
