"""Sliding-window softmax attention with GQA, key validity and cached past keys.

The T queries are the last T of the S = P + T key positions. Query i (key index
P + i) attends to keys j with P + i − w < j <= P + i and key_valid[b, j]:

    o_i = Σ_j softmax_j(scale · q_i · k_j over allowed j) v_j

Query head h uses key/value head h // (H // Hkv), as transformers' repeat_kv.
"""

import torch
import torch.nn.functional as F


def _band_mask(num_queries, num_keys, window, device):
    """[Tq, Sk] bool: the queries sit at the last Tq key positions."""
    query_pos = torch.arange(num_queries, device=device)[:, None] + (num_keys - num_queries)
    key_pos = torch.arange(num_keys, device=device)
    return (key_pos <= query_pos) & (key_pos > query_pos - window)


def _attend(q, k, v, allowed, scale):
    """q [..., Tq, H, D], k/v [..., Sk, Hkv, D], allowed broadcastable to [..., Hkv, G, Tq, Sk]."""
    q_groups = q.float().unflatten(-2, (k.shape[-2], -1))
    scores = torch.einsum("...thgd,...shd->...hgts", q_groups, k.float()) * scale
    # A finite fill keeps rows with no allowed key NaN-free; multiplying by the mask zeroes them.
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    probs = scores.softmax(-1) * allowed
    out = torch.einsum("...hgts,...shd->...thgd", probs, v.float())
    return out.flatten(-3, -2).to(q.dtype)


def naive_sliding_window_attention(q, k, v, window, scale, key_valid=None):
    """Reference sliding-window attention with an explicit [T, S] mask (O(T·S)).

    o_i = Σ_j softmax_j(scale · q_i · k_j) v_j over P + i − w < j <= P + i with key_valid[b, j].

    Args:
        q: [B, T, H, D].
        k, v: [B, S, Hkv, D], S = P + T >= T, H a multiple of Hkv.
        window: w >= 1.
        scale: score multiplier.
        key_valid: [B, S] bool or None (all valid).

    Returns:
        [B, T, H, D] in q's dtype; queries with no allowed key give 0.
    """
    allowed = _band_mask(q.shape[1], k.shape[1], window, q.device)
    if key_valid is not None:
        allowed = allowed & key_valid[:, None, :]
    return _attend(q, k, v, allowed[..., None, None, :, :], scale)


def _pad_time(x, left, right):
    """Zero/False-pad dim 1 of a [B, S, ...] tensor."""
    return F.pad(x, (0, 0) * (x.dim() - 2) + (left, right))


def _pair_blocks(x, block):
    """[B, (N + 1)·w, ...] -> [B, N, 2w, ...]: each block next to the one before it."""
    x = x.unflatten(1, (-1, block))
    return torch.cat([x[:, :-1], x[:, 1:]], dim=2)


def _blocked_attention(q, k, v, window, scale, key_valid):
    """Query block n attends to key blocks n and n + 1 of [w keys before the queries, queries]: one fused SDPA call
    over all blocks, [B·N, H, w, D] queries against [B·N, Hkv, 2w, D] keys under a [w, 2w] band mask."""
    batch, length = q.shape[:2]
    past = k.shape[1] - length
    start, left, right = max(past - window, 0), max(window - past, 0), -length % window
    # Padded keys are marked invalid, so they are never attended.
    k, v, key_valid = (_pad_time(x[:, start:], left, right) for x in (k, v, key_valid))
    band = _band_mask(window, 2 * window, window, q.device)
    allowed = band & _pair_blocks(key_valid, window)[:, :, None, :]
    q_blocks = _pad_time(q, 0, right).unflatten(1, (-1, window)).flatten(0, 1)
    k_blocks, v_blocks = (_pair_blocks(x, window).flatten(0, 1) for x in (k, v))
    # A query whose band holds no valid key (left padding) gets 0 from SDPA, as from the reference.
    out = F.scaled_dot_product_attention(
        *(x.float().transpose(1, 2) for x in (q_blocks, k_blocks, v_blocks)),
        attn_mask=allowed.flatten(0, 1)[:, None], scale=scale, enable_gqa=q.shape[2] != k.shape[2],
    )
    return out.transpose(1, 2).unflatten(0, (batch, -1)).flatten(1, 2)[:, :length].to(q.dtype)


def _single_query_attention(q, k, v, scale, key_valid):
    """Decode step: one query whose window holds every key, as one fused SDPA call (fp32); None when some row
    has no valid key (the general path then returns 0 for it, where SDPA would give NaN).

    q: [B, 1, H, D]; k, v: [B, S, Hkv, D] with S <= w; key_valid: [B, S] bool or None.
    """
    mask = None
    if key_valid is not None and not bool(key_valid.all()):
        if not bool(key_valid.any(-1).all()):
            return None
        mask = key_valid[:, None, None, :]
    q_heads, k_heads, v_heads = (t.float().transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q_heads, k_heads, v_heads, attn_mask=mask, scale=scale,
                                         enable_gqa=q.shape[2] != k.shape[2])
    return out.transpose(1, 2).to(q.dtype)


def sliding_window_attention(q, k, v, window, scale, key_valid=None):
    """Sliding-window attention in O(T·w) time and memory (never a [T, S] tensor).

    o_i = Σ_j softmax_j(scale · q_i · k_j) v_j over P + i − w < j <= P + i with key_valid[b, j].

    Args:
        q: [B, T, H, D].
        k, v: [B, S, Hkv, D], S = P + T >= T, H a multiple of Hkv.
        window: w >= 1.
        scale: score multiplier.
        key_valid: [B, S] bool or None (all valid).

    Returns:
        [B, T, H, D] in q's dtype; queries with no allowed key give 0.
    """
    length = q.shape[1]
    if length == 1 and k.shape[1] <= window:
        out = _single_query_attention(q, k, v, scale, key_valid)
        if out is not None:
            return out
    if key_valid is None:
        key_valid = torch.ones(k.shape[:2], dtype=torch.bool, device=k.device)
    if length <= window:
        # No query reaches further back than the last T + w − 1 keys, so this band is O(T·w).
        start = max(k.shape[1] - (length + window - 1), 0)
        return naive_sliding_window_attention(q, k[:, start:], v[:, start:], window, scale, key_valid[:, start:])
    return _blocked_attention(q, k, v, window, scale, key_valid)
