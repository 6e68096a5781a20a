"""`decode_layout`: q/k/v and gate/up fused, wide weights column-major inside the block, same results as the
unmodified model, contiguous weights on their own storage and saveable after."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

import liger_lm
from conftest import tiny_model
from liger_lm.compat import peft_quietly
from liger_lm.quantize import BF16_PATHS, INT8_PATHS, force_path, quantize_for_decode


def _ids():
    return torch.randint(0, 97, (2, 11), generator=torch.Generator().manual_seed(0))


def _called_projections(model, ids) -> set[str]:
    """The names of the q/k/v/gate/up/down projections a forward of `model` calls as modules."""
    called = set()
    hooks = [module.register_forward_hook(lambda *_, name=name: called.add(name.split(".")[-1]))
             for name, module in model.named_modules()
             if name.endswith(("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "down_proj"))]
    with torch.no_grad():
        model(ids)
    for hook in hooks:
        hook.remove()
    return called


def test_decode_layout_keeps_results_and_restores_contiguous_weights(tmp_path):
    model = liger_lm.convert(tiny_model("llama", tie_word_embeddings=True))
    ids = _ids()
    with torch.no_grad():
        expected = model(ids).logits
        with liger_lm.decode_layout(model):
            # the tied LM head / embedding [97, 48] is wide and not fused: column-major on its own
            embedding = model.model.embed_tokens.weight
            assert embedding.stride() == (1, 97) and model.lm_head.weight is embedding
            attention, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
            # q/k/v [48 + 24 + 24, 48] and gate/up [64 + 64, 48] stacked, wide, column-major; members are its rows
            for fused, first in ((attention.fused_qkv, attention.q_proj), (mlp.fused_gate_up, mlp.gate_proj)):
                stacked = fused.linear.weight
                assert stacked.stride() == (1, stacked.shape[0])
                assert first.weight.data_ptr() == stacked.data_ptr()  # a view: nothing stored twice
            actual = model(ids).logits
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    assert all(p.is_contiguous() and not p.data._is_view() for p in model.parameters())
    assert "forward" not in vars(mlp) and attention.fused_qkv is None
    model.save_pretrained(tmp_path)  # refuses non-contiguous or shared weights
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, expected)


# Every kernel path on every machine (`force_path`), not only the one this CPU picks: a bf16-native CPU runs the
# stacked bf16 GEMM where an AVX2 one upcasts to fp32.
KERNEL_PATHS = [("fp32", None), *(("int8", p) for p in INT8_PATHS), *(("bf16", p) for p in BF16_PATHS)]
BF16_ROUNDED = {"int8pack", "dequant_bf16", "bf16"}  # x or the product rounded to bf16


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).norm() / expected.norm()).item()


@pytest.mark.parametrize(("fmt", "path"), KERNEL_PATHS)
@pytest.mark.parametrize("family", ["qwen2", "qwen3"])  # q/k/v biases; q/k norms
def test_fused_projections_give_the_separate_results(family, fmt, path):
    """A stacked product computes each member's rows as the separate one does, but a bf16 GEMM may block its
    reduction differently for the wider weight and round another bf16 ulp: those paths are compared at bf16
    precision (a mis-wired member would be off by O(1), not 1e-2)."""
    model = quantize_for_decode(liger_lm.convert(tiny_model(family)), fmt)
    ids = _ids()
    with torch.no_grad(), force_path(path):
        expected = model(ids).logits
        expected_step = model(ids[:, :1]).logits  # M = 2 rows: int8's int8pack kernel, not the prefill path
        with liger_lm.decode_layout(model):
            assert _called_projections(model, ids) == {"down_proj"}  # q/k/v and gate/up ran fused
            actual, actual_step = model(ids).logits, model(ids[:, :1]).logits
    tolerance = 1e-2 if path in BF16_ROUNDED else 1e-5
    assert _relative_error(actual, expected) < tolerance
    assert _relative_error(actual_step, expected_step) < tolerance
    assert _called_projections(model, ids) == {"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "down_proj"}


def test_a_model_copied_and_changed_inside_the_block_computes_its_own_weights():
    """A copy quantised (or a model cast) inside the block must not run the stacked fp32 weights it inherited."""
    import copy

    model = liger_lm.convert(tiny_model("qwen2"))
    reference = quantize_for_decode(copy.deepcopy(model), "int8")
    with torch.no_grad():
        expected = reference(_ids()).logits
        with liger_lm.decode_layout(model):
            quantised = quantize_for_decode(copy.deepcopy(model), "int8")
            torch.testing.assert_close(quantised(_ids()).logits, expected, rtol=1e-5, atol=1e-5)
            assert {"q_proj", "gate_proj"} <= _called_projections(quantised, _ids())  # its own int8 layers
            model.to(torch.float64)
            assert model(_ids()).logits.dtype == torch.float64
            model.to(torch.float32)


def test_lora_wrapped_projections_are_left_unfused():
    from peft import LoraConfig, get_peft_model

    with peft_quietly():
        model = get_peft_model(liger_lm.convert(tiny_model("llama")), LoraConfig(r=2, target_modules=["q_proj"]))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_()  # a non-zero update: a fused q/k/v would silently drop it
        expected = model(_ids()).logits
        with liger_lm.decode_layout(model):
            assert {"q_proj", "k_proj", "v_proj"} <= _called_projections(model, _ids())
            assert "gate_proj" not in _called_projections(model, _ids())
            actual = model(_ids()).logits
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_only_the_families_mlps_are_fused():
    """A module with gate/up/down projections but its own formula keeps its forward (the fused one is the
    Llama / Mistral / Qwen2 / Qwen3 MLP's)."""

    class OtherMLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gate_proj, self.up_proj = torch.nn.Linear(4, 8), torch.nn.Linear(4, 8)
            self.down_proj, self.act_fn = torch.nn.Linear(8, 4), torch.nn.Tanh()

        def forward(self, x):
            return self.down_proj(self.gate_proj(x) - self.act_fn(self.up_proj(x)))

    model, x = OtherMLP(), torch.randn(3, 4)
    with torch.no_grad():
        expected = model(x)
        with liger_lm.decode_layout(model):
            assert "forward" not in vars(model)
            torch.testing.assert_close(model(x), expected)


def test_decode_layout_restores_after_an_error():
    model = liger_lm.convert(tiny_model("qwen2"))
    with pytest.raises(RuntimeError, match="interrupted"), liger_lm.decode_layout(model):
        raise RuntimeError("interrupted")
    assert all(p.is_contiguous() and not p.data._is_view() for p in model.parameters())
    assert _called_projections(model, _ids()) == {"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "down_proj"}


def test_decode_layout_leaves_non_float_weights_alone():
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Linear(4, 16))
    model[1].weight = torch.nn.Parameter(torch.ones(16, 4, dtype=torch.int8), requires_grad=False)
    with liger_lm.decode_layout(model):
        assert model[0].weight.stride() == (1, 16)
        assert model[1].weight.stride() == (4, 1)
