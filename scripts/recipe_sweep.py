"""Recovery runs of candidate recipes on the default model, scored on held-out prose (choosing a preset).

    python scripts/recipe_sweep.py --tokens 131072 --out sweep.jsonl NAME=JSON_OVERRIDES ...

Each candidate converts a fresh copy of the default model with the default preset's conversion settings (or the
candidate's "liger" entry), fine-tunes it on the preset's data with `make run`'s budget (`liger_lm.run.BUDGETS`:
rows of 1,024 tokens, prompts trained on) for `--tokens` tokens, with the preset's training settings and the
candidate's `TrainConfig` overrides, and scores `--eval-tokens` tokens of the held-out prose exactly as `liger run`
does, also with the recurrent branch zeroed. Ratios are paired against the base model, scored once per sweep.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time

import liger_lm
from liger_lm.data.prose import held_out_prose
from liger_lm.evaluation import HELD_OUT_WINDOWS, perplexity, perplexity_ratio
from liger_lm.presets import DEFAULT_PRESET, PRESETS
from liger_lm.run import BUDGETS, recurrent_branch_off
from liger_lm.training import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("candidates", nargs="+", help='NAME=JSON, e.g. kd=\'{"stages": ["kd"]}\'')
    parser.add_argument("--tokens", type=int, default=BUDGETS["default"].train_tokens)
    parser.add_argument("--eval-tokens", type=int, default=BUDGETS["default"].prose_tokens)
    parser.add_argument("--out", default="sweep.jsonl")
    args = parser.parse_args()
    preset = PRESETS[DEFAULT_PRESET]
    base, tokenizer = liger_lm.load_default_model()
    text = held_out_prose()
    reference = perplexity(base, tokenizer, text, max_tokens=args.eval_tokens, **HELD_OUT_WINDOWS).to_dict()
    print(f"base ppl {reference['ppl']} by position {reference['by_position']}", flush=True)
    for candidate in args.candidates:
        name, _, overrides = candidate.partition("=")
        overrides = json.loads(overrides or "{}")
        liger = {**preset.liger, **overrides.pop("liger", {})}
        model = liger_lm.convert(copy.deepcopy(base), **liger)
        config = BUDGETS["default"].train_config(overrides.pop("data", preset.data), seed=0, **preset.train)
        config = config.replace(max_tokens=args.tokens, progress=False, **overrides)
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as folder:
            trained = train(model, tokenizer, config, f"{folder}/run").model.merge_and_unload().eval()
        seconds = time.perf_counter() - started
        result = perplexity(trained, tokenizer, text, max_tokens=args.eval_tokens, **HELD_OUT_WINDOWS).to_dict()
        row = {"name": name, "liger": liger, "train": config.to_dict(), "train_seconds": round(seconds),
               **result, **perplexity_ratio(result, reference)}
        with recurrent_branch_off(trained):
            off = perplexity(trained, tokenizer, text, max_tokens=args.eval_tokens, **HELD_OUT_WINDOWS).to_dict()
        row["recurrent_off"] = {**perplexity_ratio(off, reference), "by_position": off["by_position"]}
        print(json.dumps({k: v for k, v in row.items() if k not in ("window_nll", "train")}), flush=True)
        with open(args.out, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
