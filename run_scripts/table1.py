"""The paper's Table 1 on CPU: our explainer, its ablations, XRec's published predictions and the cheap baselines.

    python run_scripts/table1.py --dataset xrec-amazon --data_path dataset \
        [--train_pairs 320] [--epochs 1] [--test_pairs 100] [--systems full no_graph no_paths zero_shot] \
        [--metrics bertscore bleu rouge_l usr likelihood] [--out results/table1_xrec-amazon.md] \
        [--generations full=results/generations/xrec-amazon/full.jsonl ...] [--key=value ...]

Needs the imported data set, its paths for every pair (`mmprefer paths`) and
the recommender's vectors (`run_recbole --model=MMPSASRec`). Each system is
trained on the first ``--train_pairs`` rows of the train split for ``--epochs``
epochs (a CPU budget; the paper trains on all of them for 3 epochs), then
explains the first ``--test_pairs`` test pairs (0: all); everything lands in
``<run_dir>/table1/<system>/`` and a rerun skips what is up to date.
`mmprefer evaluate`'s scorer then scores all systems, XRec's published
predictions and the two cheap baselines on exactly those test rows; its table
and figure are copied to ``--out``. ``--generations SYSTEM=FILE`` scores a
system's generations made earlier (a past session's, kept under
``results/generations/``) beside the others instead of training it again, so a
table at full budget can be built one system per session.

Systems (ablations are config switches, design section 8):
  full       LoRA + graph soft prompt (GAT) + k text paths
  no_graph   LoRA + text paths, no graph soft prompt ("w/o graph-level")
  no_paths   LoRA only: no paths in the prompt, no graph soft prompt ("w/o paths")
  no_lora    frozen LLM; the graph soft prompt trains ("w/o LoRA")
  gcn        as full, with a GCN instead of the GAT
  gt         as full, with a graph transformer instead of the GAT
  full_neutral  as full, the soft prompt starting as a no-op (explainer_soft_prompt_start: neutral)
  full_warmup   as full, the first sixth of the epoch's steps training the graph soft prompt alone
                (explainer_graph_warmup_steps: 100 of 600 at full budget on xrec-amazon)
  zero_shot  the frozen LLM with text paths, nothing trained
  grefer     G-Refer: PaGE-Link paths (path_retriever: pagelink) and its node retrieval (path_node_retrieval),
             as text, LoRA on the same LLM with our budget; in a run folder of its own (<run_dir>/table1/grefer/run)
  NRT, Att2Seq, PETER, PEPLER, CER  the field's baselines (`mmprefer train --model NAME`), each with its
             properties/model/<Model>.yaml; trained on the same first ``--train_pairs`` train pairs for their
             own ``baseline_epochs`` (``--epochs`` is our explainer's), explaining the same test pairs

Every row of the paper's Table 1 on the full test split (300 rows)::

    python run_scripts/table1.py --dataset xrec-amazon --train_pairs 0 --test_pairs 0 \
        --systems NRT Att2Seq PETER CER PEPLER zero_shot full
"""

from __future__ import annotations

import argparse
import contextlib
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

HERE = Path(__file__).resolve().parent

SYSTEMS = {
    "full": {},
    "no_graph": {"explainer_graph_level": False},
    "no_paths": {"explainer_graph_level": False, "explainer_paths": 0},
    "no_lora": {"explainer_lora": False},
    "gcn": {"explainer_gnn": "gcn"},
    "gt": {"explainer_gnn": "transformer"},
    "full_neutral": {"explainer_soft_prompt_start": "neutral"},
    "full_warmup": {"explainer_graph_warmup_steps": lambda args: graph_warmup_steps(args)},
    "zero_shot": None,  # no training: generate_explanations without a model folder
    "grefer": {"explainer_graph_level": False},  # in a run of its own (OWN_RUNS): G-Refer's retrieval
}
# Systems whose retrieval differs from the run's: each gets a run folder of its own, <run_dir>/table1/<name>/run,
# with its own paths (and graph, link predictor, profile embeddings); the explainer settings are SYSTEMS[name].
OWN_RUNS = {"grefer": {"path_retriever": "pagelink", "path_node_retrieval": True}}
BASELINES = ("NRT", "Att2Seq", "PETER", "PEPLER", "CER")
WARMUP_SHARE = 6  # full_warmup: the first 1/WARMUP_SHARE of an epoch's steps are graph warm-up
PUBLISHED = "xrec (published)"  # XRec's own predictions, kept by `mmprefer import xrec`
PAIRED_METRICS = ("bertscore_f1", "grounding")
LABELS = {"full": "MMP-Refer (ours)", "no_graph": "w/o graph level", "no_paths": "w/o paths",
          "no_lora": "w/o LoRA", "gcn": "GCN encoder", "gt": "GT encoder", "no_multisid": "w/o Multi-SID",
          "full_neutral": "ours, neutral soft-prompt start",
          "full_warmup": "ours, graph warm-up", "grefer": "G-Refer (PaGE-Link paths + node retrieval)",
          "zero_shot": "zero-shot (no tuning)"}


