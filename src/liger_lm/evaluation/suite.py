"""The task suite and recovery: which tasks, scored how, and how much of the base model's score survived.

- `parse_task_spec`: `default` | `none` | `name[=size],...` → {task: examples}.
- `evaluate_suite`: multiple-choice scores of one model on the tasks of `liger_lm.data.tasks`.
- `recovery`: converted/base score ratios per task and for the average (the paper's convention).
- `evaluate_named_models`: `liger eval` — scores and perplexity of a model and of its base, loaded one at a time.
"""

from __future__ import annotations

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..errors import EvaluationError
from ..models import load_model
from .perplexity import check_window_settings, perplexity
from .scoring import score_multiple_choice
from .sources import read_source_text

RECOVERY_METRIC = "acc_norm"


def evaluate_suite(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tasks: dict[str, int | None] | None = None,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = True,
) -> dict[str, dict[str, float | int]]:
    """{task: {acc, acc_norm, n}} for each task name → number of examples (None: all); default `DEFAULT_SUITE`."""
    # The task module is looked up when called (not at import) so that tests can put small stand-in tasks in its place.
    from ..data.tasks import DEFAULT_SUITE, load_task

    if tasks is None:
        tasks = DEFAULT_SUITE
    scores = {}
    for name, size in tasks.items():
        examples = load_task(name, size, seed)
        scores[name] = score_multiple_choice(model, tokenizer, examples, batch_size=batch_size, progress=progress)
    return scores


def recovery(
    base: dict[str, dict[str, float]], converted: dict[str, dict[str, float]], metric: str = RECOVERY_METRIC
) -> dict:
    """How much of the base model's score the converted model keeps, in %, on `metric` (default acc_norm).

    acc_norm by default because it is what the paper's length-sensitive tasks (ARC-c, HellaSwag) report and it
    does not favour short choices. Returns {"metric", "tasks": {task: 100·conv/base or None when base is 0},
    "base_average", "converted_average", "average"}: the averages are the plain means over the tasks both dicts
    share and "average" = 100·converted_average/base_average, the paper's convention (67.6 / 71.7 = 94.3 %).
    """
    shared = [task for task in base if task in converted]
    if not shared:
        raise EvaluationError("the base and converted scores share no task; evaluate both on the same tasks")
    per_task = {task: _ratio(converted[task][metric], base[task][metric]) for task in shared}
    base_average = sum(base[task][metric] for task in shared) / len(shared)
    converted_average = sum(converted[task][metric] for task in shared) / len(shared)
    return {
        "metric": metric,
        "tasks": per_task,
        "base_average": base_average,
        "converted_average": converted_average,
        "average": _ratio(converted_average, base_average),
    }


def _ratio(converted: float, base: float) -> float | None:
    return 100.0 * converted / base if base else None


def parse_task_spec(spec: str, limit: int | None = None) -> dict[str, int | None]:
    """`default` | `none` | `name,name=size,...` → {task: examples (None = all)}, each capped at `limit`.

    A name without a size takes its `DEFAULT_SUITE` size when it has one, else all examples.
    """
    if limit is not None and limit < 1:
        raise EvaluationError(f"--limit must be a positive integer, got {limit}")
    spec = spec.strip()
    if spec == "none":
        return {}
    from ..data.tasks import DEFAULT_SUITE  # looked up when called, as in `evaluate_suite`

    if spec == "default":
        sizes: dict[str, int | None] = dict(DEFAULT_SUITE)
    else:
        sizes = {}
        for part in filter(None, (piece.strip() for piece in spec.split(","))):
            name, _, size = part.partition("=")
            if not name.strip() or (size and not size.strip().isdigit()) or size.strip() == "0":
                raise EvaluationError(f"bad task entry {part!r}; use default, none or name[=size],name[=size],...")
            sizes[name.strip()] = int(size) if size else DEFAULT_SUITE.get(name.strip())
        if not sizes:
            raise EvaluationError("no task given; use default, none or name[=size],name[=size],...")
    return {name: limit if size is None else min(size, limit or size) for name, size in sizes.items()}


def evaluate_named_models(
    model: str,
    base: str | None = None,
    tasks: dict[str, int | None] | None = None,
    ppl_source: str | None = None,
    context: int = 1024,
    stride: int = 512,
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Scores (and perplexity) of `model`, and of `base` with the recovery when given; models load one at a time.

    Names are anything `liger_lm.load_model` takes (default / HF id / folder / .gguf). `tasks` None = the
    default suite, {} = none. Returns {"model", "base_model", "tasks", "scores", "base_scores", "recovery",
    "perplexity": {"source", "context", "stride", "model": {ppl, nll, tokens}, "base": ...}} (absent parts omitted).
    """
    results: dict = {"model": model, "base_model": base}
    if ppl_source is not None:  # fail on bad settings or a missing source before loading any model
        check_window_settings(context, stride)
        text = read_source_text(ppl_source)
        results["perplexity"] = {"source": ppl_source, "context": context, "stride": stride}
    for role, name in (("model", model), ("base", base)):
        if name is None:
            continue
        loaded, tokenizer = load_model(name)
        scores = evaluate_suite(loaded, tokenizer, tasks, seed=seed, batch_size=batch_size, progress=progress)
        results["scores" if role == "model" else "base_scores"] = scores
        if ppl_source is not None:
            result = perplexity(loaded, tokenizer, text, context=context, stride=stride, batch_size=1)
            results["perplexity"][role] = result.to_dict()
        del loaded
    results["tasks"] = {name: values["n"] for name, values in results["scores"].items()}
    if base is not None and results["scores"]:
        results["recovery"] = recovery(results["base_scores"], results["scores"])
    return results
