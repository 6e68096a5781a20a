"""LoLCATs attention (arXiv 2410.10254): sliding-window softmax + linear attention sharing one normaliser.

The T queries are the last T of the S = P + T key positions; query i sits at position p = P + i. With
s_ij = scale · q_i · k_j, γ_h the window factor of head h, φ the (already applied) feature maps and (U₀, z₀) the
state of the keys before position 0:

    win(i) = {j : p − w < j ≤ p, key_valid[j]}            (the last w keys, softmax part)
    old(i) = {j : j ≤ p − w,     key_valid[j]}            (every older key, linear part)
    m_i    = max_{j ∈ win(i)} s_ij
    U_i    = U₀ + Σ_{j ∈ old(i)} φ(k_j)ᵀ v_j      [F, D]    z_i = z₀ + Σ_{j ∈ old(i)} φ(k_j)   [F]

    y_i = (γ Σ_{j ∈ win(i)} exp(s_ij − m_i) v_j + φ(q_i) U_i) / (γ Σ_{j ∈ win(i)} exp(s_ij − m_i) + φ(q_i) · z_i)

Numerics: m_i is part of the definition, not only a stability device. The linear term is *not* scaled by
exp(−m_i), so the balance between window and linear attention depends on m_i — exactly as in the LoLCATs reference
(`hybrid_attention_quadratic` and its decode step subtract the row max of the window scores only). Computing the
formula as written is already safe: every window weight exp(s_ij − m_i) ≤ 1 (no overflow), the top one is 1 (so
the denominator is ≥ γ for a query with any valid window key), and φ(·) ∈ (0, 1] keeps the linear sums bounded by
the key count. The one requirement is that m_i is the max over exactly win(i) (never a block or running max),
which both forms below guarantee with a band mask. A query with no valid key at all (left padding) gets 0.

Query head h uses key/value head h // (H // H_kv) (transformers' repeat_kv); the feature maps are per *query* head
(LoLCATs applies them after repeat_kv), so `k_feat` has H heads and the state is [B, H, F, D].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .blocks import pad_time, pair_blocks

State = tuple[torch.Tensor, torch.Tensor]  # (U [B, H, F, D], z [B, H, F]), fp32


def lolcats_attention(q, k, v, q_feat, k_feat, window_factor, window, scale, key_valid=None, initial_state=None):
    """LoLCATs attention in O(T·w) time and memory (never a [T, S] tensor); formula in the module docstring.

    Keys older than every query's window are folded into the state directly; for T ≤ w one banded block of
    [T, T + w] scores remains, otherwise queries run in blocks of w: block c's window covers parts of key blocks
    c − 1 and c (band masks), its linear part is the running state through block c − 2 (a prefix sum of per-block
    φ(k)ᵀ v) plus the band of block c − 1 below the window.

    Args:
        q: [B, T, H, D] queries (RoPE'd).
        k, v: [B, S, H_kv, D], S = P + T ≥ T: P past keys (e.g. a decode window buffer) then the T current ones.
        q_feat: [B, T, H, F] φ(q).
        k_feat: [B, S, H, F] φ(k) per query head. Only rows j ≤ S − w are read (keys that are, or become, older than
            the window: the only ones the linear part and the new state ever use), so callers may leave the last
            w − 1 rows as zeros instead of computing them.
        window_factor: [H] γ, in (0, 1] (σ of the learned logit).
        window: w ≥ 1, window size including the current token.
        scale: score multiplier (1/√D).
        key_valid: [B, S] bool or None (all valid); invalid keys are in neither part nor the new state.
        initial_state: (U₀ [B, H, F, D], z₀ [B, H, F]) for the keys before position 0, or None (zeros).

    Returns:
        y [B, T, H, D] in q's dtype, and the new state (U, z) fp32 over every valid key j ≤ S − w (all but the last
        w − 1 keys, which a decode cache keeps in its window buffer).
    """
    k, v, k_feat, key_valid, state = _prepare(k, v, k_feat, window, key_valid, initial_state, q.shape[2])
    # Keys at or before P − w − 1 are old for every query: fold them into the state right away.
    early = max(k.shape[1] - q.shape[1] - window, 0)
    state = _fold(state, k_feat[:, :early], v[:, :early])
    k, v, k_feat, key_valid = (x[:, early:] for x in (k, v, k_feat, key_valid))
    q_feat, gamma = q_feat.float(), window_factor.float()
    if q.shape[1] <= window:
        out = _mix(q, k, v, q_feat, k_feat, key_valid, gamma, window, scale, state)
        return out.to(q.dtype), _fold(state, k_feat, v)
    out, state = _blocked(q, k, v, q_feat, k_feat, key_valid, gamma, window, scale, state)
    return out.to(q.dtype), state


def naive_lolcats_attention(q, k, v, q_feat, k_feat, window_factor, window, scale, key_valid=None, initial_state=None):
    """Reference: one query at a time, folding each key into (U, z) as it leaves the window (same args/returns as
    `lolcats_attention`; O(T·S), for tests)."""
    batch, length, heads, _ = q.shape
    total = k.shape[1]
    groups = heads // k.shape[2]
    k, v = (x.float().repeat_interleave(groups, dim=2) for x in (k, v))
    valid = torch.ones(k.shape[:2], dtype=torch.bool, device=k.device) if key_valid is None else key_valid
    if initial_state is None:
        u = q.new_zeros(batch, heads, k_feat.shape[-1], v.shape[-1], dtype=torch.float32)
        z = q.new_zeros(batch, heads, k_feat.shape[-1], dtype=torch.float32)
    else:
        u, z = (s.float() for s in initial_state)
    gamma = window_factor.float()[None, :, None]
    outputs, next_fold = [], 0

    def fold_until(position):
        nonlocal u, z, next_fold
        while next_fold <= position:
            keep = valid[:, next_fold, None, None].float()
            phi = k_feat[:, next_fold].float() * keep
            u = u + phi[..., :, None] * v[:, next_fold, :, None, :]
            z = z + phi
            next_fold += 1

    for i in range(length):
        position = total - length + i
        fold_until(position - window)
        in_window = torch.zeros(total, dtype=torch.bool, device=k.device)
        in_window[max(position - window + 1, 0) : position + 1] = True
        allowed = (in_window[None] & valid)[:, None, :]  # [B, 1, S]
        scores = torch.einsum("bhd,bshd->bhs", q[:, i].float(), k) * scale
        top = scores.masked_fill(~allowed, float("-inf")).amax(-1, keepdim=True)
        top = torch.where(allowed.any(-1, keepdim=True), top, 0.0)
        weights = torch.where(allowed, gamma * torch.exp(scores - top), 0.0)
        phi_q = q_feat[:, i].float()
        numerator = torch.einsum("bhs,bshd->bhd", weights, v) + torch.einsum("bhf,bhfd->bhd", phi_q, u)
        denominator = weights.sum(-1) + (phi_q * z).sum(-1)
        safe = torch.where(denominator > 0, denominator, 1.0)
        outputs.append(numerator / safe[..., None])
    fold_until(total - window)
    return torch.stack(outputs, dim=1).to(q.dtype), (u, z)


def _prepare(k, v, k_feat, window, key_valid, initial_state, heads):
    """fp32 copies with invalid keys zeroed (and φ(k) zeroed outside rows ≤ S − w), plus a zero state if None."""
    batch, total = k.shape[:2]
    if key_valid is None:
        key_valid = torch.ones(batch, total, dtype=torch.bool, device=k.device)
    leaving = key_valid & (torch.arange(total, device=k.device) <= total - window)
    k_feat = torch.where(leaving[..., None, None], k_feat.float(), 0.0)
    v = torch.where(key_valid[..., None, None], v.float(), 0.0)
    if initial_state is None:
        features, dim = k_feat.shape[-1], v.shape[-1]
        initial_state = (
            v.new_zeros(batch, heads, features, dim),
            v.new_zeros(batch, heads, features),
        )
    return k.float(), v, k_feat, key_valid, tuple(s.float() for s in initial_state)


def _grouped(x, kv_heads, dim):
    """Split head dim `dim` (H) into (H_kv, G)."""
    return x.unflatten(dim, (kv_heads, -1))


def _fold(state: State, k_feat, v) -> State:
    """(U + Σ_s φ(k_s)ᵀ v_s, z + Σ_s φ(k_s)) over dim −3 (time) of k_feat [..., S, H, F], v [..., S, H_kv, D]."""
    u, z = state
    if k_feat.shape[-3] == 0:
        return u, z
    kv_heads = v.shape[-2]
    added = torch.einsum("...shgf,...shd->...hgfd", _grouped(k_feat, kv_heads, -2), v)
    return u + added.flatten(-4, -3), z + k_feat.sum(-3)


def _mix(q, k, v, q_feat, k_feat, key_valid, gamma, window, scale, state: State):
    """The formula for queries at the last Tq of Sk key positions, all linear keys before them already in `state`
    except those inside this band.

    q [..., Tq, H, D], k/v [..., Sk, H_kv, D], q_feat [..., Tq, H, F], k_feat [..., Sk, H, F] (zero where not
    leaving), key_valid [..., Sk], gamma [H], state (U [..., H, F, D], z [..., H, F]) → y [..., Tq, H, D] fp32.
    """
    queries, keys = q.shape[-3], k.shape[-3]
    kv_heads = k.shape[-2]
    query_pos = torch.arange(queries, device=q.device)[:, None] + (keys - queries)
    key_pos = torch.arange(keys, device=q.device)
    in_window = (key_pos <= query_pos) & (key_pos > query_pos - window) & key_valid[..., None, :]  # [..., Tq, Sk]
    in_window = in_window[..., None, None, :, :]  # [..., H_kv, G, Tq, Sk]

    q_g, qf_g = _grouped(q.float(), kv_heads, -2), _grouped(q_feat, kv_heads, -2)  # [..., Tq, H_kv, G, *]
    scores = torch.einsum("...thgd,...shd->...hgts", q_g, k) * scale
    # A finite fill keeps rows without any valid key NaN-free (their weights are then zeroed by the mask).
    scores = scores.masked_fill(~in_window, torch.finfo(scores.dtype).min)
    top = scores.amax(-1, keepdim=True)  # m_i: the max over exactly the window keys
    weights = gamma.view(kv_heads, -1, 1, 1) * torch.exp(scores - top) * in_window

    # Only the first Sk − w keys can be older than the window of a query in this band.
    num_old = max(keys - window, 0)
    is_old = key_pos[:num_old] <= query_pos - window  # [Tq, num_old]
    old_feat = _grouped(k_feat[..., :num_old, :, :], kv_heads, -2)
    linear = torch.einsum("...thgf,...shgf->...hgts", qf_g, old_feat) * is_old

    u, z = _grouped(state[0], kv_heads, -3), _grouped(state[1], kv_heads, -2)
    numerator = (
        torch.einsum("...hgts,...shd->...thgd", weights, v)
        + torch.einsum("...hgts,...shd->...thgd", linear, v[..., :num_old, :, :])
        + torch.einsum("...thgf,...hgfd->...thgd", qf_g, u)
    )
    denominator = (weights.sum(-1) + linear.sum(-1)).movedim(-1, -3) + torch.einsum("...thgf,...hgf->...thg", qf_g, z)
    safe = torch.where(denominator > 0, denominator, 1.0)  # 0 only with no valid key at all, where numerator = 0
    return (numerator / safe[..., None]).flatten(-3, -2)




def _blocked(q, k, v, q_feat, k_feat, key_valid, gamma, window, scale, state: State):
    """T > w, P ≤ w past keys: query block n against key blocks n, n + 1 of [w keys before the queries, queries],
    with the state through key block n − 1 (inclusive prefix sums of per-block φ(k)ᵀ v, shifted by one)."""
    length, past = q.shape[1], k.shape[1] - q.shape[1]
    left, right = window - past, -length % window
    # Padded keys are invalid with zero φ(k) and v, so they count nowhere.
    k, v, k_feat, key_valid = (pad_time(x, left, right) for x in (k, v, k_feat, key_valid))
    q_blocks, qf_blocks = (pad_time(x, 0, right).unflatten(1, (-1, window)) for x in (q, q_feat))

    # Per key block: Σ φ(k)ᵀ v [B, N + 1, H, F, D] and Σ φ(k) [B, N + 1, H, F].
    block_u, block_z = _fold((0.0, 0.0), k_feat.unflatten(1, (-1, window)), v.unflatten(1, (-1, window)))
    cum_u, cum_z = block_u.cumsum(1), block_z.cumsum(1)
    before_u = state[0][:, None] + F.pad(cum_u[:, :-2], (0, 0) * 3 + (1, 0))  # [B, N, H, F, D]
    before_z = state[1][:, None] + F.pad(cum_z[:, :-2], (0, 0) * 2 + (1, 0))

    k_pairs, v_pairs, kf_pairs, valid_pairs = (pair_blocks(x, window) for x in (k, v, k_feat, key_valid))
    out = _mix(q_blocks, k_pairs, v_pairs, qf_blocks, kf_pairs, valid_pairs, gamma, window, scale, (before_u, before_z))
    final = (state[0] + cum_u[:, -1], state[1] + cum_z[:, -1])
    return out.flatten(1, 2)[:, :length], final
