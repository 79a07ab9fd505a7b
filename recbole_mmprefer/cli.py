"""The ``mmprefer`` command: one subcommand per pipeline stage (design section 2).

Every subcommand takes ``--dataset`` and ``--config_files`` like ``run_recbole``,
and any ``--key=value`` overrides a config key. Stages read and write files
under ``<checkpoint_dir>/<dataset>/`` and skip work whose outputs are up to date.
"""

from __future__ import annotations

import argparse
import json
import sys
from logging import getLogger
from pathlib import Path
from typing import List, Optional

from recbole.utils import init_seed

from recbole_mmprefer import config as configuration
from recbole_mmprefer.config import Config
from recbole_mmprefer.errors import InputError, Interrupted, MissingInputError, TrainingDiverged
from recbole_mmprefer.names import check_name


def stage_config(args: argparse.Namespace, overrides: List[str]) -> Config:
    unknown = [arg for arg in overrides if not (arg.startswith("--") and "=" in arg)]
    if unknown:
        raise InputError(f"Unrecognised arguments {unknown}: overrides are written --key=value")
    config_files = args.config_files.strip().split(" ") if args.config_files else None
    return configuration.stage_config(args.dataset, config_files, overrides, explainer_model=baseline_of(args))


def baseline_of(args: argparse.Namespace) -> Optional[str]:
    """The explanation baseline of ``--model`` (None for MMPRefer, ours); an unknown name lists the explainers."""
    from recbole_mmprefer.registry import OUR_EXPLAINER, get_explainer_model

    name = getattr(args, "model", None)
    if name is None or name == OUR_EXPLAINER:
        return None
    get_explainer_model(name)
    return name


def cmd_features(args: argparse.Namespace, overrides: List[str]) -> None:
    from recbole_mmprefer.data.features import build_features

    config = stage_config(args, overrides)
    for modality in args.modality or config["modalities"]:
        out_dir = build_features(config, modality, force=args.force)
        getLogger().info("%s features: %s", modality, out_dir)


def cmd_quantize(args: argparse.Namespace, overrides: List[str]) -> None:
    from recbole_mmprefer.model.quantizer import build_semantic_ids

    config = stage_config(args, overrides)
    out_dir = build_semantic_ids(config, force=args.force)
    getLogger().info("semantic IDs: %s", out_dir)


def cmd_import_xrec(args: argparse.Namespace, overrides: List[str]) -> None:
    from recbole_mmprefer.data.xrec import import_xrec

    _no_overrides(overrides)
    init_seed(args.seed, True)
    report = import_xrec(Path(args.source), args.name, Path(args.out), seed=args.seed,
                         split_ratios=args.split_ratios, split_by=args.split_by, resplit=args.resplit)
    _print_import_report(report, Path(args.out) / args.name)


def cmd_import_amazon(args: argparse.Namespace, overrides: List[str]) -> None:
    from recbole_mmprefer.data.amazon import import_amazon

    _no_overrides(overrides)
    report = import_amazon(Path(args.reviews), Path(args.meta), args.name, Path(args.out),
                           images=Path(args.images) if args.images else None, core=args.core,
                           allow_missing_text=args.allow_missing_text)
    _print_import_report(report, Path(args.out) / args.name)


def _no_overrides(overrides: List[str]) -> None:
    if overrides:
        raise InputError(f"Unrecognised arguments {overrides}")


def _print_import_report(report: dict, out_dir: Path) -> None:
    shown = {key: value for key, value in report.items() if key != "files"}
    print(json.dumps(shown, indent=2, default=str))
    print(f"Wrote {out_dir} (report: {out_dir / 'import_report.json'})")


def cmd_profiles(args: argparse.Namespace, overrides: List[str]) -> None:
    from recbole_mmprefer.data.profiles import build_profiles

    config = stage_config(args, overrides)
    report = build_profiles(config, source=args.source, force=args.force)
    getLogger().info("profiles: %s", json.dumps(report, default=str))


