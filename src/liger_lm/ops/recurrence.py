"""Gated linear attention with a per-key- or per-value-dimension log-decay, in pure PyTorch.

Per batch b and head h, in fp32:

    S_t = diag(exp(g_t)) · S_{t-1} + k_tᵀ v_t      S: [K, V], g_t <= 0: [K]   (`gla`)
    S_t = S_{t-1} · diag(exp(g_t)) + k_tᵀ v_t      S: [K, V], g_t <= 0: [V]   (`gla_value_decay`)
    o_t = q_t · S_t                                 o_t: [V]

Scale is 1 and there is no normaliser; a scalar-per-head decay is g expanded
over K (or V) by the caller, and then both forms coincide.
"""

import functools

import torch
import torch.nn.functional as F

from .fla_backend import fla_gla, fla_gla_value_decay, fla_selected


def fp32_ops(fn):
    """Run an op with autocast off: the state and scores stay fp32 under bf16 autocast (the projections around
    the op still get autocast's speed)."""

    @functools.wraps(fn)
    def without_autocast(q, *args, **kwargs):
        with torch.autocast(q.device.type, enabled=False):
            return fn(q, *args, **kwargs)

    return without_autocast


def _initial_state(q, v, initial_state):
    batch, _, heads, key_dim = q.shape
    if initial_state is None:
        return q.new_zeros(batch, heads, key_dim, v.shape[-1], dtype=torch.float32)
    return initial_state.float()


