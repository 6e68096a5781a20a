"""int8 / bf16 weights for inference (`liger_lm.quantize`): kernels against hand-computed references on every path,
module semantics, tiny base and Liger models (greedy output, decode through the cache = no-cache forward)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import liger_lm
from conftest import prefill_then_decode, tiny_model
from liger_lm.compat import peft_quietly
from liger_lm import quantize
from liger_lm.quantize import (
    BF16_PATHS,
    INT8_PATHS,
    QuantizationError,
    QuantizedLinear,
    bf16_linear,
    choose_path,
    dequantize_int8,
    force_path,
    int8_linear,
    quantize_for_decode,
    quantize_int8,
    reduction_linear,
    single_row_reduction,
    weight_formats,
)

CPU = torch.device("cpu")
BF16_EPS = 2.0**-8  # relative rounding of a bf16 value


def _weights(out_features=40, in_features=48, seed=0):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_features, in_features, generator=generator)
    weight[3] = 0.0  # a row of zeros must not divide by zero
    weight[5, 7] = 30.0  # an outlier: its row's scale is set by it
    return weight, torch.randn(out_features, generator=generator)


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def test_quantize_int8_by_hand():
    weight, _ = _weights()
    q, s = quantize_int8(weight)
    assert q.dtype == torch.int8 and s.dtype == torch.float32 and q.shape == weight.shape and s.shape == (40,)
    assert q.abs().max() <= 127 and torch.equal(s.to(torch.bfloat16).float(), s)  # bf16-exact scales
    expected_scale = (weight.abs().amax(1) / 127).to(torch.bfloat16).float()
    assert torch.equal(s[weight.abs().amax(1) > 0], expected_scale[weight.abs().amax(1) > 0]) and s[3] == 1.0
    assert torch.equal(q[3], torch.zeros_like(q[3]))
    error = (dequantize_int8(q, s) - weight).abs()
    assert (error <= s[:, None] / 2 + 1e-6).all() | (q.abs() == 127).all()  # rounding, or the clamp at ±127
    assert (error <= s[:, None] * 0.51 + weight.abs().amax(1, keepdim=True) * BF16_EPS).all()


@pytest.mark.parametrize("rows", [1, 3, 20])
@pytest.mark.parametrize("path", INT8_PATHS)
def test_int8_linear_every_path_matches_the_dequantised_reference(path, rows):
    weight, bias = _weights()
    q, s = quantize_int8(weight)
    x = torch.randn(rows, 48, generator=torch.Generator().manual_seed(rows))
    reference = x @ dequantize_int8(q, s).T + bias  # computed by hand: x · (s ⊙ Q)ᵀ + b
    out = int8_linear(x, q, s, s.to(torch.bfloat16), bias, path)
    assert out.dtype == torch.float32 and out.shape == (rows, 40)
    # bf16 paths round x and (int8pack) the output to bf16: a few bf16 epsilons of the largest output
    tolerance = 1e-5 if path == "dequant_fp32" else 4 * BF16_EPS
    assert _relative_error(out, reference) < tolerance
    assert _relative_error(int8_linear(x, q, s, s.to(torch.bfloat16), None, path), reference - bias) < tolerance


@pytest.mark.parametrize("rows", [1, 5])
@pytest.mark.parametrize("path", BF16_PATHS)
def test_bf16_linear_every_path_matches_the_reference(path, rows):
    weight, bias = _weights()
    stored = weight.to(torch.bfloat16)
    x = torch.randn(rows, 48, generator=torch.Generator().manual_seed(rows))
    out = bf16_linear(x, stored, bias, path)
    assert out.dtype == torch.float32 and out.shape == (rows, 40)
    if path == "fp32":  # the stored weight upcast: exact up to fp32 summation order
        torch.testing.assert_close(out, x @ stored.float().T + bias, rtol=1e-5, atol=1e-5)
    else:  # x rounded to bf16, fp32 accumulation, output rounded to bf16
        reference = x.to(torch.bfloat16).float() @ stored.float().T
        assert _relative_error(out - bias, reference) < 2 * BF16_EPS


def _stored(fmt: str, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(stored weight, scale or None, the fp32 weight it stands for) of one format."""
    if fmt == "int8":
        q, s = quantize_int8(weight)
        return q, s, dequantize_int8(q, s)
    stored = weight.to(torch.bfloat16) if fmt == "bf16" else weight
    return stored, None, stored.float()