def cmd_preferences(args: argparse.Namespace, overrides: List[str]) -> None:
    from recbole_mmprefer.data.preferences import build_preferences, import_preferences

    config = stage_config(args, overrides)
    if args.tallrec_json and args.cold:
        raise InputError("--cold builds cold-start samples from the data set; --tallrec_json imports a file: one")
    if args.tallrec_json:
        out_dir = import_preferences(config, Path(args.tallrec_json), split=args.split, name=args.name,
                                     match_titles=not args.no_title_match)
    elif args.cold:
        from recbole_mmprefer.data.cold_start import build_cold_start

        out_dir = build_cold_start(config, args.cold, force=args.force)
    else:
        out_dir = build_preferences(config, force=args.force)
    print(f"Preference samples: {out_dir / 'samples.jsonl'}")


def cmd_preference_train(args: argparse.Namespace, overrides: List[str]) -> None:
    from recbole_mmprefer.preference.train import train_preference_model

    config = stage_config(args, overrides)
    out_dir = train_preference_model(config, Path(args.out_dir) if args.out_dir else None,
                                     samples_name=args.samples, force=args.force)
    print(f"Preference model: {out_dir}")


def cmd_preference_score(args: argparse.Namespace, overrides: List[str]) -> None:
    from recbole_mmprefer.preference.score import read_auc, score_preferences

    config = stage_config(args, overrides)
    out_file = score_preferences(config, Path(args.model_dir) if args.model_dir else None, args.split,
                                 Path(args.out_file) if args.out_file else None, samples_name=args.samples,
                                 max_samples=args.max_samples, force=args.force)
    meta = read_auc(out_file)
    print(f"AUC {meta['auc']:.4f} over {meta['samples']} {args.split} samples: {out_file}")


def cmd_paths(args: argparse.Namespace, overrides: List[str]) -> None:
    from recbole_mmprefer.retrieval.collect import collect_paths

    config = stage_config(args, overrides)
    if args.show:
        from recbole_mmprefer.retrieval.show import show_pair

        print(show_pair(config, *args.show, draw=Path(args.draw) if args.draw else None))
        if args.draw:
            print(f"Drawing: {args.draw}")
        return
    if args.draw:
        raise InputError("--draw goes with --show USER ITEM")
    out_dir = collect_paths(config, split=args.pairs, pairs_file=Path(args.pairs_file) if args.pairs_file else None,
                            force=args.force)
    getLogger().info("paths: %s", out_dir / "paths.jsonl")


def cmd_evaluate(args: argparse.Namespace, overrides: List[str]) -> None:
    from recbole_mmprefer.evaluation.evaluate import evaluate

    config = stage_config(args, overrides)
    files = {}
    for entry in args.system or []:
        name, separator, path = entry.partition("=")
        if not separator or not name or not path:
            raise InputError(f"--system {entry!r}: write it NAME=FILE (a JSON-lines generation file)")
        files[name] = Path(path)
    out_dir = evaluate(config, files, split=None if args.split == "all" else args.split,
                       published=not args.no_published, baselines=not args.no_baselines, name=args.name,
                       max_rows=args.max_rows)
    print((out_dir / "table.md").read_text())
    print(f"Report: {out_dir}")


def cmd_train(args: argparse.Namespace, overrides: List[str]) -> None:
    config = stage_config(args, overrides)
    if baseline_of(args):
        from recbole_mmprefer.explainer.baselines import train_explainer_model

        out_dir = train_explainer_model(config, args.model, force=args.force)
        print(f"{args.model}: {out_dir}")
        return
    from recbole_mmprefer.explainer.train import train_explainer

    out_dir = train_explainer(config, force=args.force)
    getLogger().info("explainer: %s", out_dir)


def cmd_generate(args: argparse.Namespace, overrides: List[str]) -> None:
    from recbole_mmprefer.explainer.checkpoints import resolve_explainer
    from recbole_mmprefer.explainer.generate import generate_explanations

    config = stage_config(args, overrides)
    if baseline_of(args):
        from recbole_mmprefer.explainer.baselines import generate_with_model

        if args.model_dir:
            raise InputError("--model_dir is the folder of our explainer; a baseline reads its own training folder "
                             f"(drop --model_dir, or --model {args.model} with `mmprefer train --model` first)")
        out_file = generate_with_model(config, args.model, split=args.split or "test",
                                       out_file=Path(args.out_file) if args.out_file else None, force=args.force)
        print(f"Generations: {out_file}")
        return
    out_file = generate_explanations(config, model_dir=resolve_explainer(args.model_dir) if args.model_dir else None,
                                     split=args.split, out_file=Path(args.out_file) if args.out_file else None,
                                     force=args.force)
    getLogger().info("generations: %s", out_file)
    print(f"Generations: {out_file}")


