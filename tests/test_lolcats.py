"""LoLCATs baseline (docs/method.md §1.3): the blocked op against a per-token loop and torch SDPA, and converted models
against the unmodified transformers model, token-by-token decode, rows run alone and a save/load round trip."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, DynamicCache

import liger_lm
from conftest import prefill_then_decode, tiny_model
from liger_lm.compat import peft_quietly, with_cache
from liger_lm.modeling.lolcats import HedgehogFeatureMap, LolcatsAttention, WindowFactor
from liger_lm.ops.lolcats import lolcats_attention, naive_lolcats_attention

SEQ = 40
HEADS, KV_HEADS, HEAD_DIM, FEATURE_DIM = 6, 2, 8, 5
LEARNED = ("feature_map_q", "feature_map_k", "window_factor")


def op_inputs(length, past, seed=0, batch=2, with_state=True, with_padding=True):
    """Random op inputs: q [B, T, H, D], keys over P + T positions with GQA, features, γ, validity, state."""
    g = torch.Generator().manual_seed(seed)
    total = past + length

    def rand(*shape):
        return torch.randn(*shape, generator=g)

    valid = None
    if with_padding:
        valid = torch.rand(batch, total, generator=g) > 0.25
        valid[:, -1] = True
    state = None
    if with_state:
        state = (rand(batch, HEADS, 2 * FEATURE_DIM, HEAD_DIM).abs(), rand(batch, HEADS, 2 * FEATURE_DIM).abs())
    return dict(
        q=rand(batch, length, HEADS, HEAD_DIM) * 2,
        k=rand(batch, total, KV_HEADS, HEAD_DIM) * 2,
        v=rand(batch, total, KV_HEADS, HEAD_DIM),
        q_feat=rand(batch, length, HEADS, 2 * FEATURE_DIM).softmax(-1),
        k_feat=rand(batch, total, HEADS, 2 * FEATURE_DIM).softmax(-1),
        window_factor=torch.rand(HEADS, generator=g),
        scale=HEAD_DIM**-0.5,
        key_valid=valid,
        initial_state=state,
    )


def assert_op_close(actual, expected):
    (out, (u, z)), (ref_out, (ref_u, ref_z)) = actual, expected
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(u, ref_u, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(z, ref_z, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("window", [1, 4, 8])
@pytest.mark.parametrize(
    "length,past,with_state,with_padding",
    [(19, 0, False, False), (19, 0, False, True), (19, 3, True, True), (21, 20, True, True), (3, 7, True, True),
     (1, 7, True, True), (16, 0, True, False)],
)
def test_blocked_op_equals_naive_per_token_loop(window, length, past, with_state, with_padding):
    """T not a multiple of w, T ≤ w and T > w, GQA, past window keys, an initial state and invalid keys."""
    inputs = op_inputs(length, past, with_state=with_state, with_padding=with_padding)
    assert_op_close(
        lolcats_attention(window=window, **inputs), naive_lolcats_attention(window=window, **inputs)
    )


def test_naive_loop_matches_hand_computed_formula():
    """Pins the reference itself on one query: window {2, 3} (w = 2), linear keys {0, 1} plus the initial state."""
    inputs = op_inputs(1, 3, batch=1, with_padding=False)
    out, _ = naive_lolcats_attention(window=2, **inputs)
    q, k, v = inputs["q"][0, 0], inputs["k"][0].repeat_interleave(3, 1), inputs["v"][0].repeat_interleave(3, 1)
    qf, kf, gamma = inputs["q_feat"][0, 0], inputs["k_feat"][0], inputs["window_factor"]
    u0, z0 = (s[0] for s in inputs["initial_state"])
    for h in range(HEADS):
        scores = torch.stack([q[h] @ k[j, h] for j in (2, 3)]) * HEAD_DIM**-0.5
        weights = gamma[h] * torch.exp(scores - scores.max())
        u = u0[h] + sum(torch.outer(kf[j, h], v[j, h]) for j in (0, 1))
        z = z0[h] + kf[0, h] + kf[1, h]
        expected = (weights[0] * v[2, h] + weights[1] * v[3, h] + qf[h] @ u) / (weights.sum() + qf[h] @ z)
        torch.testing.assert_close(out[0, 0, h], expected, rtol=1e-5, atol=1e-6)


def test_op_reads_no_key_features_inside_the_last_window():
    """The mixer computes φ(k) only for keys leaving the window: other rows must not matter (even NaN)."""
    window, inputs = 4, op_inputs(13, 3)
    expected = lolcats_attention(window=window, **inputs)
    inputs["k_feat"][:, -(window - 1) :] = float("nan")
    assert_op_close(lolcats_attention(window=window, **inputs), expected)


@pytest.mark.parametrize("window,length,past", [(4, 11, 3), (8, 19, 0), (4, 3, 3)])
def test_gradients_of_blocked_op_equal_naive(window, length, past):
    """Gradients w.r.t. the learned feature maps, window factor, q, k, v and the initial state agree."""
    inputs = op_inputs(length, past)
    maps = [HedgehogFeatureMap(HEADS, HEAD_DIM, FEATURE_DIM) for _ in range(2)]
    factor = WindowFactor(HEADS, -0.5)
    with torch.no_grad():
        for fmap in maps:
            fmap.weight.normal_()
    leaves = [inputs[name].requires_grad_() for name in ("q", "k", "v")] + list(inputs["initial_state"])
    for s in inputs["initial_state"]:
        s.requires_grad_()
    params = [m.weight for m in maps] + [factor.logit] + leaves
    cotangent = torch.randn(2, length, HEADS, HEAD_DIM, generator=torch.Generator().manual_seed(9))

    def grads(op):
        q_rep = inputs["q"]
        k_rep = inputs["k"].repeat_interleave(HEADS // KV_HEADS, dim=2)
        args = {**inputs, "q_feat": maps[0](q_rep), "k_feat": maps[1](k_rep), "window_factor": factor()}
        out, (u, z) = op(window=window, **args)
        loss = (out * cotangent).sum() + u.square().mean() + z.mean()
        return torch.autograd.grad(loss, params)

    for fast, slow in zip(grads(lolcats_attention), grads(naive_lolcats_attention)):
        torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("logit", [20.0, -2.197])
@pytest.mark.parametrize("length", [7, 24])
def test_window_covering_the_sequence_is_causal_softmax_attention(logit, length):
    """w ≥ T leaves no linear key, so γ cancels and the op is softmax attention (reference: torch SDPA)."""
    inputs = op_inputs(length, 0, with_state=False, with_padding=False)
    inputs["window_factor"] = torch.sigmoid(torch.full((HEADS,), logit))
    out, _ = lolcats_attention(window=length, **inputs)
    q, k, v = (inputs[n].transpose(1, 2) for n in ("q", "k", "v"))
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True).transpose(1, 2)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------- converted models


def converted(family: str, perturb: bool = True, **overrides):
    """A LoLCATs-converted tiny model; `perturb` moves the learned parameters away from their initial values."""
    model = liger_lm.convert(tiny_model(family), method="lolcats", **overrides)
    if perturb:
        generator = torch.Generator().manual_seed(5)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if any(part in name for part in LEARNED):
                    param.add_(torch.randn(param.shape, generator=generator))
    return model


def token_ids(batch: int = 2, length: int = SEQ, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, 97, (batch, length), generator=generator)


@torch.no_grad()
def test_window_covering_the_sequence_equals_original_model(family):
    """w ≥ T: exactly the unmodified transformers model (RoPE, GQA, biases, q/k norms), whatever φ and γ are."""
    base = tiny_model(family)
    ids = token_ids()
    model = converted(family, window=SEQ)
    torch.testing.assert_close(model(ids).logits, base(ids).logits, rtol=0, atol=1e-5)


@torch.no_grad()
def test_narrow_window_depends_on_the_learned_parameters():
    """Guards the test above: with w < T the feature maps and window factor really enter the output."""
    ids = token_ids()
    initial, perturbed = converted("llama", perturb=False, window=8), converted("llama", window=8)
    assert (initial(ids).logits - perturbed(ids).logits).abs().max() > 1e-3
    assert (initial(ids).logits - tiny_model("llama")(ids).logits).abs().max() > 1e-3


@pytest.mark.parametrize("window,prefill", [(8, 25), (8, 3)])
@torch.no_grad()
def test_full_forward_equals_prefill_then_token_by_token_decode(family, window, prefill):
    """Blocked prefill (T > w) or a short one, then decode steps that each fold the key leaving the window."""
    model = converted(family, window=window)
    ids = token_ids()
    torch.testing.assert_close(prefill_then_decode(model, ids, prefill), model(ids).logits, rtol=0, atol=1e-4)


@pytest.mark.parametrize("window,prefill", [(1, 10), (64, 25)])
@torch.no_grad()
def test_decode_with_an_empty_or_never_full_window_buffer(window, prefill):
    """w = 1 keeps no key in the buffer (all go to the state); w > T never folds a key."""
    model = converted("llama", window=window)
    ids = token_ids()
    torch.testing.assert_close(prefill_then_decode(model, ids, prefill), model(ids).logits, rtol=0, atol=1e-4)


@torch.no_grad()
def test_decode_cache_is_constant_in_context_length():
    model = converted("llama", window=8)
    sizes = []
    for length in (16, 64):
        cache = DynamicCache(config=model.config)
        model(token_ids(length=length), **with_cache(cache), use_cache=True)
        sizes.append(sum(layer.memory_bytes() for layer in cache.layers))
        u, z = cache.layers[0].state
        assert u.shape == (2, 6, 128, 8) and z.shape == (2, 6, 128) and cache.layers[0].keys.shape[1] == 7
    assert sizes[0] == sizes[1]


def left_pad(rows: list[torch.Tensor], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = row
        mask[i, width - len(row) :] = 1
    return ids, mask


def assert_left_padded_batch_equals_each_row_alone(model):
    """Padding touches neither the window nor the state (nor the fold of keys leaving the window) in prefill or
    in generate()'s decode steps. φ acts on RoPE'd q/k, so positions must start at each row's first real token
    (generate() derives them from the mask; a plain forward needs them passed)."""
    rows = [token_ids(1, 30, seed=2)[0], token_ids(1, 11, seed=3)[0]]
    ids, mask = left_pad(rows)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    batch_logits = model(ids, attention_mask=mask, position_ids=positions).logits
    batch_tokens = model.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0)
    for i, row in enumerate(rows):
        torch.testing.assert_close(batch_logits[i, -len(row) :], model(row[None]).logits[0], rtol=0, atol=1e-4)
        alone_tokens = model.generate(row[None], max_new_tokens=12, do_sample=False, pad_token_id=0)
        assert torch.equal(batch_tokens[i, ids.shape[1] :], alone_tokens[0, len(row) :])


@torch.no_grad()
def test_left_padded_batch_equals_each_row_alone(family):
    assert_left_padded_batch_equals_each_row_alone(converted(family, window=8))


@torch.no_grad()
def test_left_padded_batch_with_the_eager_additive_mask():
    model = converted("llama", window=8)
    model.config._attn_implementation = "eager"
    assert_left_padded_batch_equals_each_row_alone(model)


@torch.no_grad()
def test_generate_with_cache_matches_without_greedy_and_beam():
    model = converted("qwen3", window=4)
    ids = token_ids(1, 12)
    greedy = dict(max_new_tokens=16, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(ids, **greedy), model.generate(ids, use_cache=False, **greedy))
    beams = dict(max_new_tokens=8, num_beams=3, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(ids, **beams), model.generate(ids, use_cache=False, **beams))


@torch.no_grad()
def test_save_load_round_trip_keeps_the_learned_parameters(family, tmp_path):
    model = converted(family, window=8, feature_dim=12, softmax_layers=[1])
    model.save_pretrained(tmp_path)
    stored = json.loads((tmp_path / "config.json").read_text())["liger"]
    assert stored["method"] == "lolcats" and stored["feature_dim"] == 12
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(again) is type(model)
    assert isinstance(again.model.layers[0].self_attn, LolcatsAttention)
    assert not isinstance(again.model.layers[1].self_attn, liger_lm.LigerAttention)
    loaded = dict(again.named_parameters())
    for name, param in model.named_parameters():
        assert torch.equal(loaded[name], param), name
    ids = token_ids()
    torch.testing.assert_close(again(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_conversion_adds_only_feature_maps_and_window_factors(family):
    base = tiny_model(family)
    before = {name: p.detach().clone() for name, p in base.named_parameters()}
    model = liger_lm.convert(base, method="lolcats", softmax_layers=[2])
    params = dict(model.named_parameters())
    for name, value in before.items():
        assert torch.equal(params[name], value), name
    expected_new = {
        f"model.layers.{i}.self_attn.{suffix}"
        for i in (0, 1)
        for suffix in ("feature_map_q.weight", "feature_map_k.weight", "window_factor.logit")
    }
    assert params.keys() - before.keys() == expected_new
    assert all(params[n].dtype == torch.float32 and params[n].requires_grad for n in expected_new)
    mixer = model.model.layers[0].self_attn
    heads, head_dim = mixer.num_heads, mixer.head_dim
    assert mixer.feature_map_q.weight.shape == (heads, head_dim, 64)
    torch.testing.assert_close(mixer.window_factor(), torch.full((heads,), 0.1), rtol=0, atol=1e-4)


def test_feature_map_init_is_identity_then_seeded_random():
    """f ≤ D: W = the first f columns of I. f > D: I on the first D columns, the rest fixed by the torch seed."""
    narrow = HedgehogFeatureMap(3, 8, 5)
    assert torch.equal(narrow.weight, torch.eye(8, 5).expand(3, 8, 5))
    torch.manual_seed(0)
    wide = HedgehogFeatureMap(3, 8, 12)
    torch.manual_seed(0)
    again = HedgehogFeatureMap(3, 8, 12)
    assert torch.equal(wide.weight, again.weight)
    assert torch.equal(wide.weight[:, :, :8], torch.eye(8).expand(3, 8, 8))
    extra = wide.weight[:, :, 8:]
    assert extra.abs().max() <= 8**-0.5 and len(torch.unique(extra)) == extra.numel()


def test_feature_map_is_the_hedgehog_map():
    fmap = HedgehogFeatureMap(2, 4, 3)
    with torch.no_grad():
        fmap.weight.normal_()
    x = torch.randn(1, 5, 2, 4)
    for h in range(2):
        projected = x[:, :, h] @ fmap.weight[h]
        expected = torch.cat([projected.softmax(-1), (-projected).softmax(-1)], -1)
        torch.testing.assert_close(fmap(x)[:, :, h], expected)


@torch.no_grad()
def test_original_attention_is_kept_for_the_teacher():
    """Putting `softmax_attention` back in every layer gives exactly the base model (what distillation relies on)."""
    base = tiny_model("mistral")
    model = converted("mistral", window=8)
    for layer in model.model.layers:
        layer.self_attn = vars(layer.self_attn)["softmax_attention"]
    ids = token_ids()
    torch.testing.assert_close(model(ids).logits, base(ids).logits, rtol=0, atol=0)


def test_peft_modules_to_save_selects_the_learned_parameters():
    from peft import LoraConfig, get_peft_model

    model = converted("qwen2", perturb=False, window=8)
    ids = token_ids()
    with torch.no_grad():
        expected = model(ids).logits
    with peft_quietly():
        peft_model = get_peft_model(
            model, LoraConfig(r=4, target_modules=["q_proj", "k_proj", "v_proj"], modules_to_save=list(LEARNED))
        )
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert sum("feature_map_q" in n for n in trainable) == 3 and sum("window_factor" in n for n in trainable) == 3
    assert all("lora_" in n or any(part in n for part in LEARNED) for n in trainable)
    loss = peft_model(ids, labels=ids).loss
    loss.backward()
    grad = peft_model.base_model.model.model.layers[0].self_attn.window_factor.modules_to_save["default"].logit.grad
    assert grad is not None and grad.abs().sum() > 0
    with torch.no_grad():
        torch.testing.assert_close(peft_model(ids).logits, expected, rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------------ configuration


def test_config_round_trip_and_old_checkpoints_default_to_liger():
    config = liger_lm.LigerConfig(method="lolcats", feature_dim=32, window_factor_init=-1.0)
    assert liger_lm.LigerConfig.from_dict(config.to_dict()) == config
    legacy = {k: v for k, v in liger_lm.LigerConfig().to_dict().items() if k not in ("method", "feature_dim", "window_factor_init")}
    assert liger_lm.LigerConfig.from_dict(legacy).method == "liger"


def test_checkpoint_without_method_loads_as_liger(tmp_path):
    liger_lm.convert(tiny_model("llama")).save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    config = json.loads(path.read_text())
    del config["liger"]["method"]
    path.write_text(json.dumps(config))
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    mixer = again.model.layers[0].self_attn
    assert isinstance(mixer, liger_lm.LigerAttention) and not isinstance(mixer, LolcatsAttention)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(method="hedgehog"), "unknown method 'hedgehog'"),
        (dict(method="lolcats", feature_dim=0), "feature_dim must be a positive integer"),
        (dict(method="lolcats", window_factor_init=float("inf")), "window_factor_init must be a finite number"),
    ],
)
def test_bad_lolcats_settings_give_clear_errors(overrides, message):
    with pytest.raises(liger_lm.LigerConfigError, match=message):
        liger_lm.convert(tiny_model("llama"), **overrides)


def test_cli_convert_with_method_lolcats(tiny_model_dir, tmp_path):
    """In-process (tests/test_cli.py runs the real subprocess and the one-line error path for all options)."""
    from typer.testing import CliRunner

    from liger_lm.cli import app

    out = tmp_path / "lolcats"
    command = ["convert", "--model", str(tiny_model_dir), "--out", str(out)]
    done = CliRunner().invoke(app, [*command, "--method", "lolcats", "--window", "8"])
    assert done.exit_code == 0, done.output
    assert isinstance(AutoModelForCausalLM.from_pretrained(out).model.layers[0].self_attn, LolcatsAttention)
    bad = CliRunner().invoke(app, [*command[:-1], str(tmp_path / "x"), "--method", "nope"])
    assert isinstance(bad.exception, liger_lm.LigerConfigError) and "unknown method 'nope'" in str(bad.exception)
