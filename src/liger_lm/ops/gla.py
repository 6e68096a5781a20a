"""Gated linear attention with a per-key- or per-value-dimension log-decay, in pure PyTorch.

Per batch b and head h, in fp32:

    S_t = diag(exp(g_t)) · S_{t-1} + k_tᵀ v_t      S: [K, V], g_t <= 0: [K]   (`gla`)
    S_t = S_{t-1} · diag(exp(g_t)) + k_tᵀ v_t      S: [K, V], g_t <= 0: [V]   (`gla_value_decay`)
    o_t = q_t · S_t                                 o_t: [V]

Scale is 1 and there is no normaliser; a scalar-per-head decay is g expanded
over K (or V) by the caller, and then both forms coincide.
"""

import torch
import torch.nn.functional as F


def _initial_state(q, v, initial_state):
    batch, _, heads, key_dim = q.shape
    if initial_state is None:
        return q.new_zeros(batch, heads, key_dim, v.shape[-1], dtype=torch.float32)
    return initial_state.float()


def naive_recurrent_gla(q, k, v, g, initial_state=None):
    """Token-by-token GLA recurrence (reference, and the decode path).

    S_t = diag(exp(g_t)) · S_{t-1} + k_tᵀ v_t,  o_t = q_t · S_t,  S_0 = initial_state.

    Args:
        q, k, g: [B, T, H, K]; g is the log-decay (<= 0).
        v: [B, T, H, V].
        initial_state: [B, H, K, V] or None (zeros).

    Returns:
        o: [B, T, H, V] fp32, final_state S_T: [B, H, K, V] fp32.
    """
    state = _initial_state(q, v, initial_state)
    q, k, v, decay = q.float(), k.float(), v.float(), g.float().exp()
    o = v.new_empty(v.shape)
    for t in range(q.shape[1]):
        state = decay[:, t, :, :, None] * state + k[:, t, :, :, None] * v[:, t, :, None, :]
        o[:, t] = torch.einsum("bhk,bhkv->bhv", q[:, t], state)
    return o, state


def _to_chunks(x, chunk_size):
    """[B, T, H, D] -> [B, H, N, C, D], zero-padding T up to N·C."""
    x = F.pad(x.float(), (0, 0, 0, 0, 0, -x.shape[1] % chunk_size))
    return x.unflatten(1, (-1, chunk_size)).permute(0, 3, 1, 2, 4)


def _causal_decay(b):
    """exp(b_t − b_s) for s <= t and 0 for s > t: [B, H, N, C, C, D] from b [B, H, N, C, D]."""
    chunk_size = b.shape[-2]
    causal = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=b.device).tril()
    # b_t − b_s <= 0 for s <= t; masking s > t to −inf before exp keeps every exponent <= 0.
    log_decay = (b[..., :, None, :] - b[..., None, :, :]).masked_fill(~causal[..., None], float("-inf"))
    return log_decay.exp()


def _intra_chunk(q, k, v, b):
    """Σ_{s<=t in chunk} (Σ_d q_td k_sd exp(b_td − b_sd)) v_s, all inputs [B, H, N, C, *]."""
    scores = (q[..., :, None, :] * k[..., None, :, :] * _causal_decay(b)).sum(-1)
    return scores @ v


def _intra_chunk_value_decay(q, k, v, b):
    """Σ_{s<=t in chunk} (q_t·k_s) exp(b_t − b_s) ⊙ v_s; q, k [B, H, N, C, K], v, b [B, H, N, C, V]."""
    scores = q @ k.transpose(-1, -2)
    return (scores[..., None] * _causal_decay(b) * v[..., None, :, :]).sum(-2)


def _scan_chunks(k, v, b, state):
    """States entering each chunk [B, H, N, K, V] and the final state [B, H, K, V].

    Key-decay scan: b is [B, H, N, C, K]. Swapping k and v (b [B, H, N, C, V]) scans
    the transposed state Sᵀ of the value-decay recurrence instead.
    """
    b_last = b[..., -1:, :]
    # Each chunk's own contribution, decayed to its last token: exponent b_last − b_s <= 0.
    delta = (k * (b_last - b).exp()).transpose(-1, -2) @ v
    chunk_decay = b_last.exp().transpose(-1, -2)
    entering = []
    for n in range(k.shape[2]):
        entering.append(state)
        state = chunk_decay[:, :, n] * state + delta[:, :, n]
    return torch.stack(entering, dim=2), state


def chunk_gla(q, k, v, g, initial_state=None, chunk_size=16):
    """Chunked GLA: same result as `naive_recurrent_gla` in O(T·C·K) time and memory.

    S_t = diag(exp(g_t)) · S_{t-1} + k_tᵀ v_t,  o_t = q_t · S_t,  S_0 = initial_state.
    With b the inclusive cumsum of g inside a chunk and S_prev the state entering it:
        o_t = Σ_{s<=t in chunk} (Σ_d q_td k_sd exp(b_td − b_sd)) v_s + (q_t ⊙ exp(b_t)) · S_prev.
    Every exponent is <= 0, so strong decays underflow to 0 instead of overflowing.

    Args:
        q, k, g: [B, T, H, K]; g is the log-decay (<= 0).
        v: [B, T, H, V].
        initial_state: [B, H, K, V] or None (zeros).
        chunk_size: C, tokens per chunk.

    Returns:
        o: [B, T, H, V] fp32, final_state S_T: [B, H, K, V] fp32.
    """
    state = _initial_state(q, v, initial_state)
    length = q.shape[1]
    # Padding with q = k = v = g = 0 neither writes nor decays the state.
    q, k, v, g = (_to_chunks(x, chunk_size) for x in (q, k, v, g))
    b = g.cumsum(-2)
    entering, state = _scan_chunks(k, v, b, state)
    o = _intra_chunk(q, k, v, b) + (q * b.exp()) @ entering
    return o.permute(0, 2, 3, 1, 4).flatten(1, 2)[:, :length], state


