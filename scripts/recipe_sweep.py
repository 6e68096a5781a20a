"""Short recovery runs of candidate recipes on the default model, scored on held-out prose (choosing a preset).

    python scripts/recipe_sweep.py --tokens 24576 --out sweep.jsonl NAME=JSON_OVERRIDES ...

Each candidate converts a fresh copy of the default model with the default preset's conversion settings (or the
candidate's "liger" entry), fine-tunes it on `--data` for `--tokens` tokens with the default preset's training
settings and the candidate's `TrainConfig` overrides, and scores `--eval-tokens` tokens of the held-out prose;
ratios are paired against the base model.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time

import liger_lm
from liger_lm.data.prose import held_out_prose
from liger_lm.evaluate import perplexity_ratio, prose_perplexity
from liger_lm.presets import DEFAULT_PRESET, PRESETS
from liger_lm.run import recurrent_branch_off
from liger_lm.training import TrainConfig, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("candidates", nargs="+", help='NAME=JSON, e.g. kd=\'{"stages": ["kd"]}\'')
    parser.add_argument("--tokens", type=int, default=24_576)
    parser.add_argument("--eval-tokens", type=int, default=8_192)
    parser.add_argument("--data", default="mix")
    parser.add_argument("--out", default="sweep.jsonl")
    args = parser.parse_args()
    base, tokenizer = liger_lm.load_default_model()
    text = held_out_prose()
    reference = prose_perplexity(base, tokenizer, text, tokens=args.eval_tokens)
    print(f"base ppl {reference['ppl']} by position {reference['by_position']}", flush=True)
    untrained = prose_perplexity(liger_lm.convert(copy.deepcopy(base), **PRESETS[DEFAULT_PRESET].liger), tokenizer,
                                 text, tokens=args.eval_tokens)
    print(f"untrained {DEFAULT_PRESET}: {perplexity_ratio(untrained, reference)} {untrained['by_position']}", flush=True)
    for candidate in args.candidates:
        name, _, overrides = candidate.partition("=")
        overrides = json.loads(overrides or "{}")
        liger = {**PRESETS[DEFAULT_PRESET].liger, **overrides.pop("liger", {})}
        model = liger_lm.convert(copy.deepcopy(base), **liger)
        config = TrainConfig(data=args.data, max_tokens=args.tokens, seq_len=512, grad_accum=1, eval_records=16,
                             prompt_loss=True, progress=False).replace(**{**PRESETS[DEFAULT_PRESET].train, **overrides})
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as folder:
            trained = train(model, tokenizer, config, f"{folder}/run").model.merge_and_unload().eval()
        seconds = time.perf_counter() - started
        result = prose_perplexity(trained, tokenizer, text, tokens=args.eval_tokens)
        row = {"name": name, "liger": liger, "train": config.to_dict(), "seconds": round(seconds),
               **result, **perplexity_ratio(result, reference)}
        if liger.get("combine") == "shared" or liger.get("rec_weight", 0.5):
            with recurrent_branch_off(trained):
                off = prose_perplexity(trained, tokenizer, text, tokens=args.eval_tokens)
            row["recurrent_off"] = {**perplexity_ratio(off, reference), "by_position": off["by_position"]}
        print(json.dumps({k: v for k, v in row.items() if k not in ("window_nll", "train")}), flush=True)
        with open(args.out, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
