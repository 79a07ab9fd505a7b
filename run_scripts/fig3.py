"""The paper's Fig. 3 on CPU: explanation quality against the number k of retrieval paths in the prompt (k = 1..5).

    python run_scripts/fig3.py --dataset xrec-amazon --data_path dataset \
        [--ks 1 2 3 4 5] [--train_pairs 0] [--epochs 1] [--test_pairs 0] [--out results/fig3_xrec-amazon.md]

The run's paths are collected with ``path_k: 5`` (Yen's paths come cheapest
first, so the first k of them are the top-k paths), and one explainer per k
is trained with ``explainer_paths: k`` (and k soft prompt tokens) on the same
train pairs, then explains the same test rows. The report has the table and
``<out>.png``: BERT precision and recall against k. Resumable like
run_scripts/table2.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from table1 import add_budget_arguments, make_config, parse_budget, test_pairs  # noqa: E402  (the shared machinery of the tables)


def plot(scores: dict, ks: list, target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(4.5, 3.2))
    for key, label in (("bertscore_precision", "BERT P"), ("bertscore_recall", "BERT R")):
        axis.plot(ks, [scores[f"k = {k}"][key]["mean"] for k in ks], marker="o", label=label)
    axis.set_xlabel("retrieval paths in the prompt (k)")
    axis.set_xticks(ks)
    axis.set_ylabel("BERTScore")
    axis.legend()
    figure.tight_layout()
    figure.savefig(target, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_budget_arguments(parser, train_pairs=0, test_pairs=0)
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--metrics", nargs="+", default=["bertscore", "usr", "grounding"])
    args, command = parse_budget(parser, "fig3.py")
    sys.argv.append("--path_k=5")  # every k's first paths out of the same top-5

    from recbole_mmprefer.artifacts import run_dir
    from recbole_mmprefer.evaluation.evaluate import evaluate
    from recbole_mmprefer.explainer.generate import generate_explanations
    from recbole_mmprefer.explainer.train import train_explainer
    from recbole_mmprefer.retrieval.collect import collect_paths
    from recbole_mmprefer.utils import read_json

    config = make_config(args, {})
    collect_paths(config)
    base_dir = run_dir(config) / "fig3"
    pairs = test_pairs(config, args.test_pairs)
    files = {}
    for k in args.ks:
        system = make_config(args, {"explainer_paths": k})
        model_dir = train_explainer(system, base_dir / f"k{k}" / "model")
        files[f"k = {k}"] = generate_explanations(system, model_dir, "test", base_dir / f"k{k}" / "generations.jsonl",
                                                  pairs=pairs)
    report_dir = evaluate(config, files, split="test", name="fig3", published=False, baselines=False,
                          max_rows=len(pairs))
    target = Path(args.out or HERE.parent / "results" / f"fig3_{args.dataset}.md")
    target.parent.mkdir(parents=True, exist_ok=True)
    plot(read_json(report_dir / "scores.json")["systems"], args.ks, target.with_suffix(".png"))
    text = (report_dir / "table.md").read_text(encoding="utf-8")
    text += (f"\n\nFigure: {target.with_suffix('.png').name} (BERT P and R against k). Each k trained on "
             f"{args.train_pairs or 'all'} train pairs for {args.epochs} epoch(s), explained {len(pairs)} test "
             f"pairs.\n\nCommand: `{command}`\n")
    target.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
