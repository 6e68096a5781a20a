import math

import pytest
import torch
import torch.nn.functional as F

from liger_lm.ops.recurrence import (
    chunk_gla,
    chunk_gla_value_decay,
    gla,
    gla_value_decay,
    naive_recurrent_gla,
    naive_recurrent_gla_value_decay,
)
from liger_lm.ops import recurrence
from liger_lm.ops.swa import (
    gather_sinks,
    group_scores,
    group_weighted_values,
    naive_sliding_window_attention,
    sliding_window_attention,
)


def assert_close_to(actual, expected):
    """fp32 closeness relative to the reference's largest magnitude."""
    assert torch.isfinite(actual).all()
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


def gla_inputs(
    batch=2, length=37, heads=3, key_dim=8, value_dim=5, qk="softmax", decay="gla", decay_on="key"
):
    """q, k [B, T, H, K], v [B, T, H, V] and g over K (decay_on="key") or V (decay_on="value")."""
    q, k = (torch.randn(batch, length, heads, key_dim) for _ in range(2))
    g = torch.randn(batch, length, heads, key_dim if decay_on == "key" else value_dim)
    v = torch.randn(batch, length, heads, value_dim)
    if qk == "softmax":
        q, k = q.softmax(-1), k.softmax(-1)
    if decay == "gla":
        g = F.logsigmoid(g) / 16
    elif decay == "const5":
        g = torch.full_like(g, -5.0)
    else:
        g = -5.0 * torch.rand_like(g)
    return q, k, v, g


@pytest.mark.parametrize("length,chunk_size", [(37, 16), (5, 16), (32, 16), (40, 8), (7, 1)])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("qk", ["softmax", "randn"])
@pytest.mark.parametrize("decay", ["gla", "const5", "uniform5"])
def test_chunk_gla_matches_recurrence(length, chunk_size, with_state, qk, decay):
    torch.manual_seed(0)
    q, k, v, g = gla_inputs(length=length, qk=qk, decay=decay)
    state = torch.randn(2, 3, 8, 5) if with_state else None
    o_ref, s_ref = naive_recurrent_gla(q, k, v, g, state)
    o, s = chunk_gla(q, k, v, g, state, chunk_size=chunk_size)
    assert o.shape == (2, length, 3, 5) and s.shape == (2, 3, 8, 5)
    assert o.dtype == s.dtype == torch.float32
    assert_close_to(o, o_ref)
    assert_close_to(s, s_ref)


@pytest.mark.parametrize("decay", ["gla", "uniform5"])
def test_chunk_gla_gradients_match_recurrence(decay):
    torch.manual_seed(1)
    inputs = gla_inputs(length=21, qk="randn", decay=decay)
    grads = []
    for fn in (naive_recurrent_gla, chunk_gla):
        leaves = [x.clone().requires_grad_() for x in inputs]
        o, s = fn(*leaves)
        (o.sum() + s.sum()).backward()
        grads.append([x.grad for x in leaves])
    for grad, grad_ref in zip(*grads):
        assert_close_to(grad, grad_ref)


@pytest.mark.parametrize("chunked,naive,decay_on", [(chunk_gla, naive_recurrent_gla, "key"),
                                                     (chunk_gla_value_decay, naive_recurrent_gla_value_decay, "value")])
def test_long_inputs_run_in_segments_with_the_same_result(monkeypatch, chunked, naive, decay_on):
    # 2·3·max(8, 5, 8·5/4) = 60 values a token: a budget of 500 gives segments of 8 tokens (2 chunks of 4).
    monkeypatch.setattr(recurrence, "SEGMENT_ELEMENTS", 500)
    assert recurrence._segment_length(torch.empty(2, 1, 3, 8), torch.empty(2, 1, 3, 5), 4) == 8
    torch.manual_seed(7)
    inputs = gla_inputs(length=29, decay="uniform5", decay_on=decay_on)
    state = torch.randn(2, 3, 8, 5)
    leaves = [x.clone().requires_grad_() for x in inputs]
    o, s = chunked(*leaves, state, chunk_size=4)
    o_ref, s_ref = naive(*inputs, state)
    assert_close_to(o, o_ref)
    assert_close_to(s, s_ref)
    (o.sum() + s.sum()).backward()
    assert all(torch.isfinite(x.grad).all() for x in leaves)


