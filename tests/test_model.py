"""Converted models against independent references: the unmodified transformers model, step-by-step decode,
rows run alone, and a save/load round trip. Tiny random models of all four families (conftest.py)."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache, GPT2Config, GPT2LMHeadModel

import liger_lm
from conftest import prefill_then_decode, tiny_model
from liger_lm.compat import with_cache

SEQ = 40


def converted(family: str, **overrides):
    return liger_lm.convert(tiny_model(family), **overrides)


def token_ids(batch: int = 2, length: int = SEQ, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, 97, (batch, length), generator=generator)


@torch.no_grad()
def test_window_only_with_full_window_equals_original_model(family):
    """rec_weight=0, swa_weight=1, window ≥ T is exactly softmax attention: pins RoPE, GQA, biases, q/k norms."""
    base = tiny_model(family)
    ids = token_ids()
    expected = base(ids).logits
    model = liger_lm.convert(copy.deepcopy(base), rec_weight=0.0, swa_weight=1.0, window=SEQ)
    torch.testing.assert_close(model(ids).logits, expected, rtol=0, atol=1e-5)


@torch.no_grad()
def test_narrow_window_differs_from_original_model():
    """The window really limits attention (guards the parity test above against a window that is ignored)."""
    base = tiny_model("llama")
    ids = token_ids()
    model = liger_lm.convert(copy.deepcopy(base), rec_weight=0.0, swa_weight=1.0, window=4)
    assert (model(ids).logits - base(ids).logits).abs().max() > 1e-2


@pytest.mark.parametrize("window,prefill", [(64, 25), (8, 25), (8, 3), (1, 10)])
@torch.no_grad()
def test_full_forward_equals_prefill_then_token_by_token_decode(family, window, prefill):
    model = converted(family, window=window)
    ids = token_ids()
    full = model(ids).logits
    torch.testing.assert_close(prefill_then_decode(model, ids, prefill), full, rtol=0, atol=1e-4)


@pytest.mark.parametrize("window,prefill", [(8, 25), (4, 2), (1, 10)])
@torch.no_grad()
def test_with_sinks_full_forward_equals_prefill_then_decode(family, window, prefill):
    model = converted(family, window=window, sinks=4)
    ids = token_ids()
    torch.testing.assert_close(prefill_then_decode(model, ids, prefill), model(ids).logits, rtol=0, atol=1e-4)


@torch.no_grad()
def test_window_with_sinks_covering_every_key_equals_original_model(family):
    """Window 4 + 4 sinks: tokens 0..7 see every earlier token, so they get exactly softmax attention."""
    base = tiny_model(family)
    model = liger_lm.convert(copy.deepcopy(base), rec_weight=0.0, swa_weight=1.0, window=4, sinks=4)
    ids = token_ids()
    torch.testing.assert_close(model(ids).logits[:, :8], base(ids).logits[:, :8], rtol=0, atol=1e-4)
    assert (model(ids).logits[:, 9:] - base(ids).logits[:, 9:]).abs().max() > 1e-2  # and not beyond


@pytest.mark.parametrize("sinks", [0, 4])
@torch.no_grad()
def test_cache_memory_is_constant_in_context_length(sinks):
    model = converted("llama", window=8, sinks=sinks)
    sizes = []
    for length in (16, 64):
        cache = DynamicCache(config=model.config)
        model(token_ids(length=length), **with_cache(cache), use_cache=True)
        sizes.append(sum(layer.memory_bytes() for layer in cache.layers))
    assert sizes[0] == sizes[1] > 0


def left_pad(rows: list[torch.Tensor], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = row
        mask[i, width - len(row) :] = 1
    return ids, mask


@pytest.mark.parametrize("attn_implementation,sinks", [("sdpa", 0), ("eager", 0), ("sdpa", 3)])
@torch.no_grad()
def test_left_padded_batch_equals_each_row_alone(family, attn_implementation, sinks):
    model = converted(family, window=8, sinks=sinks)
    model.config._attn_implementation = attn_implementation
    rows = [token_ids(1, 30, seed=2)[0], token_ids(1, 11, seed=3)[0]]
    ids, mask = left_pad(rows)
    batch_logits = model(ids, attention_mask=mask).logits
    batch_tokens = model.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0)
    for i, row in enumerate(rows):
        alone = model(row[None]).logits[0]
        torch.testing.assert_close(batch_logits[i, -len(row) :], alone, rtol=0, atol=1e-4)
        alone_tokens = model.generate(row[None], max_new_tokens=12, do_sample=False, pad_token_id=0)
        assert torch.equal(batch_tokens[i, ids.shape[1] :], alone_tokens[0, len(row) :])


@torch.no_grad()
def test_generate_uses_the_liger_cache_and_matches_no_cache_greedy_and_beam():
    model = converted("qwen3", window=8)
    ids = token_ids(1, 12)
    with_cache = model.generate(ids, max_new_tokens=16, do_sample=False, pad_token_id=0)
    without = model.generate(ids, max_new_tokens=16, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(with_cache, without)
    beams = dict(max_new_tokens=8, num_beams=3, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(ids, **beams), model.generate(ids, use_cache=False, **beams))
    out = model.generate(ids, max_new_tokens=2, do_sample=True, return_dict_in_generate=True, pad_token_id=0)
    assert all(isinstance(layer, liger_lm.LigerCacheLayer) for layer in out.past_key_values.layers)


@torch.no_grad()
def test_save_load_round_trip_gives_identical_logits(family, tmp_path):
    model = converted(family, window=16, softmax_layers=[1])
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    config = AutoConfig.from_pretrained(tmp_path)
    assert config.model_type == f"liger_{family}"
    assert config.liger["base_model_type"] == family and config.liger["window"] == 16
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(again) is type(model)
    assert isinstance(again.model.layers[0].self_attn, liger_lm.LigerAttention)
    assert not isinstance(again.model.layers[1].self_attn, liger_lm.LigerAttention)
    ids = token_ids()
    torch.testing.assert_close(again(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_conversion_adds_no_parameters_and_keeps_names(family):
    base = tiny_model(family)
    names = dict(base.named_parameters())
    model = liger_lm.convert(base)
    assert dict(model.named_parameters()).keys() == names.keys()


@torch.no_grad()
def test_softmax_layers_keep_the_original_attention():
    base = tiny_model("llama")
    model = liger_lm.convert(copy.deepcopy(base), softmax_layers=[0, 1, 2])
    ids = token_ids()
    torch.testing.assert_close(model(ids).logits, base(ids).logits, rtol=0, atol=0)


def test_unsupported_architecture_is_named():
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(liger_lm.UnsupportedModelError, match="LlamaForCausalLM, MistralForCausalLM"):
        liger_lm.convert(gpt2)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(gate="nope"), "unknown gate 'nope'"),
        (dict(window=0), "window must be a positive integer"),
        (dict(rec_weight=-1), "rec_weight must be a number ≥ 0"),
        (dict(rec_weight=0, swa_weight=0), "both 0"),
        (dict(softmax_layers=[7]), "out of range"),
        (dict(windw=3), "unknown Liger setting"),
    ],
)
def test_bad_arguments_give_clear_errors(overrides, message):
    with pytest.raises(liger_lm.LigerConfigError, match=message):
        liger_lm.convert(tiny_model("llama"), **overrides)


def test_converting_twice_is_refused():
    model = converted("llama")
    with pytest.raises(ValueError, match="already converted"):
        liger_lm.convert(model)


def test_newer_checkpoint_format_is_refused(tmp_path):
    model = converted("llama")
    model.config.liger["format_version"] = 99
    model.save_pretrained(tmp_path)
    with pytest.raises(liger_lm.LigerConfigError, match="newer liger-lm"):
        AutoModelForCausalLM.from_pretrained(tmp_path)
