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
``explainer_config.json``); the decoding settings come from the config.

**Output**: JSON lines in the format of
:mod:`recbole_mmprefer.data.generations`, in pair order::

    {"user_id": "4748", "item_id": "1247", "explanation": "...", "paths": [...], "paths_in_prompt": 2}

``paths`` are the pair's first ``explainer_paths`` retrieval paths (node
``types`` and ``tokens``); ``paths_in_prompt`` how many of them the token
budget kept as text. Beside it, ``<out_file>.meta.json`` records the inputs'
hash (the ``generations`` artifact): a rerun with the same inputs is skipped.
Pairs are appended to a partial file per rank as they are done
(:class:`~recbole_mmprefer.jsonl.ResumableShards`), so an interrupted run
resumes.

**Sharding**: under ``torchrun`` / ``accelerate launch`` (WORLD_SIZE > 1) rank
r takes pairs r, r + W, ... and rank 0 gathers the shards in pair order; with
greedy or beam decoding the file equals a 1-process run's (left padding makes a
pair's output independent of its batch).

Command line (one process, or under torchrun)::

    python -m recbole_mmprefer.explainer.generate CONFIG.yaml [--model_dir DIR] [--split test] [--out_file F]
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import pandas as pd
import torch
from tqdm import tqdm

from recbole_mmprefer.artifacts import ARTIFACTS, is_fresh_at, read_meta_at, write_meta
from recbole_mmprefer.data.generations import GENERATION_FIELDS, write_generations
from recbole_mmprefer.data.node_text import NodeText
from recbole_mmprefer.errors import InputError, Interrupted
from recbole_mmprefer.explainer.checkpoints import ADAPTER_FILE, load_explainer, require_trained, resolve_explainer
from recbole_mmprefer.explainer.model import ExplainerModel
from recbole_mmprefer.explainer.pair_data import (
    PairData,
    RunInputs,
    join_records,
    llm_identity,
    load_optional_table,
    select_rows,
)
from recbole_mmprefer.explainer.settings import DecodingSettings, ExplainerConfig, LlmSettings, generation_split
from recbole_mmprefer.explainer.tokens import template_token_ids, wordless_token_ids
from recbole_mmprefer.jsonl import ResumableShards, barrier, distributed, dump_line
from recbole_mmprefer.llm import BUNDLED_LLM_NAME
from recbole_mmprefer.resources import stage_setting
from recbole_mmprefer.utils import file_sha256, json_sha256

logger = logging.getLogger(__name__)

Pair = Tuple[str, str]


@dataclass
class GenerationPlan:
    """What one generation run explains, with which model settings, into which file."""

    rows: pd.DataFrame
    prompt_records: List[dict]
    settings: ExplainerConfig
    decoding: DecodingSettings
    node_text: NodeText
    builder: Optional[object]
    model_dir: Optional[Path]
    out_file: Path
    split: Optional[str]
    input_hash: str

    @property
    def keys(self) -> List[Pair]:
        return list(zip(self.rows["user_id"], self.rows["item_id"]))


def model_settings(config, model_dir: Optional[Path]) -> ExplainerConfig:
    """The trained explainer's settings (its saved config), or the config's zero-shot ones; the generation
    budget is always the config's."""
    if model_dir is not None:
        settings = ExplainerConfig.load(require_trained(model_dir), config)
        check_same_llm(settings.llm.path, LlmSettings.from_config(config).path, model_dir)
    else:
        settings = ExplainerConfig.from_config(config).zero_shot()
    return settings.with_generation_budget(DecodingSettings.from_config(config).max_new_tokens)


def check_same_llm(trained: Optional[str], configured: Optional[str], model_dir: Path) -> None:
    """InputError when ``llm_path`` is set to another LLM than the one the explainer was trained on (None: the
    bundled SmolLM2; an unset ``llm_path`` takes the adapter's own LLM)."""
    if configured is None:
        return
    if trained is None or Path(configured).expanduser().resolve() != Path(trained).expanduser().resolve():
        base = trained if trained is not None else f"the bundled {BUNDLED_LLM_NAME}"
        raise InputError(f"{model_dir} was trained on the LLM {base}, but llm_path is {configured}: an adapter "
                         "only fits the LLM it was trained on (leave llm_path unset to use it, or train again)")


