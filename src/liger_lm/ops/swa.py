"""Sliding-window softmax attention with GQA, key validity, cached past keys and attention sinks.

The T queries are the last T of the S = P + T key positions. Query i (key index
P + i) attends to keys j with P + i − w < j <= P + i and key_valid[b, j]:

    o_i = Σ_j softmax_j(scale · q_i · k_j over allowed j) v_j

With `sinks` = n (StreamingLLM, arXiv 2309.17453; docs/method.md §1), every query also attends to the first n real
(valid) keys of its sequence, wherever they are: the allowed set becomes band ∪ {sink j ≤ P + i}. The fast form
receives the sinks as a separate small set of keys (`Sinks`) with their stream positions, so a decode cache can
keep them after they left the window buffer.

Query head h uses key/value head h // (H // Hkv), as transformers' repeat_kv.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .blocks import pad_time, pair_blocks

BEFORE_STREAM = -(2**30)  # position of a sink key kept from an earlier call: before every key of the stream


class Sinks(NamedTuple):
    """Sink keys outside the band of some query: keys, values [B, G, Hkv, D], positions [B, G] (index in the key
    stream; BEFORE_STREAM for keys from earlier calls), valid [B, G] bool."""

    keys: torch.Tensor
    values: torch.Tensor
    positions: torch.Tensor
    valid: torch.Tensor


def sink_mask(key_valid: torch.Tensor, sinks: int, real_before: torch.Tensor | None = None) -> torch.Tensor:
    """[B, S] bool: the keys among the first `sinks` real keys of their sequence.

    key_valid: [B, S] bool; real_before: [B] long, real tokens of the sequence before this stream (None: 0).
    """
    real_index = key_valid.long().cumsum(1) - 1
    if real_before is not None:
        real_index = real_index + real_before[:, None]
    return key_valid & (real_index < sinks)


def gather_sinks(k, v, key_valid, sinks: int, real_before=None, stored: Sinks | None = None) -> Sinks:
    """The sinks of a key stream (at most `sinks` per row, in order), after `stored` ones from earlier calls.

    k, v: [B, S, Hkv, D]; key_valid: [B, S] bool; real_before: [B] long (see `sink_mask`).
    """
    is_sink = sink_mask(key_valid, sinks, real_before)
    order = _first_flagged(is_sink, sinks)
    found = Sinks(_take(k, order), _take(v, order), order, is_sink.gather(1, order))
    return found if stored is None else Sinks(*(torch.cat(pair, dim=1) for pair in zip(stored, found)))


def keep_sinks(sinks: Sinks, count: int) -> Sinks:
    """The first `count` valid sinks of each row, marked as lying before any later key stream (a decode cache's)."""
    order = _first_flagged(sinks.valid, count)
    return Sinks(_take(sinks.keys, order), _take(sinks.values, order), torch.full_like(order, BEFORE_STREAM),
                 sinks.valid.gather(1, order))


def _first_flagged(flags: torch.Tensor, count: int) -> torch.Tensor:
    """[B, count] indices: each row's flagged positions first, in order (a stable sort), then unflagged ones."""
    return torch.sort((~flags).to(torch.uint8), dim=1, stable=True).indices[:, :count]


def _take(x, index):
    """x [B, S, ...] rows at index [B, G] → [B, G, ...]."""
    return x.gather(1, index.view(*index.shape, *(1,) * (x.dim() - 2)).expand(*index.shape, *x.shape[2:]))


def group_scores(q_groups: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """s[b, h, g, j] = q[b, h, g] · k[b, j, h] for one query per row and head (a decode step), fp32: one batched
    matmul, or for a few keys while compiling products and sums (`_few_keys`).

    q_groups: [B, Hkv, G, D] (query head h·G + g); keys: [B, S, Hkv, D]. Returns [B, Hkv, G, S].
    """
    if _few_keys(keys):
        return (q_groups.float()[:, :, :, None, :] * keys.float().permute(0, 2, 1, 3)[:, :, None]).sum(-1)
    return q_groups.float() @ keys.float().permute(0, 2, 3, 1)


def group_weighted_values(weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """o[b, h, g] = Σ_j w[b, h, g, j] v[b, j, h], the counterpart of `group_scores`, fp32.

    weights: [B, Hkv, G, S]; values: [B, S, Hkv, D]. Returns [B, Hkv, G, D].
    """
    if _few_keys(values):
        return (weights.float()[..., None] * values.float().permute(0, 2, 1, 3)[:, :, None]).sum(-2)
    return weights.float() @ values.float().transpose(1, 2)


FEW_KEYS = 16


def _few_keys(keys: torch.Tensor) -> bool:
    """Whether a decode step's product over `keys` [B, S, ...] goes through products and sums: while compiling and
    for at most `FEW_KEYS` keys (the sinks and the token leaving the window), which inductor fuses into the kernels
    around them; a `bmm` call there costs more than its few products."""
    return torch.compiler.is_compiling() and keys.shape[1] <= FEW_KEYS


def _band_mask(num_queries, num_keys, window, device):
    """[Tq, Sk] bool: the queries sit at the last Tq key positions."""
    query_pos = torch.arange(num_queries, device=device)[:, None] + (num_keys - num_queries)
    key_pos = torch.arange(num_keys, device=device)
    return (key_pos <= query_pos) & (key_pos > query_pos - window)


def _attend(q, k, v, allowed, scale, with_lse: bool = False):
    """q [..., Tq, H, D], k/v [..., Sk, Hkv, D], allowed broadcastable to [..., Hkv, G, Tq, Sk] (None: every key).

    With `with_lse` also the log-sum-exp of each query's allowed scores [..., Tq, H] (fp32; a very negative finite
    number where no key is allowed). Without gradients on a CPU this runs PyTorch's fused flash kernel
    (`_flash_attend`); with them, the einsum form (`_einsum_attend`), whose log-sum-exp is differentiable (the
    `combine="shared"` mixing trains through it)."""
    if _flash_applies(q, k, v, allowed):
        return _flash_attend(q, k, v, allowed, scale, with_lse)
    return _einsum_attend(q, k, v, allowed, scale, with_lse)


def _einsum_attend(q, k, v, allowed, scale, with_lse: bool = False):
    """`_attend` in plain ops: softmax and log-sum-exp from one exponential, normalised on the output (D wide)
    rather than on the scores (Sk wide): each pass over a [.., 128, 260] score block costs as much as a projection."""
    q_groups = (q.float() * scale).unflatten(-2, (k.shape[-2], -1))
    scores = torch.einsum("...thgd,...shd->...hgts", q_groups, k.float())
    if allowed is not None:
        # A finite fill keeps rows with no allowed key NaN-free: their peak is this fill, and they are zeroed below.
        scores = scores.masked_fill_(~allowed, torch.finfo(scores.dtype).min)
    peak = scores.amax(-1, keepdim=True).detach()  # any constant per row gives the same softmax and log-sum-exp
    weights = scores.sub_(peak).exp_()
    total = weights.sum(-1, keepdim=True)
    out = torch.einsum("...hgts,...shd->...hgtd", weights, v.float()) / total
    if allowed is not None:
        out = out * (peak > torch.finfo(peak.dtype).min)
    out = out.movedim(-2, -4).flatten(-3, -2).to(q.dtype)  # [..., Hkv, G, Tq, D] → [..., Tq, H, D]
    if not with_lse:
        return out
    lse = (peak + total.log()).squeeze(-1).movedim(-1, -3).flatten(-2, -1)  # [..., Hkv, G, Tq] → [..., Tq, H]
    return out, lse


_FLASH = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _flash_applies(q, k, v, allowed) -> bool:
    """PyTorch's CPU flash-attention kernel returns the log-sum-exp too, but not its gradient: use it where no
    gradient is wanted (evaluation, generation), for masks shared by a query's heads."""
    wants_grad = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))
    shared_mask = allowed is None or allowed.shape[-4:-2] == (1, 1)
    return _FLASH is not None and q.device.type == "cpu" and not wants_grad and shared_mask


def _flash_attend(q, k, v, allowed, scale, with_lse: bool = False):
    """`_attend` through `aten._scaled_dot_product_flash_attention_for_cpu` (fp32, keys repeated to the query heads,
    the mask as an additive bias with a finite fill so a row with no allowed key stays finite; it is zeroed)."""
    lead, (length, heads, dim), keys = q.shape[:-3], q.shape[-3:], k.shape[-3]
    group = heads // k.shape[-2]
    q_heads = q.float().reshape(-1, length, heads, dim).transpose(1, 2)
    k_heads, v_heads = (x.float().reshape(-1, keys, x.shape[-2], dim).repeat_interleave(group, dim=2).transpose(1, 2)
                        for x in (k, v))
    bias = None
    if allowed is not None:
        mask = allowed.squeeze(-4).expand(*lead, 1, length, keys).reshape(-1, 1, length, keys)
        bias = torch.zeros(mask.shape, dtype=torch.float32, device=q.device)
        bias.masked_fill_(~mask, torch.finfo(torch.float32).min)
    out, lse = _FLASH(q_heads, k_heads, v_heads, 0.0, False, attn_mask=bias, scale=scale)
    if allowed is not None:
        out = out * mask.any(-1, keepdim=True)
    out = out.transpose(1, 2).reshape(*lead, length, heads, dim).to(q.dtype)
    return (out, lse.transpose(1, 2).reshape(*lead, length, heads)) if with_lse else out


def naive_sliding_window_attention(q, k, v, window, scale, key_valid=None, sinks=0, with_lse=False):
    """Reference sliding-window attention with an explicit [T, S] mask (O(T·S)).

    o_i = Σ_j softmax_j(scale · q_i · k_j) v_j over (P + i − w < j <= P + i, or j a sink <= P + i)
    with key_valid[b, j]; the sinks are the first `sinks` valid keys of the stream.

    Args:
        q: [B, T, H, D].
        k, v: [B, S, Hkv, D], S = P + T >= T, H a multiple of Hkv.
        window: w >= 1.
        scale: score multiplier.
        key_valid: [B, S] bool or None (all valid).
        sinks: n >= 0 sink keys per sequence.
        with_lse: also return the log-sum-exp of each query's allowed scores [B, T, H] (fp32).

    Returns:
        [B, T, H, D] in q's dtype; queries with no allowed key give 0.
    """
    allowed = _band_mask(q.shape[1], k.shape[1], window, q.device)
    if key_valid is None:
        key_valid = torch.ones(k.shape[:2], dtype=torch.bool, device=k.device)
    if sinks:
        causal = _band_mask(q.shape[1], k.shape[1], k.shape[1], q.device)
        allowed = allowed | (causal & sink_mask(key_valid, sinks)[:, None, :])
    allowed = allowed & key_valid[:, None, :]
    return _attend(q, k, v, allowed[..., None, None, :, :], scale, with_lse)




def _sink_allowed(sinks: Sinks, query_pos: torch.Tensor, window: int) -> torch.Tensor:
    """[B, Tq, G] bool: a sink is attended where it is valid and left of the query's band (inside it, the band has it)."""
    return sinks.valid[:, None, :] & (sinks.positions[:, None, :] <= query_pos[None, :, None] - window)


def _blocked_attention(q, k, v, window, scale, key_valid, sinks: Sinks | None, with_lse: bool = False):
    """Query block n attends to key blocks n and n + 1 of [w keys before the queries, queries] (and to the G sink
    keys): one fused SDPA call over all blocks, [B·N, H, w, D] queries against [B·N, Hkv, G + 2w, D] keys under a
    [w, G + 2w] mask."""
    batch, length = q.shape[:2]
    past = k.shape[1] - length
    start, left, right = max(past - window, 0), max(window - past, 0), -length % window
    # Padded keys are marked invalid, so they are never attended.
    k, v, key_valid = (pad_time(x[:, start:], left, right) for x in (k, v, key_valid))
    band = _band_mask(window, 2 * window, window, q.device)
    allowed = band & pair_blocks(key_valid, window)[:, :, None, :]
    q_blocks = pad_time(q, 0, right).unflatten(1, (-1, window)).flatten(0, 1)
    k_blocks, v_blocks = (pair_blocks(x, window) for x in (k, v))
    if sinks is not None:
        blocks = allowed.shape[1]
        query_pos = past + torch.arange(blocks * window, device=q.device)
        sink_allowed = _sink_allowed(sinks, query_pos, window).unflatten(1, (blocks, window))
        allowed = torch.cat([sink_allowed, allowed], dim=-1)
        k_blocks, v_blocks = (torch.cat([s[:, None].expand(-1, blocks, *s.shape[1:]), x], dim=2)
                              for s, x in ((sinks.keys, k_blocks), (sinks.values, v_blocks)))
    k_blocks, v_blocks = k_blocks.flatten(0, 1), v_blocks.flatten(0, 1)
    if with_lse:  # the same blocks through the einsum form, which also gives the log-sum-exp
        out, lse = _attend(q_blocks, k_blocks, v_blocks, allowed.flatten(0, 1)[:, None, None], scale, True)
        unblock = lambda x: x.unflatten(0, (batch, -1)).flatten(1, 2)[:, :length]  # noqa: E731
        return unblock(out), unblock(lse)
    # A query whose band holds no valid key (left padding) gets 0 from SDPA, as from the reference.
    out = F.scaled_dot_product_attention(
        *(x.float().transpose(1, 2) for x in (q_blocks, k_blocks, v_blocks)),
        attn_mask=allowed.flatten(0, 1)[:, None], scale=scale, enable_gqa=bool(q.shape[2] != k.shape[2]),
    )
    return out.transpose(1, 2).unflatten(0, (batch, -1)).flatten(1, 2)[:, :length].to(q.dtype)


def _single_query_attention(q, k, v, scale, key_valid, sinks: Sinks | None, with_lse: bool = False):
    """Decode step: one query whose window holds every key (and the sinks from before the stream).

    Without `with_lse`, one fused SDPA call (fp32), or None when some row has no valid key (the general path then
    returns 0 for it, where SDPA would give NaN); with it, the einsum form (`_attend`), which also gives the
    log-sum-exp and handles such rows itself. Either way no band mask is built: every key is in the window.

    q: [B, 1, H, D]; k, v: [B, S, Hkv, D] with S <= w; key_valid: [B, S] bool or None.
    """
    if sinks is not None:
        if key_valid is None:
            key_valid = torch.ones(k.shape[:2], dtype=torch.bool, device=k.device)
        before = sinks.valid & (sinks.positions < 0)
        k, v = torch.cat([sinks.keys, k], dim=1), torch.cat([sinks.values, v], dim=1)
        key_valid = torch.cat([before, key_valid], dim=1)
    # Both data-dependent checks would split a compiled graph, and neither is needed there: `compiled_decode` only
    # compiles steps whose current key is real, so every row has a valid key, and the mask is exact when all are.
    checks = not torch.compiler.is_compiling()
    if checks and key_valid is not None and bool(key_valid.all()):
        key_valid = None
    if with_lse:
        allowed = None if key_valid is None else key_valid[:, None, None, None, :]
        return _attend(q, k, v, allowed, scale, True)
    mask = None
    if key_valid is not None:
        if checks and not bool(key_valid.any(-1).all()):
            return None
        mask = key_valid[:, None, None, :]
    q_heads, k_heads, v_heads = (t.float().transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q_heads, k_heads, v_heads, attn_mask=mask, scale=scale,
                                         enable_gqa=bool(q.shape[2] != k.shape[2]))  # a SymBool when compiled
    return out.transpose(1, 2).to(q.dtype)


def sliding_window_attention(q, k, v, window, scale, key_valid=None, sinks: Sinks | None = None, with_lse=False):
    """Sliding-window attention in O(T·(w + G)) time and memory (never a [T, S] tensor).

    o_i = Σ_j softmax_j(scale · q_i · k_j) v_j over P + i − w < j <= P + i with key_valid[b, j], and over the
    sink keys left of that band.

    Args:
        q: [B, T, H, D].
        k, v: [B, S, Hkv, D], S = P + T >= T, H a multiple of Hkv.
        window: w >= 1.
        scale: score multiplier.
        key_valid: [B, S] bool or None (all valid).
        sinks: G sink keys with their positions in the stream (`gather_sinks`), or None.
        with_lse: also return the log-sum-exp of each query's allowed scores [B, T, H] (fp32).

    Returns:
        [B, T, H, D] in q's dtype; queries with no allowed key give 0.
    """
    length = q.shape[1]
    if length == 1 and k.shape[1] <= window:
        out = _single_query_attention(q, k, v, scale, key_valid, sinks, with_lse)
        if out is not None:
            return out
    if key_valid is None:
        key_valid = torch.ones(k.shape[:2], dtype=torch.bool, device=k.device)
    if length <= window:
        # No query reaches further back than the last T + w − 1 keys, so this band is O(T·w).
        start = max(k.shape[1] - (length + window - 1), 0)
        k, v, key_valid = k[:, start:], v[:, start:], key_valid[:, start:]
        allowed = _band_mask(length, k.shape[1], window, q.device) & key_valid[:, None, :]
        if sinks is not None:
            query_pos = start + k.shape[1] - length + torch.arange(length, device=q.device)
            allowed = torch.cat([_sink_allowed(sinks, query_pos, window), allowed], dim=-1)
            k, v = torch.cat([sinks.keys, k], dim=1), torch.cat([sinks.values, v], dim=1)
        return _attend(q, k, v, allowed[..., None, None, :, :], scale, with_lse)
    return _blocked_attention(q, k, v, window, scale, key_valid, sinks, with_lse)
