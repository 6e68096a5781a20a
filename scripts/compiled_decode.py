"""Batch-1 decode speed, eager against `compiled_decode` (inductor): the base model and a preset's conversion.

    python scripts/compiled_decode.py [--lengths 1024,16384] [--steps 24] [--weights int8] [--preset paper]
                                      [--separate]

Default model, fp32 (`--weights`: the converted model's linear layers int8 or bf16, `quantize_for_decode`; the base
model stays fp32), untrained conversion, inside `decode_layout` (`--separate`: the converted model also a second time
with q/k/v and gate/up read separately, `decode_layout(fuse=False)`, eager and compiled). Per context length: the base
model continues a real prefill at the shortest length and a cache of random keys/values beyond it (a step's cost
depends only on the cache length, as in `liger bench`); the Liger model continues a real prefill of that length. First
each model's compiled copy takes one step from a copy of the eager model's cache: its compile time and the largest
logit difference from the eager step are printed. Then the models (four, six with `--separate`) take turns, one greedy
step each per round (`interleaved_medians`), for ratios measured in one run.
"""

from __future__ import annotations

import argparse
import copy
import time
from contextlib import ExitStack

import torch

import liger_lm
from liger_lm.benchmark.measure import interleaved_medians
from liger_lm.benchmark.model_bench import _greedy_step, _prefill, _token_ids, random_kv_cache
from liger_lm.compat import with_cache
from liger_lm.modeling.compiled import compiled_decode
from liger_lm.presets import DEFAULT_PRESET, PRESETS
from liger_lm.quantize import FORMATS, quantize_for_decode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="1024,16384")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--weights", default="fp32", choices=FORMATS)
    parser.add_argument("--preset", default=DEFAULT_PRESET, choices=PRESETS)
    parser.add_argument("--separate", action="store_true", help="also the converted model with unfused projections")
    args = parser.parse_args()
    lengths = [int(n) for n in args.lengths.split(",")]
    base, _ = liger_lm.load_default_model()
    liger = quantize_for_decode(liger_lm.convert(copy.deepcopy(base), **PRESETS[args.preset].liger), args.weights)
    eager = {"base": base, args.preset: liger}
    if args.separate:
        eager[f"{args.preset}, separate"] = copy.deepcopy(liger)
    compiled = {name: copy.deepcopy(model) for name, model in eager.items()}
    cpu = torch.device("cpu")
    with torch.no_grad(), ExitStack() as stack:
        for name, model in (*eager.items(), *compiled.items()):
            stack.enter_context(liger_lm.decode_layout(model, fuse=not name.endswith("separate"),
                                                       for_compile=model in compiled.values()))
        for model in compiled.values():
            stack.enter_context(compiled_decode(model))
        for length in lengths:
            caches = {name: context_cache(model, length, lengths[0]) for name, model in eager.items()}
            steps = {}
            for name, model in eager.items():
                steps[name] = _greedy_step(model, caches[name], _token_ids(model, 1, 1))
                compiled_cache = copy.deepcopy(caches[name])
                check_compiled_step(name, model, compiled[name], caches[name], compiled_cache, length)
                steps[f"{name}, compiled"] = _greedy_step(compiled[name], compiled_cache, _token_ids(model, 1, 1))
            rates = {name: 1 / timing["median_s"]
                     for name, timing in interleaved_medians(steps, cpu, args.steps, 600).items()}
            for name, rate in rates.items():
                print(f"context {length}: {name}: {rate:.2f} tok/s ({rate / rates['base']:.2f}× base eager, "
                      f"{rate / rates['base, compiled']:.2f}× base compiled)", flush=True)


def context_cache(model, length: int, prefilled: int):
    """A cache `length` tokens long: a real prefill for Liger and up to `prefilled` tokens, else random keys."""
    if liger_lm.is_converted(model) or length <= prefilled:
        return _prefill(model, _token_ids(model, 1, length))
    return random_kv_cache(model, 1, length)


def check_compiled_step(name: str, eager, compiled, eager_cache, compiled_cache, length: int) -> None:
    """One step of each from equal caches (the compiled copy's first, compiling, at the first length)."""
    token = torch.tensor([[5]])
    reference = eager(token, **with_cache(copy.deepcopy(eager_cache)), use_cache=True).logits
    started = time.perf_counter()
    logits = compiled(token, **with_cache(compiled_cache), use_cache=True).logits
    print(f"context {length}: {name}: compiled step in {time.perf_counter() - started:.1f} s, "
          f"max |Δ logit| vs eager {(logits - reference).abs().max().item():.1e}", flush=True)


if __name__ == "__main__":
    main()
