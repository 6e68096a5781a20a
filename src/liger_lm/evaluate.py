"""Step 3 of the pipeline: how much quality survived.

- `loglikelihoods`: log p(continuation | context) and "is the continuation greedy", exactly as lm-eval 0.4.13's
  HFLM defines them (same tokenisation split, same left truncation), batched.
- `score_multiple_choice`: zero-shot accuracy `acc` and length-normalised `acc_norm` (lm-eval's definitions).
- `perplexity`: sliding-window perplexity of a text (`read_source_text` reads a local file or a Hugging Face dataset).
- `evaluate_suite` / `recovery`: the task suite of `liger_lm.data.tasks` and converted/base score ratios.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .data.multiple_choice import MultipleChoiceExample
from .errors import EvaluationError, InputNotFoundError  # noqa: F401 (EvaluationError: re-exported)
from .io import read_utf8

TARGET_DELIMITER = " "  # lm-eval's default `target_delimiter` between the query and each choice
DEFAULT_MAX_LENGTH = 2048  # lm-eval's fallback when the config names no context length
RECOVERY_METRIC = "acc_norm"


def sample_text() -> str:
    """The fixed English passage shipped with the package (an original short story, ~420 words)."""
    return resources.files("liger_lm.assets").joinpath("sample_text.txt").read_text(encoding="utf-8")


# --------------------------------------------------------------------------------------------------------------
# Log-likelihood scoring (lm-eval's definition)
# --------------------------------------------------------------------------------------------------------------


def _prefix_token_id(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """Token lm-eval conditions on when the context is empty: BOS, else EOS."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """lm-eval's `HFLM.tok_encode`: the tokenizer's own special tokens, unless the text already starts with BOS."""
    prefix = _prefix_token_id(tokenizer)
    starts_with_bos = prefix is not None and text.startswith(tokenizer.decode(prefix))
    return tokenizer.encode(text, add_special_tokens=False) if starts_with_bos else tokenizer.encode(text)


def encode_request(tokenizer: PreTrainedTokenizerBase, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) split the way lm-eval's `LM.loglikelihood` / `_encode_pair` split them.

    Trailing spaces of the context move to the continuation; then context+continuation is encoded as one string and
    split after the context's own token count, so merges across the boundary go to the continuation. An empty
    context becomes the prefix token (BOS, else EOS) before the continuation, encoded without special tokens.
    """
    if context == "":
        continuation_ids = tokenizer.encode(continuation, add_special_tokens=False)
        prefix = _prefix_token_id(tokenizer)
        if continuation_ids and continuation_ids[0] == prefix:
            context_ids, continuation_ids = continuation_ids[:1], continuation_ids[1:]
        else:
            context_ids = [prefix]
    else:
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = _encode(tokenizer, context + continuation)
        context_ids = _encode(tokenizer, context)
        continuation_ids = whole[len(context_ids) :]
    if not continuation_ids:
        raise EvaluationError(f"continuation {continuation!r} encodes to no tokens; give a non-empty continuation")
    return context_ids, continuation_ids


def _max_length(model: PreTrainedModel) -> int:
    """Context length lm-eval assumes for HF models (`resolve_max_length`): the config's, else 2048."""
    config = getattr(model.config, "text_config", None) or model.config
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        if getattr(config, name, None) is not None:
            return int(getattr(config, name))
    return DEFAULT_MAX_LENGTH


def _right_padded(rows: list[list[int]], pad_id: int, device: torch.device) -> torch.Tensor:
    """[B, T_max] ids, each row followed by `pad_id`."""
    width = max(len(row) for row in rows)
    return torch.tensor([row + [pad_id] * (width - len(row)) for row in rows], dtype=torch.long, device=device)


