"""What RecBole's anomaly mode cost: training steps with autograd anomaly detection on (as RecBole 1.2.1's
sine.py left every process that built a Config) and off (as recbole_mmprefer.registry now keeps it).

    python run_scripts/bench_anomaly_mode.py [--rounds 3] [--steps 3] [--out results/bench_anomaly_mode.md]

Two training steps are timed, the modes alternating in one process (a busy
machine slows both alike), after one warm-up step each:

* MMPSASRec on ml-100k with run_scripts/configs/cpu_small.yaml (the README's
  main job): forward, InfoNCE over all items, backward, Adam, on the first
  RecBole training batches;
* the bundled SmolLM2-135M-Instruct with fresh LoRA (r 8 on q_proj, v_proj),
  bf16 autocast where the CPU has it: 4 sequences of 400 tokens, the loss on the
  last 60 (the explainer's shape, results/bench_explainer.md).

The table gives the median seconds per step in each mode and their ratio.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

HERE = Path(__file__).resolve().parent


def mmpsasrec_step() -> Callable[[], None]:
    """One MMPSASRec training step on ml-100k's first batches, in turn."""
    import torch
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    from recbole_mmprefer.config import Config
    from recbole_mmprefer.quick_start import prepare_item_inputs
    from recbole_mmprefer.registry import get_model

    sys.argv = [sys.argv[0]]
    config = Config(model="MMPSASRec", dataset="ml-100k",
                    config_file_list=[str(HERE / "configs" / "cpu_small.yaml")])
    prepare_item_inputs(config)
    init_seed(config["seed"], config["reproducibility"])
    train, _, _ = data_preparation(config, create_dataset(config))
    model = get_model("MMPSASRec")(config, train.dataset)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = itertools.cycle([batch for _, batch in zip(range(4), train)])

    def step() -> None:
        optimizer.zero_grad()
        model.calculate_loss(next(batches)).backward()
        optimizer.step()

    return step


def llm_step() -> Callable[[], None]:
    """One LoRA step of the bundled LLM on 4 x 400 tokens, the loss on the last 60."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from recbole_mmprefer.explainer.settings import check_bf16
    from recbole_mmprefer.llm import default_llm_path

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(default_llm_path()),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], lora_dropout=0.05))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(100, 40000, (4, 400))
    labels = ids.clone()
    labels[:, :340] = -100
    bf16 = check_bf16("auto")

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    return step


def timed(step: Callable[[], None], anomaly: bool, steps: int) -> float:
    import torch

    torch.autograd.set_detect_anomaly(anomaly)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    torch.autograd.set_detect_anomaly(False)
    return (time.perf_counter() - started) / steps


def measure(step: Callable[[], None], rounds: int, steps: int) -> Dict[bool, List[float]]:
    seconds: Dict[bool, List[float]] = {True: [], False: []}
    for anomaly in (True, False):
        timed(step, anomaly, 1)  # warm-up
    for _ in range(rounds):
        for anomaly in (True, False):
            seconds[anomaly].append(timed(step, anomaly, steps))
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", default=str(HERE.parent / "results" / "bench_anomaly_mode.md"))
    args = parser.parse_args()

    import torch

    rows = []
    for name, build in (("MMPSASRec step, ml-100k, cpu_small.yaml", mmpsasrec_step),
                        ("SmolLM2-135M LoRA step, 4 x 400 tokens", llm_step)):
        seconds = measure(build(), args.rounds, args.steps)
        on, off = statistics.median(seconds[True]), statistics.median(seconds[False])
        rows.append(f"| {name} | {on:.3f} | {off:.3f} | {on / off:.2f}x |")
        print(rows[-1], {mode: [round(s, 3) for s in values] for mode, values in seconds.items()}, flush=True)
    text = (f"# Training steps with and without autograd anomaly detection ({platform.machine()}, "
            f"{torch.get_num_threads()} threads, torch {torch.__version__})\n\n"
            "RecBole 1.2.1's `sequential_recommender/sine.py` switches anomaly detection on when it is imported, "
            "which every Config for a sequential model does; `recbole_mmprefer.registry` now imports RecBole's "
            "models with the process's setting kept (off).\n\n"
            "| step | s/step, anomaly on | s/step, off | on / off |\n|---|---|---|---|\n" + "\n".join(rows)
            + f"\n\nMedians over {args.rounds} alternating rounds of {args.steps} steps after one warm-up step "
            f"per mode.\n\nCommand: `python run_scripts/bench_anomaly_mode.py {' '.join(sys.argv[1:])}`\n")
    Path(args.out).write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
