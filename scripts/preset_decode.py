"""Batch-1 decode speed of the base model and of each preset's conversion at 1K context (fp32, untrained weights).

    python scripts/preset_decode.py [--context 1024]

One prefill of `--context` random tokens, then 24 single-token greedy steps inside `decode_layout`; the rate is the
median of the last 20 steps. The models run one after another in the same process (for ratios, not absolutes).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from transformers import DynamicCache

import liger_lm
from liger_lm.compat import with_cache
from liger_lm.presets import PRESETS


@torch.no_grad()
def decode_rate(model, ids: torch.Tensor, steps: int = 24, warmup: int = 4) -> float:
    """Tokens per second of single-token greedy steps after a prefill of `ids` [1, T]."""
    with liger_lm.decode_layout(model):
        cache = DynamicCache(config=model.config)
        token = model(ids, **with_cache(cache), use_cache=True, logits_to_keep=1).logits[:, -1:].argmax(-1)
        times = []
        for _ in range(steps):
            started = time.perf_counter()
            token = model(token, **with_cache(cache), use_cache=True).logits[:, -1:].argmax(-1)
            times.append(time.perf_counter() - started)
    return 1 / statistics.median(times[warmup:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context", type=int, default=1024)
    args = parser.parse_args()
    base, _ = liger_lm.load_default_model()
    ids = torch.randint(3, base.config.vocab_size, (1, args.context), generator=torch.Generator().manual_seed(0))
    models = {"base": base, **{name: liger_lm.convert(copy.deepcopy(base), **preset.liger)
                               for name, preset in PRESETS.items()}}
    for name, model in models.items():
        print(f"{name}: {decode_rate(model, ids):.1f} tok/s at {args.context} tokens of context", flush=True)


if __name__ == "__main__":
    main()