@torch.no_grad()
def loglikelihood_tokens(
    model: PreTrainedModel,
    requests: list[tuple[list[int], list[int]]],
    batch_size: int = 16,
    progress: bool = True,
    max_length: int | None = None,
) -> list[tuple[float, bool]]:
    """(Σ log p(continuation tokens | context), continuation == greedy argmax) per (context ids, continuation ids).

    As lm-eval: the model sees (context + continuation)[-(max_length + 1):][:-1] and the last len(continuation)
    positions are scored. Requests run longest first in batches (order restored on return).

    Batches are RIGHT-padded with no attention mask, like lm-eval's HFLM: in a causal model (softmax or Liger
    recurrence alike) the logits at position t depend only on tokens ≤ t, so pads placed after the last scored
    position cannot change any scored logit, and every row keeps positions 0..T-1 as when run alone. Left padding
    would need position ids from the mask for plain HF models and a masked recurrent state for Liger models.
    """
    if batch_size < 1:
        raise EvaluationError(f"batch size must be a positive integer, got {batch_size}")
    max_length = max_length or _max_length(model)
    order = sorted(range(len(requests)), key=lambda i: -(len(requests[i][0]) + len(requests[i][1])))
    results: list[tuple[float, bool] | None] = [None] * len(requests)
    with tqdm(total=len(requests), disable=not progress, desc="log-likelihoods") as bar:
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            for index, answer in zip(batch, _score_batch(model, [requests[i] for i in batch], max_length)):
                results[index] = answer
            bar.update(len(batch))
    return results  # type: ignore[return-value]


def _score_batch(
    model: PreTrainedModel, batch: list[tuple[list[int], list[int]]], max_length: int
) -> list[tuple[float, bool]]:
    """One forward over a right-padded batch; only logits from the earliest scored position on are computed."""
    if any(len(continuation) > max_length for _, continuation in batch):
        raise EvaluationError(f"a continuation is longer than the model's context ({max_length} tokens); shorten it")
    inputs = [(context + continuation)[-(max_length + 1) :][:-1] for context, continuation in batch]
    ids = _right_padded(inputs, pad_id=0, device=model.device)  # [B, T]
    first_scored = min(len(row) - len(cont) for row, (_, cont) in zip(inputs, batch))
    kept = ids.shape[1] - first_scored
    logits = model(ids, logits_to_keep=kept).logits  # [B, kept, V]: positions first_scored..T-1
    answers = []
    for row, (inp, (_, continuation)) in enumerate(zip(inputs, batch)):
        end = len(inp) - first_scored
        scored = F.log_softmax(logits[row, end - len(continuation) : end].float(), dim=-1)  # [C, V]
        targets = torch.tensor(continuation, device=scored.device)
        total = scored.gather(-1, targets[:, None]).sum().item()
        answers.append((total, bool((scored.argmax(-1) == targets).all())))
    return answers


def loglikelihoods(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    requests: list[tuple[str, str]],
    batch_size: int = 16,
    progress: bool = True,
) -> list[tuple[float, bool]]:
    """lm-eval's `loglikelihood` for (context, continuation) strings: [(log-likelihood, is_greedy), ...]."""
    encoded = [encode_request(tokenizer, context, continuation) for context, continuation in requests]
    return loglikelihood_tokens(model, encoded, batch_size=batch_size, progress=progress)


# --------------------------------------------------------------------------------------------------------------
# Multiple choice
# --------------------------------------------------------------------------------------------------------------


def _first_argmax(values: list[float]) -> int:
    """Index of the largest value, the first on ties (as numpy.argmax, which lm-eval uses)."""
    return max(range(len(values)), key=lambda i: (values[i], -i))


