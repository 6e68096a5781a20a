"""`compiled_decode`: single-token decode steps through `torch.compile` (opt-in, any model).

On a CPU a batch-1 decode step of a small model is bound by operator dispatch, not by reading the weights: eagerly,
a default-preset step at 1K context spends about a third of its time in matrix products
(`python scripts/profile_decode.py`). Compiling the model's forward fuses each layer's elementwise work (norms,
RoPE, the mixing step, the cache update) into a few generated kernels, and each single-row weight product into a
reduction kernel (`quantize.reduction_linear`), which read the weights 2–3× faster than MKL's mat-vec on the Zen 4
CPU of the README. Within the block every plain `nn.Linear` computes through `quantize.linear_forward`, which takes
that route only while compiling. The kernel wants row-major weights: inside `decode_layout`, pass `for_compile=True`.

Only steps whose shapes stay put from one token to the next go through the compiled forward: one new token per row,
and every Liger layer `steady` (window buffer full, sinks stored), so a converted model compiles one graph per batch
size. The KV layers of an unconverted model grow by one token a step; `dynamic=True` makes their length symbolic
from the start, so they do not recompile either. Prefill, and the first steps after a prompt shorter than the
window, run eagerly. A model that kept softmax layers (`softmax_layers`) passes its mask on; the Liger layers then
skip their all-real checks while compiled (`token_validity`), so it too compiles into one graph.

The first compiled step compiles (minutes on a slow CPU; inductor's on-disk cache shortens later runs), so this pays
off for long generations, not for a few tokens.
"""

from __future__ import annotations

import functools
import os
import shutil
import types
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.torch_version import TorchVersion
from transformers.cache_utils import Cache

from ..compat import pop_cache
from ..errors import CompileUnavailableError
from ..quantize import linear_forward
from .cache import LigerCacheLayer


@contextmanager
def compiled_decode(model: nn.Module, backend: str = "inductor", mode: str | None = None,
                    options: dict | None = None) -> Iterator[nn.Module]:
    """Within the block, `model`'s steady single-token forwards (module docstring) run `torch.compile`d
    (`dynamic=True`; `backend`, `mode` or `options` as torch.compile takes them); everything else runs eagerly. Use
    it around inference: `with compiled_decode(model): model.generate(...)`. On exit `model.forward` is the eager one
    again, and so is every linear layer's. Around `decode_layout`, use `decode_layout(model, for_compile=True)`.
    With inductor and no `mode`, `options` go on top of `STEP_OPTIONS`, which skip dynamo's guards on the modules:
    the model's modules and weights must stay as they are inside the block. These defaults won on a CPU
    (docs/speed-log.md); `options={"cpp_wrapper": True, "cpp_wrapper_build_separate": True}` calls the kernels from
    C++ instead of Python, 2 % faster there on top of them (without building the kernels separately, the C++ file
    did not compile in 10 minutes)."""
    check_compile_support(next(model.parameters()).device, backend)
    if backend == "inductor" and mode is None:
        options = {**STEP_OPTIONS, **(options or {})}
    eager = model.forward
    compiled = torch.compile(eager, dynamic=True, backend=backend, mode=mode, options=options)

    @functools.wraps(eager)  # generate() reads forward's signature
    def forward(*args, **kwargs):
        if not is_steady_step(args, kwargs):
            return eager(*args, **kwargs)
        cache = pop_cache(dict(kwargs))
        _contiguous_cache(cache)
        if all(isinstance(layer, LigerCacheLayer) for layer in cache.layers):
            # Each layer keeps its buffer's validity and the new tokens are real (`is_steady_step`), so the mask
            # holds nothing a layer reads; passed on, its all-real check would split the graph at every layer.
            kwargs["attention_mask"] = None
        return compiled(*args, **kwargs)

    previous = vars(model).get("forward")
    model.forward = forward
    linears = [m for m in model.modules() if type(m) is nn.Linear and "forward" not in vars(m)]
    for linear in linears:
        linear.forward = types.MethodType(linear_forward, linear)
    try:
        yield model
    finally:
        for linear in linears:
            del linear.forward
        if previous is None:
            del model.forward
        else:
            model.forward = previous