@pytest.mark.parametrize("fmt", ["fp32", "bf16", "int8"])
def test_reduction_linear_eager_and_compiled_matches_the_dequantised_product(fmt):
    """y_n = Σ_k W_nk x_k ⊙ s + b against x @ Wᵀ computed with the weight the stored format stands for, eagerly and
    through inductor (the compiled decode step's route); fp32: the gradient w.r.t. x and W is F.linear's."""
    weight, bias = _weights()
    stored, scale, reference_weight = _stored(fmt, weight)
    x = torch.randn(1, 1, 48, generator=torch.Generator().manual_seed(4))
    reference = x @ reference_weight.T + bias
    eager = reduction_linear(x, stored, scale, bias)
    compiled = torch.compile(reduction_linear, dynamic=False)(x, stored, scale, bias)
    assert eager.shape == compiled.shape == (1, 1, 40)
    torch.testing.assert_close(eager, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(compiled, reference, rtol=1e-5, atol=1e-5)
    if fmt == "fp32":
        xs, ws = x.clone().requires_grad_(), weight.clone().requires_grad_()
        xr, wr = x.clone().requires_grad_(), weight.clone().requires_grad_()
        grad = torch.randn(1, 1, 40)
        (reduction_linear(xs, ws, None, bias) * grad).sum().backward()
        (torch.nn.functional.linear(xr, wr, bias) * grad).sum().backward()
        torch.testing.assert_close(xs.grad, xr.grad, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ws.grad, wr.grad, rtol=1e-5, atol=1e-5)


def test_the_reduction_route_is_taken_only_while_compiling_one_row_of_a_row_major_cpu_weight():
    weight = torch.randn(40, 48)
    one_row, two_rows = torch.randn(1, 1, 48), torch.randn(2, 1, 48)
    assert not single_row_reduction(one_row, weight)  # eager: MKL's mat-vec, no [out, in] temporary

    def routes(x, w):
        return torch.tensor(single_row_reduction(x, w))

    traced = torch.compile(routes, backend="eager", fullgraph=True)
    assert traced(one_row, weight)
    assert not traced(two_rows, weight)  # a GEMM reads W once for every row
    assert not traced(one_row, weight.t().contiguous().t())  # column-major: MKL reads it faster


def test_int8pack_is_never_used_where_its_kernel_is_wrong():
    """The AVX-512 int8pack kernel returns garbage for in_features % 16 != 0: the module falls back, even forced."""
    assert choose_path("int8", 1, 24, CPU) != "int8pack"
    with force_path("int8pack"):
        assert choose_path("int8", 1, 24, CPU) == "dequant_fp32"
    layer = QuantizedLinear(nn.Linear(24, 33).requires_grad_(False), "int8")
    x = torch.randn(1, 24)
    with force_path("int8pack"):
        out = layer(x)
    assert _relative_error(out, x @ layer.dequantized().T + layer.bias) < 1e-5


@pytest.mark.parametrize("native", [True, False])
def test_path_choice_on_cpus_with_and_without_native_bf16(monkeypatch, native):
    """Batch-1 decode always reads the small weights; M > 1 avoids bf16 GEMMs where the CPU emulates bf16."""
    monkeypatch.setattr(quantize, "fast_bf16", lambda device: native)
    assert choose_path("int8", 1, 576, CPU) == "int8pack"
    assert choose_path("int8", quantize.INT8PACK_MAX_ROWS, 576, CPU) == "int8pack"
    assert choose_path("int8", 1024, 576, CPU) == ("dequant_bf16" if native else "dequant_fp32")
    assert choose_path("bf16", 1, 576, CPU) == "bf16"
    assert choose_path("bf16", 1024, 576, CPU) == ("bf16" if native else "fp32")
    assert choose_path("int8", 1, 576, torch.device("cuda")) == "dequant_fp32"
    assert choose_path("bf16", 1, 576, torch.device("cuda")) == "fp32"


def test_force_path_applies_to_its_format_only_and_rejects_unknown_paths():
    with force_path("dequant_bf16"):
        assert choose_path("int8", 1, 576, CPU) == "dequant_bf16"
        assert choose_path("bf16", 1, 576, CPU) == "bf16"  # not an int8 path: the bf16 rule still applies
    with force_path("fp32"):
        assert choose_path("bf16", 1, 576, CPU) == "fp32"
    assert choose_path("int8", 1, 576, CPU) == "int8pack"
    with pytest.raises(QuantizationError, match="unknown path"):
        with force_path("int4"):
            pass


def test_quantized_linear_module_semantics():
    linear = nn.Linear(48, 40)
    layer = QuantizedLinear(linear, "int8")
    state = layer.state_dict()
    assert set(state) == {"weight", "weight_scale", "bias"} and state["weight"].dtype == torch.int8
    assert all(not p.requires_grad for p in layer.parameters()) and not layer.training
    x = torch.randn(2, 3, 48)  # [B, T, in]: rows = 6, the dequantising path
    reference = x @ layer.dequantized().T + linear.bias.detach()
    assert layer(x).shape == (2, 3, 40) and _relative_error(layer(x), reference) < 4 * BF16_EPS
    layer.to(torch.float32).to(torch.bfloat16)  # storage dtypes stay: int8 weight, fp32 scales, bf16 kernel scales
    assert layer.weight.dtype == torch.int8 and layer.weight_scale.dtype == torch.float32
    assert layer._scale_bf16.dtype == torch.bfloat16
    half = QuantizedLinear(linear, "bf16").to(torch.float32)
    assert half.weight.dtype == torch.bfloat16 and set(half.state_dict()) == {"weight", "bias"}
    assert half(x.to(torch.bfloat16)).dtype == torch.bfloat16  # outputs follow the input's dtype
    with pytest.raises(QuantizationError, match="inference only"):
        layer.train()
    assert copy.deepcopy(layer)(x).shape == (2, 3, 40)
    with pytest.raises(QuantizationError, match="int8 or bf16"):
        QuantizedLinear(linear, "fp32")


def _greedy(model, ids, steps=8):
    return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=steps, do_sample=False,
                          pad_token_id=0)[:, ids.shape[1]:]