def cmd_run(args: argparse.Namespace, overrides: List[str]) -> None:
    config = stage_config(args, overrides)
    if args.task == "preference":
        from recbole_mmprefer.preference.pipeline import run_preference_pipeline

        print(f"Report: {run_preference_pipeline(config, force=args.force)}")
        return
    from recbole_mmprefer.pipeline import run_pipeline

    out_dir = run_pipeline(config, force=args.force)
    print(f"Report: {out_dir / 'report.md'} and {out_dir / 'report.html'}")


def add_import_commands(commands) -> None:
    importer = commands.add_parser("import", help="Import a public data set into RecBole atomic files "
                                   "plus the explanation table", description="Import a public data set")
    sources = importer.add_subparsers(dest="source_format", required=True)
    xrec = sources.add_parser("xrec", help="A folder in the XRec layout (tst.pkl, total_*.csv, para_dict.pickle)")
    xrec.add_argument("source", help="folder holding the XRec files")
    xrec.add_argument("--split_ratios", "--split-ratios", type=float, nargs=3, default=[0.8, 0.1, 0.1],
                      metavar=("TRAIN", "VALID", "TEST"), help="explanation-pair split (default 0.8 0.1 0.1)")
    xrec.add_argument("--split_by", "--split-by", choices=["pair", "user"], default="pair",
                      help="split unit: each pair alone, or all pairs of a user together")
    xrec.add_argument("--seed", type=int, default=2020, help="seed of the explanation-pair split")
    xrec.add_argument("--resplit", action="store_true",
                      help="split pairs by seed even when trn.pkl/val.pkl give the published split")
    xrec.set_defaults(handler=cmd_import_xrec)
    amazon = sources.add_parser("amazon", help="Amazon review dumps (2014 or 2018; JSON lines, optionally gzip)")
    amazon.add_argument("--reviews", required=True, help="reviews file, e.g. reviews_Baby_5.json.gz")
    amazon.add_argument("--meta", required=True, help="metadata file, e.g. meta_Baby.json.gz")
    amazon.add_argument("--images", default=None, help="folder of item images named <asin>.<jpg|png|...>")
    amazon.add_argument("--core", type=int, default=5, help="k-core filtering of users and items (default 5)")
    amazon.add_argument("--allow_missing_text", "--allow-missing-text", action="store_true",
                        help="import even when no item has metadata text (by default that is an error)")
    amazon.set_defaults(handler=cmd_import_amazon)
    for sub in (xrec, amazon):
        sub.add_argument("--name", required=True, help="data set name (the folder and file prefix)")
        sub.add_argument("--out", default="dataset", help="root folder of data sets (RecBole's data_path; "
                         "default ./dataset)")


