"""The batch-1 decode step's share of the memory read rate, measured in turns with it, block after block.

    python scripts/bandwidth_in_turns.py [--weights fp32|bf16|int8] [--length 1024] [--blocks 12] [--rounds 60]
                                         [--preset shared] [--eager]

Default model, a preset's conversion (untrained), inside `decode_layout(for_compile=True)` and `compiled_decode`
(`--eager`: neither), a real prefill of `--length` tokens; then `--blocks` times what `liger bench` measures once per
variant (`model_bench.bandwidth_in_turns`: 4 steps, then one `sum` over 512 MiB, for `--rounds` rounds). Each line
pairs the step's speed with the read rate of the same moment, so a shared VM whose memory read rate changes from one
minute to the next shows how the step and the share follow it.
"""

from __future__ import annotations

import argparse
import time
from contextlib import ExitStack

import torch

import liger_lm
from liger_lm.benchmark.model_bench import _prefill, _token_ids, bandwidth_in_turns
from liger_lm.modeling.compiled import compiled_decode
from liger_lm.presets import DEFAULT_PRESET, PRESETS
from liger_lm.quantize import FORMATS, quantize_for_decode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="fp32", choices=FORMATS)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--blocks", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--preset", default=DEFAULT_PRESET, choices=PRESETS)
    parser.add_argument("--eager", action="store_true", help="decode without torch.compile")
    args = parser.parse_args()
    model, _ = liger_lm.load_default_model()
    model = quantize_for_decode(liger_lm.convert(model, **PRESETS[args.preset].liger), args.weights)
    cpu = torch.device("cpu")
    with torch.no_grad(), ExitStack() as stack:
        stack.enter_context(liger_lm.decode_layout(model, for_compile=not args.eager))
        if not args.eager:
            stack.enter_context(compiled_decode(model))
        cache = _prefill(model, _token_ids(model, 1, args.length))
        started = time.perf_counter()
        bandwidth_in_turns(model, cache, cpu, rounds=2, max_seconds=600)  # compiles (a first step may run eagerly)
        print(f"warm-up (compile) {time.perf_counter() - started:.0f} s", flush=True)
        for _ in range(args.blocks):
            turns = bandwidth_in_turns(model, cache, cpu, args.rounds, max_seconds=600)
            print(f"{time.strftime('%H:%M:%S')} {args.weights}: {turns['tokens_per_s']:.2f} tok/s, weights read at "
                  f"{turns['weight_read_gb_s']:.2f} GB/s, memory read {turns['memory_read_gb_s']:.2f} GB/s, "
                  f"share {turns['fraction']:.3f}", flush=True)


if __name__ == "__main__":
    main()
