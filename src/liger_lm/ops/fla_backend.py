"""Optional CUDA backend: fla-core's Triton GLA kernels, with the pure-PyTorch ops as fallback and reference.

The `gla` / `gla_value_decay` dispatchers of `liger_lm.ops.recurrence` call `fla_selected(q)`: with the default backend
"auto" the kernels run for CUDA tensors whenever `fla` (fla-core >= 0.6) imports, and the PyTorch path runs
otherwise. `set_backend("torch")` (or `with use_backend("torch"):`) forces the reference path; "fla" insists on the
kernels and raises `BackendError` where they cannot run.

Mapping to fla-core 0.6 (inputs [B, T, H, D], state [B, H, K, V] fp32, log-decays <= 0 as here):
    S_t = diag(exp(g_t)) S_{t−1} + k_tᵀ v_t,  o_t = q_t S_t   ->  chunk_gla(q, k, v, g, scale=1) for prefill,
                                                                 fused_recurrent_gla(q, k, v, gk=g, scale=1) for
                                                                 decode (T < FUSED_RECURRENT_MAX_LENGTH)
    S_t = S_{t−1} diag(exp(g_t)) + k_tᵀ v_t (decay on V)      ->  fused_recurrent_gla(q, k, v, gv=g, scale=1)
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Iterator

import torch

from ..errors import BackendError  # noqa: F401 (re-exported)

BACKENDS = ("auto", "torch", "fla")
# Below this length the fused recurrent kernel beats chunk_gla's chunking overhead (fla uses chunks of 64).
FUSED_RECURRENT_MAX_LENGTH = 64
_SETTINGS = {"backend": "auto"}


def set_backend(name: str) -> None:
    """Process-wide choice: "auto" (fla on CUDA when importable), "torch" (always the reference) or "fla"."""
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    _SETTINGS["backend"] = name


def get_backend() -> str:
    return _SETTINGS["backend"]


@contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Temporarily select a backend (see `set_backend`)."""
    previous = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


@functools.cache
def fla_available() -> bool:
    """True when fla-core's GLA kernels import (they need triton; any import failure means unavailable)."""
    try:
        from fla.ops.gla import chunk_gla, fused_recurrent_gla  # noqa: F401
    except Exception:  # triton / CUDA toolchain problems surface as assorted exception types
        return False
    return True


def fla_version() -> str | None:
    from ..hardware import package_version

    return package_version("fla-core")


def fla_selected(tensor: torch.Tensor, backend: str | None = None) -> bool:
    """Whether the fla kernels should process `tensor` under `backend` (None: the process-wide setting)."""
    name = backend or get_backend()
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    if name == "torch":
        return False
    if name == "fla":
        if not tensor.is_cuda:
            raise BackendError("backend 'fla' runs only on CUDA tensors; move the model to a GPU or use backend 'torch'")
        if not fla_available():
            raise BackendError("backend 'fla' needs fla-core: pip install 'liger-lm[cuda]' (or use backend 'torch')")
        return True
    return tensor.is_cuda and fla_available()


def _prepare(q, k, v, g, initial_state):
    """fp32 contiguous inputs (the reference's precision) and the fp32 initial state fla asserts on."""
    q, k, v, g = (t.float().contiguous() for t in (q, k, v, g))
    initial = None if initial_state is None else initial_state.float().contiguous()
    return q, k, v, g, initial


def fla_gla(q, k, v, g, initial_state=None):
    """Key-decay GLA on fla's kernels; same contract as `liger_lm.ops.recurrence.gla`.

    q, k, g: [B, T, H, K]; v: [B, T, H, V]; initial_state: [B, H, K, V] or None.
    Returns o [B, T, H, V] fp32 and final_state [B, H, K, V] fp32.
    """
    from fla.ops.gla import chunk_gla, fused_recurrent_gla

    q, k, v, g, initial = _prepare(q, k, v, g, initial_state)
    if q.shape[1] < FUSED_RECURRENT_MAX_LENGTH:
        o, state = fused_recurrent_gla(q, k, v, gk=g, scale=1.0, initial_state=initial, output_final_state=True)
    else:
        o, state = chunk_gla(q, k, v, g, scale=1.0, initial_state=initial, output_final_state=True)
    return o.float(), state.float()


def fla_gla_value_decay(q, k, v, g, initial_state=None):
    """Value-decay GLA on fla's fused recurrent kernel (`gv`); same contract as `gla_value_decay`.

    q, k: [B, T, H, K]; v, g: [B, T, H, V]; initial_state: [B, H, K, V] or None.
    Returns o [B, T, H, V] fp32 and final_state [B, H, K, V] fp32.
    """
    from fla.ops.gla import fused_recurrent_gla

    q, k, v, g, initial = _prepare(q, k, v, g, initial_state)
    o, state = fused_recurrent_gla(q, k, v, gv=g, scale=1.0, initial_state=initial, output_final_state=True)
    return o.float(), state.float()
