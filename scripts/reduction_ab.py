"""A compiled batch-1 decode step with and without the single-row reduction (`quantize.reduction_linear`), A/B/A.

    python scripts/reduction_ab.py [--weights fp32|bf16|int8] [--length 1024] [--steps 8] [--rounds 5]

Default model, default preset (untrained), inside `decode_layout(for_compile=True)` and `compiled_decode`, a real
prefill of `--length` tokens, then timed single-token steps: first with every weight product left to its extern
kernel (MKL's mat-vec for fp32, `torch.mv` for bf16, `_weight_int8pack_mm` for int8; the route before 4 December),
then through the reduction, then the extern kernels again, each after its own compile, in one process. Prints the
ms per token of each round (`--rounds` of `--steps` steps), sorted, and the medians' ratio.
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import DynamicCache

import liger_lm
from liger_lm import quantize
from liger_lm.compat import with_cache
from liger_lm.modeling.compiled import compiled_decode
from liger_lm.presets import DEFAULT_PRESET, PRESETS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="fp32", choices=quantize.FORMATS)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    model, _ = liger_lm.load_default_model()
    model = quantize.quantize_for_decode(liger_lm.convert(model, **PRESETS[DEFAULT_PRESET].liger), args.weights)
    results = {}
    for name in ("extern", "reduction", "extern again"):
        results[name] = step_times(model, name == "reduction", args)
        print(f"{args.weights} {name}: ms per token {[round(1e3 * t, 1) for t in results[name]]}", flush=True)
    median = {name: times[len(times) // 2] for name, times in results.items()}
    print(f"reduction vs extern: {median['extern'] / median['reduction']:.2f}× and "
          f"{median['extern again'] / median['reduction']:.2f}× faster (medians)")


def step_times(model, reduction: bool, args) -> list[float]:
    """Sorted seconds per step of `rounds` rounds, after a compile with or without the reduction route."""
    route = quantize.single_row_reduction
    if not reduction:  # the module-level name the linear forwards look up
        quantize.single_row_reduction = lambda x, weight: False
    torch._dynamo.reset()
    step = torch.tensor([[5]])
    try:
        with torch.no_grad(), liger_lm.decode_layout(model, for_compile=True), compiled_decode(model):
            cache = DynamicCache(config=model.config)
            prompt = torch.randint(3, 40000, (1, args.length), generator=torch.Generator().manual_seed(0))
            model(prompt, **with_cache(cache), use_cache=True)
            for _ in range(3):  # the cache becomes steady; the first compiled step compiles
                model(step, **with_cache(cache), use_cache=True)
            times = []
            for _ in range(args.rounds):
                started = time.perf_counter()
                for _ in range(args.steps):
                    model(step, **with_cache(cache), use_cache=True)
                times.append((time.perf_counter() - started) / args.steps)
    finally:
        quantize.single_row_reduction = route
    return sorted(times)


if __name__ == "__main__":
    main()
