"""combine="shared": the recurrent branch holds what left the window and shares the window's softmax normaliser
(docs/method.md §1.2), against a per-token transcription of the formula and the usual model-level properties."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import liger_lm
from conftest import prefill_then_decode, tiny_model
from test_model import left_pad, token_ids


def per_token_reference(mixer, q, k, v, valid, position_embeddings, sinks):
    """o_t = (Σ_{j∈win∪sinks} e^{s_tj} v_j + e^ω φ(q_t)S_old) / (Σ e^{s_tj} + e^ω φ(q_t)z_old), GLA decay, one token
    at a time; S_old, z_old hold the valid non-sink tokens j ≤ t − w, each decayed by the written tokens after it.
    With `learned_features`, φ reads x W_h (the mixer's projection weights, per query head for q, per kv head for k)."""
    config, window = mixer.liger, mixer.liger.window
    groups = mixer.num_heads // mixer.num_kv_heads
    rq, rk = mixer._rope(q, k, position_embeddings)
    rk, kv, raw_k = (x.repeat_interleave(groups, dim=2) for x in (rk, v, k))
    omega = mixer.rec_logit().detach()
    feature_q, feature_k = q, k
    if mixer.liger.learned_features:
        feature_q = torch.einsum("bthd,hde->bthe", q, mixer.feature_proj_q.weight.detach())
        feature_k = torch.einsum("bthd,hde->bthe", k, mixer.feature_proj_k.weight.detach())
    feature_k = feature_k.repeat_interleave(groups, dim=2)
    batch, length, heads, dim = q.shape
    out = torch.zeros(batch, length, heads, dim)
    for b in range(batch):
        real = [j for j in range(length) if valid[b, j]]
        sink_set = set(real[:sinks])
        for t in range(length):
            if not valid[b, t]:
                continue
            attended = [j for j in real if j <= t and (j > t - window or j in sink_set)]
            old = [j for j in real if j <= t - window and j not in sink_set]
            scores = torch.einsum("hd,jhd->jh", rq[b, t], rk[b, attended]) * mixer.scaling
            numerator = torch.einsum("jh,jhd->hd", scores.exp(), kv[b, attended])
            denominator = scores.exp().sum(0)
            state, norm = torch.zeros(heads, dim, dim), torch.zeros(heads, dim)
            for j in old:
                decay = torch.exp(F.logsigmoid(raw_k[b, j]) / config.gate_normalizer)
                feature = feature_k[b, j].softmax(-1)
                state = decay[..., None] * state + feature[..., None] * kv[b, j][:, None, :]
                norm = decay * norm + feature
            q_feat = feature_q[b, t].softmax(-1)
            numerator = numerator + omega.exp()[:, None] * torch.einsum("hd,hde->he", q_feat, state)
            denominator = denominator + omega.exp() * (q_feat * norm).sum(-1)
            out[b, t] = numerator / denominator[:, None]
    return out


def perturb_feature_projections(model, seed: int = 0) -> None:
    """Move every learned W_h away from the identity it starts at, so that a test sees whether it is applied."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "feature_proj" in name:
                param.add_(torch.randn(param.shape, generator=generator) * 0.5)


@pytest.mark.parametrize("family,sinks,learned", [("llama", 0, False), ("llama", 2, False), ("qwen3", 0, False),
                                                  ("qwen3", 2, False), ("llama", 2, True), ("qwen3", 0, True)])
@torch.no_grad()
def test_shared_equals_the_per_token_formula(family, sinks, learned):
    model = liger_lm.convert(tiny_model(family), window=4, sinks=sinks, combine="shared", rec_logit_init=1.5,
                             learned_features=learned)
    perturb_feature_projections(model)
    mixer = model.model.layers[1].self_attn
    hidden = torch.randn(2, 19, model.config.hidden_size)
    valid = torch.ones(2, 19, dtype=torch.bool)
    valid[1, :5] = False
    position_embeddings = model.model.rotary_emb(hidden, torch.arange(19)[None])
    q, k, v = mixer._project(hidden)
    actual, _, _ = mixer.mix(q, k, v, valid, position_embeddings, None)
    expected = per_token_reference(mixer, q.float(), k.float(), v.float(), valid, position_embeddings, sinks)
    torch.testing.assert_close(actual[valid], expected[valid], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("gate", ["gla", "mamba2", "gsa", "mlstm"])
@pytest.mark.parametrize("sinks", [0, 3])
@torch.no_grad()
def test_shared_prefill_then_decode_and_left_padding(gate, sinks):
    model = liger_lm.convert(tiny_model("qwen3"), window=4, sinks=sinks, combine="shared", gate=gate, num_slots=4,
                             rec_logit_init=2.0)
    ids = token_ids()
    full = model(ids).logits
    for prefill in (1, 3, 10):
        torch.testing.assert_close(prefill_then_decode(model, ids, prefill), full, rtol=0, atol=1e-4)
    rows = [token_ids(1, 23, seed=4)[0], token_ids(1, 9, seed=5)[0]]
    padded, mask = left_pad(rows)
    batch = model(padded, attention_mask=mask).logits
    for i, row in enumerate(rows):
        torch.testing.assert_close(batch[i, -len(row):], model(row[None]).logits[0], rtol=0, atol=1e-4)


@pytest.mark.parametrize("family,sinks,learned", [("llama", 0, False), ("llama", 2, False), ("qwen3", 0, False),
                                                  ("qwen3", 2, False), ("qwen3", 2, True)])
@torch.no_grad()
def test_steady_decode_step_equals_the_general_path(family, sinks, learned, monkeypatch):
    """`shared_decode_step` (a full window buffer, one token) against the general blocked path on the same decode of
    a left-padded batch: padding inside the buffer, leaving it, and among the sinks' rows."""
    from transformers import DynamicCache

    from liger_lm.compat import with_cache
    from liger_lm.modeling import mixer as mixer_module

    model = liger_lm.convert(tiny_model(family), window=4, sinks=sinks, combine="shared", rec_logit_init=1.5,
                             learned_features=learned)
    perturb_feature_projections(model)
    padded, mask = left_pad([token_ids(1, 23, seed=4)[0], token_ids(1, 12, seed=5)[0]])

    def decode() -> torch.Tensor:
        cache, prefill = DynamicCache(config=model.config), 3
        steps = [model(padded[:, :prefill], attention_mask=mask[:, :prefill], **with_cache(cache)).logits]
        for t in range(prefill, padded.shape[1]):
            steps.append(model(padded[:, t : t + 1], attention_mask=mask[:, : t + 1], **with_cache(cache)).logits)
        return torch.cat(steps, dim=1)[mask.bool()]

    calls = []
    fused = mixer_module.shared_decode_step
    monkeypatch.setattr(mixer_module, "shared_decode_step", lambda *a, **k: calls.append(1) or fused(*a, **k))
    fast = decode()
    assert len(calls) >= 5 * model.config.num_hidden_layers  # steps after the buffer filled and the sinks were stored
    monkeypatch.setattr(mixer_module.LigerAttention, "_steady_decode", lambda *args: False)
    torch.testing.assert_close(fast, decode(), rtol=0, atol=1e-5)


@torch.no_grad()
def test_ring_buffer_steps_write_in_place_and_give_the_general_paths_cache_and_logits(monkeypatch):
    """Steady steps overwrite the window buffer's oldest slot in place (a ring) instead of shifting it: a 2-token
    chunk in between (the general path, which puts the ring back in time order first) and beam search's row
    reordering see the same cache and logits as without the ring."""
    from transformers import DynamicCache

    from liger_lm.compat import with_cache
    from liger_lm.modeling.mixer import LigerAttention

    model = liger_lm.convert(tiny_model("qwen3"), window=4, sinks=2, combine="shared", rec_logit_init=1.5)
    padded, mask = left_pad([token_ids(1, 6, seed=4)[0], token_ids(1, 2, seed=5)[0]])
    mask = mask.bool()
    continuation = token_ids(2, 13, seed=6)
    # 3 general steps store the second row's sinks, 2 ring steps move the ring, the chunk puts it back in time order
    chunks = [1] * 5 + [2] + [1] * 5

    def decode():
        cache = DynamicCache(config=model.config)
        logits, position, full_mask = [model(padded, attention_mask=mask, **with_cache(cache)).logits], 0, mask
        starts, addresses = [], []  # the ring's start before each chunk, the buffer's address after each
        for size in chunks:
            full_mask = torch.cat([full_mask, torch.ones(2, size, dtype=torch.bool)], dim=1)
            starts.append(None if cache.layers[1].ring_start is None else int(cache.layers[1].ring_start))
            logits.append(model(continuation[:, position : position + size], attention_mask=full_mask,
                                **with_cache(cache)).logits)
            addresses.append(cache.layers[1].keys.data_ptr())
            position += size
        layer = cache.layers[1]
        return torch.cat(logits, dim=1), [*layer.window_keys(), layer.raw_keys], starts, addresses

    ring_logits, ring_buffer, starts, addresses = decode()
    assert starts[chunks.index(2)] != 0  # the chunk finds the ring moved
    assert len(set(addresses[-5:])) == 1  # the steps after it write into one buffer
    monkeypatch.setattr(LigerAttention, "_steady_decode", lambda *args: False)
    logits, buffer, starts, _ = decode()
    assert set(starts) == {0}  # the general path keeps its buffer in time order
    torch.testing.assert_close(ring_logits, logits, rtol=0, atol=1e-5)
    for ring_tensor, tensor in zip(ring_buffer, buffer):
        torch.testing.assert_close(ring_tensor, tensor, rtol=0, atol=1e-5)
    monkeypatch.undo()
    beams = dict(attention_mask=mask, max_new_tokens=10, num_beams=3, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(padded, **beams), model.generate(padded, use_cache=False, **beams))


def test_window_softmax_over_sinks_and_window_apart_equals_sdpa_over_the_joined_keys():
    """The compiled decode step attends over the sinks and the window as two parts under one softmax; the eager step
    over the joined keys. Both against SDPA (query head h·G + g reads kv head h), padding keys included."""
    from liger_lm.modeling.mixer import _window_softmax

    torch.manual_seed(0)
    q_groups = torch.randn(2, 3, 2, 8)  # [B, H_kv, G, D]
    parts = [(torch.randn(2, n, 3, 8), torch.randn(2, n, 3, 8), torch.rand(2, n) > 0.4) for n in (4, 7)]
    parts[1][2][:, -1] = True  # the current token
    joined = tuple(torch.cat(x, dim=1) for x in zip(*parts))
    out, lse = _window_softmax(q_groups, parts, 0.3)
    joined_out, joined_lse = _window_softmax(q_groups, [joined], 0.3)
    keys, values = (x.repeat_interleave(2, dim=2).transpose(1, 2) for x in joined[:2])  # [B, H, S, D]
    valid = joined[2]
    expected = F.scaled_dot_product_attention(q_groups.flatten(1, 2)[:, :, None], keys, values,
                                              attn_mask=valid[:, None, None], scale=0.3)
    for result in (out, joined_out):
        torch.testing.assert_close(result.flatten(1, 2), expected[:, :, 0])
    scores = 0.3 * torch.einsum("bhgd,bshd->bhgs", q_groups, joined[0]).masked_fill(~valid[:, None, None], -torch.inf)
    torch.testing.assert_close(lse, scores.logsumexp(-1))
    torch.testing.assert_close(joined_lse, scores.logsumexp(-1))


@torch.no_grad()
def test_shared_starts_as_the_window_and_rec_weight_zero_turns_it_off():
    base, ids = tiny_model("llama"), token_ids()
    window_only = liger_lm.convert(copy.deepcopy(base), window=4, sinks=2, rec_weight=0.0, swa_weight=1.0)(ids).logits
    shared = liger_lm.convert(copy.deepcopy(base), window=4, sinks=2, combine="shared", rec_logit_init=2.0)
    logits = shared(ids).logits
    torch.testing.assert_close(logits[:, :4], window_only[:, :4], rtol=0, atol=1e-5)  # nothing has left the window
    assert (logits[:, 6:] - window_only[:, 6:]).abs().max() > 1e-2
    off = liger_lm.convert(copy.deepcopy(base), window=4, sinks=2, combine="shared", rec_weight=0.0, swa_weight=1.0)
    torch.testing.assert_close(off(ids).logits, window_only, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "qwen3"])
