"""`LigerAttention`: the Liger mixing step (docs/method.md §1).

    o_t = (α · o^rec_t + β · o^swa_t) W_o
    o^rec_t = φ(q_t) S_t,  S_t = diag(a_t) S_{t−1} + φ(k_t)ᵀ v_t   (gate from the raw key, no RoPE, fp32 state;
                                                               the other gates of `modeling.gates` vary a_t / S)
    o^swa_t = softmax attention of RoPE(q_t) over the last w RoPE'd keys (the model's own scaling), and over the
              first `sinks` real tokens of the sequence (their own RoPE positions; 0 in the paper)

Projections, cache access, the window buffer and W_o are `LinearizedAttention`'s.
"""

from __future__ import annotations

import torch

from ..ops import sliding_window_attention
from ..ops.swa import gather_sinks
from .attention import LinearizedAttention
from .cache import LigerCacheLayer
from .gates import GATES


class LigerAttention(LinearizedAttention):
    """Gated recurrence (any gate of `modeling.gates`) mixed with sliding-window softmax attention."""

    def extra_repr(self) -> str:
        c = self.liger
        return (f"gate={c.gate}, window={c.window}, sinks={c.sinks}, normalize={c.normalize}, "
                f"rec_weight={c.rec_weight}, swa_weight={c.swa_weight}")

    def mix(self, q, k, v, valid, position_embeddings, cache):
        o_rec = o_swa = state = window = None
        if self.liger.rec_weight:
            o_rec, state = self._recurrent(q, k, v, valid, cache)
        if self.liger.swa_weight:
            o_swa, window = self._sliding_window(q, k, v, valid, position_embeddings, cache)
        return _weighted_sum(o_rec, self.liger.rec_weight, o_swa, self.liger.swa_weight), state, window

    def _recurrent(self, q, k, v, valid, cache: LigerCacheLayer | None):
        """o^rec [B, T, H, D] fp32 and the new state (see `modeling.gates`; GQA repetition happens there)."""
        q, k, v = q.float(), k.float(), v.float()
        source = {"q": q, "k": k, "v": v}[self.liger.gate_source]
        state = cache.state if cache is not None else None
        return GATES[self.liger.gate].run(q, k, v, source, valid, state, self.liger)

    def _sliding_window(self, q, k, v, valid, position_embeddings, cache: LigerCacheLayer | None):
        """o^swa [B, T, H, D] and (keys, values, validity) over buffer + current tokens for the cache."""
        q, k = self._rope(q, k, position_embeddings)
        k, v, valid = self._window_stream(k, v, valid, cache)
        sinks = None
        if self.liger.sinks:
            real_before = cache.real_before_buffer(k.shape[0], k.device) if cache is not None else None
            stored = cache.sinks if cache is not None else None
            sinks = gather_sinks(k, v, valid, self.liger.sinks, real_before, stored)
        out = sliding_window_attention(q, k, v, self.liger.window, self.scaling, key_valid=valid, sinks=sinks)
        return out, (k, v, valid)


def _weighted_sum(o_rec, rec_weight: float, o_swa, swa_weight: float) -> torch.Tensor:
    """α · o_rec + β · o_swa in fp32 (a branch that did not run is None), in two fused ops."""
    if o_rec is None:
        return o_swa.float() * swa_weight
    if o_swa is None:
        return o_rec * rec_weight
    return torch.add(o_rec * rec_weight, o_swa.float(), alpha=swa_weight)