def make_config(args, overrides: dict):
    from recbole_mmprefer.config import Config

    return Config(model="MMPSASRec", dataset=args.dataset, config_dict={
        "data_path": args.data_path, "explainer_max_train_pairs": args.train_pairs,
        "explainer_max_valid_pairs": args.valid_pairs, "explainer_epochs": args.epochs,
        "eval_metrics": args.metrics, **overrides})


def add_budget_arguments(parser: argparse.ArgumentParser, train_pairs: int, test_pairs: int) -> None:
    """The options every table script shares: data set, budget (0 pairs: all of them) and output."""
    parser.add_argument("--dataset", default="xrec-amazon")
    parser.add_argument("--data_path", default="dataset")
    parser.add_argument("--train_pairs", type=int, default=train_pairs, help="train pairs per system (0: all)")
    parser.add_argument("--test_pairs", type=int, default=test_pairs, help="test pairs explained (0: all)")
    parser.add_argument("--valid_pairs", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--out", default=None)
    parser.add_argument("--generations", nargs="+", default=[], metavar="SYSTEM=FILE",
                        help="a system's generations made earlier (e.g. results/generations/): scored beside the "
                             "others on the same rows, neither trained nor generated again")


def kept_generations(args, systems: Sequence[str]) -> Dict[str, Path]:
    """--generations SYSTEM=FILE as {system: file}, each system one the script knows and each file present."""
    kept = {}
    for item in args.generations:
        name, sep, path = item.partition("=")
        if not sep or name not in systems:
            raise SystemExit(f"--generations {item!r}: give SYSTEM=FILE with SYSTEM one of {list(systems)}")
        if not Path(path).is_file():
            raise SystemExit(f"--generations {item!r}: no file {path}")
        kept[name] = Path(path)
    return kept


def parse_budget(parser: argparse.ArgumentParser, script: str) -> Tuple[argparse.Namespace, str]:
    """(arguments, the command line for the report); --key=value overrides are left in sys.argv for Config."""
    args, overrides = parser.parse_known_args()
    args.train_pairs = args.train_pairs or None
    command = f"python run_scripts/{script} " + " ".join(sys.argv[1:])
    sys.argv = [sys.argv[0], *overrides]  # RecBole's Config reads --key=value from argv
    return args, command.strip()


def test_pairs(config, count: int) -> List[Tuple[str, str]]:
    """The first ``count`` test pairs of the run's explanation table (0: all)."""
    from recbole_mmprefer.explainer.pair_data import load_table

    test = load_table(config).query("split == 'test'")
    test = test.head(count) if count > 0 else test
    return list(zip(test["user_id"], test["item_id"]))


def run_baseline(args, name: str, base_dir: Path, pairs: list) -> tuple:
    """(generation file, minutes training, minutes generating) of a baseline; the training minutes are those its
    model folder records, so a rerun that finds it up to date still reports them."""
    from recbole_mmprefer.config import Config
    from recbole_mmprefer.explainer.baselines import generate_with_model, train_explainer_model
    from recbole_mmprefer.utils import read_json

    config = Config(model="MMPSASRec", dataset=args.dataset, explainer_model=name, config_dict={
        "data_path": args.data_path, "baseline_max_train_pairs": args.train_pairs,
        "baseline_max_valid_pairs": args.valid_pairs, "eval_metrics": args.metrics})
    folder = base_dir / name
    model_dir = train_explainer_model(config, name, folder / "model")
    started = time.perf_counter()
    out = generate_with_model(config, name, out_file=folder / "generations.jsonl", model_dir=model_dir, pairs=pairs)
    return out, read_json(model_dir / "meta.json")["minutes"], (time.perf_counter() - started) / 60


@contextlib.contextmanager
def argv_without(keys: Sequence[str]):
    """sys.argv without the given --key=value overrides: RecBole's Config reads argv last, so they would win over
    the settings a system of its own sets."""
    saved = sys.argv
    sys.argv = [arg for arg in saved if arg.lstrip("-").split("=")[0] not in keys]
    try:
        yield
    finally:
        sys.argv = saved


def own_run_config(args, name: str, base_dir: Path, overrides: dict):
    """The run folder of a system with retrieval of its own, its paths collected (resumable, skipped when up to
    date)."""
    from recbole_mmprefer.retrieval.collect import collect_paths

    with argv_without([*overrides, "run_dir"]):
        config = make_config(args, {**overrides, **(SYSTEMS.get(name) or {}),
                                    "run_dir": str(base_dir / name / "run")})
        collect_paths(config)
    return config


def graph_warmup_steps(args) -> int:
    """The warm-up of full_warmup: 1/WARMUP_SHARE of the steps of one epoch at this budget (at least 1)."""
    from recbole_mmprefer.explainer.pair_data import load_table

    config = make_config(args, {})
    train = int((load_table(config)["split"] == "train").sum())
    pairs = min(train, args.train_pairs or train)
    return max(1, math.ceil(pairs / config["explainer_batch_size"]) // WARMUP_SHARE)


def run_system(args, name: str, base_dir: Path, pairs: list, config=None, folder_name=None) -> tuple:
    """(generation file, seconds training, seconds generating) of one system (``config``: a run of its own)."""
    from recbole_mmprefer.explainer.generate import generate_explanations
    from recbole_mmprefer.explainer.train import train_explainer

    overrides = SYSTEMS[name]
    if overrides is not None:  # a value may depend on the budget: computed from the arguments
        overrides = {key: value(args) if callable(value) else value for key, value in overrides.items()}
    if config is None and name in OWN_RUNS:
        config = own_run_config(args, name, base_dir, OWN_RUNS[name])
    config = make_config(args, overrides or {}) if config is None else config
    folder = base_dir / (folder_name or name)
    started = time.perf_counter()
    model_dir = None if overrides is None else train_explainer(config, folder / "model")
    trained = time.perf_counter()
    out = generate_explanations(config, model_dir, "test", folder / "generations.jsonl", pairs=pairs)
    return out, trained - started, time.perf_counter() - trained


def paired_against(report_dir: Path, reference: str, systems: List[str],
                   metrics: Sequence[str] = PAIRED_METRICS) -> str:
    """Each other system minus ``reference``, paired over the same rows ("" when it or the metrics are absent)."""
    import pandas as pd

    from recbole_mmprefer.evaluation.paired import paired_table

    per_sample = pd.read_csv(report_dir / "per_sample.csv")
    metrics = [metric for metric in metrics if metric in per_sample.columns]
    others = [system for system in systems if system != reference]
    if reference not in set(per_sample["system"]) or not metrics or not others:
        return ""
    return (f"\n## Each system minus {reference} (paired over the same rows, mean +- standard error)\n\n"
            + paired_table(report_dir, reference, others, metrics) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_budget_arguments(parser, train_pairs=320, test_pairs=100)
    parser.add_argument("--systems", nargs="+", default=["full", "no_graph", "no_paths", "zero_shot"],
                        choices=[*SYSTEMS, *BASELINES])
    parser.add_argument("--metrics", nargs="+",
                        default=["bertscore", "bleu", "rouge_l", "usr", "likelihood", "grounding"])
    args, command = parse_budget(parser, "table1.py")

    from recbole_mmprefer.artifacts import run_dir
    from recbole_mmprefer.evaluation.evaluate import evaluate

    config = make_config(args, {})
    base_dir = run_dir(config) / "table1"
    pairs = test_pairs(config, args.test_pairs)
    files, timings = {}, []
    kept = kept_generations(args, [*SYSTEMS, *BASELINES])
    for name, path in kept.items():
        files[LABELS.get(name, name)] = path
        timings.append(f"| {LABELS.get(name, name)} | kept: {path} | kept |")
    for name in [name for name in args.systems if name not in kept]:
        if name in BASELINES:
            out, train_minutes, generate_minutes = run_baseline(args, name, base_dir, pairs)
        else:
            out, train_seconds, generate_seconds = run_system(args, name, base_dir, pairs)
            train_minutes, generate_minutes = train_seconds / 60, generate_seconds / 60
        label = LABELS.get(name, name)
        files[label] = out
        timings.append(f"| {label} | {train_minutes:.1f} | {generate_minutes:.1f} |")
        print(f"{name}: {out} (training {train_minutes:.1f} min, generation {generate_minutes:.1f} min)", flush=True)
    report_dir = evaluate(config, files, split="test", name="table1", max_rows=len(pairs))

    target = Path(args.out or HERE.parent / "results" / f"table1_{args.dataset}.md")
    target.parent.mkdir(parents=True, exist_ok=True)
    text = (report_dir / "table.md").read_text(encoding="utf-8")
    budget = f"the first {args.train_pairs} train pairs" if args.train_pairs else "every train pair"
    text += ("\n\n## This run\n\n"
             f"Each tuned system trained on {budget} for {args.epochs} epoch(s) "
             f"(validation loss on {args.valid_pairs} valid pairs), then explained the first {len(pairs)} test "
             "pairs (the baselines: their own epochs, baseline_epochs). Minutes of this run (0 where a stage was "
             "up to date; a baseline's training minutes are those of the run that trained it):\n\n"
             "| system | training | generation |\n|---|---|---|\n" + "\n".join(timings)
             + f"\n\nCommand: `{command}`\n") + paired_against(report_dir, PUBLISHED, list(files))
    text += paired_against(report_dir, LABELS["full"], list(files))
    target.write_text(text, encoding="utf-8")
    shutil.copy(report_dir / "distributions.png", target.with_suffix(".png"))
    print(text)


if __name__ == "__main__":
    main()
