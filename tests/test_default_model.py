"""Real-model checks on the embedded default model (slow: ~1 min to dequantise; `make test-slow`)."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache

import liger_lm
from liger_lm.compat import with_cache

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_model():
    return liger_lm.load_default_model()


@torch.no_grad()
def test_default_model_facts_and_window_parity(default_model):
    base, tokenizer = default_model
    assert base.config.num_hidden_layers == 30 and base.config.num_key_value_heads == 3
    ids = tokenizer("The lighthouse keeper climbed the steps to check the lamp.", return_tensors="pt")["input_ids"]
    expected = base(ids).logits
    model = liger_lm.convert(copy.deepcopy(base), rec_weight=0.0, swa_weight=1.0, window=ids.shape[1])
    assert (model(ids).logits - expected).abs().max() < 1e-3


@torch.no_grad()
def test_default_model_decode_parity_and_round_trip(default_model, tmp_path):
    base, tokenizer = default_model
    model = liger_lm.convert(copy.deepcopy(base))
    ids = tokenizer(liger_lm.evaluation.sample_text(), return_tensors="pt")["input_ids"][:, :160]
    full = model(ids).logits
    cache = DynamicCache(config=model.config)
    steps = [model(ids[:, :100], **with_cache(cache), use_cache=True).logits]
    steps += [model(ids[:, t : t + 1], **with_cache(cache), use_cache=True).logits for t in range(100, 160)]
    assert (torch.cat(steps, dim=1) - full).abs().max() < 1e-3
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(again(ids).logits, full)