@fp32_ops
def naive_recurrent_gla(q, k, v, g, initial_state=None):
    """Token-by-token GLA recurrence (the reference).

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


def _step_by_step(q, k, v, g, initial_state, decay_on_value):
    """T < chunk_size tokens (decode, short prompts): `_single_step` per token, ~10 ops each where the reference
    loop's indexed writes and einsums take ~25 (a decode step is bound by op dispatch, not arithmetic).

    Shapes and result as `naive_recurrent_gla` (decay on K) or `naive_recurrent_gla_value_decay` (on V).
    """
    if q.shape[1] == 0:
        return v.new_zeros(v.shape, dtype=torch.float32), _initial_state(q, v, initial_state)
    state, outputs = initial_state, []
    for t in range(q.shape[1]):
        token = slice(t, t + 1)
        out, state = _single_step(q[:, token], k[:, token], v[:, token], g[:, token], state, decay_on_value)
        outputs.append(out)
    return (outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)), state


def _single_step(q, k, v, g, initial_state, decay_on_value):
    """One decode token in a few fused ops: S = a ⊙ S_prev + kᵀ v,  o = q S  (a = exp(g) on K or on V).

    q, k: [B, 1, H, K]; v: [B, 1, H, V]; g: [B, 1, H, K] (or [B, 1, H, V] with decay_on_value).
    Returns o [B, 1, H, V] fp32 and S [B, H, K, V] fp32.
    """
    state = _initial_state(q, v, initial_state)
    decay = g[:, 0].float().exp()
    decay = decay[..., None, :] if decay_on_value else decay[..., None]
    state = torch.addcmul(state * decay, k[:, 0, :, :, None].float(), v[:, 0, :, None, :].float())
    out = q[:, 0, :, None, :].float() @ state
    return out.transpose(1, 2), state


def _to_chunks(x, chunk_size):
    """[B, T, H, D] -> [N, B·H, C, D] contiguous fp32, zero-padding T up to N·C (one chunk = one batched matmul)."""
    padding = -x.shape[1] % chunk_size
    if padding:
        x = F.pad(x, (0, 0, 0, 0, 0, padding))
    batch, _, heads, dim = x.shape
    chunks = x.unflatten(1, (-1, chunk_size)).permute(1, 0, 3, 2, 4)
    return chunks.reshape(-1, batch * heads, chunk_size, dim).float()


def _from_chunks(x, batch, length):
    """[N, B·H, C, V] -> [B, T, H, V], dropping the padding."""
    chunks, _, chunk_size, dim = x.shape
    x = x.view(chunks, batch, -1, chunk_size, dim).permute(1, 0, 3, 2, 4)
    return x.reshape(batch, chunks * chunk_size, -1, dim)[:, :length]


# Within a chunk whose cumulative log-decay stays above −MATMUL_LOG_RANGE, exp(−b) <= e^40 and exp(b) >= e^−40 are
# comfortably inside fp32, so scores factor into one matmul: Σ_d (q_td e^{b_td}) (k_sd e^{−b_sd}). Chunks that decay
# faster fall back to the pairwise form, whose exponents b_t − b_s are all <= 0.
MATMUL_LOG_RANGE = 40.0


def _causal_decay(b):
    """exp(b_t − b_s) for s <= t and 0 for s > t: [..., C, C, D] from b [..., C, D]."""
    chunk_size = b.shape[-2]
    causal = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=b.device).tril()
    # b_t − b_s <= 0 for s <= t; masking s > t to −inf before exp keeps every exponent <= 0.
    log_decay = (b[..., :, None, :] - b[..., None, :, :]).masked_fill(~causal[..., None], float("-inf"))
    return log_decay.exp()


def _unsafe_chunks(b):
    """[N, B·H] bool: chunks whose decay range is too wide for the factored matmul form (b is non-increasing)."""
    return b[..., -1, :].amin(-1) < -MATMUL_LOG_RANGE


def _intra_chunk(q, q_decayed, k, v, b):
    """Σ_{s<=t in chunk} (Σ_d q_td k_sd exp(b_td − b_sd)) v_s, all inputs [N, B·H, C, *], q_decayed = q ⊙ exp(b)."""
    # The clamp only bites in unsafe chunks (it keeps exp finite there); their scores are recomputed below.
    k_grown = k * torch.exp(-b.clamp(min=-MATMUL_LOG_RANGE))
    scores = q_decayed @ k_grown.transpose(-1, -2)
    unsafe = _unsafe_chunks(b)
    if bool(unsafe.any()):
        pairwise = q[unsafe][..., :, None, :] * k[unsafe][..., None, :, :] * _causal_decay(b[unsafe])
        scores[unsafe] = pairwise.sum(-1)
    return scores.tril_() @ v


def _intra_chunk_value_decay(q, k, v, b):
    """Σ_{s<=t in chunk} (q_t·k_s) exp(b_t − b_s) ⊙ v_s; q, k [N, B·H, C, K], v, b [N, B·H, C, V]."""
    scores = (q @ k.transpose(-1, -2)).tril_()
    v_grown = v * torch.exp(-b.clamp(min=-MATMUL_LOG_RANGE))
    out = b.exp() * (scores @ v_grown)
    unsafe = _unsafe_chunks(b)
    if bool(unsafe.any()):
        out[unsafe] = (scores[unsafe][..., None] * _causal_decay(b[unsafe]) * v[unsafe][..., None, :, :]).sum(-2)
    return out


def _scan_chunks(k, v, b, state):
    """The chunk-to-chunk recurrence: the state entering every chunk [N, B·H, K, V] and the final state S_T.

    Key-decay scan: k, b [N, B·H, C, K], v [N, B·H, C, V], state [B·H, K, V]. Swapping k and v (b over V) scans
    the transposed state Sᵀ of the value-decay recurrence instead.
        S_next = diag(exp(b_last)) S_prev + Σ_s (k_s ⊙ exp(b_last − b_s))ᵀ v_s     (every exponent <= 0)
    All chunks' writes are one batched matmul, leaving one fused multiply-add per chunk to run in sequence.
    The entering states hold K·V/C floats per token and head: O(T), like the inputs.
    They are stacked at the end rather than written into one tensor: under autograd every in-place slice write
    copies the whole tensor's gradient in the backward pass, O(N²) in the number of chunks (it dominated training).
    """
    b_last = b[:, :, -1:, :]
    writes = (k * (b_last - b).exp()).transpose(-1, -2) @ v
    chunk_decay = b_last.exp().transpose(-1, -2)
    entering = []
    for write, decay in zip(writes.unbind(0), chunk_decay.unbind(0)):
        entering.append(state)
        state = torch.addcmul(write, decay, state)
    return torch.stack(entering), state


# Long inputs run as consecutive segments whose working tensors stay near 8 MB: large blocks come from the OS on
# every call (mmap), and faulting their pages in can cost more than the arithmetic on a 2-core CPU, while
# small ones are reused from the heap. Segments also cap the op's extra memory at O(segment) instead of O(T).
SEGMENT_ELEMENTS = 2**21


def _segment_length(q, v, chunk_size):
    """Tokens per segment: a multiple of chunk_size whose largest per-chunk tensor (q/k/v, or the K·V/C entering
    states) holds at most SEGMENT_ELEMENTS values."""
    batch, _, heads, key_dim = q.shape
    value_dim = v.shape[-1]
    per_token = batch * heads * max(key_dim, value_dim, key_dim * value_dim // chunk_size)
    return max(SEGMENT_ELEMENTS // per_token // chunk_size, 1) * chunk_size


def _by_segments(segment_op, q, k, v, g, initial_state, chunk_size):
    """Run a chunked op over consecutive segments of the sequence, each starting from the last one's state."""
    step = _segment_length(q, v, chunk_size)
    if q.shape[1] <= step:
        return segment_op(q, k, v, g, initial_state, chunk_size)
    outputs, state = [], initial_state
    for start in range(0, q.shape[1], step):
        part = slice(start, start + step)
        out, state = segment_op(q[:, part], k[:, part], v[:, part], g[:, part], state, chunk_size)
        outputs.append(out)
    return torch.cat(outputs, dim=1), state


