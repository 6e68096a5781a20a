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
from transformers import PreTrainedModel, PreTrainedTokenizerBase

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
) -> list[tuple[float, bool]]:
    """(Σ log p(continuation tokens | context), continuation == greedy argmax) per (context ids, continuation ids).

    As lm-eval: the model sees (context + continuation)[-(max_length + 1):][:-1] and the last len(continuation)
    positions are scored. Requests run longest first in batches (order restored on return).

    Batches are RIGHT-padded with no attention mask, like lm-eval's HFLM: in a causal model (softmax or Liger
    recurrence alike) the logits at position t depend only on tokens ≤ t, so pads placed after the last scored
    position cannot change any scored logit, and every row keeps positions 0..T-1 as when run alone. Left padding
    would need position ids from the mask for plain HF models and a masked recurrent state for Liger models.
    """
    check_batch_size(batch_size)
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
) -> list[tuple[float, bool]]:
    """lm-eval's `loglikelihood` for (context, continuation) strings: [(log-likelihood, is_greedy), ...]."""
    encoded = [encode_request(tokenizer, context, continuation) for context, continuation in requests]
    return loglikelihood_tokens(model, encoded, batch_size=batch_size, progress=progress)


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