def score_multiple_choice(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[MultipleChoiceExample],
    batch_size: int = 16,
    progress: bool = True,
) -> dict[str, float | int]:
    """Zero-shot accuracy as lm-eval's `multiple_choice` output type computes it.

    Each choice c is scored as the continuation " " + c of the query (ll_c = Σ log p). `acc`: argmax ll_c is the
    label; `acc_norm`: argmax ll_c / len(c) is the label, len in characters of the choice without the delimiter
    (lm-eval 0.4.13 `completion_len`; byte length is its separate `acc_bytes`). Returns {acc, acc_norm, n, chance},
    chance = mean of 1 / number of choices: the accuracy of guessing, to read small models' scores against.
    """
    if not examples:
        raise EvaluationError("no examples to score; check the task name and its size")
    for example in examples:
        if not example.choices or any(choice == "" for choice in example.choices):
            raise EvaluationError(f"example {example.query[:60]!r} has an empty choice list or an empty choice")
    requests = [(ex.query, TARGET_DELIMITER + choice) for ex in examples for choice in ex.choices]
    scores = [ll for ll, _ in loglikelihoods(model, tokenizer, requests, batch_size=batch_size, progress=progress)]
    correct = correct_norm = 0
    offset = 0
    for example in examples:
        lls = scores[offset : offset + len(example.choices)]
        offset += len(example.choices)
        correct += _first_argmax(lls) == example.label
        correct_norm += _first_argmax([ll / len(c) for ll, c in zip(lls, example.choices)]) == example.label
    chance = sum(1 / len(example.choices) for example in examples) / len(examples)
    return {"acc": correct / len(examples), "acc_norm": correct_norm / len(examples), "n": len(examples),
            "chance": chance}


# --------------------------------------------------------------------------------------------------------------
# Perplexity
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PerplexityResult:
    """ppl = exp(nll); nll = mean next-token negative log-likelihood (nats) over `tokens` predicted tokens."""

    ppl: float
    nll: float
    tokens: int


def check_window_settings(context: int, stride: int) -> None:
    """Refuse windows that would skip tokens (stride > context) or are empty."""
    if context < 1 or not 1 <= stride <= context:
        raise EvaluationError(f"need context ≥ 1 and 1 ≤ stride ≤ context; got context={context}, stride={stride}")