def check_same_graph(model_dir: Optional[Path], builder) -> None:
    """InputError when a graph soft prompt meets other node vectors or another graph than it was trained on."""
    trained = (read_meta_at(model_dir) or {}).get("graph") if model_dir is not None else None
    if trained is None or builder is None or trained["fingerprint"] == builder.fingerprint():
        return
    raise InputError(f"{model_dir}'s graph soft prompt was trained on the graph and MMPSASRec vectors of "
                     f"{trained['dataset']!r}; this run's differ (another data set, or retrained vectors): train the "
                     "explainer on this run (`mmprefer train`), or use one without graph level")


def plan_generation(config, model_dir: Optional[Path], split: Optional[str], out_file: Optional[Path],
                    pairs: Optional[Sequence[Pair]], table, records, node_text, builder) -> GenerationPlan:
    """The rows, prompts, settings and output file of a generation run, and the hash of all its inputs."""
    split = split if split is not None else generation_split(config)
    settings = model_settings(config, model_dir)
    decoding = DecodingSettings.from_config(config)
    table = load_optional_table(config) if table is None else table
    run = RunInputs.load(config, settings, records, node_text, builder)
    check_same_graph(model_dir, run.builder)
    rows = select_rows(table, run.records, split, pairs)
    prompt_records = join_records(rows, run.records)
    name = f"mmprefer{'' if model_dir is not None else '-zeroshot'}-{split if pairs is None else 'pairs'}"
    out_file = Path(out_file) if out_file is not None else ARTIFACTS["generations"].file(config, name=name)
    input_hash = json_sha256({
        "pairs": rows.to_dict(orient="records"), "paths": [record.get("paths", []) for record in prompt_records],
        "node_text": run.node_text.fingerprint(),
        "graph": run.builder.fingerprint() if run.builder is not None else None,
        "settings": settings.to_config(), "llm": llm_identity(settings.llm), "decoding": decoding.to_config(),
        "adapter": file_sha256(Path(model_dir) / ADAPTER_FILE) if model_dir is not None else None})
    return GenerationPlan(rows, prompt_records, settings, decoding, run.node_text, run.builder,
                          Path(model_dir) if model_dir is not None else None, out_file,
                          split if pairs is None else None, input_hash)


def _device(rank: int, world: int) -> str:
    if not torch.cuda.is_available():
        return "cpu"
    if world > 1:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', rank)) % torch.cuda.device_count()}"
    return "cuda"


def _load_model(config, plan: GenerationPlan, device: str) -> ExplainerModel:
    feature_dim = plan.builder.feature_dim if plan.builder is not None else None
    if plan.model_dir is not None:
        return load_explainer(config, plan.model_dir, feature_dim, device)[0]
    return ExplainerModel.build(plan.settings, feature_dim, device=device).eval()


