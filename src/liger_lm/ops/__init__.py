"""Tensor ops: gated linear attention and sliding-window attention in pure PyTorch (the reference), with fla-core's
Triton kernels used for GLA on CUDA when importable (`fla_backend`)."""

from liger_lm.ops.fla_backend import BACKENDS, BackendError, fla_available, get_backend, set_backend, use_backend
from liger_lm.ops.recurrence import (
    chunk_gla,
    chunk_gla_value_decay,
    gla,
    gla_value_decay,
    naive_recurrent_gla,
    naive_recurrent_gla_value_decay,
)
from liger_lm.ops.swa import naive_sliding_window_attention, sliding_window_attention

__all__ = [
    "BACKENDS",
    "BackendError",
    "fla_available",
    "get_backend",
    "set_backend",
    "use_backend",
    "chunk_gla",
    "chunk_gla_value_decay",
    "gla",
    "gla_value_decay",
    "naive_recurrent_gla",
    "naive_recurrent_gla_value_decay",
    "naive_sliding_window_attention",
    "sliding_window_attention",
]
