"""The explainer adapter shipped in the wheel (issue 12, item 6): LoRA on the bundled LLM, text paths, no graph level.

    python run_scripts/train_bundled_explainer.py [--datasets xrec-amazon xrec-google] [--train_pairs 600] \
        [--valid_pairs 50] [--epochs 1] [--out recbole_mmprefer/bundled/explainer] [--key=value ...]

For each data set (imported from ``--xrec_dir/<amazon|google>`` when missing)
the stages the adapter's prompts need run first, each skipped when up to date:
MMPSASRec (``--recommender_config``, ``--recommender_epochs``; its user vectors
weight the paths, eq. 7) and the retrieval paths of every explained pair. Then
the first ``--train_pairs`` train rows and ``--valid_pairs`` valid rows of each
data set are put together (user and item tokens prefixed by the data set's
name, so two data sets' ``42`` stay apart) and one explainer is tuned on them
with ``explainer_graph_level: False``: a graph soft prompt is tied to one data
set's node vectors, text paths are not. Training checkpoints every
``explainer_checkpoint_steps`` steps under ``--work_dir``; a rerun resumes.

The adapter (``adapter.safetensors``), its ``explainer_config.json`` and a
``meta.json`` without local paths are then written to ``--out``, the folder
``pipeline_explainer: bundled`` and ``mmprefer generate --model_dir bundled``
read. The LLM itself is not shipped: the adapter fits the bundled SmolLM2 only.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import pandas as pd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TABLE_COLUMNS = ["user_id", "item_id", "split", "title", "user_profile", "item_profile", "explanation"]


def parse_arguments() -> Tuple[argparse.Namespace, str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["xrec-amazon", "xrec-google"])
    parser.add_argument("--data_path", default="dataset")
    parser.add_argument("--xrec_dir", default=str(ROOT.parent / "shared" / "data" / "xrec"),
                        help="where the XRec releases are (amazon/, google/), for data sets not imported yet")
    parser.add_argument("--train_pairs", type=int, default=600, help="train rows per data set (0: all)")
    parser.add_argument("--valid_pairs", type=int, default=50, help="valid rows per data set")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--recommender_config", default=str(HERE / "configs" / "cpu_small.yaml"))
    parser.add_argument("--recommender_epochs", type=int, default=3)
    parser.add_argument("--work_dir", default="saved/bundled-explainer", help="training checkpoints")
    parser.add_argument("--out", default=str(ROOT / "recbole_mmprefer" / "bundled" / "explainer"))
    args, overrides = parser.parse_known_args()
    command = "python run_scripts/train_bundled_explainer.py " + " ".join(sys.argv[1:])
    sys.argv = [sys.argv[0], *overrides]  # RecBole's Config reads --key=value from argv
    return args, command.strip()


def source_config(args: argparse.Namespace, dataset: str):
    from recbole_mmprefer.config import Config

    return Config(model="MMPSASRec", dataset=dataset, config_file_list=[args.recommender_config],
                  config_dict={"data_path": args.data_path, "epochs": args.recommender_epochs})


def prepare(args: argparse.Namespace, dataset: str):
    """The data set imported, its MMPSASRec vectors and its paths up to date; returns its config."""
    from recbole_mmprefer.pipeline import ensure_recommender
    from recbole_mmprefer.retrieval.collect import collect_paths

    if not (Path(args.data_path) / dataset / f"{dataset}.inter").is_file():
        source = Path(args.xrec_dir) / dataset.removeprefix("xrec-")
        subprocess.run(["mmprefer", "import", "xrec", str(source), "--name", dataset, "--out", args.data_path],
                       check=True)
    config = source_config(args, dataset)
    ensure_recommender(config, force=False)
    collect_paths(config)
    return config


def prefixed_inputs(config, dataset: str, train_pairs: int, valid_pairs: int):
    """(table rows, paths records, node text) of one data set, every user and item token prefixed."""
    from recbole_mmprefer.data.node_text import NodeText
    from recbole_mmprefer.explainer.pair_data import load_path_records, load_table

    def tag(token) -> str:
        return f"{dataset}/{token}"

    table = load_table(config)
    train = table[table["split"] == "train"]
    rows = pd.concat([train.head(train_pairs) if train_pairs else train,
                      table[table["split"] == "valid"].head(valid_pairs)])[TABLE_COLUMNS].copy()
    rows["user_id"], rows["item_id"] = rows["user_id"].map(tag), rows["item_id"].map(tag)
    records = []
    for record in load_path_records(config):
        paths = [{**path, "tokens": [tag(token) for token in path["tokens"]]} for path in record.get("paths", [])]
        records.append({**record, "user_id": tag(record["user_id"]), "item_id": tag(record["item_id"]),
                        "paths": paths})
    text = NodeText.from_config(config)
    node_text = NodeText(*({tag(token): value for token, value in part.items()}
                           for part in (text.user_profiles, text.item_profiles, text.titles)))
    return rows, records, node_text


def merged_inputs(args: argparse.Namespace, configs: Dict[str, object]):
    from recbole_mmprefer.data.node_text import NodeText

    tables, records, texts = [], [], NodeText()
    for dataset, config in configs.items():
        rows, dataset_records, node_text = prefixed_inputs(config, dataset, args.train_pairs, args.valid_pairs)
        tables.append(rows)
        records += dataset_records
        for mine, theirs in ((texts.user_profiles, node_text.user_profiles),
                             (texts.item_profiles, node_text.item_profiles), (texts.titles, node_text.titles)):
            mine.update(theirs)
    return pd.concat(tables, ignore_index=True), records, texts


def export(model_dir: Path, out: Path, table: pd.DataFrame, datasets: List[str], command: str) -> None:
    """adapter.safetensors, explainer_config.json and a meta without local paths, swapped into ``out``."""
    from recbole_mmprefer.artifacts import read_meta_at, write_meta
    from recbole_mmprefer.explainer.checkpoints import ADAPTER_FILE
    from recbole_mmprefer.explainer.settings import CONFIG_FILE
    from recbole_mmprefer.llm import BUNDLED_LLM_NAME
    from recbole_mmprefer.utils import atomic_directory

    trained = read_meta_at(model_dir)
    counts = {dataset: {split: int(((table["split"] == split) & table["user_id"].str.startswith(f"{dataset}/")).sum())
                        for split in ("train", "valid")} for dataset in datasets}
    train_pairs = sum(count["train"] for count in counts.values())
    description = (f"the bundled adapter: {BUNDLED_LLM_NAME} with LoRA tuned on {train_pairs} train pairs of "
                   f"{' and '.join(datasets)} (text paths, no graph level)")
    meta = {"description": description, "pairs": counts, "llm": {"path": None, "name": BUNDLED_LLM_NAME},
            "graph": None, "command": command,
            **{key: trained[key] for key in ("settings", "training", "history", "train_pairs", "valid_pairs",
                                             "trainable_parameters", "soft_tokens", "truncation")}}
    with atomic_directory(out) as staging:
        for name in (ADAPTER_FILE, CONFIG_FILE):
            shutil.copy(model_dir / name, staging / name)
            (staging / name).chmod(0o644)  # package data: readable by every user of the installation
        write_meta(staging, trained["input_hash"], meta)
    print(f"Wrote {description} to {out} ({(out / ADAPTER_FILE).stat().st_size / 1e6:.1f} MB)")


def main() -> None:
    args, command = parse_arguments()
    from recbole_mmprefer.config import Config
    from recbole_mmprefer.explainer.train import train_explainer

    configs = {dataset: prepare(args, dataset) for dataset in args.datasets}
    table, records, node_text = merged_inputs(args, configs)
    config = Config(model="MMPSASRec", dataset=args.datasets[0], config_dict={
        "data_path": args.data_path, "explainer_graph_level": False, "explainer_epochs": args.epochs,
        "explainer_max_train_pairs": None, "explainer_max_valid_pairs": None})
    model_dir = train_explainer(config, Path(args.work_dir) / "model", table=table, records=records,
                                node_text=node_text)
    export(model_dir, Path(args.out), table, args.datasets, command)


if __name__ == "__main__":
    main()
