"""Converted models follow the conventions other tools rely on: lm-eval's entry point, accelerate's
`_no_split_modules`, transformers' gradient checkpointing, and conversion before a sharding wrapper."""

from __future__ import annotations

import copy
from importlib.metadata import entry_points

import pytest
import torch

import liger_lm
from conftest import tiny_model
from liger_lm.compat import enable_activation_checkpointing
from liger_lm.modeling.hf import LIGER_CLASSES
from test_model import token_ids


def test_lm_eval_finds_the_liger_model_through_its_entry_point():
    pytest.importorskip("lm_eval")
    (entry,) = [e for e in entry_points(group="lm_eval.models") if e.name == "liger"]
    from liger_lm.harness import LigerLM

    assert entry.load() is LigerLM


@pytest.mark.parametrize("family", list(LIGER_CLASSES))
def test_no_split_modules_name_the_decoder_layer(family):
    model = liger_lm.convert(tiny_model(family), window=8)
    layer_classes = {type(layer).__name__ for layer in model.model.layers}
    assert type(model).__name__.startswith("Liger")
    assert layer_classes <= set(model._no_split_modules), (layer_classes, model._no_split_modules)
    # accelerate's device maps keep each named module on one device: the mixer (and its cache access) stays whole.
    from accelerate.utils import get_balanced_memory, infer_auto_device_map

    memory = get_balanced_memory(model, max_memory={0: "1MB", 1: "1MB", "cpu": "1GB"},
                                 no_split_module_classes=model._no_split_modules)
    device_map = infer_auto_device_map(model, max_memory=memory, no_split_module_classes=model._no_split_modules)
    assert not any(".self_attn" in name for name in device_map), device_map


@pytest.mark.parametrize("combine,sinks", [("sum", 0), ("shared", 2)])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(combine, sinks):
    """Recomputing each decoder layer in the backward pass (transformers' gradient checkpointing) must reproduce
    the plain backward exactly; the mixer must really run twice per layer, or checkpointing was not on."""
    base = liger_lm.convert(tiny_model("llama"), window=8, combine=combine, sinks=sinks)
    base.train()
    ids = token_ids(2, 40)
    results = []
    for checkpointing in (False, True):
        model = copy.deepcopy(base)
        if checkpointing:
            enable_activation_checkpointing(model)
        calls = []
        model.model.layers[0].self_attn.register_forward_hook(lambda *args: calls.append(1))
        loss = model(ids, labels=ids).loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((loss.detach(), grads, len(calls)))
    (plain_loss, plain_grads, plain_calls), (ckpt_loss, ckpt_grads, ckpt_calls) = results
    assert (plain_calls, ckpt_calls) == (1, 2)
    torch.testing.assert_close(ckpt_loss, plain_loss, rtol=0, atol=1e-6)
    assert plain_grads.keys() == ckpt_grads.keys() and len(plain_grads) > 0
    for name, grad in plain_grads.items():
        torch.testing.assert_close(ckpt_grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_conversion_works_on_the_meta_device_before_weights_exist():
    """Sharding wrappers (FSDP, accelerate's big-model loading) build the model on the meta device first: the
    conversion must not touch weight values, and the converted model must then load real weights."""
    from accelerate import init_empty_weights
    from transformers import Qwen3ForCausalLM

    real = liger_lm.convert(tiny_model("qwen3"), window=8)
    with init_empty_weights():
        skeleton = Qwen3ForCausalLM(tiny_model("qwen3").config)
    converted = liger_lm.convert(skeleton, window=8)
    assert all(p.is_meta for p in converted.parameters())
    converted.load_state_dict(real.state_dict(), assign=True)
    ids = token_ids(1, 20)
    with torch.no_grad():
        torch.testing.assert_close(converted.eval()(ids).logits, real(ids).logits, rtol=0, atol=0)


def test_every_liger_class_is_importable_by_its_own_name():
    """`architectures` in a saved config.json names the class: it must resolve as an attribute of its module."""
    import importlib

    for config_class, model_class in LIGER_CLASSES.values():
        for cls in (config_class, model_class):
            assert getattr(importlib.import_module(cls.__module__), cls.__qualname__) is cls


def test_load_model_never_asks_for_hub_kernels(tiny_model_dir, monkeypatch):
    """transformers 5.25 made `from_pretrained` kernelize by default, which raises without the `kernels` package
    and fetches layers from the Hub: our offline loads keep kernels off (`compat.LOAD_OPTIONS`) on every release.
    Emulated on any release: `use_kernels` defaults to True, as in 5.25, and asking for kernels raises."""
    from transformers import AutoModelForCausalLM

    real = AutoModelForCausalLM.from_pretrained.__func__
    asked = []

    def like_525_without_kernels(cls, *args, **kwargs):
        asked.append(kwargs.setdefault("use_kernels", True))
        if kwargs["use_kernels"]:
            raise ValueError("Kernels are not available. Please install a compatible version")
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(like_525_without_kernels))
    model, _ = liger_lm.load_model(str(tiny_model_dir))
    assert asked == [False] and model.config.model_type == "llama"