def test_gla_prefill_then_decode_equals_one_call():
    torch.manual_seed(2)
    q, k, v, g = gla_inputs(length=25, decay="uniform5")
    state = torch.randn(2, 3, 8, 5)
    o_ref, s_ref = gla(q, k, v, g, state)
    o_prefill, s = gla(q[:, :20], k[:, :20], v[:, :20], g[:, :20], state)
    outputs = [o_prefill]
    for t in range(20, 25):
        o_t, s = gla(q[:, t : t + 1], k[:, t : t + 1], v[:, t : t + 1], g[:, t : t + 1], s)
        outputs.append(o_t)
    assert_close_to(torch.cat(outputs, dim=1), o_ref)
    assert_close_to(s, s_ref)


@pytest.mark.parametrize("length", [1, 2, 15])
@pytest.mark.parametrize("decay_on", ["key", "value"])
def test_dispatchers_short_path_matches_the_reference_loop_with_gradients(length, decay_on):
    """Below one chunk the dispatchers step token by token in fused ops; the reference loop is written out."""
    torch.manual_seed(4)
    q, k, v, g = gla_inputs(length=length, decay="uniform5", decay_on=decay_on)
    state = torch.randn(2, 3, 8, 5)
    leaves = [x.requires_grad_() for x in (q, k, v, g, state)]
    fast, naive = (gla, naive_recurrent_gla) if decay_on == "key" else (gla_value_decay, naive_recurrent_gla_value_decay)
    o, s = fast(q, k, v, g, state, chunk_size=16)
    o_ref, s_ref = naive(q, k, v, g, state)
    assert_close_to(o, o_ref)
    assert_close_to(s, s_ref)
    for got, want in zip(torch.autograd.grad((o.sum() + s.square().sum()), leaves),
                         torch.autograd.grad((o_ref.sum() + s_ref.square().sum()), leaves)):
        assert_close_to(got, want)


@pytest.mark.parametrize("fn", [gla, gla_value_decay, naive_recurrent_gla, naive_recurrent_gla_value_decay])
def test_no_tokens_give_an_empty_output_and_the_state_unchanged(fn):
    q, k, v, g = gla_inputs(length=0, decay_on="key" if fn in (gla, naive_recurrent_gla) else "value")
    state = torch.randn(2, 3, 8, 5)
    o, s = fn(q, k, v, g, state)
    assert o.shape == (2, 0, 3, 5) and o.dtype == torch.float32
    assert torch.equal(s, state)


@pytest.mark.parametrize("fn", [naive_recurrent_gla, chunk_gla])
def test_gla_zero_key_zero_decay_tokens_leave_state_untouched(fn):
    torch.manual_seed(3)
    q, k, v, g = gla_inputs(length=30)
    real = torch.ones(30, dtype=torch.bool)
    real[[0, 7, 8, 16, 29]] = False
    k, g = k * real[:, None, None], g * real[:, None, None]
    state = torch.randn(2, 3, 8, 5)
    o, s = fn(q, k, v, g, state)
    o_real, s_real = fn(q[:, real], k[:, real], v[:, real], g[:, real], state)
    assert_close_to(o[:, real], o_real)
    assert_close_to(s, s_real)


@pytest.mark.parametrize("fn", [naive_recurrent_gla, chunk_gla, gla])
def test_gla_hand_computed(fn):
    # S_0 = 4, decay 1/2: S_1 = 0.5·4 + 3·2 = 8, o_1 = 1·8; S_2 = 0.5·8 + 1·5 = 9, o_2 = 2·9.
    shape = (1, 2, 1, 1)
    q = torch.tensor([1.0, 2.0]).reshape(shape)
    k = torch.tensor([3.0, 1.0]).reshape(shape)
    v = torch.tensor([2.0, 5.0]).reshape(shape)
    g = torch.full(shape, math.log(0.5))
    o, s = fn(q, k, v, g, torch.full((1, 1, 1, 1), 4.0))
    torch.testing.assert_close(o, torch.tensor([8.0, 18.0]).reshape(shape))
    torch.testing.assert_close(s, torch.full((1, 1, 1, 1), 9.0))


