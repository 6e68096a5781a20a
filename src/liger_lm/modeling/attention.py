"""`LinearizedAttention`: what every converted attention shares; each method supplies only its mixing step.

A converted layer keeps the original module's q/k/v/o projections (and Qwen3's q/k norms), so parameter names, and
therefore checkpoints and LoRA targets, are exactly the base model's. The base class owns the plumbing around the
mixing step (docs/method.md §2):

    q, k, v = raw projections                     [B, T, H, D], [B, T, H_kv, D]   (`_project`)
    out, state, window = mix(q, k, v, ...)        the method's own step            (subclasses)
    cache.advance(state, window)                  fp32 state + window buffer (`modeling.cache`)
    return out W_o

and the helpers a mixing step needs: the family's RoPE (`_rope`), the window buffer joined to the current keys
(`_window_stream`), and the teacher handle `softmax_attention` (the original module, unregistered).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from ..compat import pop_cache
from .adapters import ArchitectureAdapter
from .cache import LigerCacheLayer, liger_cache_layer

if TYPE_CHECKING:  # the settings import the method registry (`modeling.methods`)
    from ..config import LigerConfig
    from .layout import FusedProjection

WindowStream = tuple[torch.Tensor, ...]  # keys, values [B, S, H_kv, D], validity [B, S] (+ raw keys [B, S, H_kv, D])


class LinearizedAttention(nn.Module):
    """Drop-in replacement of a Llama/Mistral/Qwen2/Qwen3 attention module; same forward signature.

    A method declares its name and which of its submodules hold the parameters it adds (as peft's layers declare
    `adapter_layer_names`), so the trainer needs no list of names: `stage_one_modules` train alone, before LoRA
    (LoLCATs' attention transfer); `with_lora_modules` train whenever LoRA does, those named in `lr_scales` at the
    learning rate times the `TrainConfig` field it names (a per-head logit moves by whole units, a LoRA weight by
    thousandths).
    """

    method: ClassVar[str]  # the `LigerConfig.method` value that selects it
    description: ClassVar[str]
    stage_one_modules: ClassVar[tuple[str, ...]] = ()
    with_lora_modules: ClassVar[tuple[str, ...]] = ()
    lr_scales: ClassVar[dict[str, str]] = {}  # submodule name → the TrainConfig field with its lr multiplier
    fused_qkv: FusedProjection | None = None  # q/k/v read as one weight, set within `decode_layout`
    ring_buffer = False  # whether steady decode steps overwrite the window buffer's oldest token in place

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
        # The original module, kept unregistered (its projections are the ones above, so no weight is stored twice):
        # distillation puts it back to get the teacher (`liger_lm.training.teacher_mode`).
        self.__dict__["softmax_attention"] = attention

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, None]:
        batch, length, _ = hidden_states.shape
        past = pop_cache(kwargs)  # `cache=` from transformers 5.24, `past_key_values=` before
        cache = liger_cache_layer(past, self.layer_idx) if past is not None else None
        q, k, v = self._project(hidden_states)
        valid = token_validity(attention_mask, length)
        out, state, window = self.mix(q, k, v, valid, position_embeddings, cache)
        if cache is not None:
            cache.advance(state, window, new_tokens=length, window=self.liger.window, sinks=self.liger.sinks,
                          ring=self.ring_buffer)
        return self.o_proj(out.to(hidden_states.dtype).reshape(batch, length, -1)), None

    def mix(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        valid: torch.Tensor | None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        cache: LigerCacheLayer | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None, WindowStream | None]:
        """The method's mixing step.

        Args:
            q: [B, T, H, D]; k, v: [B, T, H_kv, D], raw projections (no RoPE).
            valid: [B, T] bool, which tokens are real (None: all).
            cache: this layer's decode cache (None: no cache), read-only here but for a ring buffer's slot that
                a steady step overwrites (`LigerCacheLayer.push`).

        Returns:
            the mixed output [B, T, H, D], the new recurrent state (or None) and the window stream to keep
            (keys, values, validity over buffer + current tokens, optionally their raw keys; None: no window
            branch, or a steady step that wrote its token into the ring buffer).
        """
        raise NotImplementedError

    def _project(self, hidden_states: torch.Tensor):
        """q [B, T, H, D], k and v [B, T, H_kv, D]: the raw projections (with bias and q/k norm), no RoPE."""
        shape = (*hidden_states.shape[:-1], -1, self.head_dim)
        if self.fused_qkv is not None and self.fused_qkv.serves(self.q_proj, self.k_proj, self.v_proj):
            q, k, v = (x.reshape(shape) for x in self.fused_qkv(hidden_states))
        else:
            q, k, v = (proj(hidden_states).view(shape) for proj in (self.q_proj, self.k_proj, self.v_proj))
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        return q, k, v

    def _rope(self, q: torch.Tensor, k: torch.Tensor, position_embeddings) -> tuple[torch.Tensor, torch.Tensor]:
        """q, k with the family's own rotary embedding ([B, T, heads, D] layout)."""
        cos, sin = position_embeddings
        return self._apply_rope(q, k, cos, sin, unsqueeze_dim=2)

    @staticmethod
    def _window_stream(k, v, valid, cache: LigerCacheLayer | None) -> WindowStream:
        """The cached window buffer followed by the current keys/values: [B, L + T, H_kv, D], validity [B, L + T]."""
        if valid is None:
            valid = torch.ones(k.shape[:2], dtype=torch.bool, device=k.device)
        past_k, past_v, past_valid = cache.window_keys() if cache is not None else (None, None, None)
        if past_k is None:
            return k, v, valid
        return torch.cat([past_k, k], dim=1), torch.cat([past_v, v], dim=1), torch.cat([past_valid, valid], dim=1)


def linearized_mixers(model: nn.Module) -> list[LinearizedAttention]:
    """Every converted attention module of the model, in layer order."""
    return [module for module in model.modules() if isinstance(module, LinearizedAttention)]


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
    if torch.compiler.is_compiling():
        return valid  # the all-real shortcut below would split a compiled graph; the mask is exact either way
    return None if bool(valid.all()) else valid
