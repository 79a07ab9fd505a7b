"""Explainer speed on CPU or GPU: generation tokens/s batched against one by one, training s/step, peak memory.

    python run_scripts/bench_explainer.py --dataset xrec-amazon --data_path dataset \
        [--pairs 16] [--batch_size 8] [--new_tokens 48] [--rounds 2] [--train_steps 6] \
        [--out results/bench_explainer.md] [--key=value ...]

Needs the data set's explanation table, paths (`mmprefer paths`) and recommender
vectors (`run_recbole --model=MMPSASRec`); the LLM is the configured one
(default: the bundled SmolLM2-135M-Instruct). The explainer is the full model
(LoRA + graph soft prompt) with its untrained initial weights: speed does not
depend on the weights.

Generation: the first ``--pairs`` test pairs, every explanation forced to
exactly ``--new_tokens`` tokens (min = max) so that both ways write the same
tokens, greedy with the configured n-gram rule. Batched (``--batch_size``,
left padding, KV cache) and one-by-one runs in float32, and batched runs under
bfloat16 autocast (``explainer_bf16``), alternate for ``--rounds`` rounds in
this one process; the table gives the medians and their ratios.
Training: ``--train_steps`` optimizer steps of ``explainer_batch_size`` train
pairs (forward, backward, AdamW) in float32 and as many under bfloat16
autocast, alternating, the first of each left out as warm-up. Peak
memory is the process's peak resident set size after each phase (it only
grows, so the training figure includes generation's), and the CUDA peak on a GPU.
Padding: over the first ``--padding_pairs`` train pairs (0: all), the tokens an
epoch's batches hold with padding, batched in shuffled order against batched
by length within buckets (``explainer_bucket_batches``), as training does.
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def autocast(enabled: bool):
    import torch

    return torch.autocast("cuda" if torch.cuda.is_available() else "cpu", dtype=torch.bfloat16, enabled=enabled)


def timed_generation(model, data, indices, batch_size: int, new_tokens: int, no_repeat: int,
                     bf16: bool = False) -> tuple:
    """(seconds, new tokens written) for ``indices`` in batches of ``batch_size``."""
    import torch

    pad_id = int(model.tokenizer.pad_token_id)
    written = 0
    started = time.perf_counter()
    with torch.no_grad(), autocast(bf16):
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            batch, graphs = data.batch(chunk, pad_id, True, model.soft_tokens > 0)
            rows = model.generate(batch, graphs, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                  no_repeat_ngram_size=no_repeat)
            written += sum(len(row) for row in rows)
    return time.perf_counter() - started, written


def training_steps(model, data, batch_size: int, steps: int, learning_rate: float) -> dict:
    """Seconds of each optimizer step, float32 and bf16 alternating, over consecutive batches of train pairs."""
    import torch

    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate)
    pad_id = int(model.tokenizer.pad_token_id)
    model.train()
    seconds = {"float32": [], "bf16": []}
    for step in range(2 * steps):
        precision = "bf16" if step % 2 else "float32"
        indices = [(step // 2 * batch_size + n) % len(data) for n in range(batch_size)]
        started = time.perf_counter()
        batch, graphs = data.batch(indices, pad_id, False, model.soft_tokens > 0)
        with autocast(precision == "bf16"):
            loss = model(batch, graphs)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        seconds[precision].append(time.perf_counter() - started)
    model.eval()
    return {precision: values[1:] for precision, values in seconds.items()}


def epoch_padding(table, records, node_text, tokenizer, settings, batch_size: int, pairs: int, buckets: int,
                  seed: int) -> dict:
    """Tokens of one epoch's training batches, padded, in shuffled order and in length buckets."""
    import numpy as np

    from recbole_mmprefer.explainer.pair_data import PairData, join_records
    from recbole_mmprefer.explainer.train import EpochBatches

    rows = table[table["split"] == "train"].reset_index(drop=True)
    rows = rows.head(pairs) if pairs > 0 else rows
    data = PairData(join_records(rows, records), node_text, tokenizer, settings, None, list(rows["explanation"]))
    lengths = np.array([len(example) for example in data.examples])

    def padded(bucket_batches: int) -> int:
        sampler = EpochBatches(lengths, batch_size, seed, bucket_batches)
        sampler.set_epoch(1)
        return int(sum(lengths[batch].max() * len(batch) for batch in sampler))

    return {"pairs": len(rows), "real": int(lengths.sum()), "shuffled": padded(0), "bucketed": padded(buckets)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="xrec-amazon")
    parser.add_argument("--data_path", default="dataset")
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--new_tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--train_steps", type=int, default=6)
    parser.add_argument("--padding_pairs", type=int, default=0, help="train pairs of the padding measure; 0: all")
    parser.add_argument("--out", default=str(HERE.parent / "results" / "bench_explainer.md"))
    args, overrides = parser.parse_known_args()
    command = "python run_scripts/bench_explainer.py " + " ".join(sys.argv[1:])

    import torch

    from recbole_mmprefer.config import Config
    from recbole_mmprefer.data.node_text import NodeText
    from recbole_mmprefer.explainer.model import ExplainerModel
    from recbole_mmprefer.explainer.pair_data import PairData, join_records, load_path_records, load_table
    from recbole_mmprefer.explainer.path_graphs import PathSubgraphBuilder
    from recbole_mmprefer.explainer.settings import PromptSettings

    sys.argv = [sys.argv[0], *overrides]  # RecBole's Config reads --key=value from argv
    config = Config(model="MMPSASRec", dataset=args.dataset, config_dict={"data_path": args.data_path})
    torch.manual_seed(0)
    table, records = load_table(config), load_path_records(config)
    node_text, builder = NodeText.from_config(config), PathSubgraphBuilder.from_config(config)
    model = ExplainerModel.from_config(config, builder.feature_dim).eval()
    settings = PromptSettings.from_config(config)
    no_repeat = int(config["explainer_no_repeat_ngram_size"])

    test_rows = table[table["split"] == "test"].head(args.pairs).reset_index(drop=True)
    test_data = PairData(join_records(test_rows, records), node_text, model.tokenizer, settings, builder)
    prompt_tokens = statistics.mean(len(example.input_ids) for example in test_data.examples)
    indices = list(range(len(test_data)))
    timed_generation(model, test_data, indices[:1], 1, 4, no_repeat)  # warm-up
    batched, single, batched_bf16 = [], [], []
    for _ in range(args.rounds):
        for rates, size, bf16 in ((batched, args.batch_size, False), (single, 1, False),
                                  (batched_bf16, args.batch_size, True)):
            seconds, tokens = timed_generation(model, test_data, indices, size, args.new_tokens, no_repeat, bf16)
            rates.append(tokens / seconds)
    generation_rss = peak_rss_mib()

    batch_size = int(config["explainer_batch_size"])
    train_rows = table[table["split"] == "train"].head(batch_size * args.train_steps).reset_index(drop=True)
    train_data = PairData(join_records(train_rows, records), node_text, model.tokenizer, settings, builder,
                          list(train_rows["explanation"]))
    train_tokens = statistics.mean(len(example.input_ids) for example in train_data.examples)
    step_seconds = training_steps(model, train_data, batch_size, args.train_steps,
                                  float(config["explainer_learning_rate"]))
    training_rss = peak_rss_mib()
    padding = epoch_padding(table, records, node_text, model.tokenizer, settings, batch_size, args.padding_pairs,
                            int(config["explainer_bucket_batches"]), int(config["seed"]))

    batched_rate, single_rate = statistics.median(batched), statistics.median(single)
    bf16_rate = statistics.median(batched_bf16)
    step_fp32, step_bf16 = (statistics.median(step_seconds[key]) for key in ("float32", "bf16"))
    device = f"CUDA {torch.cuda.get_device_name()}" if torch.cuda.is_available() else \
        f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    lines = [
        f"# Explainer speed on {args.dataset} ({device})", "",
        f"LLM: `{config['llm_path'] or 'bundled SmolLM2-135M-Instruct'}`, {model.soft_tokens} soft prompt tokens, "
        f"LoRA r={config['explainer_lora_r']} on {config['explainer_lora_targets']}, torch {torch.__version__}.", "",
        "| measure | value |", "|---|---|",
        f"| generation, batched ({args.batch_size} per call) | {batched_rate:.1f} tokens/s |",
        f"| generation, one by one | {single_rate:.1f} tokens/s |",
        f"| batched / one by one | {batched_rate / single_rate:.2f}x |",
        f"| generation, batched, bf16 autocast | {bf16_rate:.1f} tokens/s ({bf16_rate / batched_rate:.2f}x "
        "float32) |",
        f"| training, s/step ({batch_size} pairs, forward + backward + AdamW), float32 | {step_fp32:.2f} s |",
        f"| training, s/step, bf16 autocast | {step_bf16:.2f} s ({step_fp32 / step_bf16:.2f}x faster) |",
        f"| training tokens per epoch with padding, shuffled batches | {padding['shuffled']:,} |",
        f"| training tokens per epoch with padding, length buckets | {padding['bucketed']:,} "
        f"({padding['shuffled'] / padding['bucketed']:.2f}x fewer; {padding['real']:,} without padding) |",
        f"| peak RSS after generation | {generation_rss:.0f} MiB |",
        f"| peak RSS after training | {training_rss:.0f} MiB |",
    ]
    if torch.cuda.is_available():
        lines.append(f"| CUDA peak allocated | {torch.cuda.max_memory_allocated() / 2 ** 20:.0f} MiB |")
    lines += [
        "", f"Generation: {len(indices)} test pairs, {args.new_tokens} new tokens each (forced), prompts of "
        f"{prompt_tokens:.0f} tokens on average; {args.rounds} alternating rounds, per-round tokens/s batched "
        f"{[round(rate, 1) for rate in batched]}, one by one {[round(rate, 1) for rate in single]}, batched bf16 "
        f"{[round(rate, 1) for rate in batched_bf16]}. Training: examples of {train_tokens:.0f} tokens on average, "
        f"medians of {len(step_seconds['float32'])} steps per precision after one warm-up step each. Padding: "
        f"{padding['pairs']} train pairs in batches of {batch_size}.", "",
        f"Command: `{command.strip()}`", ""]
    report = "\n".join(lines)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report, encoding="utf-8")
    print(report)


if __name__ == "__main__":
    main()