VALUE_DECAY_FNS = [naive_recurrent_gla_value_decay, chunk_gla_value_decay, gla_value_decay]


@pytest.mark.parametrize("length", [37, 5, 32])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("qk", ["softmax", "randn"])
@pytest.mark.parametrize("decay", ["gla", "const5", "uniform5"])
def test_chunk_gla_value_decay_matches_recurrence(length, with_state, qk, decay):
    torch.manual_seed(10)
    q, k, v, g = gla_inputs(length=length, qk=qk, decay=decay, decay_on="value")
    state = torch.randn(2, 3, 8, 5) if with_state else None
    o_ref, s_ref = naive_recurrent_gla_value_decay(q, k, v, g, state)
    o, s = chunk_gla_value_decay(q, k, v, g, state, chunk_size=16)
    assert o.shape == (2, length, 3, 5) and s.shape == (2, 3, 8, 5)
    assert o.dtype == s.dtype == torch.float32
    assert_close_to(o, o_ref)
    assert_close_to(s, s_ref)


@pytest.mark.parametrize("decay", ["gla", "uniform5"])
def test_chunk_gla_value_decay_gradients_match_recurrence(decay):
    torch.manual_seed(11)
    inputs = gla_inputs(length=21, qk="randn", decay=decay, decay_on="value") + (torch.randn(2, 3, 8, 5),)
    grads = []
    for fn in (naive_recurrent_gla_value_decay, chunk_gla_value_decay):
        leaves = [x.clone().requires_grad_() for x in inputs]
        o, s = fn(*leaves)
        (o.sum() + s.sum()).backward()
        grads.append([x.grad for x in leaves])
    for grad, grad_ref in zip(*grads):
        assert_close_to(grad, grad_ref)


def test_gla_value_decay_split_calls_equal_one_call():
    torch.manual_seed(12)
    q, k, v, g = gla_inputs(length=41, decay="uniform5", decay_on="value")
    state = torch.randn(2, 3, 8, 5)
    o_ref, s_ref = gla_value_decay(q, k, v, g, state)
    o_first, s = gla_value_decay(q[:, :19], k[:, :19], v[:, :19], g[:, :19], state)
    o_second, s = gla_value_decay(q[:, 19:], k[:, 19:], v[:, 19:], g[:, 19:], s)
    o_decode, s_decode = gla_value_decay(q[:, :1], k[:, :1], v[:, :1], g[:, :1], state)
    assert_close_to(torch.cat([o_first, o_second], dim=1), o_ref)
    assert_close_to(s, s_ref)
    assert_close_to(o_decode, o_ref[:, :1])


@pytest.mark.parametrize("fn", VALUE_DECAY_FNS)
def test_gla_value_decay_hand_computed(fn):
    # K = 1, V = 2, S_0 = [4, 4], decays 1/2 (column 0) and 1/4 (column 1):
    # S_1 = [0.5·4 + 3·2, 0.25·4 + 3·1] = [8, 4], o_1 = 1·S_1 = [8, 4];
    # S_2 = [0.5·8 + 1·5, 0.25·4 + 1·2] = [9, 3], o_2 = 2·S_2 = [18, 6].
    q = torch.tensor([1.0, 2.0]).reshape(1, 2, 1, 1)
    k = torch.tensor([3.0, 1.0]).reshape(1, 2, 1, 1)
    v = torch.tensor([[2.0, 1.0], [5.0, 2.0]]).reshape(1, 2, 1, 2)
    g = torch.tensor([math.log(0.5), math.log(0.25)]).expand(1, 2, 1, 2)
    o, s = fn(q, k, v, g, torch.full((1, 1, 1, 2), 4.0))
    torch.testing.assert_close(o, torch.tensor([[8.0, 4.0], [18.0, 6.0]]).reshape(1, 2, 1, 2))
    torch.testing.assert_close(s, torch.tensor([9.0, 3.0]).reshape(1, 1, 1, 2))