def _flat_state(initial_state, q, v):
    """[B, H, K, V] -> [B·H, K, V] fp32 (zeros when None)."""
    return _initial_state(q, v, initial_state).reshape(-1, q.shape[-1], v.shape[-1])


@fp32_ops
def chunk_gla(q, k, v, g, initial_state=None, chunk_size=16):
    """Chunked GLA: same result as `naive_recurrent_gla` in O(T·C·K) time and memory.

    S_t = diag(exp(g_t)) · S_{t-1} + k_tᵀ v_t,  o_t = q_t · S_t,  S_0 = initial_state.
    With b the inclusive cumsum of g inside a chunk and S_prev the state entering it:
        o_t = Σ_{s<=t in chunk} (Σ_d q_td k_sd exp(b_td − b_sd)) v_s + (q_t ⊙ exp(b_t)) · S_prev.
    Intra-chunk scores are one matmul where the chunk's decay range allows it (`MATMUL_LOG_RANGE`), else the
    pairwise form; no exponent is ever large and positive, so strong decays underflow to 0 instead of overflowing.

    Args:
        q, k, g: [B, T, H, K]; g is the log-decay (<= 0).
        v: [B, T, H, V].
        initial_state: [B, H, K, V] or None (zeros).
        chunk_size: C, tokens per chunk.

    Returns:
        o: [B, T, H, V] fp32, final_state S_T: [B, H, K, V] fp32.
    """
    return _by_segments(_chunk_gla_segment, q, k, v, g, initial_state, chunk_size)


def _chunk_gla_segment(q, k, v, g, initial_state, chunk_size):
    """`chunk_gla` over one segment."""
    batch, length, heads, _ = q.shape
    state = _flat_state(initial_state, q, v)
    # Padding with q = k = v = g = 0 neither writes nor decays the state.
    q, k, v, g = (_to_chunks(x, chunk_size) for x in (q, k, v, g))
    b = g.cumsum(-2)
    q_decayed = q * b.exp()
    out = _intra_chunk(q, q_decayed, k, v, b)
    entering, state = _scan_chunks(k, v, b, state)
    out += q_decayed @ entering
    return _from_chunks(out, batch, length), state.view(batch, heads, *state.shape[1:])


