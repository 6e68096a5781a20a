"""Every gate of paper Table 1 against a literal per-token transcription of docs/method.md §1.1, plus the model-level
properties (chunked = naive, forward = decode, padding, save/load) and the inter-layer hybrid."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

import liger_lm
from conftest import prefill_then_decode, tiny_model
from test_model import left_pad, token_ids

GATE_NAMES = list(liger_lm.GATES)
FAMILIES = ["llama", "qwen3"]


def reference_recurrent(gate: str, q, k, v, g, config: liger_lm.LigerConfig) -> torch.Tensor:
    """Per-token loop written from the docs/method.md table, independent of liger_lm's gate code. All [B, T, H, D]."""
    tau, gamma, slots = config.gate_normalizer, config.gate_lower_bound, config.num_slots
    batch, length, heads, dim = q.shape
    phi = {"softmax": lambda x: x.softmax(-1), "elu": lambda x: F.elu(x) + 1}[config.feature_map]
    qf, kf = phi(q), phi(k)
    pooled = g.mean(-1, keepdim=True)
    state = torch.zeros(batch, heads, dim, dim)
    norm = torch.zeros(batch, heads, dim)
    z = torch.zeros(batch, heads, dim)  # `normalize`: the decayed sum of write keys
    slot_keys, slot_values = torch.zeros(batch, heads, slots, dim), torch.zeros(batch, heads, slots, dim)
    outputs = []
    for t in range(length):
        qt, kt, vt, gt = qf[:, t], kf[:, t], v[:, t], g[:, t]
        write = kt[..., :, None] * vt[..., None, :]
        if gate == "gla":
            a = torch.exp(F.logsigmoid(gt) / tau)
            state, z = a[..., None] * state + write, a * z + kt
        elif gate == "hgrn2":
            a = gamma + (1 - gamma) * torch.sigmoid(gt)
            state = a[..., None] * state + (1 - a)[..., :, None] * vt[..., None, :]
            z = a * z + (1 - a)
        elif gate == "mamba2":
            a = torch.exp(-F.softplus(pooled[:, t]))
            state, z = a[..., None] * state + write, a * z + kt
        elif gate == "retnet":
            a = torch.sigmoid(pooled[:, t]) ** (1 / tau)
            state, z = a[..., None] * state + write, a * z + kt
        elif gate == "none":
            state, z = state + write, z + kt
        elif gate == "mlstm":
            a = torch.sigmoid(pooled[:, t])
            state, norm = a[..., None] * state + write, a * norm + kt
        elif gate == "rwkv6":
            out = torch.einsum("bhd,bhde->bhe", qt, state + write)
            if config.normalize:
                out = out / (qt * (z + kt)).sum(-1, keepdim=True)
            outputs.append(out)
            a = torch.exp(-torch.exp(gt))
            state, z = a[..., None] * state + write, a * z + kt
            continue
        elif gate == "gsa":
            a = torch.sigmoid(F.adaptive_avg_pool1d(gt.flatten(0, 1)[:, None], slots)[:, 0].unflatten(0, gt.shape[:2]))
            a = a ** (1 / tau)
            slot_keys = a[..., None] * slot_keys + (1 - a)[..., None] * kt[..., None, :]
            slot_values = a[..., None] * slot_values + (1 - a)[..., None] * vt[..., None, :]
            scores = torch.einsum("bhmd,bhd->bhm", slot_keys, qt).softmax(-1)
            outputs.append(torch.einsum("bhm,bhmd->bhd", scores, slot_values))
            continue
        out = torch.einsum("bhd,bhde->bhe", qt, state)
        if gate == "mlstm":
            out = out / (qt * norm).sum(-1, keepdim=True).abs().clamp(min=1)
        if config.normalize:
            out = out / (qt * z).sum(-1, keepdim=True)
        outputs.append(out)
    return torch.stack(outputs, dim=1)


NORMALIZABLE = [gate for gate in GATE_NAMES if gate not in ("gsa", "mlstm")]
GATE_VARIANTS = [(gate, False) for gate in GATE_NAMES] + [(gate, True) for gate in NORMALIZABLE]


@pytest.mark.parametrize("gate,normalize", GATE_VARIANTS)
@pytest.mark.parametrize("gate_source,feature_map", [("k", "softmax"), ("q", "softmax"), ("k", "elu")])
@torch.no_grad()
def test_gate_equals_the_per_token_transcription_of_the_table(gate, normalize, gate_source, feature_map):
    config = liger_lm.LigerConfig(gate=gate, gate_source=gate_source, num_slots=6, chunk_size=4, normalize=normalize,
                                  feature_map=feature_map)
    model = liger_lm.convert(tiny_model("qwen3"), config)
    mixer = model.model.layers[0].self_attn
    hidden = torch.randn(2, 21, model.config.hidden_size)
    q, k, v = mixer._project(hidden)
    groups = mixer.num_heads // mixer.num_kv_heads
    k, v = (t.repeat_interleave(groups, dim=2) for t in (k, v))
    source = q if gate_source == "q" else k
    expected = reference_recurrent(gate, q, k, v, source, config)
    actual, _ = mixer._recurrent(*mixer._project(hidden), None, None)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("gate,normalize", GATE_VARIANTS)
