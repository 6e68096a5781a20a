"""Pure-PyTorch tensor ops: gated linear attention and sliding-window attention."""

from liger_lm.ops.gla import chunk_gla, gla, naive_recurrent_gla
from liger_lm.ops.swa import naive_sliding_window_attention, sliding_window_attention

__all__ = [
    "chunk_gla",
    "gla",
    "naive_recurrent_gla",
    "naive_sliding_window_attention",
    "sliding_window_attention",
]
