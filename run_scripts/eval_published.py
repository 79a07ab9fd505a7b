"""Anchors on real data: XRec's published explanations and two cheap baselines, scored by `mmprefer evaluate`.

    python run_scripts/eval_published.py [--datasets xrec-amazon xrec-google] [--data_path dataset]
        [--all_rows_metrics bertscore bleu rouge_l usr] [--test_metrics bertscore bleu rouge_l usr likelihood]
        [--out results]

Each data set must be imported first (`mmprefer import xrec ../shared/data/xrec/amazon --name xrec-amazon`).
For each one it scores, on the same rows, XRec's published predictions (kept
in the explanation table), the item-template baseline and the
nearest-neighbour baseline (train-split explanations): once on all 3,000 rows
with the cheap text metrics, once on the test split with those plus the
likelihood under the bundled SmolLM2 (named "LM likelihood", not BARTScore).
The LLM judge is left out by default: SmolLM2-135M leaves many replies
unparsed; add `judge` to --test_metrics with an endpoint configured
(--eval_judge_api_base=..., --eval_judge_api_model=...). The reports go to
saved/<dataset>/evaluation/{all,test}/ and their tables and figures are
copied to results/eval_published_<dataset>_{all,test}.{md,png}.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["xrec-amazon", "xrec-google"])
    parser.add_argument("--data_path", default="dataset")
    parser.add_argument("--all_rows_metrics", nargs="+", default=["bertscore", "bleu", "rouge_l", "usr"])
    parser.add_argument("--test_metrics", nargs="+", default=["bertscore", "bleu", "rouge_l", "usr", "likelihood"])
    parser.add_argument("--out", default=str(HERE.parent / "results"))
    args, overrides = parser.parse_known_args()
    command = "python run_scripts/eval_published.py " + " ".join(sys.argv[1:])

    from recbole_mmprefer.config import Config
    from recbole_mmprefer.evaluation.evaluate import evaluate

    for dataset in args.datasets:
        for split, metrics in ((None, args.all_rows_metrics), ("test", args.test_metrics)):
            sys.argv = [sys.argv[0], *overrides]  # RecBole's Config reads --key=value from argv
            config = Config(model="MMPSASRec", dataset=dataset, config_dict={
                "data_path": args.data_path, "eval_metrics": metrics, "show_progress": True})
            out_dir = evaluate(config, split=split)
            target = Path(args.out) / f"eval_published_{dataset}_{split or 'all'}.md"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(out_dir / "table.md", target)
            shutil.copy(out_dir / "distributions.png", target.with_suffix(".png"))
            with open(target, "a", encoding="utf-8") as handle:
                handle.write(f"\nCommand: `{command.strip()}`\n")
            print(target.read_text())


if __name__ == "__main__":
    main()
