"""ExplainRec training speed on CPU: the shared-prompt layout against whole sequences, with and without checkpointing.

    python run_scripts/bench_preference.py [--dataset ml-100k] [--batch_size 4] [--steps 2] [--rounds 2] \
        [--out results/bench_preference.md] [--key=value ...]

Under attribution every training sample is seen under its true and its flipped
answer. Whole sequences (``collate_explainrec``) run the prompt twice; the
shared-prompt layout (``collate_shared_prompt``) runs it once and extends its
key/value cache by both answers, which needs gradient checkpointing off.
The layouts alternate in one process (a busy machine slows them alike):
``--steps`` optimizer steps (forward, backward, AdamW) of the same first
``--batch_size`` train samples each, ``--rounds`` times, after one warm-up
step, under the configured bf16 setting; the table gives the median seconds per
step, tokens per step and the ratios to whole sequences with checkpointing. The LLM is the configured one (default:
the bundled SmolLM2-135M-Instruct) with fresh LoRA weights; fusion is off
(``explainrec_multimodal: False``: the same in every layout, and no feature
store needed).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

LAYOUTS = {"whole, checkpointing": ("whole", True), "whole": ("whole", False), "shared prompt": ("shared", False)}


def load(args, overrides):
    """The configured LLM as ExplainRec (fresh LoRA, fusion off) and the first ``--batch_size`` train samples'
    (true, flipped) sequences."""
    from recbole_mmprefer.config import Config
    from recbole_mmprefer.data.preferences import WINDOWS, read_preferences
    from recbole_mmprefer.preference.settings import PreferenceModelConfig, PreferenceTrainingSettings
    from recbole_mmprefer.preference.train import build_preference_model, prompt_samples

    sys.argv = [sys.argv[0], *overrides]
    config = Config(model="MMPSASRec", dataset=args.dataset, config_dict={
        "preference_system": "explainrec", "explainrec_multimodal": False})
    settings = PreferenceModelConfig.from_config(config)
    samples = [s for s in prompt_samples(config, settings, WINDOWS, read_preferences(config, WINDOWS))
               if s["split"] == "train"][:args.batch_size]
    model = build_preference_model(settings, config)
    model.train()
    examples = [example for sample in samples for example in model.examples(sample, with_answers=True)]
    return model, examples, PreferenceTrainingSettings.from_config(config).bf16


def step_seconds(model, examples, layout: str, checkpointing: bool, bf16: bool, optimizer) -> tuple:
    """One optimizer step (forward, backward, AdamW) in ``layout``: (seconds, tokens in the batch)."""
    import torch

    from recbole_mmprefer.preference.explainrec import collate_explainrec, collate_shared_prompt

    if checkpointing:
        model.causal_lm().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    batch = (collate_shared_prompt if layout == "shared" else collate_explainrec)(
        examples, int(model.tokenizer.pad_token_id))
    tokens = int(batch["attention_mask"].sum()) + int(batch["continuation_mask"].sum() if layout == "shared" else 0)
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss, _ = model.training_loss(batch)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    seconds = time.perf_counter() - start
    if checkpointing:
        model.causal_lm().gradient_checkpointing_disable()
    return seconds, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default="results/bench_preference.md")
    args, overrides = parser.parse_known_args()
    import torch

    command = "python run_scripts/bench_preference.py " + " ".join(sys.argv[1:])
    model, examples, bf16 = load(args, overrides)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    step_seconds(model, examples, "whole", False, bf16, optimizer)  # warm-up
    seconds = {name: [] for name in LAYOUTS}
    tokens = {}
    for _ in range(args.rounds):
        for name, (layout, checkpointing) in LAYOUTS.items():
            seconds[name].append(0.0)
            for _ in range(args.steps):
                taken, tokens[name] = step_seconds(model, examples, layout, checkpointing, bf16, optimizer)
                seconds[name][-1] += taken / args.steps
            print(name, f"{seconds[name][-1]:.1f} s/step", flush=True)
    base = statistics.median(seconds["whole, checkpointing"])
    lines = ["# ExplainRec training speed: shared prompt against whole sequences", "",
             f"{args.batch_size} ml-100k train samples per step (each under its true and flipped answer), "
             f"bf16 {bf16}, {platform.machine()}, {torch.get_num_threads()} threads; the layouts alternate in one "
             f"process, {args.rounds} rounds x {args.steps} steps each after a warm-up step (median over rounds).", "",
             "| layout | s/step | tokens/step | speed-up vs whole + checkpointing |", "|---|---|---|---|"]
    for name in LAYOUTS:
        median = statistics.median(seconds[name])
        lines.append(f"| {name} | {median:.1f} | {tokens[name]} | {base / median:.2f}x |")
    lines += ["", f"Command: `{command}`", ""]
    Path(args.out).write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
