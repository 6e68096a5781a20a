"""Pure-PyTorch tensor ops: gated linear attention and sliding-window attention."""

from liger_lm.ops.gla import (
    chunk_gla,
    chunk_gla_value_decay,
    gla,
    gla_value_decay,
    naive_recurrent_gla,
    naive_recurrent_gla_value_decay,
)
from liger_lm.ops.swa import naive_sliding_window_attention, sliding_window_attention

__all__ = [
    "chunk_gla",
    "chunk_gla_value_decay",
    "gla",
    "gla_value_decay",
    "naive_recurrent_gla",
    "naive_recurrent_gla_value_decay",
    "naive_sliding_window_attention",
    "sliding_window_attention",
]
