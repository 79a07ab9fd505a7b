"""Explanations from the explainer (paper section 3.4; design sections 8, 9): `generate_explanations`.

For each pair (one split of the explanation table, all of it, or a given list)
the prompt is built as in training (without the explanation, leaving room for
``explainer_max_new_tokens``), batched ``explainer_generation_batch_size`` at a
time with left padding, the soft prompt written into ``inputs_embeds``, and
decoded by ``model.generate(inputs_embeds=..., attention_mask=...)`` with the
KV cache: ``explainer_decoding`` greedy, beam (``explainer_num_beams``) or
sample (``explainer_temperature``, ``explainer_top_p``; seeded by ``seed`` and
the batch's first pair, so sampled text depends on how pairs are batched).

**Zero-shot** (``model_dir`` None): the frozen LLM with the paths as text
only: no LoRA and no soft prompt, whatever the config says (an untrained soft
prompt would be noise). This is the ml-100k demo mode. With ``model_dir`` the
model and prompt settings are those the adapter was trained with (its
meta.json); the decoding settings come from the config.

**Output**: JSON lines in the format of
:func:`recbole_mmprefer.evaluation.systems.write_generations`, in pair order::

    {"user_id": "4748", "item_id": "1247", "explanation": "...", "paths": [...], "paths_in_prompt": 2}

``paths`` are the pair's first ``explainer_paths`` retrieval paths (node
``types`` and ``tokens``); ``paths_in_prompt`` how many of them the token
budget kept as text. Beside it, ``<out_file>.meta.json`` records the inputs'
hash: a rerun with the same inputs is skipped. Pairs are appended to a partial
file per rank as they are done, so an interrupted run resumes.

**Sharding**: under ``torchrun`` / ``accelerate launch`` (WORLD_SIZE > 1) rank
r takes pairs r, r + W, ... and rank 0 gathers the shards in pair order; with
greedy or beam decoding the file equals a 1-process run's (left padding makes a
pair's output independent of its batch).

Command line (one process, or under torchrun)::

    python -m recbole_mmprefer.explainer.generate CONFIG.yaml [--model_dir DIR] [--split test] [--out_file F]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import pandas as pd
import torch
from tqdm import tqdm

from recbole_mmprefer.data.explanations import SPLITS
from recbole_mmprefer.errors import InputError
from recbole_mmprefer.evaluation.systems import GENERATION_FIELDS, write_generations
from recbole_mmprefer.explainer.model import DECODINGS, ExplainerModel, setting
from recbole_mmprefer.explainer.prompts import NodeText, PromptSettings
from recbole_mmprefer.explainer.train import (
    Overlay,
    PairData,
    graph_hash,
    join_records,
    llm_identity,
    load_explainer,
    load_path_records,
    load_table,
    model_settings,
    node_text_hash,
)
from recbole_mmprefer.utils import file_sha256, json_sha256, read_json, write_json

logger = logging.getLogger(__name__)

ZERO_SHOT = {"explainer_lora": False, "explainer_graph_level": False}
DECODING_KEYS = ("explainer_decoding", "explainer_num_beams", "explainer_temperature", "explainer_top_p",
                 "explainer_max_new_tokens", "explainer_min_new_tokens", "explainer_repetition_penalty",
                 "explainer_no_repeat_ngram_size", "explainer_generation_batch_size", "explainer_bf16")


def generations_dir(config) -> Path:
    from recbole_mmprefer.config import run_dir

    return run_dir(config) / "generations"


def decoding_settings(config) -> Dict[str, object]:
    settings = {key: setting(config, key) for key in DECODING_KEYS}
    if settings["explainer_decoding"] not in DECODINGS:
        raise InputError(f"explainer_decoding must be one of {', '.join(DECODINGS)}; "
                         f"got {settings['explainer_decoding']!r}")
    if int(settings["explainer_generation_batch_size"]) < 1 or int(settings["explainer_num_beams"]) < 1:
        raise InputError("explainer_generation_batch_size and explainer_num_beams must be >= 1")
    if float(settings["explainer_repetition_penalty"]) <= 0 or int(settings["explainer_no_repeat_ngram_size"]) < 0:
        raise InputError("explainer_repetition_penalty must be > 0 and explainer_no_repeat_ngram_size >= 0")
    return settings


def select_rows(table: Optional[pd.DataFrame], records: Sequence[dict], split: Optional[str],
                pairs: Optional[Sequence[Tuple[str, str]]]) -> pd.DataFrame:
    """The rows to explain: the given pairs (table rows where known), one split, all rows, or every paths record
    when there is no table."""
    columns = ["user_id", "item_id", "title", "user_profile", "item_profile"]
    if table is None:
        source = pairs if pairs is not None else [(record["user_id"], record["item_id"]) for record in records]
        rows = pd.DataFrame([{"user_id": str(u), "item_id": str(i), "title": "", "user_profile": "",
                              "item_profile": ""} for u, i in source], columns=columns)
    elif pairs is not None:
        known = table.set_index(["user_id", "item_id"])
        rows = pd.DataFrame([{"user_id": str(u), "item_id": str(i),
                              **({key: known.loc[(str(u), str(i)), key] for key in columns[2:]}
                                 if (str(u), str(i)) in known.index else dict.fromkeys(columns[2:], ""))}
                             for u, i in pairs], columns=columns)
    elif split in (None, "all"):
        rows = table[columns]
    else:
        if split not in SPLITS:
            raise InputError(f"split must be one of {SPLITS} or 'all', got {split!r}")
        rows = table.loc[table["split"] == split, columns]
    rows = rows.reset_index(drop=True)
    if rows.empty:
        raise InputError(f"no pairs to explain (split {split!r})")
    if rows.duplicated(["user_id", "item_id"]).any():
        raise InputError("some (user, item) pairs to explain are listed more than once")
    return rows


def _table_path(config) -> Optional[Path]:
    """The run's explanation table, None where there is none (then every paths record is a pair)."""
    from recbole_mmprefer.data.explanations import explanation_table_path

    if config is None or "data_path" not in config or "dataset" not in config or not config["data_path"]:
        return None
    path = explanation_table_path(Path(config["data_path"]), config["dataset"])
    if not path.is_file():
        logger.info("No explanation table %s: explaining the pairs of the paths records", path)
        return None
    return path


