"""Training throughput of the recovery fine-tune's stages on the default model (whole optimizer steps, timed).

    python scripts/train_step_speed.py [--steps 3] [--seq-len 1024] [--threads N] [--preset shared] [--profile]

`liger_lm.benchmark.training_speed` (the protocol is its docstring): the default model converted with a preset,
its LoRA adapter, one row of `--seq-len` random tokens per step. `--profile` prints torch.profiler's top operators
of one more run of the whole measurement.
"""

from __future__ import annotations

import argparse
import json

import torch

import liger_lm
from liger_lm.benchmark.training_speed import training_step_speed
from liger_lm.presets import DEFAULT_PRESET, PRESETS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(PRESETS))
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base, _ = liger_lm.load_default_model()

    def measure(steps: int) -> dict:
        return training_step_speed(base, PRESETS[args.preset], torch.device("cpu"), seq_len=args.seq_len,
                                   steps=steps, log=print)

    print(f"{args.threads} threads, preset {args.preset}")
    print(json.dumps(measure(args.steps)))
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            measure(1)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