@torch.no_grad()
def test_a_prompt_shorter_than_the_window_is_the_unmodified_model(family, monkeypatch):
    """Nothing has left the window, so the shared softmax is softmax attention (the mixer then skips its recurrence);
    a decode from that prompt past the window still equals one forward over the whole sequence."""
    from liger_lm.modeling.mixer import LigerAttention

    base, ids = tiny_model(family), token_ids(length=24)
    shared = liger_lm.convert(copy.deepcopy(base), window=16, sinks=2, combine="shared", rec_logit_init=2.0,
                              learned_features=True)
    perturb_feature_projections(shared)
    recurrences = []
    general = LigerAttention._left_the_window
    monkeypatch.setattr(LigerAttention, "_left_the_window", lambda *a: recurrences.append(1) or general(*a))
    torch.testing.assert_close(shared(ids[:, :15]).logits, base(ids[:, :15]).logits, rtol=0, atol=1e-5)
    assert not recurrences
    torch.testing.assert_close(prefill_then_decode(shared, ids, 15), shared(ids).logits, rtol=0, atol=1e-4)


@pytest.mark.parametrize("combine", ["sum", "shared"])
@torch.no_grad()
def test_learned_features_start_as_the_plain_map_and_then_change_the_recurrent_branch(combine):
    base, ids = tiny_model("qwen3"), token_ids()
    settings = dict(window=4, sinks=2, combine=combine, rec_logit_init=1.5)
    plain = liger_lm.convert(copy.deepcopy(base), **settings)(ids).logits
    learned = liger_lm.convert(copy.deepcopy(base), learned_features=True, **settings)
    torch.testing.assert_close(learned(ids).logits, plain, rtol=0, atol=1e-5)  # W_h = I: φ(x W_h) = φ(x)
    perturb_feature_projections(learned)
    moved = learned(ids).logits
    if combine == "shared":  # nothing has left the window yet: the branch is empty
        torch.testing.assert_close(moved[:, :4], plain[:, :4], rtol=0, atol=1e-5)
    assert (moved[:, 6:] - plain[:, 6:]).abs().max() > 1e-2
    for prefill in (1, 3, 10):  # the decode path (fused step included) applies the same projections
        torch.testing.assert_close(prefill_then_decode(learned, ids, prefill), moved, rtol=0, atol=1e-4)