def _distributed() -> Tuple[int, int]:
    from recbole_mmprefer.retrieval.collect import _distributed as distributed

    return distributed()


def _barrier(world: int) -> None:
    from recbole_mmprefer.retrieval.collect import _barrier as barrier

    barrier(world)


def _read_done(path: Path) -> List[dict]:
    from recbole_mmprefer.retrieval.collect import _read_records, _rewrite_complete

    records = _read_records(path)
    _rewrite_complete(path, records)
    return records


def generate_explanations(config, model_dir: Optional[Path] = None, split: Optional[str] = None,
                          out_file: Optional[Path] = None, *, pairs: Optional[Sequence[Tuple[str, str]]] = None,
                          table: Optional[pd.DataFrame] = None, records: Optional[Sequence[dict]] = None,
                          node_text: Optional[NodeText] = None, builder=None, force: bool = False) -> Path:
    """Write one explanation per pair to ``out_file``; returns it.

    ``out_file`` defaults to ``<run_dir>/generations/mmprefer[-zeroshot]-<split>.jsonl``.

    ``model_dir``: a folder of :func:`train_explainer` (None: zero-shot).
    ``split``: the table split (default ``explainer_generation_split``; "all"
    for every row); ``pairs`` overrides it. ``table``, ``records``,
    ``node_text`` and ``builder`` default to the config's run (the table may be
    absent: then every paths record is a pair).
    """
    from recbole_mmprefer.explainer.graph_encoder import PathSubgraphBuilder, soft_prompt_tokens

    split = split if split is not None else setting(config, "explainer_generation_split")
    meta = read_json(Path(model_dir) / "meta.json") if model_dir is not None and \
        (Path(model_dir) / "meta.json").is_file() else None
    effective = Overlay(config, meta["settings"] if meta is not None else ZERO_SHOT)
    if model_dir is not None and meta is None:
        load_explainer(config, model_dir)  # raises the missing-model error
    decoding = decoding_settings(config)
    if table is None and _table_path(config) is not None:
        table = load_table(config)
    records = load_path_records(config) if records is None else list(records)
    node_text = NodeText.from_config(config) if node_text is None else node_text
    graph_level = soft_prompt_tokens(effective) > 0
    builder = (builder if builder is not None else PathSubgraphBuilder.from_config(config)) if graph_level else None
    rows = select_rows(table, records, split, pairs)
    prompt_records = join_records(rows, records)
    name = f"mmprefer{'' if model_dir is not None else '-zeroshot'}-{split if pairs is None else 'pairs'}.jsonl"
    out_file = Path(out_file) if out_file is not None else generations_dir(config) / name
    meta_file = out_file.with_name(out_file.name + ".meta.json")
    input_hash = json_sha256({
        "pairs": rows.to_dict(orient="records"), "paths": [record.get("paths", []) for record in prompt_records],
        "node_text": node_text_hash(node_text), "graph": graph_hash(builder), "settings": model_settings(effective),
        "llm": llm_identity(effective), "decoding": decoding, "prompt_max_new_tokens": setting(
            config, "explainer_max_new_tokens"),
        "adapter": file_sha256(Path(model_dir) / "adapter.pt") if model_dir is not None else None})
    if not force and out_file.is_file() and meta_file.is_file() and \
            read_json(meta_file).get("input_hash") == input_hash:
        logger.info("Generations are up to date in %s", out_file)
        return out_file

    rank, world = _distributed()
    started = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if world > 1 and device == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank)) % torch.cuda.device_count()}"
    feature_dim = builder.feature_dim if builder is not None else None
    if model_dir is not None:
        model, _ = load_explainer(config, model_dir, feature_dim, device)
    else:
        model = ExplainerModel.from_config(effective, feature_dim, device=device).eval()
    # the prompts follow the trained model's settings; the generation budget follows the config
    prompt_settings = PromptSettings.from_config(Overlay(effective, {
        "explainer_max_new_tokens": setting(config, "explainer_max_new_tokens")}))
    work_dir = out_file.parent / f".{out_file.name}.partial-{input_hash[:16]}"
    work_dir.mkdir(parents=True, exist_ok=True)
    mine = list(range(rank, len(rows), world))
    _generate_shard(model, prompt_records, mine, node_text, prompt_settings, builder, decoding,
                    int(setting(config, "seed", 0)), work_dir / f"rank{rank}-of-{world}.jsonl", force, rank)
    _barrier(world)
    if rank == 0:
        done = {}
        for shard in range(world):
            for record in _read_done(work_dir / f"rank{shard}-of-{world}.jsonl"):
                done[(record["user_id"], record["item_id"])] = record
        keys = list(zip(rows["user_id"], rows["item_id"]))
        missing = [key for key in keys if key not in done]
        if missing:
            raise RuntimeError(f"{len(missing)} pairs have no explanation after generation, e.g. {missing[0]}")
        ordered = [done[key] for key in keys]
        frame = pd.DataFrame([{field: record[field] for field in GENERATION_FIELDS} for record in ordered])
        extra = [{key: value for key, value in record.items() if key not in GENERATION_FIELDS}
                 for record in ordered]
        temporary = out_file.with_name(f".{out_file.name}.tmp-{os.getpid()}")
        write_generations(temporary, frame, extra)
        os.replace(temporary, out_file)
        meta_out = {"input_hash": input_hash, "model_dir": str(model_dir) if model_dir is not None else None,
                    "zero_shot": model_dir is None, "split": split if pairs is None else None, "pairs": len(rows),
                    "decoding": decoding, "settings": model_settings(effective), "world_size": world,
                    "soft_tokens": model.soft_tokens, "seconds_this_run": round(time.perf_counter() - started, 3)}
        temporary = meta_file.with_name(f".{meta_file.name}.tmp-{os.getpid()}")
        write_json(temporary, meta_out)
        os.replace(temporary, meta_file)
        for leftover in work_dir.iterdir():
            leftover.unlink()
        work_dir.rmdir()
        logger.info("Wrote %d explanations to %s", len(ordered), out_file)
    _barrier(world)
    return out_file