def sliding_windows(n_tokens: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, stop, first) per window: the model reads ids[start:stop] and scores targets ids[first : stop + 1].

    The logits at input position p predict token p + 1, so a window of at most `context` input tokens scores up to
    its position `stop`. The first window scores targets 1..context, each later one the next `stride` targets;
    start = stop − context. Every target 1..n−1 is scored exactly once, target p with p − start ∈ [1, context]
    tokens of left context (at least context − stride + 1 after the first window).
    """
    check_window_settings(context, stride)
    windows, first = [], 1
    while first <= n_tokens - 1:
        last_target = min(first + (context if not windows else stride) - 1, n_tokens - 1)
        windows.append((max(0, last_target - context), last_target, first))
        first = last_target + 1
    return windows


@torch.no_grad()
def perplexity_of_ids(
    model: PreTrainedModel, ids: list[int], context: int = 1024, stride: int = 512, batch_size: int = 1
) -> PerplexityResult:
    """Sliding-window perplexity of token ids (see `sliding_windows`); windows run `batch_size` at a time."""
    if len(ids) < 2:
        raise EvaluationError("the text has fewer than 2 tokens; nothing to score — give a longer text")
    if batch_size < 1:
        raise EvaluationError(f"batch size must be a positive integer, got {batch_size}")
    windows = sliding_windows(len(ids), context, stride)
    limit, longest = getattr(model.config, "max_position_embeddings", None), max(stop - start for start, stop, _ in windows)
    if limit and longest > limit:  # positions past the model's are untrained: the number would mean nothing
        raise EvaluationError(f"perplexity windows of {longest} tokens exceed the model's {limit} positions "
                              f"(max_position_embeddings); lower --context to {limit} or less")
    total_nll, counted = 0.0, 0
    for begin in range(0, len(windows), batch_size):
        batch = windows[begin : begin + batch_size]
        inputs = _right_padded([ids[start:stop] for start, stop, _ in batch], pad_id=0, device=model.device)
        skipped = min(first - 1 - start for start, _, first in batch)  # leading positions no row scores
        # [B, T − skipped, V]; right pads sit after every scored position, which a causal model never looks at
        logits = model(inputs, logits_to_keep=inputs.shape[1] - skipped).logits
        for row, (start, stop, first) in enumerate(batch):
            scored = F.log_softmax(logits[row, first - 1 - start - skipped : stop - start - skipped].float(), dim=-1)
            targets = torch.tensor(ids[first : stop + 1], device=scored.device)
            total_nll -= scored.gather(-1, targets[:, None]).double().sum().item()
            counted += len(targets)
    nll = total_nll / counted
    return PerplexityResult(ppl=math.exp(nll), nll=nll, tokens=counted)


def perplexity(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    context: int = 1024,
    stride: int = 512,
    batch_size: int = 1,
) -> PerplexityResult:
    """Sliding-window perplexity of `text` (tokenised without special tokens; its first token is never scored).

    Hugging Face's "perplexity of fixed-length models" method, counted exactly: each of the len(ids) − 1 tokens
    after the first is predicted once, with up to `context` tokens of left context.
    """
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return perplexity_of_ids(model, ids, context=context, stride=stride, batch_size=batch_size)


def text_perplexity(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, text: str, max_tokens: int = 2048
) -> tuple[float, int]:
    """exp(mean next-token NLL) over the first `max_tokens` tokens of `text`, in one forward pass.

    Returns (perplexity, number of predicted tokens): one window of `max_tokens` tokens (`scripts/gate_table.py`).
    """
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
    result = perplexity_of_ids(model, ids, context=max_tokens, stride=max_tokens)
    return result.ppl, result.tokens


POSITION_BUCKETS = (64, 1024)  # token positions 0–64, 64–1,024, 1,024 and later (of a long context)


@torch.no_grad()
def token_nll(model: PreTrainedModel, ids: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """Next-token NLL (nats) of every position but the last: ids [N, L] → [N, L − 1].

    The LM head runs on `chunk` positions at a time, so a 4K-token window never holds all its logits at once.
    """
    hidden = model.model(input_ids=ids.to(model.device), use_cache=False).last_hidden_state[:, :-1]
    targets = ids[:, 1:].to(model.device)
    pieces = []
    for start in range(0, hidden.shape[1], chunk):
        logits = model.lm_head(hidden[:, start : start + chunk]).float()
        pieces.append(-F.log_softmax(logits, -1).gather(-1, targets[:, start : start + chunk, None])[..., 0])
    return torch.cat(pieces, dim=1).double().cpu()


def prose_perplexity(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    tokens: int = 16_384,
    context: int = 1_024,
    long_context: int = 4_096,
    batch_size: int = 4,
) -> dict:
    """Held-out perplexity of `text`, with its standard error, and by position within long contexts.

    The first `tokens` scored tokens are cut into independent windows of `context` + 1 tokens (each scores its
    `context` next tokens from a fresh start); ppl = exp(mean NLL), and `nll_se` is the standard error of that mean
    over the windows (so ppl · exp(±2·nll_se) is a ~95 % interval). The same text is then read in windows of
    `long_context` + 1 tokens, and `by_position` gives the perplexity of the tokens at positions 0–64, 64–1,024 and
    1,024–`long_context` of those windows: a model that forgets or breaks past its training length shows it there.
    """
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    needed = max(tokens // context * (context + 1), tokens // long_context * (long_context + 1))
    if len(ids) < needed:
        raise EvaluationError(f"the evaluation text has {len(ids)} tokens, fewer than the {needed} needed; "
                              "give a longer text or fewer tokens")
    short = torch.tensor(ids[: tokens // context * (context + 1)]).view(-1, context + 1)
    window_nll = torch.cat([token_nll(model, rows) for rows in short.split(batch_size)]).mean(1)
    mean, se = window_nll.mean().item(), (window_nll.std() / math.sqrt(len(window_nll))).item()
    long = torch.tensor(ids[: tokens // long_context * (long_context + 1)]).view(-1, long_context + 1)
    by_token = torch.cat([token_nll(model, rows) for rows in long.split(1)]).mean(0)
    edges = (0, *(edge for edge in POSITION_BUCKETS if edge < long_context), long_context)
    by_position = {f"{lo}-{hi}": round(math.exp(by_token[lo:hi].mean().item()), 3) for lo, hi in zip(edges, edges[1:])}
    return {"ppl": round(math.exp(mean), 3), "nll": round(mean, 5), "nll_se": round(se, 5), "tokens": len(window_nll) * context,
            "context": context, "long_context": long_context, "by_position": by_position,
            "window_nll": [round(x, 5) for x in window_nll.tolist()]}


def perplexity_ratio(model_result: dict, base_result: dict) -> dict:
    """ppl(model) / ppl(base) on the same windows (`prose_perplexity` results), with the standard error of the log
    ratio from the paired per-window differences (much smaller than either perplexity's own error)."""
    diffs = torch.tensor(model_result["window_nll"]) - torch.tensor(base_result["window_nll"])
    se = (diffs.std() / math.sqrt(len(diffs))).item() if len(diffs) > 1 else float("nan")
    return {"ratio": round(math.exp(diffs.mean().item()), 4), "log_ratio_se": round(se, 4)}


def accuracy_standard_error(accuracy: float, n: int) -> float:
    """Binomial standard error of an accuracy measured on n examples."""
    return math.sqrt(max(accuracy * (1 - accuracy), 0.0) / n) if n else float("nan")


def read_source_text(source: str) -> str:
    """Text of a local file, or of `hf:<dataset>[:<config>]:<split>[:<column>]` (rows joined by blank lines).

    Three fields mean dataset:config:split; to name a column without a config leave it empty:
    `hf:dataset::split:column`. The column defaults to `text`.
    """
    if not source.startswith("hf:"):
        path = Path(source)
        if not path.is_file():
            raise InputNotFoundError(f"text file {source} not found; give a local text file or hf:<dataset>:<split>")
        return read_utf8(path)
    dataset, config, split, column = _parse_hf_source(source)
    return "\n\n".join(_dataset_column(dataset, config, split, column, source))


def _parse_hf_source(source: str) -> tuple[str, str | None, str, str]:
    fields = re.split(r":(?![^\[]*\])", source.removeprefix("hf:"))  # colons inside a split slice [:10] stay
    if len(fields) == 2:
        fields = [fields[0], "", fields[1], "text"]
    elif len(fields) == 3:
        fields.append("text")
    if len(fields) != 4 or not fields[0] or not fields[2] or not fields[3]:
        raise EvaluationError(
            f"bad dataset spec {source!r}; use hf:<dataset>[:<config>]:<split>[:<column>], "
            "e.g. hf:wikitext:wikitext-2-raw-v1:test or hf:my/data::train:body"
        )
    dataset, config, split, column = fields
    return dataset, config or None, split, column


def _dataset_column(dataset: str, config: str | None, split: str, column: str, source: str) -> list[str]:
    import datasets

    try:
        rows = datasets.load_dataset(dataset, config, split=split)
    except (ConnectionError, OSError) as err:
        raise EvaluationError(
            f"cannot load {source}: {str(err).splitlines()[0]} — check the name and network access "
            "(the Hugging Face Hub must be reachable), or pass a local text file"
        ) from err
    if column not in rows.column_names:
        raise EvaluationError(f"{source}: no column {column!r}; columns are {', '.join(rows.column_names)}")
    return [text for text in rows[column] if text]


# --------------------------------------------------------------------------------------------------------------
# Task suite and recovery
# --------------------------------------------------------------------------------------------------------------


def evaluate_suite(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tasks: dict[str, int | None] | None = None,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = True,
) -> dict[str, dict[str, float | int]]:
    """{task: {acc, acc_norm, n}} for each task name → number of examples (None: all); default `DEFAULT_SUITE`."""
    if tasks is None:
        from .data.tasks import (
            DEFAULT_SUITE,  # lazy: the task data module is optional for the rest
        )

        tasks = DEFAULT_SUITE
    if not tasks:
        return {}
    from .data.tasks import load_task

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
    from .data.tasks import (
        DEFAULT_SUITE,  # lazy: optional data module, built by another step
    )

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
    from dataclasses import asdict

    from .models import load_model

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
            results["perplexity"][role] = asdict(result)
        del loaded
    results["tasks"] = {name: values["n"] for name, values in results["scores"].items()}
    if base is not None and results["scores"]:
        results["recovery"] = recovery(results["base_scores"], results["scores"])
    return results