def generate_explanations(config, model_dir: Optional[Path] = None, split: Optional[str] = None,
                          out_file: Optional[Path] = None, *, pairs: Optional[Sequence[Pair]] = None,
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
    plan = plan_generation(config, model_dir, split, out_file, pairs, table, records, node_text, builder)
    if not force and is_fresh_at(plan.out_file, plan.input_hash, is_file=True):
        logger.info("Generations are up to date in %s", plan.out_file)
        return plan.out_file
    rank, world = distributed()
    started = time.perf_counter()
    model = _load_model(config, plan, _device(rank, world))
    shards = ResumableShards(plan.out_file, plan.input_hash, rank, world)
    mine = list(range(rank, len(plan.rows), world))
    try:
        _generate_shard(model, plan, mine, int(stage_setting(config, "seed")), shards, force, rank)
    except KeyboardInterrupt:
        raise Interrupted(f"generate: stopped by the user after {len(shards.completed())} of {len(mine)} pairs; "
                          f"they are kept in {shards.work_dir}: the same command without --force resumes from them "
                          f"(--force starts over)") from None
    barrier(world)
    if rank == 0:
        records = shards.gather(plan.keys, lambda record: (record["user_id"], record["item_id"]))
        _write_output(plan, records, model.soft_tokens, world, time.perf_counter() - started)
        shards.remove()
    barrier(world)
    return plan.out_file


def _write_output(plan: GenerationPlan, records: List[dict], soft_tokens: int, world: int, seconds: float) -> None:
    frame = pd.DataFrame([{field: record[field] for field in GENERATION_FIELDS} for record in records])
    extra = [{key: value for key, value in record.items() if key not in GENERATION_FIELDS} for record in records]
    write_generations(plan.out_file, frame, extra)
    write_meta(plan.out_file, plan.input_hash, {
        "model_dir": str(plan.model_dir) if plan.model_dir is not None else None,
        "zero_shot": plan.model_dir is None, "split": plan.split, "pairs": len(plan.rows),
        "decoding": plan.decoding.to_config(), "settings": plan.settings.to_config(), "world_size": world,
        "soft_tokens": soft_tokens, "seconds_this_run": round(seconds, 3)}, is_file=True)
    logger.info("Wrote %d explanations to %s", len(records), plan.out_file)


def _generate_shard(model: ExplainerModel, plan: GenerationPlan, indices: List[int], seed: int,
                    shards: ResumableShards, force: bool, rank: int) -> None:
    done = {(record["user_id"], record["item_id"]) for record in shards.completed(force)}
    todo = [n for n in indices if (plan.prompt_records[n]["user_id"], plan.prompt_records[n]["item_id"]) not in done]
    if done:
        logger.info("Resuming: %d of %d pairs already explained in %s", len(indices) - len(todo), len(indices),
                    shards.shard(rank))
    if not todo:
        return
    tokenizer = model.tokenizer
    records = [plan.prompt_records[n] for n in todo]
    data = PairData(records, plan.node_text, tokenizer, plan.settings.prompt, plan.builder)
    size = plan.decoding.generation_batch_size
    autocast = torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=plan.decoding.bf16)
    options = decoding_options(plan.decoding, plan.settings.prompt, tokenizer)
    with shards.appending() as handle, tqdm(total=len(todo), desc=f"explain (rank {rank})", unit="pair") as progress:
        for start in range(0, len(todo), size):
            chunk = list(range(start, min(start + size, len(todo))))
            batch, graphs = data.batch(chunk, int(tokenizer.pad_token_id), True, model.soft_tokens > 0)
            torch.manual_seed(seed * 1_000_003 + todo[chunk[0]])
            with autocast:
                new_tokens = model.generate(batch, graphs, **options)
            for n, tokens in zip(chunk, new_tokens):
                handle.write(dump_line(_generation_line(records[n], tokenizer.decode(tokens, skip_special_tokens=True),
                                                        data.examples[n].truncation["paths_dropped"],
                                                        plan.settings.prompt.paths)))
            handle.flush()
            progress.update(len(chunk))


def decoding_options(decoding: DecodingSettings, prompt, tokenizer) -> Dict[str, object]:
    """The keyword arguments of :meth:`ExplainerModel.generate`: the decoding settings, and under grounded
    decoding the tokens to leave unbiased: the prompt template's own words and every token without a letter."""
    options = decoding.generate_options()
    if options["copy_bias"] > 0:
        options["copy_exclude"] = sorted({*template_token_ids(prompt, tokenizer), *wordless_token_ids(tokenizer)})
    return options


def _generation_line(record: dict, text: str, paths_dropped: int, paths_shown: int) -> Dict[str, object]:
    paths = [{"types": path.get("types"), "tokens": path.get("tokens")}
             for path in (record.get("paths") or [])[:paths_shown]]
    return {"user_id": record["user_id"], "item_id": record["item_id"], "explanation": text.strip(),
            "paths": paths, "paths_in_prompt": len(paths) - paths_dropped}


def main(argv: Optional[Sequence[str]] = None) -> None:
    """``python -m recbole_mmprefer.explainer.generate CONFIG.yaml [--model_dir D] [--split S] [--out_file F]``:
    CONFIG.yaml is a RecBole config file naming the ``dataset``, read by :class:`~recbole_mmprefer.config.Config`."""
    from recbole_mmprefer.config import config_from_file

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="YAML config file (RecBole keys and this package's)")
    parser.add_argument("--model_dir", default=None, help="folder of a trained explainer or 'bundled'; omitted: "
                        "zero-shot")
    parser.add_argument("--split", default=None)
    parser.add_argument("--out_file", default=None)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    config = config_from_file(args.config)
    model_dir = resolve_explainer(args.model_dir) if args.model_dir else None
    out = generate_explanations(config, model_dir, args.split, args.out_file, force=args.force)
    if distributed()[0] == 0:
        print(out)


if __name__ == "__main__":
    main()
