"""Where a Liger decode step spends its time (README, Speed and memory): ms per token and the top ops.

Usage: python scripts/profile_decode.py [--lengths 1024,8192] [--steps 10] [--preset shared] [--weights int8]
                                        [--compile [--inductor-options '{"cpp.enable_kernel_profile": true}']]
                                        [--no-fuse]
Default model converted with a preset's settings (the default preset unless `--preset`), batch 1, fp32 activations
(`--weights`: the linear layers' format, `quantize_for_decode`), inside `liger_lm.decode_layout` (as `liger generate`
and `liger bench` decode; `--no-fuse`: with q/k/v and gate/up read separately); each length is a real prefill, then
timed single-token steps; the torch.profiler table is for 3 steps at the last length. Last, the operators one
attention layer dispatches in a decode step (counted with a `TorchDispatchMode`: the same on every machine).
`--compile` runs the steps through `compiled_decode` instead (the first warm-up step compiles; `--inductor-options` go
to torch.compile, the option above names each generated kernel in the profile) and skips the operator count, which is
the eager step's.
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import nullcontext

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import DynamicCache

import liger_lm
from liger_lm.compat import with_cache
from liger_lm.modeling.compiled import compiled_decode
from liger_lm.presets import DEFAULT_PRESET, PRESETS
from liger_lm.quantize import FORMATS, quantize_for_decode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="1024,8192")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(PRESETS))
    parser.add_argument("--rows", type=int, default=12, help="operators in the profile table")
    parser.add_argument("--weights", default="fp32", choices=FORMATS)
    parser.add_argument("--compile", action="store_true", help="steps through liger_lm.compiled_decode")
    parser.add_argument("--inductor-options", type=json.loads, default=None, help="JSON, with --compile")
    parser.add_argument("--no-fuse", dest="fuse", action="store_false", help="decode_layout(fuse=False)")
    args = parser.parse_args()
    model, _ = liger_lm.load_default_model()
    model = quantize_for_decode(liger_lm.convert(model, **PRESETS[args.preset].liger), args.weights)
    compiled = compiled_decode(model, options=args.inductor_options) if args.compile else nullcontext()
    with torch.no_grad(), liger_lm.decode_layout(model, fuse=args.fuse, for_compile=args.compile), compiled:
        profile_decode(model, [int(n) for n in args.lengths.split(",")], args.steps, args.rows,
                       count_operators=not args.compile)


def profile_decode(model, lengths: list[int], steps: int, rows: int, count_operators: bool = True) -> None:
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    step = torch.tensor([[5]])
    for length in lengths:
        cache = DynamicCache(config=model.config)
        model(torch.randint(3, 40000, (1, length), generator=torch.Generator().manual_seed(0)),
              **with_cache(cache), use_cache=True)
        for _ in range(3):
            model(step, **with_cache(cache), use_cache=True)
        started = time.perf_counter()
        for _ in range(steps):
            model(step, **with_cache(cache), use_cache=True)
        seconds = (time.perf_counter() - started) / steps
        print(f"context {length}: {1e3 * seconds:.1f} ms/token, {1 / seconds:.2f} tok/s, "
              f"weights read at {weight_bytes / seconds / 1e9:.2f} GB/s")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            model(step, **with_cache(cache), use_cache=True)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))
    if count_operators:
        print(f"operators dispatched by one attention layer in a decode step: {layer_operators(model, cache, step)}")


class _OperatorCount(TorchDispatchMode):
    """Counts the aten operators dispatched while `counting` is on."""

    def __init__(self) -> None:
        super().__init__()
        self.counting, self.count = False, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += self.counting
        return func(*args, **(kwargs or {}))


def layer_operators(model, cache, step) -> int:
    """Operators dispatched inside the middle layer's attention module during one decode step."""
    attention = model.model.layers[len(model.model.layers) // 2].self_attn
    counter = _OperatorCount()
    hooks = [attention.register_forward_pre_hook(lambda *_: setattr(counter, "counting", True)),
             attention.register_forward_hook(lambda *_: setattr(counter, "counting", False))]
    try:
        with counter:
            model(step, **with_cache(cache), use_cache=True)
    finally:
        for hook in hooks:
            hook.remove()
    return counter.count


if __name__ == "__main__":
    main()
