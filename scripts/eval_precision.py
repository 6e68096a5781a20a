"""What `liger run`'s bf16 evaluation changes: one task and the held-out prose scored in fp32 and under bf16 autocast.

    python scripts/eval_precision.py [--model default|FOLDER] [--task goal_step_wikihow] [--examples 200]

Both passes score the same model in one process, the second as `liger run` does under `--precision bf16`
(`liger_lm.run.evaluation_precision`): the time of each, the task's accuracies, and the held-out perplexity (Quoref windows of
1,024; positions from the novel) with the bf16 / fp32 ratio paired over the same windows. Needs native bf16 to be
fast (AVX512-BF16 or AMX; `liger_lm.hardware.fast_bf16`); elsewhere bf16 is emulated and slow.
"""

from __future__ import annotations

import argparse
import time

from liger_lm.data.prose import held_out_novel, held_out_prose
from liger_lm.data.tasks import load_task
from liger_lm.evaluation import HELD_OUT_WINDOWS, perplexity, perplexity_ratio, score_multiple_choice
from liger_lm.models import load_model
from liger_lm.run import evaluation_precision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--task", default="goal_step_wikihow")
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=16_384)
    args = parser.parse_args()
    model, tokenizer = load_model(args.model)
    model.eval().requires_grad_(False)  # frozen, as the fine-tuned model `liger run` scores
    examples = load_task(args.task, args.examples, seed=0)
    text, novel = held_out_prose(), held_out_novel()

    def evaluate(scored) -> tuple[dict, float, dict, float]:
        started = time.perf_counter()
        task = score_multiple_choice(scored, tokenizer, examples, progress=False)
        middle = time.perf_counter()
        prose = perplexity(scored, tokenizer, text, max_tokens=args.tokens, long_text=novel, **HELD_OUT_WINDOWS)
        return task, middle - started, prose.to_dict(), time.perf_counter() - middle

    results = {}
    for precision in ("fp32", "bf16"):
        with evaluation_precision(model, bf16=precision == "bf16"):
            task, task_s, prose, prose_s = results[precision] = evaluate(model)
        print(f"{precision}: {args.task} ({args.examples}) {task_s:.1f} s, acc {task['acc']:.3f}, acc_norm "
              f"{task['acc_norm']:.3f} | prose {prose_s:.1f} s, perplexity {prose['ppl']}, by position "
              f"{prose['by_position']}", flush=True)
    (_, fp32_task_s, fp32_prose, fp32_prose_s), (_, bf16_task_s, bf16_prose, bf16_prose_s) = results.values()
    print(f"bf16 / fp32: task time × {bf16_task_s / fp32_task_s:.2f}, prose time × {bf16_prose_s / fp32_prose_s:.2f}, "
          f"perplexity {perplexity_ratio(bf16_prose, fp32_prose)}")


if __name__ == "__main__":
    main()