def test_shared_refuses_what_it_cannot_compute():
    for overrides in (dict(gate="rwkv6"), dict(gate_source="q"), dict(method="lolcats")):
        with pytest.raises(liger_lm.LigerConfigError, match="combine='shared' needs"):
            liger_lm.LigerConfig(combine="shared", **overrides)
    with pytest.raises(liger_lm.LigerConfigError, match="learned_features is a setting of the liger method"):
        liger_lm.LigerConfig(method="lolcats", learned_features=True)


def test_logit_and_feature_projections_train_with_lora_and_reload_from_the_adapter(instruction_file, tmp_path):
    from conftest import tiny_tokenizer
    from liger_lm.training import TrainConfig, train

    model = liger_lm.convert(tiny_model("llama"), window=4, sinks=2, combine="shared", learned_features=True)
    model.save_pretrained(tmp_path / "base")
    tiny_tokenizer().save_pretrained(tmp_path / "base")
    config = TrainConfig(data=str(instruction_file), seq_len=48, batch_size=4, grad_accum=1, max_tokens=48 * 4 * 6,
                         eval_records=4, lr=1e-2, progress=False, precision="fp32", stages=("attn", "kd"))
    trained = train(model, tiny_tokenizer(), config, tmp_path / "run", base_path=tmp_path / "base").model
    logits = {name: p for name, p in trained.named_parameters() if "rec_logit" in name and "modules_to_save" in name}
    assert logits and all(p.requires_grad and (p - 0.0).abs().max() > 1e-4 for p in logits.values())
    # The logits train at 100× the rate (whole units in 6 AdamW steps), the projections at lr: ≤ ~6 · 1e-2 from I.
    assert max(p.abs().max() for p in logits.values()) > 0.5
    eye = torch.eye(model.config.head_dim)
    projections = {name: p for name, p in trained.named_parameters()
                   if "feature_proj" in name and "modules_to_save" in name}
    assert len(projections) == 2 * model.config.num_hidden_layers
    assert all(p.requires_grad and 1e-4 < (p - eye).abs().max() < 0.1 for p in projections.values())
    ids = token_ids()
    with torch.no_grad():
        expected = trained(ids).logits
        again, _ = liger_lm.load_model(str(tmp_path / "run" / "adapter"))
        torch.testing.assert_close(again(ids).logits, expected, rtol=0, atol=1e-5)


def test_feature_lr_scale_speeds_up_the_projections_alone(instruction_file, tmp_path):
    from conftest import tiny_tokenizer
    from liger_lm.training import TrainConfig, train

    model = liger_lm.convert(tiny_model("llama"), window=4, sinks=2, combine="shared", learned_features=True)
    config = TrainConfig(data=str(instruction_file), seq_len=48, batch_size=4, grad_accum=1, max_tokens=48 * 4 * 6,
                         eval_records=0, lr=1e-2, progress=False, precision="fp32", stages=("kd",),
                         logit_lr_scale=1.0, feature_lr_scale=20.0, warmup=0.0, schedule="constant")
    trained = train(model, tiny_tokenizer(), config, tmp_path / "run").model
    moved = {name: (p - (torch.eye(p.shape[-1]) if "feature_proj" in name else 0.0)).abs().max()
             for name, p in trained.named_parameters() if "modules_to_save" in name}
    # AdamW moves each entry by at most about its rate per step: 6 steps at 1e-2 (logits) and at 0.2 (projections).
    assert max(m for name, m in moved.items() if "rec_logit" in name) < 0.1
    assert max(m for name, m in moved.items() if "feature_proj" in name) > 0.3