@pytest.mark.parametrize("fn", VALUE_DECAY_FNS)
def test_gla_value_decay_with_scalar_decay_equals_key_decay(fn):
    # g constant over the value dim is a scalar per head a_t: both recurrences become
    # S_t = a_t S_{t-1} + k_tᵀ v_t.
    torch.manual_seed(13)
    q, k, v, g = gla_inputs(length=37, qk="randn", decay="uniform5")
    scalar = g[..., :1]
    state = torch.randn(2, 3, 8, 5)
    o_ref, s_ref = naive_recurrent_gla(q, k, v, scalar.expand_as(q), state)
    o, s = fn(q, k, v, scalar.expand_as(v), state)
    assert_close_to(o, o_ref)
    assert_close_to(s, s_ref)


@pytest.mark.parametrize("fn", VALUE_DECAY_FNS)
def test_gla_value_decay_columns_are_independent_key_decay_glas(fn):
    # Value column m of S evolves as S[:, m] = exp(g_t[m]) S[:, m] + k_tᵀ v_t[m]: a key-decay GLA
    # with one value column and the scalar decay g[..., m] expanded over K.
    torch.manual_seed(14)
    q, k, v, g = gla_inputs(length=37, qk="randn", decay="gla", decay_on="value")
    state = torch.randn(2, 3, 8, 5)
    columns = [
        naive_recurrent_gla(q, k, v[..., m : m + 1], g[..., m : m + 1].expand_as(q), state[..., m : m + 1])
        for m in range(v.shape[-1])
    ]
    o, s = fn(q, k, v, g, state)
    assert_close_to(o, torch.cat([o_m for o_m, _ in columns], dim=-1))
    assert_close_to(s, torch.cat([s_m for _, s_m in columns], dim=-1))


def swa_inputs(length, past, batch=2, heads=4, kv_heads=2, dim=8, left_pad=0):
    q = torch.randn(batch, length, heads, dim)
    k, v = (torch.randn(batch, past + length, kv_heads, dim) for _ in range(2))
    key_valid = torch.ones(batch, past + length, dtype=torch.bool)
    key_valid[1, :left_pad] = False
    return q, k, v, key_valid


@pytest.mark.parametrize("length", [3, 4, 8, 17])
@pytest.mark.parametrize("past", [0, 3, 11])
@pytest.mark.parametrize("left_pad", [None, 6])
def test_sliding_window_matches_naive(length, past, left_pad):
    torch.manual_seed(4)
    window = 4
    q, k, v, key_valid = swa_inputs(length, past, left_pad=left_pad or 0)
    key_valid = key_valid if left_pad else None
    expected = naive_sliding_window_attention(q, k, v, window, 0.3, key_valid)
    actual = sliding_window_attention(q, k, v, window, 0.3, key_valid)
    assert actual.shape == q.shape
    assert_close_to(actual, expected)


@pytest.mark.parametrize("length,past", [(5, 2), (12, 0)])
def test_sliding_window_wider_than_keys(length, past):
    torch.manual_seed(5)
    q, k, v, key_valid = swa_inputs(length, past, left_pad=3)
    expected = naive_sliding_window_attention(q, k, v, 64, 0.3, key_valid)
    assert_close_to(sliding_window_attention(q, k, v, 64, 0.3, key_valid), expected)


@pytest.mark.parametrize("fn", [naive_sliding_window_attention, sliding_window_attention])
@pytest.mark.parametrize("length", [4, 17])
def test_sliding_window_fully_masked_queries_give_zero(fn, length):
    torch.manual_seed(6)
    q, k, v, key_valid = swa_inputs(length, past=0, left_pad=6)
    out = fn(q, k, v, 4, 0.3, key_valid)
    assert torch.isfinite(out).all()
    assert (out[1, :6] == 0).all()
    assert (out[1, 6:].abs().sum(-1) > 0).all()


