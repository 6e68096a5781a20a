"""Per-family facts the mixer needs: which HF classes, q/k norms, and the family's RoPE function.

Biases need no adapter (they live inside the reused `nn.Linear`s); head_dim, head counts and scaling are read
from the original attention module, so `head_dim != hidden / heads` (Qwen3) is handled the same way.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable

from torch import nn
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
    PreTrainedModel,
)

from ..errors import UnsupportedModelError  # noqa: F401 (re-exported)


@dataclass(frozen=True)
class ArchitectureAdapter:
    family: str  # the base `model_type`, e.g. "llama"
    causal_lm_class: type[PreTrainedModel]
    config_class: type
    has_qk_norm: bool  # Qwen3 normalises q and k per head before RoPE

    def apply_rope(self) -> Callable:
        """The family's own `apply_rotary_pos_emb`, so RoPE variants follow the installed transformers."""
        return sys.modules[self.causal_lm_class.__module__].apply_rotary_pos_emb


ADAPTERS: dict[str, ArchitectureAdapter] = {
    a.family: a
    for a in (
        ArchitectureAdapter("llama", LlamaForCausalLM, LlamaConfig, has_qk_norm=False),
        ArchitectureAdapter("mistral", MistralForCausalLM, MistralConfig, has_qk_norm=False),
        ArchitectureAdapter("qwen2", Qwen2ForCausalLM, Qwen2Config, has_qk_norm=False),
        ArchitectureAdapter("qwen3", Qwen3ForCausalLM, Qwen3Config, has_qk_norm=True),
    )
}
SUPPORTED_CLASSES = ", ".join(a.causal_lm_class.__name__ for a in ADAPTERS.values())


def gated_mlp_classes() -> tuple[type, ...]:
    """The families' MLP classes (`LlamaMLP`, …): each computes down(act(gate(x)) ⊙ up(x)), which is what
    `decode_layout` reads with gate and up fused."""
    return tuple(getattr(sys.modules[a.causal_lm_class.__module__], a.causal_lm_class.__name__.replace(
        "ForCausalLM", "MLP")) for a in ADAPTERS.values())


def adapter_for(model: nn.Module) -> ArchitectureAdapter:
    """The adapter of `model`'s family (a converted model maps to its base family)."""
    for adapter in ADAPTERS.values():
        if isinstance(model, adapter.causal_lm_class):
            return adapter
    raise UnsupportedModelError(
        f"cannot convert {type(model).__name__}: supported architectures are {SUPPORTED_CLASSES}"
    )
