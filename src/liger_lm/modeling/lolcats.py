"""`LolcatsAttention`: the LoLCATs baseline mixer (arXiv 2410.10254, docs/method.md §1.3).

Per layer, with q, k the model's own projections after RoPE (LoLCATs applies RoPE first, then the feature map),
H query heads and the keys/values of a GQA group shared by its query heads:

    φ_h(x) = [softmax(x W_h), softmax(−x W_h)]           Hedgehog map, W_h ∈ R^{D×f} per query head, separate for q, k
    γ_h    = σ(ω_h)                                      window factor, one learned logit per head, ω init −2.197
    y_t    = (γ Σ_{win} exp(q_t·k_j/√D − m_t) v_j + φ(q_t) Σ_{old} φ(k_j)ᵀ v_j)
             / (γ Σ_{win} exp(q_t·k_j/√D − m_t) + φ(q_t) Σ_{old} φ(k_j)ᵀ)          (`liger_lm.ops.lolcats`)
    o_t    = y_t W_o

win = the last w keys (incl. t), old = every earlier key, m_t = max of the window scores. As in the LoLCATs
reference: γ is per head (`window_factors` of shape [1, H, 1, 1]), the linear term has factor 1, φ is clamped at
1e-12, and the feature maps act per query head on the GQA-repeated keys. The reference trains with a "terraced"
block window in some variants; here the window is the true sliding window that its decode path uses, so training,
prefill and decode compute the same function.

Unlike the Liger mixer, the output depends on absolute positions (φ acts on RoPE'd q, k, and φ(q)·φ(k) is not
rotation invariant): a left-padded batch equals its rows run alone only when positions start at each row's first
real token — `generate()` derives them from the attention mask; a plain forward needs `position_ids` passed.

All learned parameters (fp32) live in the submodules `feature_map_q`, `feature_map_k` and `window_factor`, so
`peft.LoraConfig(modules_to_save=[...])` and name-based freezing can select them; everything else is the base
model's, under its own names.

Initialisation (not the reference's random Kaiming init): W_h = I (the first min(D, f) columns of the identity), so
before training φ(x) = [softmax(x), softmax(−x)] — the parameter-free map of the Liger mixer, mirrored — and the
converted model is usable without attention transfer. When f > D the remaining f − D columns are drawn from
U(−1/√D, 1/√D) with the global torch RNG (deterministic given the seed): all-zero columns would receive identical
gradients and never separate.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.lolcats import lolcats_attention
from .adapters import ArchitectureAdapter
from .attention import LinearizedAttention

if TYPE_CHECKING:  # the settings import the method registry (`modeling.methods`)
    from ..config import LigerConfig

FEATURE_FLOOR = 1e-12  # the reference's clamp: φ stays > 0, so a linear normaliser never vanishes


class HedgehogFeatureMap(nn.Module):
    """φ_h(x) = [softmax(x W_h), softmax(−x W_h)] per head: [B, T, H, D] → [B, T, H, 2f] fp32."""

    def __init__(self, num_heads: int, head_dim: int, feature_dim: int, device=None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_heads, head_dim, feature_dim, device=device, dtype=torch.float32))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """W_h = identity on the first min(D, f) columns, U(−1/√D, 1/√D) on any further ones (module docstring)."""
        _, head_dim, feature_dim = self.weight.shape
        with torch.no_grad():
            bound = 1 / math.sqrt(head_dim)
            self.weight.uniform_(-bound, bound)
            shared = min(head_dim, feature_dim)
            self.weight[:, :, :shared] = torch.eye(head_dim, shared, device=self.weight.device)

    def extra_repr(self) -> str:
        heads, head_dim, feature_dim = self.weight.shape
        return f"heads={heads}, head_dim={head_dim}, feature_dim={feature_dim} (φ has {2 * feature_dim})"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        projected = torch.einsum("bthd,hdf->bthf", x.float(), self.weight.float())
        features = torch.cat([projected.softmax(-1), (-projected).softmax(-1)], dim=-1)
        return features.clamp(min=FEATURE_FLOOR)


class WindowFactor(nn.Module):
    """γ_h = σ(ω_h): weight of the window (softmax) term against the linear term, one learned logit per head."""

    def __init__(self, num_heads: int, init: float, device=None) -> None:
        super().__init__()
        self.logit = nn.Parameter(torch.full((num_heads,), float(init), device=device, dtype=torch.float32))

    def extra_repr(self) -> str:
        return f"heads={self.logit.shape[0]}"

    def forward(self) -> torch.Tensor:
        """[H] fp32."""
        return torch.sigmoid(self.logit.float())


class LolcatsAttention(LinearizedAttention):
    """LoLCATs attention: learned Hedgehog feature maps, one normaliser over window and linear terms.

    Its cache (`LigerCacheLayer`) holds the state (U [B, H, 2f, D], z [B, H, 2f]) fp32 and the last w − 1 RoPE'd keys
    and values with their validity; one decode step folds the key leaving the window into the state.
    """

    method = "lolcats"
    description = "LoLCATs: learned Hedgehog feature maps + sliding window, one normaliser (arXiv 2410.10254)"
    stage_one_modules = ("feature_map_q", "feature_map_k", "window_factor")

    def __init__(self, attention: nn.Module, config: LigerConfig, adapter: ArchitectureAdapter) -> None:
        super().__init__(attention, config, adapter)
        device = self.q_proj.weight.device
        self.feature_map_q = HedgehogFeatureMap(self.num_heads, self.head_dim, config.feature_dim, device)
        self.feature_map_k = HedgehogFeatureMap(self.num_heads, self.head_dim, config.feature_dim, device)
        self.window_factor = WindowFactor(self.num_heads, config.window_factor_init, device)

    def extra_repr(self) -> str:
        return f"method=lolcats, window={self.liger.window}, feature_dim={self.liger.feature_dim}"

    def mix(self, q, k, v, valid, position_embeddings, cache):
        q, k = self._rope(q, k, position_embeddings)
        k, v, valid = self._window_stream(k, v, valid, cache)
        out, state = lolcats_attention(
            q, k, v, self.feature_map_q(q), self._leaving_key_features(k), self.window_factor(),
            self.liger.window, self.scaling, key_valid=valid, initial_state=cache.state if cache is not None else None,
        )
        return out, state, (k, v, valid)

    def _leaving_key_features(self, k: torch.Tensor) -> torch.Tensor:
        """φ(k) [B, S, H, 2f] for the keys that are or become older than the window (rows ≤ S − w), zeros after.

        The op reads no other row, so a decode step maps one key instead of the whole window buffer.
        """
        total = k.shape[1]
        leaving = max(total - self.liger.window + 1, 0)
        groups = self.num_heads // self.num_kv_heads
        features = self.feature_map_k(k[:, :leaving].repeat_interleave(groups, dim=2))
        return F.pad(features, (0, 0, 0, 0, 0, total - leaving))