# Two per-step costs of a compiled decode step that buy nothing here: the generated wrapper's size and stride asserts
# on each of its ~730 inputs (dynamo's guards check the same), and dynamo's guards on the modules' attributes and
# weights, which do not change inside the block; the guards on the inputs (ids, mask, cache tensors) and on global
# state (grad mode) stay. Without both, a default-model step at 1K on the Zen 4 CPU of the README took 17.8 instead
# of 21.3 ms with int8 weights, 26.1 instead of 28.0 with fp32 (`scripts/step_overhead.py`). Older torch has no
# guard filter.
# A third: inductor's `reorder_for_locality` moves the read of the token leaving a ring buffer (`LigerCacheLayer.push`)
# next to its use, after the write of the new token. Its reinplace pass then sees the old buffer read after the
# write and keeps the write functional: a copy of the whole window buffer and a copy back, for keys and values, in
# every layer and step. Without that pass the slot is written in place: 22.55 instead of 23.49 ms a step at fp32
# (`scripts/step_overhead.py`; docs/speed-log.md).
STEP_OPTIONS = {"size_asserts": False, "reorder_for_locality": False}
if hasattr(torch.compiler, "skip_guard_on_all_nn_modules_unsafe"):
    STEP_OPTIONS["guard_filter_fn"] = torch.compiler.skip_guard_on_all_nn_modules_unsafe


# The oldest torch on which every compiled-step test passed (5 December 2026, the README's "Dependencies and the
# lock"). Older ones failed at the first compiled step: 2.6's dynamo inside transformers' masks (which call
# `torch.compiler.is_exporting`, missing there), 2.7's inside the mixer (an internal TypeError), and on 2.10, 2.11
# and 2.12 the base model and the hybrid preset (softmax layers with a KV cache), 2.10's and 2.12's inductor writing
# C++ that gcc 12 does not compile.
MIN_COMPILE_TORCH = "2.13"


def torch_compiles_decode_steps() -> bool:
    """Whether this torch is one that compiles the decode steps (`MIN_COMPILE_TORCH` or newer)."""
    return TorchVersion(torch.__version__) >= MIN_COMPILE_TORCH


def check_compile_support(device: torch.device, backend: str = "inductor") -> None:
    """Refuse up front, in one line, where a compiled decode step cannot build: a torch older than
    `MIN_COMPILE_TORCH`, or inductor on CPU, which writes C++ kernels, with no C++ compiler on PATH."""
    if not torch_compiles_decode_steps():
        raise CompileUnavailableError(f"compiling the decode step needs torch >= {MIN_COMPILE_TORCH} (found "
                                      f"{torch.__version__}, whose torch.compile fails on these models); upgrade "
                                      "torch or run without --compile")
    if backend != "inductor" or device.type != "cpu":
        return
    if not any(shutil.which(name) for name in (os.environ.get("CXX", "g++"), "g++", "clang++", "c++")):
        raise CompileUnavailableError("compiling the decode step on CPU needs a C++ compiler (g++ or clang++) on "
                                      "PATH; install one (e.g. apt install g++) or run without --compile")


def _contiguous_cache(cache: Cache) -> None:
    """Give every cache tensor its own contiguous storage (a copy only where it is a view or not contiguous). The
    compiled graph guards on strides and on a view's base, and its own cache outputs are contiguous tensors of their
    own (`LigerCacheLayer.advance`), while an eager step leaves slices: without this the first compiled step after an
    eager one would compile the whole model a second time."""
    for layer in cache.layers:
        if isinstance(layer, LigerCacheLayer):
            layer.map_tensors(_own_storage)
        elif isinstance(getattr(layer, "keys", None), torch.Tensor):
            layer.keys, layer.values = _own_storage(layer.keys), _own_storage(layer.values)


def _own_storage(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.is_contiguous() and not tensor._is_view():
        return tensor
    return tensor.clone(memory_format=torch.contiguous_format)


def is_steady_step(args: tuple, kwargs: dict) -> bool:
    """Whether a model forward call (input ids positional or by keyword, the rest by keyword) is one real token per
    row (2D mask, if any, ending in ones) continuing a cache whose Liger layers are all `steady`."""
    tokens = args[0] if len(args) == 1 else kwargs.get("input_ids", kwargs.get("inputs_embeds"))
    mask, cache = kwargs.get("attention_mask"), pop_cache(dict(kwargs))
    return (len(args) <= 1 and tokens is not None and tokens.shape[1] == 1 and cache is not None
            and (mask is None or (mask.dim() == 2 and bool(mask[:, -1].all())))
            and all(layer.steady for layer in cache.layers if isinstance(layer, LigerCacheLayer)))
