"""Recovery runs of candidate recipes on the default model, scored on held-out prose (choosing a preset).

    python scripts/recipe_sweep.py --tokens 131072 --out sweep.jsonl NAME=JSON_OVERRIDES ...

Each candidate converts a fresh copy of the default model with the default preset's conversion settings (or the
candidate's "liger" entry), fine-tunes it on the preset's data with `make run`'s budget (`liger_lm.run.BUDGETS`:
rows of 1,024 tokens, prompts trained on) for `--tokens` tokens, with the preset's training settings and the
candidate's `TrainConfig` overrides, and scores `--eval-tokens` tokens of the held-out prose as `liger run` does
(positions from the novel; fp32), also with the recurrent branch zeroed (and, with `--untrained`, before training).
Ratios are paired against the base model, scored once per sweep; `recurrent_off.far` is zeroed / used at positions
1,024 and later of the novel (`liger_lm.run.branch_ablation`). A candidate's "max_tokens" overrides `--tokens`.

A candidate's "window_min" (an experiment, not a library setting) trains with a window drawn anew for every optimizer
step, uniformly from [window_min, window], in every layer (`RandomWindow`): what the shorter window drops, the
recurrent branch must carry. Evaluation and the held-out loss use the configured window.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import tempfile
import time

from transformers import TrainerCallback

import liger_lm
from liger_lm.data.prose import held_out_novel, held_out_prose
from liger_lm.evaluation import HELD_OUT_WINDOWS, perplexity, perplexity_ratio
from liger_lm.presets import DEFAULT_PRESET, PRESETS
from liger_lm.run import BUDGETS, branch_ablation, recurrent_branch_off
from liger_lm.modeling.attention import linearized_mixers
from liger_lm.training import train


class RandomWindow(TrainerCallback):
    """Every optimizer step runs with a window drawn from [low, the configured window]; restored after the step."""

    def __init__(self, model, low: int, seed: int = 0) -> None:
        self.mixers = linearized_mixers(model)
        self.saved = [m.liger for m in self.mixers]
        self.low, self.random = low, random.Random(seed)

    def on_step_begin(self, args, state, control, **kwargs):
        window = self.random.randint(self.low, self.saved[0].window)
        for mixer, config in zip(self.mixers, self.saved):
            mixer.liger = config.replace(window=window)

    def on_step_end(self, args, state, control, **kwargs):
        for mixer, config in zip(self.mixers, self.saved):
            mixer.liger = config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("candidates", nargs="+", help='NAME=JSON, e.g. kd=\'{"stages": ["kd"]}\'')
    parser.add_argument("--tokens", type=int, default=BUDGETS["default"].train_tokens)
    parser.add_argument("--eval-tokens", type=int, default=BUDGETS["default"].prose_tokens)
    parser.add_argument("--out", default="sweep.jsonl")
    parser.add_argument("--untrained", action="store_true", help="also score each candidate's conversion before training")
    args = parser.parse_args()
    preset = PRESETS[DEFAULT_PRESET]
    base, tokenizer = liger_lm.load_default_model()
    text, novel = held_out_prose(), held_out_novel()

    def score(model) -> dict:
        return perplexity(model, tokenizer, text, max_tokens=args.eval_tokens, long_text=novel,
                          **HELD_OUT_WINDOWS).to_dict()

    def against_base(scored: dict) -> dict:
        return {**perplexity_ratio(scored, reference), "by_position": scored["by_position"]}

    reference = score(base)
    print(f"base ppl {reference['ppl']} by position {reference['by_position']}", flush=True)
    for candidate in args.candidates:
        name, _, overrides = candidate.partition("=")
        overrides = json.loads(overrides or "{}")
        liger = {**preset.liger, **overrides.pop("liger", {})}
        window_min = overrides.pop("window_min", None)
        model = liger_lm.convert(copy.deepcopy(base), **liger)
        untrained = {"untrained": against_base(score(model))} if args.untrained else {}
        callbacks = [RandomWindow(model, window_min)] if window_min else []
        config = BUDGETS["default"].train_config(overrides.pop("data", preset.data), seed=0, **preset.train)
        config = config.replace(**{"max_tokens": args.tokens, "progress": False, **overrides})
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as folder:
            trained = train(model, tokenizer, config, f"{folder}/run", callbacks=callbacks).model
            trained = trained.merge_and_unload().eval()
        seconds = time.perf_counter() - started
        result = score(trained)
        row = {"name": name, "liger": liger, "window_min": window_min, "train": config.to_dict(),
               "train_seconds": round(seconds),
               **result, **perplexity_ratio(result, reference), **untrained}
        with recurrent_branch_off(trained):
            zeroed = score(trained)
        row["recurrent_off"] = {**against_base(zeroed), "far": branch_ablation(zeroed, result)["far"]}
        print(json.dumps({k: v for k, v in row.items() if k not in ("window_nll", "block_nll", "train")}), flush=True)
        with open(args.out, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
