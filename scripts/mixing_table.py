"""Training-free held-out perplexity of mixing variants on the default model (README "Presets" table).

    python scripts/mixing_table.py [--out mixing.jsonl] [--tokens 16384]

Each row converts a fresh copy of the default model with the given settings and scores the held-out prose
(`liger_lm.data.prose.held_out_prose`, Quoref's Wikipedia passages) in windows of 1,024 tokens, plus by position in
4,096-token windows; the ratio to the base model is paired over the same windows (`perplexity_ratio`).
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch

import liger_lm
from liger_lm.data.prose import held_out_prose
from liger_lm.evaluation import HELD_OUT_WINDOWS, perplexity, perplexity_ratio
from liger_lm.hardware import environment
from liger_lm.presets import PRESETS

VARIANTS = {
    "window 64 only": dict(rec_weight=0.0, swa_weight=1.0),
    "window 64 + 4 sinks": dict(rec_weight=0.0, swa_weight=1.0, sinks=4),
    "window 128 + 4 sinks": dict(rec_weight=0.0, swa_weight=1.0, sinks=4, window=128),
    "window 256 + 4 sinks": dict(rec_weight=0.0, swa_weight=1.0, sinks=4, window=256),
    "paper: 0.5 GLA + 0.5 window": {},
    "paper + 4 sinks": dict(sinks=4),
    "normalised 0.5 GLA + 0.5 window + 4 sinks": dict(normalize=True, sinks=4),
    "normalised 0.2 GLA + 0.8 window + 4 sinks": dict(normalize=True, sinks=4, rec_weight=0.2, swa_weight=0.8),
    **{f"shared normaliser, ω = {omega}, + 4 sinks": dict(combine="shared", sinks=4, rec_logit_init=omega)
       for omega in (0.0, 2.0, 4.0, 6.0)},
    **{f"preset {name}": preset.liger for name, preset in PRESETS.items()},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="mixing.jsonl")
    parser.add_argument("--tokens", type=int, default=16_384)
    parser.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    args = parser.parse_args()
    torch.manual_seed(0)
    base, tokenizer = liger_lm.load_default_model()
    text = held_out_prose()
    print(json.dumps(environment(torch.device("cpu"))))
    reference = perplexity(base, tokenizer, text, max_tokens=args.tokens, **HELD_OUT_WINDOWS).to_dict()
    rows = [{"variant": "base (softmax attention)", **reference}]
    print(f"{'base':45s} ppl {reference['ppl']:9.2f}  by position {reference['by_position']}", flush=True)
    for name, settings in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        started = time.perf_counter()
        model = liger_lm.convert(copy.deepcopy(base), **settings)
        result = perplexity(model, tokenizer, text, max_tokens=args.tokens, **HELD_OUT_WINDOWS).to_dict()
        ratio = perplexity_ratio(result, reference)
        rows.append({"variant": name, "settings": settings, **result, **ratio})
        print(f"{name:45s} ppl {result['ppl']:9.2f}  × base {ratio['ratio']:7.3f} (log-ratio SE {ratio['log_ratio_se']})"
              f"  by position {result['by_position']}  [{time.perf_counter() - started:.0f} s]", flush=True)
    with open(args.out, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