def add_model_option(command: argparse.ArgumentParser) -> None:
    from recbole_mmprefer.registry import OUR_EXPLAINER, explainer_names

    command.add_argument("--model", default=None, help=f"the explainer: {', '.join(explainer_names())} (default "
                         f"{OUR_EXPLAINER}, ours; the others are the field's baselines, properties/model/<Model>.yaml)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmprefer", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def stage(name: str, help_text: str,
              force_help: str = "rebuild even when the outputs are up to date") -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--dataset", "-d", required=True, help="data set name (ml-100k is bundled)")
        sub.add_argument("--config_files", default=None, help="space-separated YAML config files")
        sub.add_argument("--force", action="store_true", help=force_help)
        return sub

    features = stage("features", "Encode item modality features into <run_dir>/features/<modality>/")
    features.add_argument("--modality", action="append", choices=["text", "image"],
                          help="modality to build (repeatable); default: the config's modalities")
    features.set_defaults(handler=cmd_features)
    quantize = stage("quantize", "Train the joint RQ-VAE and write semantic IDs to <run_dir>/quantizer/")
    quantize.set_defaults(handler=cmd_quantize)
    profiles = stage("profiles", "Write user and item profiles to <run_dir>/profiles/ (copies of the data set's "
                     ".user/.item and explanation table with profiles filled)",
                     force_help="rewrite every profile from the chosen source, also those the data set has "
                     "from another source")
    profiles.add_argument("--source", choices=["template", "llm"], default=None,
                          help="who writes the profiles (default: the config's profile_method)")
    profiles.set_defaults(handler=cmd_profiles)
    preferences = stage("preferences", "Write TALLRec-protocol preference samples (history windows, Yes/No "
                        "labels, 8:1:1 split, few-shot order) to <run_dir>/preferences/windows/, or import a "
                        "published TALLRec JSON file", force_help="build the samples again even when up to date")
    preferences.add_argument("--tallrec_json", "--tallrec-json", default=None,
                             help="a published TALLRec file (instruction, input, output) to import instead")
    preferences.add_argument("--split", choices=["train", "valid", "test"], default="test",
                             help="with --tallrec_json: the split its samples are (default test)")
    preferences.add_argument("--name", default=None,
                             help="with --tallrec_json: the samples' folder name (default tallrec-<file stem>)")
    preferences.add_argument("--no_title_match", "--no-title-match", action="store_true",
                             help="with --tallrec_json: keep titles as item ids (a domain not in this data set)")
    preferences.add_argument("--cold", choices=["users", "items"], default=None,
                             help="cold-start samples instead: new users (shown a support set) or new items, held "
                             "out entirely (coldstart_* keys); written to <run_dir>/preferences/cold-<users|items>/")
    preferences.set_defaults(handler=cmd_preferences)
    tune = stage("preference-train", "Tune a TALLRec preference model (LoRA, Yes/No answers) on the few-shot "
                 "training set (preference_shots); writes <run_dir>/preference_models/tallrec-<shots>/",
                 force_help="tune again even when up to date")
    tune.add_argument("--samples", default="windows", help="preference samples folder (default windows)")
    tune.add_argument("--out_dir", default=None, help="the model folder")
    tune.set_defaults(handler=cmd_preference_train)
    score = stage("preference-score", "P(Yes) for a split's preference samples and its AUC; writes "
                  "<run_dir>/preference_scores/", force_help="score again even when up to date")
    score.add_argument("--model_dir", default=None, help="a tuned preference model (default: the frozen LLM)")
    score.add_argument("--samples", default="windows", help="preference samples folder (default windows; "
                       "tallrec-<stem> for an imported file)")
    score.add_argument("--split", choices=["train", "valid", "test"], default="test")
    score.add_argument("--max_samples", "--max-samples", type=int, default=None,
                       help="score the first N samples of the split only (a CPU budget)")
    score.add_argument("--out_file", default=None)
    score.set_defaults(handler=cmd_preference_score)
    paths = stage("paths", "Collect the top-k retrieval paths of each pair into <run_dir>/paths/paths.jsonl",
                  force_help="recompute every pair, also those a previous run finished")
    paths.add_argument("--pairs", choices=["train", "valid", "test"], default=None,
                       help="explanation-table split to collect (default: path_pairs_split, else all pairs)")
    paths.add_argument("--pairs_file", "--pairs-file", default=None,
                       help="a user_id<TAB>item_id file of pairs, instead of the explanation table")
    paths.add_argument("--show", nargs=2, metavar=("USER", "ITEM"), default=None,
                       help="print one pair's paths with node profiles instead of collecting")
    paths.add_argument("--draw", default=None, help="with --show: write a drawing of the paths (.svg or .html)")
    paths.set_defaults(handler=cmd_paths)
    train = stage("train", "Tune the explainer (LoRA + graph soft prompt; or a baseline with --model) on the "
                  "explanation table's train split; writes <run_dir>/explainer/ (a baseline: "
                  "<run_dir>/explainer_models/<Model>/)", force_help="train again even when the model is up to date")
    add_model_option(train)
    train.set_defaults(handler=cmd_train)
    generate = stage("generate", "Write explanations for a split's pairs to <run_dir>/generations/ "
                     "(zero-shot without --model_dir)", force_help="generate again even when up to date")
    generate.add_argument("--model_dir", default=None, help="a trained explainer's folder, or 'bundled' (the "
                          "adapter shipped in the wheel); default: zero-shot, the frozen LLM")
    generate.add_argument("--split", choices=["train", "valid", "test"], default=None,
                          help="explanation-table split (default: explainer_generation_split)")
    generate.add_argument("--out_file", default=None, help="the generation file (JSON lines)")
    add_model_option(generate)
    generate.set_defaults(handler=cmd_generate)
    evaluation = stage("evaluate", "Score generation files, the published baselines and the cheap baselines on "
                       "the same rows; write <run_dir>/evaluation/<name>/ (table.md, scores.json, ...)")
    evaluation.add_argument("--system", action="append", metavar="NAME=FILE",
                            help="a system's generation file (JSON lines: user_id, item_id, explanation); repeatable")
    evaluation.add_argument("--split", choices=["train", "valid", "test", "all"], default="test",
                            help="explanation-table rows to score (default test)")
    evaluation.add_argument("--no_published", "--no-published", action="store_true",
                            help="leave out the published outputs kept in the explanation table")
    evaluation.add_argument("--no_baselines", "--no-baselines", action="store_true",
                            help="leave out the item-template and nearest-neighbour baselines")
    evaluation.add_argument("--name", default=None, help="report folder name (default: the split)")
    evaluation.add_argument("--max_rows", "--max-rows", type=int, default=None,
                            help="score the first N rows of the split only (a CPU budget)")
    evaluation.set_defaults(handler=cmd_evaluate)
    run = stage("run", "Every stage in order (features, quantizer, MMPSASRec, profiles, paths, explainer, "
                "generation, evaluation), each skipped when up to date; ends in <run_dir>/report/",
                force_help="retrain MMPSASRec even when its vectors exist")
    run.add_argument("--task", choices=["explain", "preference"], default="explain",
                     help="explain: MMP-Refer's explanations (default); preference: TALLRec and ExplainRec's Yes/No "
                     "preference prediction and its AUC")
    run.set_defaults(handler=cmd_run)
    from recbole_mmprefer.serving.commands import add_serving_commands

    add_serving_commands(stage)
    add_import_commands(commands)
    return parser


DEBUG_FLAG = "--debug"


def check_names(args: argparse.Namespace) -> None:
    """Names that become folders or files (``--dataset``, ``--name``, the NAME of ``--system NAME=FILE``) must be
    single plain path components; see :mod:`recbole_mmprefer.names`."""
    for option in ("dataset", "name"):
        if getattr(args, option, None) is not None:
            check_name(getattr(args, option), f"--{option}")
    for entry in getattr(args, "system", None) or []:
        name, separator, _ = entry.partition("=")
        if separator and name:
            check_name(name, f"--system {entry!r}: NAME")


def _one_line(error: BaseException, limit: int = 300) -> str:
    text = " ".join(str(error).split()) or "(no message)"
    return text if len(text) <= limit else text[:limit] + "..."


def main(argv: Optional[List[str]] = None) -> int:
    """Run one subcommand: 0 on success, 2 on the toolkit's own errors (bad input, divergence), 1 on any other,
    130 when stopped with Ctrl-C (a resumable stage says what it kept and how to resume).

    Any other exception prints a one-line summary; ``--debug`` (anywhere on
    the command line) shows its traceback instead.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv
    parser = build_parser()
    parser.add_argument(DEBUG_FLAG, action="store_true", help="show the traceback of an unexpected error")
    args, overrides = parser.parse_known_args([arg for arg in argv if arg != DEBUG_FLAG])
    command = "mmprefer " + " ".join(filter(None, [args.command, getattr(args, "source_format", None)]))
    try:
        check_names(args)
        args.handler(args, overrides)
    except (InputError, MissingInputError, TrainingDiverged) as error:
        print(f"{command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as error:
        print(f"{command}: {error if isinstance(error, Interrupted) else 'stopped by the user'}", file=sys.stderr)
        return 130
    except Exception as error:  # a bug or an environment problem, not bad input: no traceback unless asked
        if debug:
            raise
        print(f"{command}: unexpected {type(error).__name__}: {_one_line(error)} "
              f"(rerun with {DEBUG_FLAG} for the traceback)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
