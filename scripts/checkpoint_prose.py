"""Held-out prose perplexity of a training checkpoint of a `liger run`, scored as `liger run` scores its models.

    python scripts/checkpoint_prose.py runs/long [--checkpoint PATH] [--base-from runs/default/eval/prose.json]
        [--zeroed] [--out FILE]

A long fine-tune (`liger run --budget long`) is evaluated only once it has finished; this script measures where it
stands on the way, from a checkpoint of its current stage (default: the newest complete one, of any stage). It loads
the checkpoint's adapter onto the run's converted model (the path the adapter records), scores the run's budget of
held-out prose in `liger run`'s layout (`HELD_OUT_WINDOWS`) and prints the paired ratio to the base model: the base
model is scored in the same process, or taken from `--base-from`, the `eval/prose.json` of an earlier run of the same
budget (the text and windows must match, which is checked). `--zeroed` also scores the model with its recurrent
branch zeroed. It reads the run folder only; pause the training first on a small machine (both compete for cores).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable

from liger_lm.data.prose import held_out_prose
from liger_lm.evaluation import HELD_OUT_WINDOWS, perplexity, perplexity_ratio
from liger_lm.io import write_json_atomic
from liger_lm.models import load_default_model, load_model
from liger_lm.run import BUDGETS, branch_ablation, recurrent_branch_off
from liger_lm.training.trainer import last_complete_checkpoint


def newest_checkpoint(run: Path) -> Path:
    """The newest complete checkpoint of the run's latest stage that has one (stages are named `1-…`, `2-…`)."""
    stages = sorted((run / "train" / "checkpoints").glob("*-*"), reverse=True)
    for stage in stages:
        checkpoint = last_complete_checkpoint(stage)
        if checkpoint is not None:
            return checkpoint
    raise SystemExit(f"{run} has no complete training checkpoint yet; wait for the first one (--save-every steps)")


def base_result(path: str | None, text: str, tokens: int, load_base: Callable[[], tuple] = load_default_model) -> dict:
    """The base model's held-out result: from an earlier run's `eval/prose.json`, or scored now on the (model,
    tokenizer) that `load_base` gives."""
    if path is None:
        base, tokenizer = load_base()
        return perplexity(base, tokenizer, text, max_tokens=tokens, **HELD_OUT_WINDOWS).to_dict()
    reference = json.loads(Path(path).read_text(encoding="utf-8"))["base"]
    layout = {"tokens": tokens, "context": HELD_OUT_WINDOWS["context"], "long_context": HELD_OUT_WINDOWS["long_context"]}
    found = {key: reference.get(key) for key in layout}
    if found != layout:
        raise SystemExit(f"{path} was scored in another layout ({found}, this budget: {layout}); leave out --base-from")
    return reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the run folder (liger run --out)")
    parser.add_argument("--checkpoint", type=Path, help="a checkpoint folder (default: the newest complete one)")
    parser.add_argument("--base-from", help="an earlier run's eval/prose.json, to reuse its base-model scores")
    parser.add_argument("--budget", default="long", choices=sorted(BUDGETS), help="the run's --budget (prose tokens)")
    parser.add_argument("--zeroed", action="store_true", help="also score the model with its recurrent branch zeroed")
    parser.add_argument("--out", type=Path, help="write the results to this JSON file")
    args = parser.parse_args()

    checkpoint = args.checkpoint or newest_checkpoint(args.run)
    tokens, text = BUDGETS[args.budget].prose_tokens, held_out_prose()
    base = base_result(args.base_from, text, tokens)
    model, tokenizer = load_model(str(checkpoint))
    liger = perplexity(model, tokenizer, text, max_tokens=tokens, **HELD_OUT_WINDOWS).to_dict()
    results = {"checkpoint": str(checkpoint), "base": base, "liger": liger, "ratio_to_base": perplexity_ratio(liger, base)}
    print(f"{checkpoint}: perplexity {liger['ppl']:.2f} (base {base['ppl']:.2f}), "
          f"× {results['ratio_to_base']['ratio']:.4f} base (log se {results['ratio_to_base']['log_ratio_se']:.4f}); "
          f"by position {liger['by_position']} (base {base['by_position']})")
    if args.zeroed:
        with recurrent_branch_off(model):
            zeroed = perplexity(model, tokenizer, text, max_tokens=tokens, **HELD_OUT_WINDOWS).to_dict()
        results["recurrent_branch_zeroed"] = branch_ablation(zeroed, liger)
        print(f"recurrent branch zeroed: {results['recurrent_branch_zeroed']}")
    if args.out:
        write_json_atomic(args.out, results)


if __name__ == "__main__":
    main()