def _generate_shard(model: ExplainerModel, prompt_records: List[dict], indices: List[int], node_text: NodeText,
                    prompt_settings: PromptSettings, builder, decoding: Dict[str, object], seed: int, partial: Path,
                    force: bool, rank: int) -> None:
    done = set() if force else {(record["user_id"], record["item_id"]) for record in _read_done(partial)}
    if force:
        partial.write_text("")
    todo = [n for n in indices if (prompt_records[n]["user_id"], prompt_records[n]["item_id"]) not in done]
    if done:
        logger.info("Resuming: %d of %d pairs already explained in %s", len(indices) - len(todo), len(indices),
                    partial)
    if not todo:
        return
    tokenizer = model.tokenizer
    records = [prompt_records[n] for n in todo]
    data = PairData(records, node_text, tokenizer, prompt_settings, builder)
    size = int(decoding["explainer_generation_batch_size"])
    autocast = torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=bool(decoding["explainer_bf16"]))
    with open(partial, "a", encoding="utf-8") as handle, tqdm(total=len(todo), desc=f"explain (rank {rank})",
                                                              unit="pair") as progress:
        for start in range(0, len(todo), size):
            chunk = list(range(start, min(start + size, len(todo))))
            batch, graphs = data.batch(chunk, int(tokenizer.pad_token_id), True, model.soft_tokens > 0)
            torch.manual_seed(seed * 1_000_003 + todo[chunk[0]])
            with autocast:
                new_tokens = model.generate(batch, graphs, max_new_tokens=int(decoding["explainer_max_new_tokens"]),
                                            decoding=str(decoding["explainer_decoding"]),
                                            num_beams=int(decoding["explainer_num_beams"]),
                                            temperature=float(decoding["explainer_temperature"]),
                                            top_p=float(decoding["explainer_top_p"]),
                                            min_new_tokens=int(decoding["explainer_min_new_tokens"]),
                                            repetition_penalty=float(decoding["explainer_repetition_penalty"]),
                                            no_repeat_ngram_size=int(decoding["explainer_no_repeat_ngram_size"]))
            for n, tokens in zip(chunk, new_tokens):
                record = records[n]
                paths = [{"types": path.get("types"), "tokens": path.get("tokens")}
                         for path in (record.get("paths") or [])[:prompt_settings.paths]]
                line = {"user_id": record["user_id"], "item_id": record["item_id"],
                        "explanation": tokenizer.decode(tokens, skip_special_tokens=True).strip(),
                        "paths": paths,
                        "paths_in_prompt": len(paths) - data.examples[n].truncation["paths_dropped"]}
                handle.write(json.dumps(line, ensure_ascii=False) + "\n")
            handle.flush()
            progress.update(len(chunk))


def main(argv: Optional[Sequence[str]] = None) -> None:
    """``python -m recbole_mmprefer.explainer.generate CONFIG.yaml [--model_dir D] [--split S] [--out_file F]``:
    the config is a plain YAML mapping (data_path, dataset, run_dir, llm_path, explainer_* ...)."""
    import yaml

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="YAML file with the run's keys")
    parser.add_argument("--model_dir", default=None, help="folder of a trained explainer; omitted: zero-shot")
    parser.add_argument("--split", default=None)
    parser.add_argument("--out_file", default=None)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    with open(args.config, encoding="utf-8") as handle:
        config = yaml.safe_load(handle) or {}
    out = generate_explanations(config, args.model_dir, args.split, args.out_file, force=args.force)
    if _distributed()[0] == 0:
        print(out)


if __name__ == "__main__":
    main()