def gla(q, k, v, g, initial_state=None, chunk_size=16):
    """GLA dispatcher: `naive_recurrent_gla` when T < chunk_size (decode), else `chunk_gla`.

    S_t = diag(exp(g_t)) · S_{t-1} + k_tᵀ v_t,  o_t = q_t · S_t,  S_0 = initial_state.
    q, k, g: [B, T, H, K]; v: [B, T, H, V]; initial_state: [B, H, K, V] or None.
    Returns o [B, T, H, V] fp32 and final_state [B, H, K, V] fp32.
    """
    if q.shape[1] < chunk_size:
        return naive_recurrent_gla(q, k, v, g, initial_state)
    return chunk_gla(q, k, v, g, initial_state, chunk_size)


def naive_recurrent_gla_value_decay(q, k, v, g, initial_state=None):
    """Token-by-token GLA recurrence with the decay on the value dim (reference, and the decode path).

    S_t = S_{t-1} · diag(exp(g_t)) + k_tᵀ v_t,  o_t = q_t · S_t,  S_0 = initial_state.

    Args:
        q, k: [B, T, H, K].
        v, g: [B, T, H, V]; g is the log-decay (<= 0), one per value column.
        initial_state: [B, H, K, V] or None (zeros).

    Returns:
        o: [B, T, H, V] fp32, final_state S_T: [B, H, K, V] fp32.
    """
    state = _initial_state(q, v, initial_state)
    q, k, v, decay = q.float(), k.float(), v.float(), g.float().exp()
    o = v.new_empty(v.shape)
    for t in range(q.shape[1]):
        state = state * decay[:, t, :, None, :] + k[:, t, :, :, None] * v[:, t, :, None, :]
        o[:, t] = torch.einsum("bhk,bhkv->bhv", q[:, t], state)
    return o, state


def chunk_gla_value_decay(q, k, v, g, initial_state=None, chunk_size=16):
    """Chunked value-decay GLA: same result as `naive_recurrent_gla_value_decay`
    in O(T·C·(K + V)) time and memory.

    S_t = S_{t-1} · diag(exp(g_t)) + k_tᵀ v_t,  o_t = q_t · S_t,  S_0 = initial_state.
    With b the inclusive cumsum of g inside a chunk and S_prev the state entering it:
        o_t = Σ_{s<=t in chunk} (q_t·k_s) exp(b_t − b_s) ⊙ v_s + exp(b_t) ⊙ (q_t · S_prev),
        S_next = S_prev · diag(exp(b_last)) + Σ_s k_sᵀ (v_s ⊙ exp(b_last − b_s)).
    Every exponent is <= 0, so strong decays underflow to 0 instead of overflowing.

    Args:
        q, k: [B, T, H, K].
        v, g: [B, T, H, V]; g is the log-decay (<= 0), one per value column.
        initial_state: [B, H, K, V] or None (zeros).
        chunk_size: C, tokens per chunk.

    Returns:
        o: [B, T, H, V] fp32, final_state S_T: [B, H, K, V] fp32.
    """
    state = _initial_state(q, v, initial_state)
    length = q.shape[1]
    # Padding with q = k = v = g = 0 neither writes nor decays the state.
    q, k, v, g = (_to_chunks(x, chunk_size) for x in (q, k, v, g))
    b = g.cumsum(-2)
    # Sᵀ: [V, K] follows the key-decay recurrence with k and v swapped.
    entering, state = _scan_chunks(v, k, b, state.transpose(-1, -2))
    o = _intra_chunk_value_decay(q, k, v, b) + b.exp() * (q @ entering.transpose(-1, -2))
    return o.permute(0, 2, 3, 1, 4).flatten(1, 2)[:, :length], state.transpose(-1, -2).contiguous()


def gla_value_decay(q, k, v, g, initial_state=None, chunk_size=16):
    """Value-decay GLA dispatcher: the naive recurrence when T < chunk_size (decode), else the chunked form.

    S_t = S_{t-1} · diag(exp(g_t)) + k_tᵀ v_t,  o_t = q_t · S_t,  S_0 = initial_state.
    q, k: [B, T, H, K]; v, g: [B, T, H, V]; initial_state: [B, H, K, V] or None.
    Returns o [B, T, H, V] fp32 and final_state [B, H, K, V] fp32.
    """
    if q.shape[1] < chunk_size:
        return naive_recurrent_gla_value_decay(q, k, v, g, initial_state)
    return chunk_gla_value_decay(q, k, v, g, initial_state, chunk_size)
