"""What `compiled_decode`'s default options (`STEP_OPTIONS`) save per decode step: one process, interleaved rounds.

    python scripts/step_overhead.py [--weights fp32|bf16|int8] [--length 1024] [--steps 8] [--rounds 30] [--cpp-wrapper]

Default model, default preset (untrained), inside `decode_layout(for_compile=True)`, a real prefill of `--length`
tokens, then the same steady single-token step compiled four times (`torch.compile(dynamic=True)`, each its own
code object, so each keeps its own graph and guards): with inductor's defaults, without the generated wrapper's size
asserts, with `STEP_OPTIONS` but inductor's reordering for locality back on (which keeps the ring buffer's write from
being done in place), and with `STEP_OPTIONS` (no size asserts, no guards on the modules, no reordering for
locality); `--cpp-wrapper` adds a fifth, `STEP_OPTIONS` with inductor's C++ wrapper (the kernels built separately).
The variants take turns, `--steps` steps each, for `--rounds` rounds; prints each one's median ms per token with its
quartiles.
"""

from __future__ import annotations

import argparse
import statistics
import time
import types

import torch
from transformers import DynamicCache

import liger_lm
from liger_lm import quantize
from liger_lm.compat import with_cache
from liger_lm.modeling.compiled import STEP_OPTIONS, _contiguous_cache, compiled_decode
from liger_lm.presets import DEFAULT_PRESET, PRESETS

VARIANTS = {"inductor defaults": {}, "no size asserts": {"size_asserts": False},
            "STEP_OPTIONS, reordering for locality": {**STEP_OPTIONS, "reorder_for_locality": True},
            "STEP_OPTIONS": STEP_OPTIONS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="int8", choices=quantize.FORMATS)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--cpp-wrapper", action="store_true",
                        help="also STEP_OPTIONS with the kernels launched from C++ (a longer compile)")
    args = parser.parse_args()
    variants = dict(VARIANTS)
    if args.cpp_wrapper:
        variants["STEP_OPTIONS + cpp_wrapper"] = {**STEP_OPTIONS, "cpp_wrapper": True,
                                                  "cpp_wrapper_build_separate": True}
    model, _ = liger_lm.load_default_model()
    model = quantize.quantize_for_decode(liger_lm.convert(model, **PRESETS[DEFAULT_PRESET].liger), args.weights)
    step = torch.tensor([[5]])
    # compiled_decode only for the linear layers' reduction route; the variants compile the forward themselves
    with torch.no_grad(), liger_lm.decode_layout(model, for_compile=True), compiled_decode(model):
        forward = type(model).forward.__get__(model)
        cache = DynamicCache(config=model.config)
        prompt = torch.randint(3, 40000, (1, args.length), generator=torch.Generator().manual_seed(0))
        forward(prompt, **with_cache(cache), use_cache=True)
        for _ in range(3):  # the window buffer fills past the prompt's last token: the cache is steady
            forward(step, **with_cache(cache), use_cache=True)
        _contiguous_cache(cache)  # the layout compiled steps keep (what compiled_decode's forward does first)
        arguments = dict(**with_cache(cache), use_cache=True, attention_mask=None)
        steps = {}
        for index, (name, options) in enumerate(variants.items()):
            def call(*args, **kwargs):
                return forward(*args, **kwargs)
            # dynamo keeps compiled graphs per code object: a copy of the code keeps this variant's apart
            call = types.FunctionType(call.__code__.replace(co_name=f"variant_{index}"), call.__globals__,
                                      closure=call.__closure__)
            steps[name] = torch.compile(call, dynamic=True, options=dict(options))
            started = time.perf_counter()
            steps[name](step, **arguments)
            print(f"{name}: compiled in {time.perf_counter() - started:.0f} s", flush=True)
        times = {name: [] for name in steps}
        for _ in range(args.rounds):
            for name, compiled in steps.items():
                started = time.perf_counter()
                for _ in range(args.steps):
                    compiled(step, **arguments)
                times[name].append(1e3 * (time.perf_counter() - started) / args.steps)
    for name, values in times.items():
        low, median, high = statistics.quantiles(values, n=4)
        print(f"{args.weights} {name}: {median:.2f} ms per token (quartiles {low:.2f}–{high:.2f})")


if __name__ == "__main__":
    main()
