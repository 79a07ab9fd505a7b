"""RecBole-style entry points that know this package's models (design section 2).

``run_recbole`` mirrors ``recbole.quick_start.run_recbole``: same flags, same
logs, same result dict. It differs where today's stack or our models need it:
models resolve through our registry first; a model that needs item features
(MMPSASRec) gets its missing features and semantic IDs built first; the best
checkpoint is reloaded with ``weights_only=False`` (our own files pickle
RecBole's Config, which torch >= 2.6 refuses by default); and user/item vectors
are exported for the retriever.
"""

from __future__ import annotations

import argparse
import sys
import time
from logging import getLogger
from typing import Any, Dict, List, Optional

import torch
from recbole.data import create_dataset, data_preparation
from recbole.utils import init_logger, init_seed, set_color

from recbole_mmprefer.config import Config, ConfigKeyError
from recbole_mmprefer.data.atomic import check_interactions
from recbole_mmprefer.data.features import build_features
from recbole_mmprefer.errors import InputError, MissingInputError
from recbole_mmprefer.model.export import export_embeddings
from recbole_mmprefer.model.quantizer import build_semantic_ids
from recbole_mmprefer.names import check_name
from recbole_mmprefer.registry import get_model, get_trainer


def prepare_item_inputs(config) -> None:
    """Build (or find up to date) each modality's features and, if used, the semantic IDs."""
    for modality in config["modalities"]:
        build_features(config, modality)
    if config["use_semantic_ids"]:
        build_semantic_ids(config)


def load_checkpoint(model_file: str) -> Dict[str, Any]:
    """Load a checkpoint written by RecBole's trainer (it pickles the Config: our own files only)."""
    return torch.load(model_file, map_location="cpu", weights_only=False)


def restore_weights(model, checkpoint: Dict[str, Any]) -> None:
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))


def run_recbole(model: Optional[str] = None, dataset: Optional[str] = None,
                config_file_list: Optional[List[str]] = None, config_dict: Optional[Dict[str, Any]] = None,
                saved: bool = True) -> Dict[str, Any]:
    """Train and test a model (ours or RecBole's) on a data set; return RecBole's result dict."""
    config = Config(model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = getLogger()
    logger.info(sys.argv)
    logger.info(config)

    check_interactions(config)
    model_class = get_model(config["model"])
    if getattr(model_class, "needs_item_features", False):
        prepare_item_inputs(config)

    dataset = create_dataset(config)
    logger.info(dataset)
    train_data, valid_data, test_data = data_preparation(config, dataset)

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = model_class(config, train_data._dataset).to(config["device"])
    logger.info(model)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    fit_started = time.perf_counter()
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"])
    fit_seconds = time.perf_counter() - fit_started
    if saved:
        restore_weights(model, load_checkpoint(trainer.saved_model_file))
        logger.info(f"Loaded the best checkpoint {trainer.saved_model_file}")
    test_result = trainer.evaluate(test_data, load_best_model=False, show_progress=config["show_progress"])

    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
    logger.info(set_color("test result", "yellow") + f": {test_result}")
    result = {
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
        "model_file": trainer.saved_model_file if saved else None,
        "epochs_trained": len(trainer.train_loss_dict),
        "fit_seconds": fit_seconds,
    }
    if saved and config["export_embeddings"]:
        result["embeddings_dir"] = str(export_embeddings(config, model, dataset, test_data, trainer.saved_model_file,
                                                         test_result))
    return result


def load_data_and_model(model_file: str):
    """Like RecBole's: (config, model, dataset, train_data, valid_data, test_data) of a saved checkpoint."""
    checkpoint = load_checkpoint(model_file)
    config = checkpoint["config"]
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    restore_weights(model, checkpoint)
    return config, model, dataset, train_data, valid_data, test_data


def main(argv: Optional[List[str]] = None) -> int:
    """The ``run_recbole`` console script: RecBole's flags, plus any --key=value."""
    parser = argparse.ArgumentParser(
        prog="run_recbole",
        description="Train and test a recommender (recbole-mmprefer's models first, then RecBole's). "
                    "Any other --key=value overrides a config key.")
    parser.add_argument("--model", "-m", default="BPR", help="model name, e.g. MMPSASRec, SASRec")
    parser.add_argument("--dataset", "-d", default="ml-100k", help="data set name")
    parser.add_argument("--config_files", default=None, help="space-separated YAML config files")
    parser.add_argument("--nproc", type=int, default=1, help="processes (only 1 is supported so far)")
    args, _ = parser.parse_known_args(argv)
    config_files = args.config_files.strip().split(" ") if args.config_files else None
    if args.nproc != 1:
        print("run_recbole: error: --nproc > 1 (distributed training) is not supported yet", file=sys.stderr)
        return 2
    try:
        check_name(args.dataset, "--dataset")
        run_recbole(model=args.model, dataset=args.dataset, config_file_list=config_files)
    except (InputError, MissingInputError, ConfigKeyError) as error:
        print(f"run_recbole: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