@pytest.mark.parametrize("fmt", ["int8", "bf16"])
@pytest.mark.parametrize("liger", [False, True], ids=["base", "liger"])
def test_tiny_models_generate_like_fp32(fmt, liger):
    """The plain base model and its Liger conversion: logits close to fp32, and the same greedy choice at every
    step of fp32's greedy continuation where fp32's choice is clear (its top-2 gap larger than twice the error)."""
    model = tiny_model("llama")
    if liger:
        model = liger_lm.convert(model, window=4, sinks=1, combine="shared")
    ids = torch.randint(3, 97, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        sequence = torch.cat([ids, _greedy(model, ids)], dim=1)
        reference = model(sequence).logits[:, ids.shape[1] - 1 : -1]
        quantized = quantize_for_decode(copy.deepcopy(model), fmt)
        assert weight_formats(quantized) == {fmt: 22}  # 3 layers × 7 + the LM head
        logits = quantized(sequence).logits[:, ids.shape[1] - 1 : -1]
        generated = _greedy(quantized, ids)
    assert _relative_error(logits, reference) < 0.05
    top2 = reference.topk(2, dim=-1).values
    clear = (top2[..., 0] - top2[..., 1]) > 2 * (logits - reference).abs().amax(-1)
    assert clear.float().mean() > 0.5  # the check below covers most steps
    assert torch.equal(logits.argmax(-1)[clear], reference.argmax(-1)[clear])
    first_clear = clear[:, 0]
    assert torch.equal(generated[first_clear, 0], sequence[first_clear, ids.shape[1]])


@pytest.mark.parametrize("fmt,path", [("int8", p) for p in INT8_PATHS] + [("bf16", p) for p in BF16_PATHS])
def test_decode_through_the_cache_equals_the_no_cache_forward_on_every_path(fmt, path):
    """One path for prefill and steps: the cache adds no error beyond fp32's (the same bound as the fp32 model)."""
    model = quantize_for_decode(liger_lm.convert(tiny_model("qwen3"), window=4, sinks=1, combine="shared"), fmt)
    ids = torch.randint(3, 97, (2, 14), generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), force_path(path):
        full = model(ids).logits
        stepped = prefill_then_decode(model, ids, prefill=5)
    tolerance = 1e-4 if path in ("dequant_fp32", "fp32") else 3e-2  # bf16 activations: rounding per path
    assert (stepped - full).abs().max().item() <= tolerance * max(full.abs().max().item(), 1.0)


@pytest.mark.parametrize("fmt", ["int8", "bf16"])
def test_decode_with_the_automatic_paths_stays_close_to_the_no_cache_forward(fmt):
    """Prefill (M > 1: dequantising GEMM) and steps (M = 1: int8pack / bf16 mat-vec) use different kernels."""
    model = quantize_for_decode(liger_lm.convert(tiny_model("llama"), window=4, sinks=1, combine="shared"), fmt)
    ids = torch.randint(3, 97, (1, 14), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(ids).logits
        stepped = prefill_then_decode(model, ids, prefill=4)
    assert _relative_error(stepped, full) < 0.03
    assert torch.equal(stepped.argmax(-1), full.argmax(-1))


def test_lm_head_can_stay_fp32_and_embeddings_always_do():
    model = quantize_for_decode(tiny_model("llama"), "int8", lm_head=False)
    assert isinstance(model.lm_head, nn.Linear) and model.lm_head.weight.dtype == torch.float32
    assert model.get_input_embeddings().weight.dtype == torch.float32
    assert weight_formats(model) == {"int8": 21, "fp32": 1}
    assert quantize_for_decode(tiny_model("llama"), "fp32").lm_head.weight.dtype == torch.float32


def test_quantized_models_refuse_training_and_saving(tmp_path):
    model = quantize_for_decode(tiny_model("llama"), "int8")
    with pytest.raises(QuantizationError, match="inference only") as err:
        model.train()
    assert "\n" not in str(err.value)
    with pytest.raises(QuantizationError, match="not saved"):
        model.save_pretrained(tmp_path / "q")
    assert not (tmp_path / "q").exists()
    with pytest.raises(QuantizationError, match="fp32, bf16, int8"):
        quantize_for_decode(tiny_model("llama"), "int4")


def test_unmerged_lora_is_refused():
    from peft import LoraConfig, get_peft_model

    with peft_quietly():
        model = get_peft_model(tiny_model("llama"), LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(QuantizationError, match="merge"):
        quantize_for_decode(model, "int8")


def test_cli_generate_with_weights(tiny_model_dir):
    from conftest import liger_in_process as liger

    for fmt in ("int8", "bf16"):
        done = liger("generate", str(tiny_model_dir), "--prompt", "w5 w6", "--max-new-tokens", "4", "--weights", fmt)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip()
    bad = liger("generate", str(tiny_model_dir), "--prompt", "w5", "--weights", "int4")
    assert bad.returncode == 2 and "--weights" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
