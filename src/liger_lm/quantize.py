"""Weight formats for inference: int8 (per-output-channel, weight-only) or bf16 weights in every nn.Linear.

    model = liger_lm.quantize_for_decode(model, "int8")     # or "bf16"; in place, returns the model

A decode step is ~211 mat-vecs y = x Wᵀ (30 layers × 7 + the LM head) whose speed is the rate at which W is read,
so fewer bytes per weight is faster decoding. Activations, norms, the recurrent state and the window stay fp32.

int8: W ≈ diag(s) · Q, Q = round(W / s) ∈ [−127, 127] int8 [out, in], s = max_j |W_ij| / 127 per output row,
rounded to a bf16 value (s [out] fp32 holding bf16-exact values, so the bf16 kernel below sees the same scales).
bf16: W rounded to bf16 [out, in].

Which kernel runs depends on M, the number of rows of x (M = 1 at batch-1 decode, batch × length at prefill); the
rules below were chosen by measuring every path on every weight shape of the default model (`python
scripts/weights_table.py --part kernels`; the numbers are in README, "Weight formats for decoding", with the quality
and decode results in docs/bench/weights/):
  * int8, M ≤ INT8PACK_MAX_ROWS and in_features % 16 == 0: `aten._weight_int8pack_mm` with x in bf16 — it reads the
    int8 weight directly (with fp32 x the same op takes a slow path); its AVX-512 kernel returns garbage when
    in_features is not a multiple of 16, hence the guard;
  * int8, larger M: dequantise Q to bf16 (native-bf16 CPUs, AMX / AVX512-BF16) or fp32 (others) and run a GEMM,
    scaling the output rows by s;
  * bf16, M = 1: `torch.mv` in bf16 (fp32 accumulation);
  * bf16, M > 1: a bf16 GEMM where the CPU runs bf16 natively, else the weight upcast to fp32 (bf16 GEMMs with M > 1
    are emulated, tens of times slower, on AVX2-only CPUs);
  * off the CPU (CUDA): the dequantising / upcasting GEMM in the input's dtype.
`force_path` pins one path (tests run every path on every machine this way).

Inside a compiled decode step (`modeling.compiled`) a single-row product on the CPU takes none of these:
`reduction_linear` writes it as a multiply and a sum that inductor turns into one vectorised loop reading the stored
weight (fp32, bf16 or int8) once and converting it in registers. Plain `nn.Linear` layers take the same route through
`linear_forward`. On the Zen 4 CPU of the README this reads weights 2–3× faster than MKL's mat-vec.

Inference only: a quantised module refuses `.train()`, and the model's `save_pretrained` refuses to write (the
int8 / bf16 tensors are not the checkpoint format `from_pretrained` reads). Embeddings stay fp32: a lookup reads one
row per token, there is nothing to gain. The LM head is quantised unless `lm_head=False` (read faster as int8 at a
small cost in perplexity, both measured in the README; the int8 copy takes out × in bytes beside a tied fp32
embedding).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from .errors import LigerError
from .hardware import fast_bf16

FORMATS = ("fp32", "bf16", "int8")
INT8_PATHS = ("int8pack", "dequant_bf16", "dequant_fp32")
BF16_PATHS = ("bf16", "fp32")
INT8PACK_MAX_ROWS = 16  # int8pack_mm was still 1.1–1.3× fp32 at M = 16, 0.6× at M = 64 (dequantising GEMMs won)
INT8PACK_K_MULTIPLE = 16  # its AVX-512 kernel is wrong for other in_features (tested: garbage / crashes)

_forced: dict[str, str | None] = {"path": None}


class QuantizationError(LigerError, ValueError):
    """A bad format, or a quantised model asked to train or save; the message says what to do."""


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel symmetric int8: W ≈ s[:, None] · Q.

    weight [out, in] float → (Q [out, in] int8 in [−127, 127], s [out] fp32, bf16-exact values). Rows of zeros get
    s = 1 (Q = 0)."""
    weight = weight.detach().float()
    amax = weight.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / 127, torch.ones_like(amax)).to(torch.bfloat16).float()
    # a scale rounded down to bf16 can push max |W| / s just past 127: clamp (an error of < 0.4 % of the row max)
    quantized = torch.round(weight / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return quantized.contiguous(), scale


def dequantize_int8(quantized: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """s[:, None] · Q in fp32: the weight an int8 linear computes with (the naive reference of `int8_linear`)."""
    return quantized.float() * scale[:, None]


def int8_linear(x: torch.Tensor, quantized: torch.Tensor, scale: torch.Tensor, scale_bf16: torch.Tensor,
                bias: torch.Tensor | None, path: str) -> torch.Tensor:
    """y = x (s ⊙ Q)ᵀ + b = (x Qᵀ) ⊙ s + b.

    x [M, in] float; quantized [out, in] int8; scale [out] fp32 and the same values in bf16 (scale_bf16);
    bias [out] or None → y [M, out] in x's dtype. `path`: one of INT8_PATHS (see the module docstring)."""
    if path == "int8pack":
        out = torch.ops.aten._weight_int8pack_mm(x.to(torch.bfloat16).contiguous(), quantized, scale_bf16)
    elif path == "dequant_bf16":
        out = F.linear(x.to(torch.bfloat16), quantized.to(torch.bfloat16)) * scale
    else:
        compute = _gemm_dtype(x)
        out = F.linear(x.to(compute), quantized.to(compute)) * scale.to(compute)
    out = out.to(x.dtype)
    return out if bias is None else out + bias.to(x.dtype)


def reduction_linear(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None = None,
                     bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = (x Wᵀ) ⊙ s + b written as y_n = Σ_k W_nk x_k: a broadcast product summed over `in`, in fp32.

    x [..., in] float; weight [out, in] fp32, bf16 or int8; scale [out] or None; bias [out] or None → y [..., out] in
    x's dtype. Eagerly this materialises [..., out, in] and is slow; it is written for `torch.compile`, where
    inductor fuses the conversion, product and sum into one reduction kernel (`single_row_reduction` says when)."""
    out = (weight.to(torch.float32) * x.to(torch.float32).unsqueeze(-2)).sum(-1)
    if scale is not None:
        out = out * scale
    if bias is not None:
        out = out + bias
    return out.to(x.dtype)


def single_row_reduction(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether x Wᵀ runs as `reduction_linear`: while torch.compile traces, for one row of x, on the CPU, with a
    row-major weight (it reads a column-major one, `decode_layout`'s eager layout, 2× slower than MKL does)."""
    return torch.compiler.is_compiling() and x.numel() == x.shape[-1] and weight.device.type == "cpu" \
        and weight.is_contiguous()


def linear_forward(module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """`nn.Linear.forward` with the compiled single-row route (`single_row_reduction`); `compiled_decode` installs
    it on every plain linear layer of the model for the duration of its block."""
    if single_row_reduction(x, module.weight):
        return reduction_linear(x, module.weight, None, module.bias)
    return F.linear(x, module.weight, module.bias)


def _gemm_dtype(x: torch.Tensor) -> torch.dtype:
    """fp32 on the CPU (where half-precision GEMMs may be emulated), x's own dtype elsewhere."""
    return torch.float32 if x.device.type == "cpu" else x.dtype


def bf16_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, path: str) -> torch.Tensor:
    """y = x Wᵀ + b with W stored in bf16.

    x [M, in] float; weight [out, in] bf16; bias [out] or None → y [M, out] in x's dtype. path "bf16": x rounded to
    bf16, fp32 accumulation (`torch.mv` at M = 1); "fp32": W upcast, computed in x's dtype (fp32 for bf16 x on CPU)."""
    if path == "bf16":
        xb = x.to(torch.bfloat16)
        out = torch.mv(weight, xb[0])[None] if xb.shape[0] == 1 else F.linear(xb, weight)
    else:
        compute = _gemm_dtype(x)
        out = F.linear(x.to(compute), weight.to(compute))
    out = out.to(x.dtype)
    return out if bias is None else out + bias.to(x.dtype)


def choose_path(fmt: str, rows: int, in_features: int, device: torch.device) -> str:
    """The kernel path for M = `rows` (see the module docstring); `force_path` overrides it where it applies."""
    forced = _forced["path"]
    if forced in (INT8_PATHS if fmt == "int8" else BF16_PATHS):
        if forced == "int8pack" and (in_features % INT8PACK_K_MULTIPLE or device.type != "cpu"):
            return "dequant_fp32"  # never run int8pack_mm where it is wrong, even when asked to
        return forced
    if device.type != "cpu":
        return "dequant_fp32" if fmt == "int8" else "fp32"
    if fmt == "int8":
        if rows <= INT8PACK_MAX_ROWS and in_features % INT8PACK_K_MULTIPLE == 0:
            return "int8pack"
        return "dequant_bf16" if fast_bf16(device) else "dequant_fp32"
    return "bf16" if rows == 1 or fast_bf16(device) else "fp32"


@contextmanager
def force_path(path: str | None) -> Iterator[None]:
    """Within the block, every quantised linear of the matching format runs `path` (one of INT8_PATHS or
    BF16_PATHS) whatever M is; int8pack still falls back where its kernel is wrong (in_features % 16)."""
    if path is not None and path not in INT8_PATHS + BF16_PATHS:
        raise QuantizationError(f"unknown path {path!r}; choose from {', '.join(INT8_PATHS + BF16_PATHS)}")
    previous, _forced["path"] = _forced["path"], path
    try:
        yield
    finally:
        _forced["path"] = previous


class QuantizedLinear(nn.Module):
    """nn.Linear for inference with int8 or bf16 weights (`quantize_for_decode`).

    state_dict: `weight` (int8 or bf16 [out, in]), `weight_scale` (int8: fp32 [out]), `bias` (fp32 [out], if any).
    The tensors are frozen Parameters, so `model.parameters()` still counts and places them; `.to(device)` moves them
    and `.to(dtype)` leaves their storage dtypes as they are (outputs follow the input's dtype).
    """

    def __init__(self, linear: nn.Linear, fmt: str) -> None:
        super().__init__()
        if fmt not in ("int8", "bf16"):
            raise QuantizationError(f"unknown weight format {fmt!r}; choose int8 or bf16")
        self.fmt, self.in_features, self.out_features = fmt, linear.in_features, linear.out_features
        weight = linear.weight.detach()
        if fmt == "int8":
            quantized, scale = quantize_int8(weight)
            self.weight = nn.Parameter(quantized, requires_grad=False)
            self.weight_scale = nn.Parameter(scale, requires_grad=False)
            # the bf16 kernel takes scales in x's dtype: a copy kept, not converted per call (not in state_dict)
            self.register_buffer("_scale_bf16", scale.to(torch.bfloat16), persistent=False)
        else:
            self.weight = nn.Parameter(weight.to(torch.bfloat16).contiguous(), requires_grad=False)
        bias = linear.bias
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone(), requires_grad=False)
        self.training = False

    @classmethod
    def stack(cls, members: list["QuantizedLinear"]) -> "QuantizedLinear":
        """One module whose output is the members' outputs side by side (same format and in_features; no bias:
        the caller stacks biases). Their stored values are concatenated, not quantised again: int8 scales are per
        output row, so the result computes exactly what the members do."""
        stacked = cls.__new__(cls)
        nn.Module.__init__(stacked)
        first = members[0]
        stacked.fmt, stacked.in_features = first.fmt, first.in_features
        stacked.out_features = sum(m.out_features for m in members)
        stacked.weight = nn.Parameter(torch.cat([m.weight.detach() for m in members]), requires_grad=False)
        if first.fmt == "int8":
            stacked.weight_scale = nn.Parameter(torch.cat([m.weight_scale.detach() for m in members]),
                                                requires_grad=False)
            stacked.register_buffer("_scale_bf16", torch.cat([m._scale_bf16 for m in members]), persistent=False)
        stacked.bias = None
        stacked.training = False
        return stacked

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if single_row_reduction(x, self.weight):
            return reduction_linear(x, self.weight, getattr(self, "weight_scale", None), self.bias)
        rows = x.reshape(-1, self.in_features)
        path = choose_path(self.fmt, rows.shape[0], self.in_features, x.device)
        if self.fmt == "int8":
            out = int8_linear(rows, self.weight, self.weight_scale, self._scale_bf16, self.bias, path)
        else:
            out = bf16_linear(rows, self.weight, self.bias, path)
        return out.reshape(*x.shape[:-1], self.out_features)

    def _apply(self, fn, recurse=True):
        """Moves between devices like any module, but keeps the storage dtypes: `model.to(torch.float32)` must not
        turn bf16 weights back into fp32 ones, nor the int8 kernel's bf16 scales into fp32."""
        dtypes = {name: tensor.dtype for name, tensor in [*self._parameters.items(), *self._buffers.items()]
                  if tensor is not None}
        super()._apply(fn, recurse)
        for name, dtype in dtypes.items():
            tensor = getattr(self, name)
            if tensor.dtype != dtype:
                tensor.data = tensor.data.to(dtype)
        return self

    def dequantized(self) -> torch.Tensor:
        """The fp32 weight this module computes with, [out, in]."""
        if self.fmt == "int8":
            return dequantize_int8(self.weight, self.weight_scale)
        return self.weight.float()

    def train(self, mode: bool = True) -> "QuantizedLinear":
        if mode:
            raise QuantizationError("this model has quantised weights (inference only); "
                                    "load the fp32 model to train it")
        return super().train(False)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weights={self.fmt}, " \
               f"bias={self.bias is not None}"


def _refuse_save(*_args, **_kwargs) -> None:
    raise QuantizationError("this model has quantised weights (inference only) and is not saved; save the fp32 "
                            "model and quantise again after loading it")


def check_format(fmt: str, option: str = "format") -> str:
    """`fmt` if it is one of FORMATS, else a one-line QuantizationError naming `option`."""
    if fmt not in FORMATS:
        raise QuantizationError(f"{option}: unknown weight format {fmt!r}; choose from {', '.join(FORMATS)}")
    return fmt


def quantize_for_decode(model: nn.Module, fmt: str, lm_head: bool = True) -> nn.Module:
    """Replace every nn.Linear of `model` (in place) by a `QuantizedLinear` of format `fmt` ("int8" or "bf16";
    "fp32" returns the model unchanged). Embeddings stay fp32; `lm_head=False` also keeps the LM head fp32.

    Run it after `convert` (and after merging any LoRA adapter): the result is for inference only."""
    if check_format(fmt) == "fp32":
        return model
    if any("lora_" in name for name, _ in model.named_modules()):
        raise QuantizationError("merge the LoRA adapter first (merge_and_unload), then quantise")
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    targets = [(name, module) for name, module in model.named_modules()
               if isinstance(module, nn.Linear) and (lm_head or module is not output)]
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, QuantizedLinear(linear, fmt).to(linear.weight.device))
    model.eval()
    model.save_pretrained = _refuse_save  # an instance attribute: the class's method is untouched
    return model


def weight_formats(model: nn.Module) -> dict[str, int]:
    """How many linear layers of `model` hold each weight format: {"fp32": n, "int8": m, …}."""
    counts: dict[str, int] = {}
    for module in model.modules():
        if isinstance(module, QuantizedLinear):
            counts[module.fmt] = counts.get(module.fmt, 0) + 1
        elif isinstance(module, nn.Linear):
            key = {torch.float32: "fp32", torch.bfloat16: "bf16"}.get(module.weight.dtype, str(module.weight.dtype))
            counts[key] = counts.get(key, 0) + 1
    return counts
