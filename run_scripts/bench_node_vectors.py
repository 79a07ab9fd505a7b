"""How distinct are the node vectors the retriever and the graph soft prompt use? (issue 12, item 1)

    python run_scripts/bench_node_vectors.py --dataset xrec-amazon --data_path dataset \
        [--variants paper id64] [--epochs 3] [--out results/node_vectors_xrec-amazon.md] [--key=value ...]

On xrec-amazon most items have no text, so they share one feature vector and
one semantic ID: eq. 7's similarity and the GNN's node features are then
nearly constant. For each variant this trains MMPSASRec in a run folder of its
own (``<checkpoint_dir>/<dataset>-<variant>``, reused when up to date) and
reports the share of distinct exported item and user vectors (rows equal to
6 decimals count as one) with the test NDCG@10, side by side in one run.

Variants: ``paper`` (the paper's item representation), ``id64`` (plus a
64-d learned item-ID part, ``item_id_embedding_size: 64``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
VARIANTS = {"paper": {}, "id64": {"item_id_embedding_size": 64}}


def distinct_share(matrix: np.ndarray) -> float:
    """Distinct rows (to 6 decimals) over all rows."""
    return len(np.unique(np.round(matrix, 6), axis=0)) / max(len(matrix), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="xrec-amazon")
    parser.add_argument("--data_path", default="dataset")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", default=None)
    args, overrides = parser.parse_known_args()
    command = "python run_scripts/bench_node_vectors.py " + " ".join(sys.argv[1:])
    sys.argv = [sys.argv[0], *overrides]  # RecBole's Config reads --key=value from argv

    from recbole_mmprefer.artifacts import ARTIFACTS
    from recbole_mmprefer.config import Config
    from recbole_mmprefer.pipeline import ensure_recommender
    from recbole_mmprefer.resources import stage_setting

    rows = []
    for name in args.variants:
        base = {"data_path": args.data_path, "epochs": args.epochs, "show_progress": False, **VARIANTS[name]}
        probe = Config(model="MMPSASRec", dataset=args.dataset,
                       config_file_list=[str(HERE / "configs" / "cpu_small.yaml")], config_dict=base)
        run = Path(stage_setting(probe, "checkpoint_dir")) / f"{args.dataset}-{name}"
        config = Config(model="MMPSASRec", dataset=args.dataset,
                        config_file_list=[str(HERE / "configs" / "cpu_small.yaml")],
                        config_dict={**base, "run_dir": str(run)})
        started = time.perf_counter()
        ensure_recommender(config, force=False)
        folder = ARTIFACTS["recommender"].dir(config)
        items, users = np.load(folder / "item_embeddings.npy"), np.load(folder / "user_embeddings.npy")
        result = ARTIFACTS["recommender"].read_meta(config).get("test_result", {})
        rows.append(f"| {name} | {distinct_share(items):.3f} | {distinct_share(users):.3f} | "
                    f"{result.get('ndcg@10', float('nan')):.4f} | {(time.perf_counter() - started) / 60:.1f} |")
        print(rows[-1], flush=True)
    text = (f"# Distinct node vectors on {args.dataset}\n\n"
            f"MMPSASRec trained for {args.epochs} epoch(s) per variant (run_scripts/configs/cpu_small.yaml); the "
            "share of distinct exported vectors (rows equal to 6 decimals count once) and test NDCG@10.\n\n"
            "| variant | distinct items | distinct users | test NDCG@10 | minutes |\n|---|---|---|---|---|\n"
            + "\n".join(rows) + f"\n\nCommand: `{command.strip()}`\n")
    target = Path(args.out or HERE.parent / "results" / f"node_vectors_{args.dataset}.md")
    target.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
