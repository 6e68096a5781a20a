"""Log-likelihood scoring as lm-eval 0.4.13's HFLM defines it, and zero-shot multiple choice on top of it.

- `encode_request`: the (context, continuation) token split of lm-eval's `LM.loglikelihood`.
- `loglikelihood_tokens` / `loglikelihoods`: log p(continuation | context) and "is the continuation greedy", batched,
  with the same left truncation.
- `score_multiple_choice`: zero-shot accuracy `acc` and length-normalised `acc_norm` (lm-eval's definitions).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from ..compat import with_cache
from ..data.multiple_choice import MultipleChoiceExample
from ..errors import EvaluationError

TARGET_DELIMITER = " "  # lm-eval's default `target_delimiter` between the query and each choice
DEFAULT_MAX_LENGTH = 2048  # lm-eval's fallback when the config names no context length


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


def right_padded(rows: list[list[int]], pad_id: int, device: torch.device) -> torch.Tensor:
    """[B, T_max] ids, each row followed by `pad_id` (batches of scoring and of perplexity windows)."""
    width = max(len(row) for row in rows)
    return torch.tensor([row + [pad_id] * (width - len(row)) for row in rows], dtype=torch.long, device=device)


def check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise EvaluationError(f"batch size must be a positive integer, got {batch_size}")


@torch.no_grad()
def loglikelihood_tokens(
    model: PreTrainedModel,
    requests: list[tuple[list[int], list[int]]],
    batch_size: int = 16,
    progress: bool = True,
    max_length: int | None = None,
    share_context: bool = True,
) -> list[tuple[float, bool]]:
    """(Σ log p(continuation tokens | context), continuation == greedy argmax) per (context ids, continuation ids).

    As lm-eval: the model sees (context + continuation)[-(max_length + 1):][:-1] and the last len(continuation)
    positions are scored. Requests run longest first in batches (order restored on return).

    With `share_context` (the default), requests with the same context that fit untruncated read the context once:
    `_score_shared_contexts`. The scores are those of the separate forwards (the same positions see the same
    tokens), in about 2.5× fewer tokens for multiple-choice tasks whose choices share the question.

    Batches are RIGHT-padded with no attention mask, like lm-eval's HFLM: in a causal model (softmax or Liger
    recurrence alike) the logits at position t depend only on tokens ≤ t, so pads placed after the last scored
    position cannot change any scored logit, and every row keeps positions 0..T-1 as when run alone. Left padding
    would need position ids from the mask for plain HF models and a masked recurrent state for Liger models.
    """
    check_batch_size(batch_size)
    max_length = max_length or _max_length(model)
    results: list[tuple[float, bool] | None] = [None] * len(requests)
    fits = [len(context) + len(continuation) <= max_length + 1 for context, continuation in requests]
    alone = [i for i in range(len(requests)) if not (share_context and fits[i])]
    with tqdm(total=len(requests), disable=not progress, desc="log-likelihoods") as bar:
        if share_context:
            _score_shared_contexts(model, requests, [i for i in range(len(requests)) if fits[i]], batch_size,
                                   results, bar)
        order = sorted(alone, key=lambda i: -(len(requests[i][0]) + len(requests[i][1])))
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            for index, answer in zip(batch, _score_batch(model, [requests[i] for i in batch], max_length)):
                results[index] = answer
            bar.update(len(batch))
    return results  # type: ignore[return-value]


def _score_shared_contexts(model, requests, indices: list[int], batch_size: int, results: list, bar) -> None:
    """Score requests[i] for i in `indices` (untruncated) into results[i], each distinct context read once.

    Contexts of one length run together, `batch_size` at a time (no padding, so no mask and the same positions as
    alone), keeping the decode cache; the logits at their last position score each continuation's first token.
    The cache is then repeated to one row per request (`Cache.reorder_cache`, which Liger's cache implements too)
    and the continuations minus their last token run on it, right-padded (a pad changes no logit before it).
    """
    by_context: dict[tuple[int, ...], list[int]] = {}
    for i in indices:
        by_context.setdefault(tuple(requests[i][0]), []).append(i)
    by_length: dict[int, list[tuple[int, ...]]] = {}
    for context in by_context:
        by_length.setdefault(len(context), []).append(context)
    for length in sorted(by_length, reverse=True):
        contexts = by_length[length]
        for start in range(0, len(contexts), batch_size):
            batch = contexts[start : start + batch_size]
            members = [(row, i) for row, context in enumerate(batch) for i in by_context[context]]
            continuations = [requests[i][1] for _, i in members]
            scored = _continuation_logprobs(model, batch, [row for row, _ in members], continuations)
            for (_, i), logprobs, continuation in zip(members, scored, continuations):
                targets = torch.tensor(continuation, device=logprobs.device)
                total = logprobs.gather(-1, targets[:, None]).sum().item()
                results[i] = (total, bool((logprobs.argmax(-1) == targets).all()))
            bar.update(len(members))


def _continuation_logprobs(model, contexts, rows: list[int], continuations: list[list[int]]) -> list[torch.Tensor]:
    """log-softmax [len(continuation), V] (fp32) of each continuation after contexts[rows[r]] (equal lengths)."""
    cache = DynamicCache(config=model.config)
    ids = torch.tensor(contexts, dtype=torch.long, device=model.device)
    last = model(ids, **with_cache(cache), use_cache=True, logits_to_keep=1).logits[:, -1]  # [C, V]
    first = F.log_softmax(last.float(), dim=-1).index_select(0, torch.tensor(rows, device=last.device))
    width = max(len(continuation) for continuation in continuations) - 1
    if width == 0:
        return [first[r, None] for r in range(len(rows))]
    cache.reorder_cache(torch.tensor(rows, device=model.device))
    rest = right_padded([continuation[:-1] for continuation in continuations], pad_id=0, device=model.device)
    logits = model(rest, **with_cache(cache), use_cache=True).logits  # [R, width, V]
    return [torch.cat([first[r, None], F.log_softmax(logits[r, : len(c) - 1].float(), dim=-1)])
            for r, c in enumerate(continuations)]


def _score_batch(
    model: PreTrainedModel, batch: list[tuple[list[int], list[int]]], max_length: int
) -> list[tuple[float, bool]]:
    """One forward over a right-padded batch; only logits from the earliest scored position on are computed."""
    if any(len(continuation) > max_length for _, continuation in batch):
        raise EvaluationError(f"a continuation is longer than the model's context ({max_length} tokens); shorten it")
    inputs = [(context + continuation)[-(max_length + 1) :][:-1] for context, continuation in batch]
    ids = right_padded(inputs, pad_id=0, device=model.device)  # [B, T]
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
    share_context: bool = True,
) -> list[tuple[float, bool]]:
    """lm-eval's `loglikelihood` for (context, continuation) strings: [(log-likelihood, is_greedy), ...]."""
    encoded = [encode_request(tokenizer, context, continuation) for context, continuation in requests]
    return loglikelihood_tokens(model, encoded, batch_size=batch_size, progress=progress, share_context=share_context)


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


def accuracy_standard_error(accuracy: float, n: int) -> float:
    """Binomial standard error of an accuracy measured on n examples."""
    return math.sqrt(max(accuracy * (1 - accuracy), 0.0) / n) if n else float("nan")
