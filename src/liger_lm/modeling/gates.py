"""Gates of the recurrent branch (paper Table 1, docs/method.md §1.1), all run by the same two ops in `liger_lm.ops`.

Inputs per layer: the raw projections q [B, T, H, D] and k, v [B, T, H_kv, D] (with bias / q-k norms, no RoPE) and
g = the gate source (the raw key by default, so H_kv heads). Feature maps and gates run on the H_kv heads; each kv
head's key, value and gate are repeated over its group of query heads only where they meet q (`to_heads`).
Pool is adaptive average pooling of g's D values to the gate shape; L = logsigmoid, τ = `gate_normalizer`,
φ = the feature map `config.feature_map` (`FEATURE_MAPS`: softmax over D in the paper). Padding tokens arrive with
`keep` False: they must neither write to nor decay the state, so their write term and log-decay are zeroed.

Each gate returns the branch output [B, T, H, D] (fp32) and its new state (a tuple of fp32 tensors).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F

from ..ops import gla, gla_value_decay

if TYPE_CHECKING:
    from ..config import LigerConfig

# exp(−60) ≈ 1e-26 is already a full reset; the floor keeps in-chunk cumulative sums finite (RWKV6's −exp(g)).
MIN_LOG_DECAY = -60.0
# q'·z ≥ min(q') > 0 once a real token was written (softmax features); only an empty state (left padding) is below.
NORMALISER_FLOOR = 1e-30

State = tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class FeatureMap:
    name: str
    description: str
    apply: Callable[[torch.Tensor], torch.Tensor]  # φ over the last (head) dim; positive, so q'·z > 0


FEATURE_MAPS: dict[str, FeatureMap] = {
    fm.name: fm
    for fm in (
        FeatureMap("softmax", "softmax over the head dimension, no parameters (paper default)",
                   lambda x: x.softmax(-1)),
        FeatureMap("elu", "elu(x) + 1 (Katharopoulos et al. 2020), no parameters", lambda x: F.elu(x) + 1.0),
    )
}


def _phi(x: torch.Tensor, config: LigerConfig) -> torch.Tensor:
    """The configured feature map φ of q or k [B, T, H, D]."""
    return FEATURE_MAPS[config.feature_map].apply(x)


@dataclass(frozen=True)
class Gate:
    name: str
    description: str
    decay: str  # the decay a_t, for docs and `liger convert --help`
    state_size: str  # recurrent state per head
    run: Callable[..., tuple[torch.Tensor, State]]
    # Gates that write φ(k)ᵀ v under a per-key-dim decay give it here, log a = key_log_decay(g, config) elementwise:
    # `modeling.mixer.shared_decode_step` then runs their decode step in a few fused ops.
    key_log_decay: Callable[[torch.Tensor, LigerConfig], torch.Tensor] | None = None


def _pool(g: torch.Tensor, size: int) -> torch.Tensor:
    """Adaptive average pooling of the last dim of g [B, T, H, D] to `size`."""
    if size == g.shape[-1]:
        return g
    return F.adaptive_avg_pool1d(g.flatten(0, 2)[:, None], size)[:, 0].unflatten(0, g.shape[:3])


def to_heads(heads: int, keep: torch.Tensor | None, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """The state's per-token inputs, ready for the op: each [B, T, H_kv, *] tensor repeated over its GQA group to
    `heads` heads (as transformers' repeat_kv), then zeroed at the padding positions (keep [B, T] False)."""
    tensors = [t if t.shape[2] == heads else t.repeat_interleave(heads // t.shape[2], dim=2) for t in tensors]
    if keep is None:
        return tensors
    return [torch.where(keep[:, :, None, None], t, 0.0) for t in tensors]


def with_ones_column(v: torch.Tensor) -> torch.Tensor:
    """v with one more value column of 1: the same recurrence then also carries z_t = diag(a_t) z_{t−1} + write_t."""
    return torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)


def _divide_by_last(o: torch.Tensor) -> torch.Tensor:
    """o[..., :-1] / (q·z) with q·z in the last column; 0 where nothing was written yet (left padding)."""
    return o[..., :-1] / o[..., -1:].clamp(min=NORMALISER_FLOOR)


def _linear(q_feat, write_key, v, log_decay, keep, state: State | None, config: LigerConfig, normalize: bool):
    """o_t = q_feat_t S_t,  S_t = diag(exp(log_decay_t)) S_{t−1} + write_key_tᵀ v_t;
    with `normalize`: o_t / (q_feat_t · z_t),  z_t = diag(exp(log_decay_t)) z_{t−1} + write_key_t."""
    if normalize:
        v = with_ones_column(v)
    write_key, v, log_decay = to_heads(q_feat.shape[2], keep, write_key, v, log_decay.clamp(min=MIN_LOG_DECAY))
    initial = state[0] if state else None
    o, final = gla(q_feat, write_key, v, log_decay, initial_state=initial, chunk_size=config.chunk_size)
    return (_divide_by_last(o) if normalize else o), (final,)


def _per_dim(name: str, description: str, decay: str, log_decay_fn) -> Gate:
    """Gate with a per-key-dim decay and write φ(k)ᵀ v."""

    def run(q, k, v, g, keep, state, config):
        q_feat, k_feat = _phi(q, config), _phi(k, config)
        return _linear(q_feat, k_feat, v, log_decay_fn(g, config), keep, state, config, config.normalize)

    return Gate(name, description, decay, "D×D", run, key_log_decay=log_decay_fn)


def _scalar(log_decay_fn):
    """Gate with one decay per head, from Pool_{D→1}(g), broadcast over the key dim; write φ(k)ᵀ v."""

    def run(q, k, v, g, keep, state, config):
        log_decay = log_decay_fn(_pool(g, 1), config).expand(-1, -1, -1, k.shape[-1])
        return _linear(_phi(q, config), _phi(k, config), v, log_decay, keep, state, config, config.normalize)

    return run


def _hgrn2(q, k, v, g, keep, state, config):
    """a = γ + (1 − γ)·σ(g) per dim; write (1 − a)ᵀ v (input tied to forget); only q is softmaxed."""
    gamma = config.gate_lower_bound
    decay = gamma + (1.0 - gamma) * torch.sigmoid(g)
    return _linear(_phi(q, config), 1.0 - decay, v, torch.log(decay), keep, state, config, config.normalize)


def _mlstm(q, k, v, g, keep, state, config):
    """a = σ(Pool(g)→1); S_t = a S + φ(k)ᵀ v and n_t = a n + φ(k); o = φ(q) S / max(|φ(q)·n|, 1)."""
    # The normaliser n is the same recurrence with a value of 1: one extra value column carries it.
    log_decay = F.logsigmoid(_pool(g, 1)).expand(-1, -1, -1, k.shape[-1])
    # Its own normaliser already: `normalize` does not apply.
    o, new_state = _linear(_phi(q, config), _phi(k, config), with_ones_column(v), log_decay, keep, state, config, False)
    return o[..., :-1] / o[..., -1:].abs().clamp(min=1.0), new_state


def _rwkv6(q, k, v, g, keep, state, config):
    """a = exp(−exp(g)) per dim, bonus u = 1: o_t = φ(q_t)(S_{t−1} + φ(k_t)ᵀ v_t),  S_t = diag(a_t) S_{t−1} + φ(k_t)ᵀ v_t;
    with `normalize`: o_t / φ(q_t)(z_{t−1} + φ(k_t)),  z_t = diag(a_t) z_{t−1} + φ(k_t)."""
    q_feat = _phi(q, config)
    if config.normalize:
        v = with_ones_column(v)
    k_feat, v, log_decay = to_heads(q.shape[2], keep, _phi(k, config), v, (-torch.exp(g)).clamp(min=MIN_LOG_DECAY))
    # Reading S_{t−1} is the standard recurrence over inputs shifted one token right.
    initial = state[0] if state else None
    shifted = [F.pad(x, (0, 0, 0, 0, 1, -1)) for x in (k_feat, v, log_decay)]
    o_past, before_last = gla(q_feat, *shifted, initial, config.chunk_size)
    bonus = (q_feat * k_feat).sum(-1, keepdim=True) * v
    last = log_decay[:, -1].exp()[..., None] * before_last + k_feat[:, -1, ..., None] * v[:, -1, :, None]
    o = o_past + bonus
    return (_divide_by_last(o) if config.normalize else o), (last,)


def _gsa(q, k, v, g, keep, state, config):
    """Gated Slot Attention with M slots (a softmax over slots: normalised already, `normalize` does not apply), a = σ(Pool_{D→M}(g))^(1/τ):
    K̃_t = diag(a) K̃ + (1 − a) ⊗ φ(k_t),  Ṽ_t = diag(a) Ṽ + (1 − a) ⊗ v_t,  o_t = softmax(K̃_t φ(q_t))ᵀ Ṽ_t."""
    log_decay = (F.logsigmoid(_pool(g, config.num_slots)) / config.gate_normalizer).clamp(min=MIN_LOG_DECAY)
    slot_write = 1.0 - log_decay.exp()
    k_feat, v, slot_write, log_decay = to_heads(q.shape[2], keep, _phi(k, config), v, slot_write, log_decay)
    keys_state, values_state = state if state else (None, None)
    # Pass 1 holds K̃ᵀ [D, M]: the decay sits on its value (slot) dim.
    scores, keys_state = gla_value_decay(_phi(q, config), k_feat, slot_write, log_decay, keys_state, config.chunk_size)
    o, values_state = gla(scores.softmax(-1), slot_write, v, log_decay, values_state, config.chunk_size)
    return o, (keys_state, values_state)


GATES: dict[str, Gate] = {
    gate.name: gate
    for gate in (
        _per_dim("gla", "Gated Linear Attention (paper default)", "exp(L(g)/τ) per key dim",
                 lambda g, c: F.logsigmoid(g) / c.gate_normalizer),
        Gate("hgrn2", "HGRN2: forget gate tied to the input", "γ + (1−γ)σ(g) per key dim, write 1−a", "D×D", _hgrn2),
        Gate("gsa", "Gated Slot Attention: two-pass slot memory", "σ(Pool_{D→M}(g))^(1/τ) per slot", "2·M×D", _gsa),
        Gate("mamba2", "Mamba2: scalar decay per head", "exp(−softplus(Pool_{D→1}(g)))", "D×D",
             _scalar(lambda g, c: -F.softplus(g))),
        Gate("mlstm", "mLSTM: scalar forget gate plus normaliser state", "σ(Pool_{D→1}(g))", "D×(D+1)",
             _mlstm),
        Gate("retnet", "Gated RetNet: scalar decay per head", "σ(Pool_{D→1}(g))^(1/τ)", "D×D",
             _scalar(lambda g, c: F.logsigmoid(g) / c.gate_normalizer)),
        Gate("rwkv6", "RWKV6: data-dependent decay, bonus u = 1", "exp(−exp(g)) per key dim", "D×D", _rwkv6),
        _per_dim("none", "pure linear attention, no decay", "1", lambda g, c: torch.zeros_like(g)),
    )
}