def allowed_keys(q, k, window, key_valid, sinks=0):
    """(b, i, h, kv head, allowed key positions) per query and head: P + i − w < j <= P + i, plus the first `sinks`
    valid keys j <= P + i, valid keys only."""
    past, group = k.shape[1] - q.shape[1], q.shape[2] // k.shape[2]
    for b in range(q.shape[0]):
        sink_keys = [j for j in range(k.shape[1]) if key_valid[b, j]][:sinks]
        for i in range(q.shape[1]):
            band = range(max(0, past + i - window + 1), past + i + 1)
            keys = sorted({j for j in band if key_valid[b, j]} | {j for j in sink_keys if j <= past + i})
            for h in range(q.shape[2]):
                yield b, i, h, h // group, keys


def loop_reference(q, k, v, window, scale, key_valid, sinks=0):
    """Per-query loop over `allowed_keys`; 0 when none is valid."""
    out = torch.zeros_like(q)
    for b, i, h, kv, keys in allowed_keys(q, k, window, key_valid, sinks):
        if keys:
            weights = (scale * k[b, keys, kv] @ q[b, i, h]).softmax(0)
            out[b, i, h] = weights @ v[b, keys, kv]
    return out


def loop_log_sum_exp(q, k, window, scale, key_valid, sinks=0):
    """[B, T, H]: log Σ_j exp(scale · q_i · k_j) over `allowed_keys` (very negative where there is none)."""
    out = torch.full(q.shape[:3], torch.finfo(torch.float32).min)
    for b, i, h, kv, keys in allowed_keys(q, k, window, key_valid, sinks):
        if keys:
            out[b, i, h] = (scale * k[b, keys, kv] @ q[b, i, h]).logsumexp(0)
    return out