@fp32_ops
def gla(q, k, v, g, initial_state=None, chunk_size=16, backend=None):
    """GLA dispatcher: fla's Triton kernels on CUDA when selected (`ops.fla_backend`), else one fused step per
    token when T < chunk_size, `chunk_gla` otherwise.

    S_t = diag(exp(g_t)) · S_{t-1} + k_tᵀ v_t,  o_t = q_t · S_t,  S_0 = initial_state.
    q, k, g: [B, T, H, K]; v: [B, T, H, V]; initial_state: [B, H, K, V] or None.
    Returns o [B, T, H, V] fp32 and final_state [B, H, K, V] fp32.
    """
    if fla_selected(q, backend):
        return fla_gla(q, k, v, g, initial_state)
    if q.shape[1] < chunk_size:
        return _step_by_step(q, k, v, g, initial_state, decay_on_value=False)
    return chunk_gla(q, k, v, g, initial_state, chunk_size)


@fp32_ops
def naive_recurrent_gla_value_decay(q, k, v, g, initial_state=None):
    """Token-by-token GLA recurrence with the decay on the value dim (the reference).

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


@fp32_ops
def chunk_gla_value_decay(q, k, v, g, initial_state=None, chunk_size=16):
    """Chunked value-decay GLA: same result as `naive_recurrent_gla_value_decay`
    in O(T·C·(K + V)) time and memory.

    S_t = S_{t-1} · diag(exp(g_t)) + k_tᵀ v_t,  o_t = q_t · S_t,  S_0 = initial_state.
    With b the inclusive cumsum of g inside a chunk and S_prev the state entering it:
        o_t = Σ_{s<=t in chunk} (q_t·k_s) exp(b_t − b_s) ⊙ v_s + exp(b_t) ⊙ (q_t · S_prev),
        S_next = S_prev · diag(exp(b_last)) + Σ_s k_sᵀ (v_s ⊙ exp(b_last − b_s)).
    No exponent is ever large and positive, so strong decays underflow to 0 instead of overflowing.

    Args:
        q, k: [B, T, H, K].
        v, g: [B, T, H, V]; g is the log-decay (<= 0), one per value column.
        initial_state: [B, H, K, V] or None (zeros).
        chunk_size: C, tokens per chunk.

    Returns:
        o: [B, T, H, V] fp32, final_state S_T: [B, H, K, V] fp32.
    """
    return _by_segments(_chunk_gla_value_decay_segment, q, k, v, g, initial_state, chunk_size)


def _chunk_gla_value_decay_segment(q, k, v, g, initial_state, chunk_size):
    """`chunk_gla_value_decay` over one segment."""
    batch, length, heads, _ = q.shape
    state = _flat_state(initial_state, q, v)
    # Padding with q = k = v = g = 0 neither writes nor decays the state.
    q, k, v, g = (_to_chunks(x, chunk_size) for x in (q, k, v, g))
    b = g.cumsum(-2)
    out = _intra_chunk_value_decay(q, k, v, b)
    # Sᵀ: [V, K] follows the key-decay recurrence with k and v swapped.
    entering, state = _scan_chunks(v, k, b, state.transpose(-1, -2))
    out += b.exp() * (q @ entering.transpose(-1, -2))
    state = state.transpose(-1, -2)
    return _from_chunks(out, batch, length), state.reshape(batch, heads, *state.shape[1:])


@fp32_ops
def gla_value_decay(q, k, v, g, initial_state=None, chunk_size=16, backend=None):
    """Value-decay GLA dispatcher: fla's fused recurrent kernel on CUDA when selected (`ops.fla_backend`), else one
    fused step per token when T < chunk_size, the chunked form otherwise.

    S_t = S_{t-1} · diag(exp(g_t)) + k_tᵀ v_t,  o_t = q_t · S_t,  S_0 = initial_state.
    q, k: [B, T, H, K]; v, g: [B, T, H, V]; initial_state: [B, H, K, V] or None.
    Returns o [B, T, H, V] fp32 and final_state [B, H, K, V] fp32.
    """
    if fla_selected(q, backend):
        return fla_gla_value_decay(q, k, v, g, initial_state)
    if q.shape[1] < chunk_size:
        return _step_by_step(q, k, v, g, initial_state, decay_on_value=True)
    return chunk_gla_value_decay(q, k, v, g, initial_state, chunk_size)
