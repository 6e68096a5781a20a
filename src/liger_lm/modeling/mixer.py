"""`LigerAttention`: the one token mixer that replaces softmax attention (DESIGN.md §1).

    o_t = (α · o^rec_t + β · o^swa_t) W_o
    o^rec_t = φ(q_t) S_t,  S_t = diag(a_t) S_{t−1} + φ(k_t)ᵀ v_t   (gate from the raw key, no RoPE, fp32 state;
                                                               the other gates of `modeling.gates` vary a_t / S)
    o^swa_t = softmax attention of RoPE(q_t) over the last w RoPE'd keys (the model's own scaling)

It reuses the original module's q/k/v/o projections (and q/k norms), so parameter names, and therefore
checkpoints and LoRA targets, are exactly those of the base model.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.cache_utils import Cache

from ..config import LigerConfig
from ..ops import sliding_window_attention
from .adapters import ArchitectureAdapter
from .cache import LigerCacheLayer, liger_cache_layer
from .gates import GATES


class LigerAttention(nn.Module):
    """Drop-in replacement of a Llama/Mistral/Qwen2/Qwen3 attention module; same forward signature."""

    def __init__(self, attention: nn.Module, config: LigerConfig, adapter: ArchitectureAdapter) -> None:
        super().__init__()
        self.layer_idx = attention.layer_idx
        self.config = attention.config  # the model config, as transformers modules expect
        self.liger = config
        self.head_dim = attention.head_dim
        self.num_heads = attention.config.num_attention_heads
        self.num_kv_heads = attention.config.num_key_value_heads
        self.scaling = attention.scaling
        self.q_proj, self.k_proj = attention.q_proj, attention.k_proj
        self.v_proj, self.o_proj = attention.v_proj, attention.o_proj
        if adapter.has_qk_norm:
            self.q_norm, self.k_norm = attention.q_norm, attention.k_norm
        self._apply_rope = adapter.apply_rope()
        self._gate = GATES[config.gate]
        # The original module, kept unregistered (its projections are the ones above, so no weight is stored twice):
        # distillation puts it back to get the teacher (`liger_lm.training.teacher_mode`).
        self.__dict__["softmax_attention"] = attention

    def extra_repr(self) -> str:
        c = self.liger
        return f"gate={c.gate}, window={c.window}, rec_weight={c.rec_weight}, swa_weight={c.swa_weight}"

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, None]:
        batch, length, _ = hidden_states.shape
        q, k, v = self._project(hidden_states)
        valid = token_validity(attention_mask, length)
        cache = liger_cache_layer(past_key_values, self.layer_idx) if past_key_values is not None else None

        o_rec = o_swa = state = window = None
        if self.liger.rec_weight:
            o_rec, state = self._recurrent(q, k, v, valid, cache)
        if self.liger.swa_weight:
            o_swa, window = self._sliding_window(q, k, v, valid, position_embeddings, cache)
        if cache is not None:
            cache.advance(state, *(window or (None, None, None)), new_tokens=length, window=self.liger.window)

        mixed = _weighted_sum(o_rec, self.liger.rec_weight, o_swa, self.liger.swa_weight)
        out = mixed.to(hidden_states.dtype).reshape(batch, length, -1)
        return self.o_proj(out), None

    def _project(self, hidden_states: torch.Tensor):
        """q [B, T, H, D], k and v [B, T, H_kv, D]: the raw projections (with bias and q/k norm), no RoPE."""
        shape = (*hidden_states.shape[:-1], -1, self.head_dim)
        q = self.q_proj(hidden_states).view(shape)
        k = self.k_proj(hidden_states).view(shape)
        v = self.v_proj(hidden_states).view(shape)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        return q, k, v

    def _recurrent(self, q, k, v, valid, cache: LigerCacheLayer | None):
        """o^rec [B, T, H, D] fp32 and the new state (see `modeling.gates`; GQA repetition happens there)."""
        q, k, v = q.float(), k.float(), v.float()
        source = {"q": q, "k": k, "v": v}[self.liger.gate_source]
        state = cache.state if cache is not None else None
        return self._gate.run(q, k, v, source, valid, state, self.liger)

    def _sliding_window(self, q, k, v, valid, position_embeddings, cache: LigerCacheLayer | None):
        """o^swa [B, T, H, D] and (keys, values, validity) over buffer + current tokens for the cache."""
        cos, sin = position_embeddings
        q, k = self._apply_rope(q, k, cos, sin, unsqueeze_dim=2)
        if valid is None:
            valid = torch.ones(k.shape[:2], dtype=torch.bool, device=k.device)
        past_k, past_v, past_valid = cache.window_keys() if cache is not None else (None, None, None)
        if past_k is not None:
            k, v = torch.cat([past_k, k], dim=1), torch.cat([past_v, v], dim=1)
            valid = torch.cat([past_valid, valid], dim=1)
        out = sliding_window_attention(q, k, v, self.liger.window, self.scaling, key_valid=valid)
        return out, (k, v, valid)


def _weighted_sum(o_rec, rec_weight: float, o_swa, swa_weight: float) -> torch.Tensor:
    """α · o_rec + β · o_swa in fp32 (a branch that did not run is None), in two fused ops."""
    if o_rec is None:
        return o_swa.float() * swa_weight
    if o_swa is None:
        return o_rec * rec_weight
    return torch.add(o_rec * rec_weight, o_swa.float(), alpha=swa_weight)


def token_validity(attention_mask, length: int) -> torch.Tensor | None:
    """[B, T] bool: which of the current T tokens are real (None: all are), from the mask the model passes down.

    transformers hands layers a 2D padding mask (flash), a 4D bool (sdpa) or additive float (eager) mask, or None.
    In a 4D mask the last query row is causal over every earlier key, so its last T entries are exactly the
    validity of the current tokens.
    """
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, torch.Tensor):
        raise ValueError(
            f"unsupported attention mask type {type(attention_mask).__name__} (flex attention); "
            "load the model with attn_implementation='sdpa' or 'eager'"
        )
    if attention_mask.dim() == 2:
        valid = attention_mask[:, -length:].bool()
    elif attention_mask.dim() == 4:
        row = attention_mask[:, 0, -1, -length:]
        valid = row if row.dtype == torch.bool else row == 0  # additive masks: 0 keeps, −inf/min drops
    else:
        raise ValueError(f"unsupported attention mask shape {tuple(attention_mask.shape)}; expected 2D or 4D")
    return None if bool(valid.all()) else valid
