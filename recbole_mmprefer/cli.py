"""The ``mmprefer`` command: one subcommand per pipeline stage (design section 2).

Every subcommand takes ``--dataset`` and ``--config_files`` like ``run_recbole``,
and any ``--key=value`` overrides a config key. Stages read and write files
under ``<checkpoint_dir>/<dataset>/`` and skip work whose outputs are up to date.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from logging import getLogger
from typing import List, Optional

from recbole.utils import init_logger, init_seed

from recbole_mmprefer.config import Config
from recbole_mmprefer.errors import InputError, MissingInputError

# Stage commands build their config as for MMPSASRec, the model that consumes them.
STAGE_MODEL = "MMPSASRec"


@contextmanager
def _argv(arguments: List[str]):
    """RecBole's Config reads ``--key=value`` from sys.argv: show it only the overrides."""
    saved = sys.argv
    sys.argv = [saved[0], *arguments]
    try:
        yield
    finally:
        sys.argv = saved


def stage_config(args: argparse.Namespace, overrides: List[str]) -> Config:
    unknown = [arg for arg in overrides if not (arg.startswith("--") and "=" in arg)]
    if unknown:
        raise InputError(f"Unrecognised arguments {unknown}: overrides are written --key=value")
    config_files = args.config_files.strip().split(" ") if args.config_files else None
    with _argv(overrides):
        config = Config(model=STAGE_MODEL, dataset=args.dataset, config_file_list=config_files)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    return config


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmprefer", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def stage(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--dataset", "-d", required=True, help="data set name (ml-100k is bundled)")
        sub.add_argument("--config_files", default=None, help="space-separated YAML config files")
        sub.add_argument("--force", action="store_true", help="rebuild even when the outputs are up to date")
        return sub

    features = stage("features", "Encode item modality features into <run_dir>/features/<modality>/")
    features.add_argument("--modality", action="append", choices=["text", "image"],
                          help="modality to build (repeatable); default: the config's modalities")
    features.set_defaults(handler=cmd_features)
    quantize = stage("quantize", "Train the joint RQ-VAE and write semantic IDs to <run_dir>/quantizer/")
    quantize.set_defaults(handler=cmd_quantize)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args, overrides = build_parser().parse_known_args(argv)
    try:
        args.handler(args, overrides)
    except (InputError, MissingInputError) as error:
        print(f"mmprefer {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
