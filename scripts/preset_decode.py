"""Batch-1 decode speed of the base model and of each preset's conversion at 1K context (fp32, untrained weights).

    python scripts/preset_decode.py [--context 1024]

One prefill of `--context` random tokens per model, then 24 single-token greedy steps inside `decode_layout`, the
models taking turns step by step in one process (for ratios, not absolutes); the rate is the median of the last 20.
The default preset runs twice: as `liger generate` runs it, and with its fused steady decode step turned off
(`shared_decode_step`; "general decode path"), which measures what that step saves.
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
from liger_lm.modeling.mixer import LigerAttention
from liger_lm.presets import DEFAULT_PRESET, PRESETS


@torch.no_grad()
def decode_rates(models: dict[str, torch.nn.Module], ids: torch.Tensor, steps: int = 24, warmup: int = 4) -> dict:
    """Tokens per second of single-token greedy steps after a prefill of `ids` [1, T], for each model: the steps run
    in rounds (one step of each model per round), so drift of a shared machine hits every model alike."""
    caches, tokens, times = {}, {}, {name: [] for name in models}
    for name, model in models.items():
        caches[name] = DynamicCache(config=model.config)
        with liger_lm.decode_layout(model):
            logits = model(ids, **with_cache(caches[name]), use_cache=True, logits_to_keep=1).logits
        tokens[name] = logits[:, -1:].argmax(-1)
    for _ in range(steps):
        for name, model in models.items():
            with liger_lm.decode_layout(model):
                started = time.perf_counter()
                logits = model(tokens[name], **with_cache(caches[name]), use_cache=True).logits
                times[name].append(time.perf_counter() - started)
            tokens[name] = logits[:, -1:].argmax(-1)
    return {name: 1 / statistics.median(values[warmup:]) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context", type=int, default=1024)
    args = parser.parse_args()
    base, _ = liger_lm.load_default_model()
    ids = torch.randint(3, base.config.vocab_size, (1, args.context), generator=torch.Generator().manual_seed(0))
    models = {"base": base, **{name: liger_lm.convert(copy.deepcopy(base), **preset.liger)
                               for name, preset in PRESETS.items()}}
    models[f"{DEFAULT_PRESET}, general decode path"] = general = copy.deepcopy(models[DEFAULT_PRESET])
    for module in general.modules():
        if isinstance(module, LigerAttention):
            module._steady_decode = lambda *args: False  # an instance attribute: this copy only
    rates = decode_rates(models, ids)
    for name, rate in rates.items():
        print(f"{name}: {rate:.1f} tok/s at {args.context} tokens of context ({rate / rates['base']:.2f}× base)",
              flush=True)


if __name__ == "__main__":
    main()
