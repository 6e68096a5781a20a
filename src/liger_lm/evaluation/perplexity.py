"""Perplexity of a text: one entry point, `perplexity`, with two window layouts.

- Sliding windows (the default; `liger eval --ppl`): Hugging Face's "perplexity of fixed-length models", counted
  exactly.
- Held-out (`long_context` given; `liger run`'s held-out prose and the scripts' tables): independent windows with a
  standard error, and the perplexity by position in long windows (of the same text, or of a long document given as
  `long_text`); `perplexity_ratio` pairs two such results over the short windows, `long_context_ratio` over blocks of
  the long ones.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..errors import EvaluationError
from .scoring import check_batch_size, right_padded

POSITION_BUCKETS = (64, 1024)  # token positions 0–64, 64–1,024, 1,024 and later (of a long context)
BLOCK = 256  # tokens per block of a long window, the unit `long_context_ratio` pairs (fewer where it does not divide)
HELD_OUT_TOKENS = 16_384  # tokens the held-out layout scores unless told
# `liger run`'s held-out prose layout (the scripts that reproduce its tables use it too)
HELD_OUT_WINDOWS = {"context": 1_024, "long_context": 4_096, "batch_size": 4}


@dataclass(frozen=True)
class PerplexityResult:
    """ppl = exp(nll); nll = mean next-token negative log-likelihood (nats) over `tokens` predicted tokens.

    The held-out layout also gives `nll_se` (standard error of that mean over its windows, so ppl · exp(±2·nll_se)
    is a ~95 % interval), the window lengths `context` and `long_context`, `by_position` (perplexity of the tokens at
    positions lo–hi of the long windows), `window_nll` (each window's mean NLL, which `perplexity_ratio` pairs) and
    `block_nll` (the mean NLL of each `block` tokens of each long window, [windows][blocks], which
    `long_context_ratio` pairs; block = gcd(`BLOCK`, long_context)).
    """

    ppl: float
    nll: float
    tokens: int
    nll_se: float | None = None
    context: int | None = None
    long_context: int | None = None
    by_position: dict[str, float] | None = None
    window_nll: list[float] | None = None
    block_nll: list[list[float]] | None = None
    block: int | None = None

    def to_dict(self) -> dict:
        """The fields this layout fills (the JSON of `liger eval --out` and of `liger run`'s eval/prose.json)."""
        return {name: value for name, value in asdict(self).items() if value is not None}


def perplexity(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    context: int = 1024,
    stride: int = 512,
    batch_size: int = 1,
    *,
    max_tokens: int | None = None,
    long_context: int | None = None,
    long_text: str | None = None,
) -> PerplexityResult:
    """Perplexity of `text`, tokenised without special tokens; `max_tokens` caps the tokens scored.

    Sliding windows (default): each of the len(ids) − 1 tokens after the first (or the first `max_tokens` of them) is
    predicted once, with up to `context` tokens of left context; windows move by `stride` (`sliding_windows`) and run
    `batch_size` at a time.

    Held-out (`long_context` given; `stride` unused): the first `max_tokens` (default 16,384) scored tokens are cut
    into independent windows of `context` + 1 tokens, each scoring its `context` next tokens from a fresh start;
    `nll_se` is the standard error of the mean over those windows. The first `max_tokens` tokens of `long_text` (default:
    the same text) are then read in windows of `long_context` + 1 tokens, and `by_position` gives the perplexity of the
    tokens at positions 0–64, 64–1,024 and 1,024–`long_context` of those windows: a model that forgets or breaks past
    its training length shows it there, and one that uses distant context gains there, if the text has any to use (a
    novel does; short passages one after another do not).
    """
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if long_context is not None:
        long_ids = ids if long_text is None else tokenizer(long_text, add_special_tokens=False)["input_ids"]
        return _held_out(model, ids, long_ids, max_tokens or HELD_OUT_TOKENS, context, long_context, batch_size)
    return _sliding(model, ids if max_tokens is None else ids[: max_tokens + 1], context, stride, batch_size)


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
def _sliding(model: PreTrainedModel, ids: list[int], context: int, stride: int, batch_size: int) -> PerplexityResult:
    if len(ids) < 2:
        raise EvaluationError("the text has fewer than 2 tokens; nothing to score — give a longer text")
    check_batch_size(batch_size)
    windows = sliding_windows(len(ids), context, stride)
    limit, longest = getattr(model.config, "max_position_embeddings", None), max(stop - start for start, stop, _ in windows)
    if limit and longest > limit:  # positions past the model's are untrained: the number would mean nothing
        raise EvaluationError(f"perplexity windows of {longest} tokens exceed the model's {limit} positions "
                              f"(max_position_embeddings); lower --context to {limit} or less")
    total_nll, counted = 0.0, 0
    for begin in range(0, len(windows), batch_size):
        batch = windows[begin : begin + batch_size]
        inputs = right_padded([ids[start:stop] for start, stop, _ in batch], pad_id=0, device=model.device)
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


def _held_out(
    model: PreTrainedModel, ids: list[int], long_ids: list[int], tokens: int, context: int, long_context: int,
    batch_size: int,
) -> PerplexityResult:
    if tokens < max(context, long_context):
        raise EvaluationError(f"{tokens} tokens do not fill at least one window of {max(context, long_context)}; "
                              "score more tokens or use shorter windows")
    for name, text_ids, width in (("evaluation text", ids, context), ("long text", long_ids, long_context)):
        if len(text_ids) < tokens // width * (width + 1):
            raise EvaluationError(f"the {name} has {len(text_ids)} tokens, fewer than the "
                                  f"{tokens // width * (width + 1)} needed; give a longer text or fewer tokens")
    short = torch.tensor(ids[: tokens // context * (context + 1)]).view(-1, context + 1)
    window_nll = torch.cat([_token_nll(model, rows) for rows in short.split(batch_size)]).mean(1)
    mean, se = window_nll.mean().item(), (window_nll.std() / math.sqrt(len(window_nll))).item()
    long = torch.tensor(long_ids[: tokens // long_context * (long_context + 1)]).view(-1, long_context + 1)
    token_nll = torch.cat([_token_nll(model, rows) for rows in long.split(1)])  # [windows, long_context]
    by_token = token_nll.mean(0)
    edges = (0, *(edge for edge in POSITION_BUCKETS if edge < long_context), long_context)
    by_position = {f"{lo}-{hi}": round(math.exp(by_token[lo:hi].mean().item()), 3) for lo, hi in zip(edges, edges[1:])}
    block = math.gcd(BLOCK, long_context)
    block_nll = token_nll.unflatten(1, (-1, block)).mean(-1)
    return PerplexityResult(ppl=round(math.exp(mean), 3), nll=round(mean, 5), tokens=len(window_nll) * context,
                            nll_se=round(se, 5), context=context, long_context=long_context, by_position=by_position,
                            window_nll=[round(x, 5) for x in window_nll.tolist()],
                            block_nll=[[round(x, 5) for x in row] for row in block_nll.tolist()], block=block)


@torch.no_grad()
def _token_nll(model: PreTrainedModel, ids: torch.Tensor, chunk: int = 512) -> torch.Tensor:
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


def perplexity_ratio(model_result: dict, base_result: dict) -> dict:
    """ppl(model) / ppl(base) on the same windows (held-out `perplexity` results as dicts, `to_dict()`), with the
    standard error of the log ratio from the paired per-window differences (much smaller than either perplexity's
    own error)."""
    return _paired(torch.tensor(model_result["window_nll"]) - torch.tensor(base_result["window_nll"]))


def long_context_ratio(model_result: dict, base_result: dict, start: int = POSITION_BUCKETS[-1]) -> dict:
    """ppl(model) / ppl(base) of the tokens at positions ≥ `start` of the long windows (a multiple of the results'
    `block`), with the standard error of the log ratio from the paired differences of those blocks (blocks of one
    window share their context, so this error is somewhat optimistic)."""
    if start % model_result["block"] or model_result["block"] != base_result["block"]:
        raise EvaluationError(f"cannot pair blocks of {model_result['block']} and {base_result['block']} tokens "
                              f"from position {start}")
    first = start // model_result["block"]
    model_blocks, base_blocks = (torch.tensor(r["block_nll"])[:, first:] for r in (model_result, base_result))
    return _paired((model_blocks - base_blocks).flatten())


def _paired(diffs: torch.Tensor) -> dict:
    """{"ratio": exp(mean), "log_ratio_se": its standard error} of paired NLL differences."""
    se = (diffs.std() / math.sqrt(len(diffs))).item() if len(diffs) > 1 else float("nan")
    return {"ratio": round(math.exp(diffs.mean().item()), 4), "log_ratio_se": round(se, 4)}