@pytest.mark.parametrize("length,past,window,sinks", [(1, 3, 4, 0), (3, 0, 4, 2), (11, 0, 4, 0), (11, 5, 4, 2)])
@pytest.mark.parametrize("grad", [False, True])
def test_sliding_window_log_sum_exp_matches_per_query_loop(length, past, window, sinks, grad):
    """The log-sum-exp `combine="shared"` weighs the window by: from PyTorch's fused CPU kernel without gradients, from
    the einsum form with them (and then its gradient equals the loop's); left-padded rows with no key give out 0."""
    torch.manual_seed(11)
    q, k, v, key_valid = swa_inputs(length, past, left_pad=past + 1)
    found = gather_sinks(k, v, key_valid, sinks) if sinks else None
    expected_out = loop_reference(q, k, v, window, 0.3, key_valid, sinks)
    expected_lse = loop_log_sum_exp(q, k, window, 0.3, key_valid, sinks)
    with torch.set_grad_enabled(grad):
        q_in = q.clone().requires_grad_(grad)
        out, lse = sliding_window_attention(q_in, k, v, window, 0.3, key_valid, sinks=found, with_lse=True)
    assert_close_to(out, expected_out)
    has_key = expected_lse > -1e30
    assert not has_key.all()  # the left padding leaves some query of row 1 nothing to attend
    torch.testing.assert_close(lse[has_key], expected_lse[has_key], atol=1e-5, rtol=1e-5)
    assert (lse[~has_key] < -1e30).all()
    if grad:
        q_ref = q.clone().requires_grad_()
        reference = loop_log_sum_exp(q_ref, k, window, 0.3, key_valid, sinks)
        (grad_ref,) = torch.autograd.grad(reference[has_key].sum(), q_ref)
        (grad_fast,) = torch.autograd.grad(lse[has_key].sum(), q_in)
        torch.testing.assert_close(grad_fast, grad_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("length,past,window", [(9, 0, 4), (9, 3, 4), (6, 10, 3), (5, 0, 1)])
def test_naive_sliding_window_matches_per_query_loop(length, past, window):
    torch.manual_seed(9)
    q, k, v, key_valid = swa_inputs(length, past, left_pad=5)
    expected = loop_reference(q, k, v, window, 0.3, key_valid)
    assert_close_to(naive_sliding_window_attention(q, k, v, window, 0.3, key_valid), expected)


def test_naive_sliding_window_with_full_window_matches_sdpa():
    torch.manual_seed(7)
    q, k, v, _ = swa_inputs(length=13, past=0)
    k_rep, v_rep = (x.repeat_interleave(2, dim=2).transpose(1, 2) for x in (k, v))
    expected = F.scaled_dot_product_attention(q.transpose(1, 2), k_rep, v_rep, is_causal=True, scale=0.3)
    actual = naive_sliding_window_attention(q, k, v, 13, 0.3)
    assert_close_to(actual, expected.transpose(1, 2))


def test_sliding_window_keeps_input_dtype():
    torch.manual_seed(8)
    q, k, v, key_valid = (x.bfloat16() if x.is_floating_point() else x for x in swa_inputs(length=9, past=2))
    assert sliding_window_attention(q, k, v, 4, 0.3, key_valid).dtype == torch.bfloat16


def test_chunk_gla_mixes_matmul_and_pairwise_chunks():
    """Weak-decay chunks take the factored matmul form, strong-decay chunks the pairwise one: both exact."""
    torch.manual_seed(5)
    q, k, v, g = gla_inputs(length=64, qk="randn", decay="gla")
    g[:, 16:32] = -6.0  # one chunk of 16 decays by e^−96: beyond MATMUL_LOG_RANGE
    for fn in (chunk_gla, chunk_gla_value_decay):
        g_fn = g if fn is chunk_gla else g[..., :5]
        reference = naive_recurrent_gla if fn is chunk_gla else naive_recurrent_gla_value_decay
        o_ref, s_ref = reference(q, k, v, g_fn)
        o, s = fn(q, k, v, g_fn, chunk_size=16)
        assert_close_to(o, o_ref)
        assert_close_to(s, s_ref)


@pytest.mark.parametrize("fn", [gla, gla_value_decay])
def test_gla_ops_stay_fp32_under_bf16_autocast(fn):
    torch.manual_seed(6)
    q, k, v, g = gla_inputs(length=40, decay_on="key" if fn is gla else "value")
    o_ref, s_ref = fn(q, k, v, g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        o, s = fn(q, k, v, g)
    assert o.dtype == s.dtype == torch.float32
    assert_close_to(o, o_ref)
    assert_close_to(s, s_ref)


@pytest.mark.parametrize("traced", [False, True])
def test_group_products_match_a_per_head_loop_with_gradients(traced):
    """The decode step's score and weighted-value products against a loop over batch rows, query heads and keys,
    gradients included; query head h reads kv head h // G. Traced by torch.compile (its graph run eagerly), five keys
    take the products-and-sums form, as the sinks and the leaving token do in a compiled decode step."""
    torch.manual_seed(8)
    q_groups = torch.randn(2, 3, 2, 8, requires_grad=True)  # [B, Hkv, G, D]
    keys, values = torch.randn(2, 5, 3, 8, requires_grad=True), torch.randn(2, 5, 3, 8, requires_grad=True)
    weights = torch.randn(2, 3, 2, 5, requires_grad=True)
    scores_of, values_of = group_scores, group_weighted_values
    if traced:
        torch._dynamo.reset()
        scores_of, values_of = (torch.compile(f, backend="aot_eager", fullgraph=True) for f in (scores_of, values_of))
    scores = scores_of(q_groups, keys)
    out = values_of(weights, values)
    loop_scores = torch.stack([torch.stack([torch.stack([torch.stack([q_groups[b, h, g] @ keys[b, j, h]
                                                                      for j in range(5)]) for g in range(2)])
                                            for h in range(3)]) for b in range(2)])
    loop_out = torch.stack([torch.stack([torch.stack([sum(weights[b, h, g, j] * values[b, j, h] for j in range(5))
                                                      for g in range(2)]) for h in range(3)]) for b in range(2)])
    torch.testing.assert_close(scores, loop_scores)
    torch.testing.assert_close(out, loop_out)
    inputs = (q_groups, keys, values, weights)
    grads = torch.autograd.grad((scores * scores.detach().cos()).sum() + (out * out.detach().sin()).sum(), inputs)
    expected = torch.autograd.grad((loop_scores * scores.detach().cos()).sum() + (loop_out * out.detach().sin()).sum(),
                                   inputs)
    for grad, reference in zip(grads, expected):
        torch.testing.assert_close(grad, reference)


@pytest.mark.parametrize("past", [0, 5, 7])
@pytest.mark.parametrize("pad", [None, "left", "empty_row"])
def test_single_query_window_attention_matches_naive(past, pad):
    """The decode step (one query, every key inside the window) equals the naive reference, GQA and padding."""
    torch.manual_seed(7)
    q = torch.randn(2, 1, 6, 8)
    k, v = torch.randn(2, past + 1, 2, 8), torch.randn(2, past + 1, 2, 8)
    key_valid = None
    if pad is not None:
        key_valid = torch.ones(2, past + 1, dtype=torch.bool)
        key_valid[0, : past // 2] = False
        if pad == "empty_row":
            key_valid[1] = False
    out = sliding_window_attention(q, k, v, window=8, scale=0.3, key_valid=key_valid)
    expected = naive_sliding_window_attention(q, k, v, window=8, scale=0.3, key_valid=key_valid)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    if pad == "empty_row":
        assert out[1].abs().max() == 0


@pytest.mark.parametrize("length,past,window,sinks", [(9, 0, 4, 2), (9, 3, 4, 4), (6, 10, 3, 1), (12, 0, 1, 3)])
def test_naive_sliding_window_with_sinks_matches_per_query_loop(length, past, window, sinks):
    torch.manual_seed(10)
    q, k, v, key_valid = swa_inputs(length, past, left_pad=5)
    expected = loop_reference(q, k, v, window, 0.3, key_valid, sinks)
    assert_close_to(naive_sliding_window_attention(q, k, v, window, 0.3, key_valid, sinks=sinks), expected)


@pytest.mark.parametrize("length", [1, 3, 4, 17, 40])
@pytest.mark.parametrize("past", [0, 3, 30])
@pytest.mark.parametrize("sinks", [1, 4])
def test_sliding_window_with_sinks_matches_naive_with_gradients(length, past, sinks):
    """Blocked / band / single-query forms with gathered sinks = the explicit mask, values and gradients."""
    torch.manual_seed(11)
    q, k, v, key_valid = swa_inputs(length, past, left_pad=6)
    inputs = [x.clone().requires_grad_() for x in (q, k, v)]
    expected = naive_sliding_window_attention(*inputs, 4, 0.3, key_valid, sinks=sinks)
    expected_grads = torch.autograd.grad(expected.square().sum(), inputs)
    inputs = [x.clone().requires_grad_() for x in (q, k, v)]
    sink_set = gather_sinks(inputs[1], inputs[2], key_valid, sinks)
    actual = sliding_window_attention(*inputs, 4, 0.3, key_valid, sinks=sink_set)
    assert_close_to(actual, expected)
    for got, want in zip(torch.autograd.grad(actual.square().sum(), inputs), expected_grads):
        assert_close_to(got, want)


def test_sinks_change_only_queries_whose_window_has_left_them():
    torch.manual_seed(12)
    q, k, v, _ = swa_inputs(length=12, past=0)
    plain = naive_sliding_window_attention(q, k, v, 4, 0.3)
    with_sinks = sliding_window_attention(q, k, v, 4, 0.3, sinks=gather_sinks(k, v, torch.ones(2, 12, dtype=torch.bool), 2))
    assert_close_to(with_sinks[:, :4], plain[:, :4])  # queries 0..3 still see key 0 in their window
    assert (with_sinks[:, 4:] - plain[:, 4:]).abs().amax(dim=(2, 3)).min() > 1e-3
