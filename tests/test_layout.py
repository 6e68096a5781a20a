"""`decode_layout`: wide weights column-major inside the block, same results, contiguous and saveable after."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

import liger_lm
from conftest import tiny_model


def _wide_weights(model):
    return {name: p for name, p in model.named_parameters() if p.dim() == 2 and p.shape[0] > p.shape[1]}


def test_decode_layout_keeps_results_and_restores_contiguous_weights(tmp_path):
    model = liger_lm.convert(tiny_model("llama", tie_word_embeddings=True))
    ids = torch.randint(0, 97, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(ids).logits
        with liger_lm.decode_layout(model):
            wide = _wide_weights(model)
            # gate/up [64, 48] and the tied LM head / embedding [97, 48]; q/o [48, 48] and k/v [24, 48] are not wide
            assert {n.split(".")[-2] for n in wide} >= {"gate_proj", "up_proj", "embed_tokens"}
            assert all(p.stride() == (1, p.shape[0]) for p in wide.values())
            assert model.lm_head.weight is model.model.embed_tokens.weight
            actual = model(ids).logits
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    assert all(p.is_contiguous() for p in model.parameters())
    model.save_pretrained(tmp_path)  # refuses non-contiguous weights
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, expected)


def test_decode_layout_restores_after_an_error():
    model = tiny_model("qwen2")
    try:
        with liger_lm.decode_layout(model):
            raise RuntimeError("interrupted")
    except RuntimeError:
        pass
    assert all(p.is_contiguous() for p in model.parameters())


def test_decode_layout_leaves_non_float_weights_alone():
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Linear(4, 16))
    model[1].weight = torch.nn.Parameter(torch.ones(16, 4, dtype=torch.int8), requires_grad=False)
    with liger_lm.decode_layout(model):
        assert model[0].weight.stride() == (1, 16)
        assert model[1].weight.stride() == (4, 1)