@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_chunked_equals_naive_and_forward_equals_decode(gate, normalize, family):
    base = tiny_model(family)
    ids = token_ids()
    settings = dict(gate=gate, window=8, num_slots=6, normalize=normalize)
    chunked = liger_lm.convert(copy.deepcopy(base), chunk_size=4, **settings)
    naive = liger_lm.convert(copy.deepcopy(base), chunk_size=10_000, **settings)
    full = chunked(ids).logits
    torch.testing.assert_close(full, naive(ids).logits, rtol=0, atol=1e-4)

    torch.testing.assert_close(prefill_then_decode(chunked, ids, 19), full, rtol=0, atol=1e-4)


@pytest.mark.parametrize("gate,normalize", GATE_VARIANTS)
@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_left_padding_and_save_load(gate, normalize, family, tmp_path):
    model = liger_lm.convert(tiny_model(family), gate=gate, window=8, num_slots=6, chunk_size=4, normalize=normalize)
    rows = [token_ids(1, 23, seed=4)[0], token_ids(1, 9, seed=5)[0]]
    ids, mask = left_pad(rows)
    batch = model(ids, attention_mask=mask).logits
    for i, row in enumerate(rows):
        torch.testing.assert_close(batch[i, -len(row) :], model(row[None]).logits[0], rtol=0, atol=1e-4)
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert again.config.liger["gate"] == gate
    torch.testing.assert_close(again(ids, attention_mask=mask).logits, batch, rtol=0, atol=0)


@torch.no_grad()
def test_hybrid_softmax_layers_generate_pad_and_round_trip(tmp_path):
    base = tiny_model("llama", num_hidden_layers=4)
    model = liger_lm.convert(copy.deepcopy(base), softmax_layers=[0, 2], window=8)
    kinds = [isinstance(layer.self_attn, liger_lm.LigerAttention) for layer in model.model.layers]
    assert kinds == [False, True, False, True]
    rows = [token_ids(1, 20, seed=6)[0], token_ids(1, 7, seed=7)[0]]
    ids, mask = left_pad(rows)
    generated = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    for i, row in enumerate(rows):
        alone = model.generate(row[None], max_new_tokens=6, do_sample=False, pad_token_id=0)
        assert torch.equal(generated[i, ids.shape[1] :], alone[0, len(row) :])
    ids = token_ids()
    full = model(ids).logits
    torch.testing.assert_close(prefill_then_decode(model, ids, 30), full, rtol=0, atol=1e-4)
    model.save_pretrained(tmp_path)
    torch.testing.assert_close(AutoModelForCausalLM.from_pretrained(tmp_path)(ids).logits, full, rtol=0, atol=0)


def test_softmax_every_is_a_shorthand_for_every_kth_layer():
    model = liger_lm.convert(tiny_model("llama", num_hidden_layers=6), softmax_every=3, softmax_layers=[0])
    kinds = [isinstance(layer.self_attn, liger_lm.LigerAttention) for layer in model.model.layers]
    assert kinds == [False, True, False, True, True, False]


@pytest.mark.parametrize("rec_weight,swa_weight", [(1.0, 0.0), (0.0, 1.0)])
@torch.no_grad()
def test_single_branch_ablations_decode_consistently(rec_weight, swa_weight):
    model = liger_lm.convert(tiny_model("llama"), rec_weight=rec_weight, swa_weight=swa_weight, window=8)
    ids = token_ids()
    full = model(ids).logits
    torch.testing.assert_close(prefill_then_decode(model, ids, 12), full, rtol=0, atol=1e-4)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(gate_source="x"), "unknown gate_source"),
        (dict(num_slots=0), "num_slots must be a positive integer"),
        (dict(gate_lower_bound=1.0), "gate_lower_bound must be in"),
        (dict(softmax_every=-1), "softmax_every must be"),
        (dict(feature_map="relu"), "unknown feature_map 'relu'; choose one of: softmax, elu"),
    ],
)
def test_new_settings_are_validated(overrides, message):
    with pytest.raises(liger_lm.LigerConfigError, match=message):
        liger_lm.LigerConfig(**overrides)


@pytest.mark.parametrize("gate", ["gsa", "mlstm"])
@torch.no_grad()
def test_normalize_changes_nothing_for_gates_normalised_already(gate):
    base, ids = tiny_model("llama"), token_ids()
    plain = liger_lm.convert(copy.deepcopy(base), gate=gate, window=8, num_slots=6)(ids).logits
    normalised = liger_lm.convert(copy.deepcopy(base), gate=gate, window=8, num_slots=6, normalize=True)(ids).logits
    assert torch.equal(plain, normalised)
