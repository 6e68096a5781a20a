"""`LigerAttention`: the Liger mixing step (docs/method.md §1).

    o_t = (α · o^rec_t + β · o^swa_t) W_o
    o^rec_t = φ(q_t) S_t,  S_t = diag(a_t) S_{t−1} + φ(k_t)ᵀ v_t   (gate from the raw key, no RoPE, fp32 state;
                                                               the other gates of `modeling.gates` vary a_t / S)
    o^swa_t = softmax attention of RoPE(q_t) over the last w RoPE'd keys (the model's own scaling), and over the
              first `sinks` real tokens of the sequence (their own RoPE positions; 0 in the paper)

With `combine="shared"` (docs/method.md §1.2) the recurrent branch holds only the tokens that left the window and
are no sinks, read as S_old,t = the state after token t − w, and competes with the window inside one softmax:

    o_t = (Σ_{j ∈ win ∪ sinks} e^{s_tj} v_j + e^{ω_h} φ(q_t) S_old,t) / (Σ e^{s_tj} + e^{ω_h} φ(q_t) z_old,t)
        = σ(lse_t − ω_h − log Z_t) · o^swa_t + N_t / (Z_t + e^{lse_t − ω_h})

with N_t = φ(q_t) S_old,t, Z_t = φ(q_t) z_old,t (z: the same recurrence with a value of 1) and ω_h a learned logit
per head (`rec_logit`, the only parameter this adds).

With `learned_features`, φ reads x W_h instead of x in either combination: W_h ∈ R^{D×D} per query head for q
(`feature_proj_q`) and per kv head for k (`feature_proj_k`), identity at first. The gate still reads the raw key, and
the state keeps its size. This is LoLCATs' idea of a feature map trained to imitate softmax attention (Hedgehog), kept
at the gate's own D features so that every gate and the fused decode step still apply.

Projections, cache access, the window buffer and W_o are `LinearizedAttention`'s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import sliding_window_attention
from ..ops.swa import Sinks, gather_sinks, group_scores, group_weighted_values, sink_mask
from .adapters import ArchitectureAdapter
from .attention import LinearizedAttention
from .cache import LigerCacheLayer, NewToken
from .gates import FEATURE_MAPS, GATES, MIN_LOG_DECAY, NORMALISER_FLOOR, to_heads, with_ones_column

if TYPE_CHECKING:  # the settings import the method registry (`modeling.methods`)
    from ..config import LigerConfig


class RecurrentLogit(nn.Module):
    """ω_h: the log-weight of the recurrent pseudo-key against the window's softmax scores, one per head (fp32)."""

    def __init__(self, num_heads: int, init: float, device=None) -> None:
        super().__init__()
        self.logit = nn.Parameter(torch.full((num_heads,), float(init), device=device, dtype=torch.float32))

    def forward(self) -> torch.Tensor:
        return self.logit.float()


class FeatureProjection(nn.Module):
    """x ↦ x W_h per head, W_h ∈ R^{D×D} (fp32, identity at first): what φ reads with `learned_features`."""

    def __init__(self, num_heads: int, head_dim: int, device=None) -> None:
        super().__init__()
        eye = torch.eye(head_dim, device=device, dtype=torch.float32)
        self.weight = nn.Parameter(eye.expand(num_heads, head_dim, head_dim).clone())

    def extra_repr(self) -> str:
        return f"heads={self.weight.shape[0]}, head_dim={self.weight.shape[1]}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[..., H, D] → [..., H, D] fp32. One matmul per head over all tokens: the broadcast form x[..., None, :] @ W
        is a batch of 1 × D products, and its forward + backward tens of times slower on CPU (README)."""
        return torch.einsum("...hd,hde->...he", x.float(), self.weight)


class LigerAttention(LinearizedAttention):
    """Gated recurrence (any gate of `modeling.gates`) mixed with sliding-window softmax attention."""

    method = "liger"
    description = "Liger: gated recurrence + sliding-window attention, no new parameters (arXiv 2503.01496)"
    # rec_logit: combine="shared" only; the projections: learned_features only
    with_lora_modules = ("rec_logit", "feature_proj_q", "feature_proj_k")
    lr_scales = {"rec_logit": "logit_lr_scale", "feature_proj_q": "feature_lr_scale",
                 "feature_proj_k": "feature_lr_scale"}

    def __init__(self, attention: nn.Module, config: LigerConfig, adapter: ArchitectureAdapter) -> None:
        super().__init__(attention, config, adapter)
        device = self.q_proj.weight.device
        if config.combine == "shared":
            self.rec_logit = RecurrentLogit(self.num_heads, config.rec_logit_init, device)
        if config.learned_features:
            self.feature_proj_q = FeatureProjection(self.num_heads, self.head_dim, device)
            self.feature_proj_k = FeatureProjection(self.num_kv_heads, self.head_dim, device)

    def extra_repr(self) -> str:
        c = self.liger
        return (f"gate={c.gate}, window={c.window}, sinks={c.sinks}, normalize={c.normalize}, combine={c.combine}, "
                f"rec_weight={c.rec_weight}, swa_weight={c.swa_weight}, learned_features={c.learned_features}")

    def _features_in(self, x: torch.Tensor, which: str) -> torch.Tensor:
        """What φ reads for q or k ("q" / "k"): x W_h with `learned_features`, x itself otherwise."""
        if not self.liger.learned_features:
            return x
        return (self.feature_proj_q if which == "q" else self.feature_proj_k)(x)

    def mix(self, q, k, v, valid, position_embeddings, cache):
        if self.liger.combine == "shared" and self.liger.rec_weight and self.liger.swa_weight:
            return self._shared(q, k, v, valid, position_embeddings, cache)
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
        return GATES[self.liger.gate].run(self._features_in(q, "q"), self._features_in(k, "k"), v, source, valid, state,
                                          self.liger)

    def _sliding_window(self, q, k, v, valid, position_embeddings, cache: LigerCacheLayer | None, with_lse=False):
        """o^swa [B, T, H, D] (and with `with_lse` its log-sum-exp [B, T, H]) and (keys, values, validity) over
        buffer + current tokens for the cache."""
        q, k = self._rope(q, k, position_embeddings)
        k, v, valid = self._window_stream(k, v, valid, cache)
        sinks = cache.sinks if cache is not None else None
        if self._stream_may_hold_sinks(cache):
            sinks = gather_sinks(k, v, valid, self.liger.sinks, self._real_before(k, cache), sinks)
        out = sliding_window_attention(q, k, v, self.liger.window, self.scaling, key_valid=valid, sinks=sinks,
                                       with_lse=with_lse)
        return out, (k, v, valid)

    def _stream_may_hold_sinks(self, cache: LigerCacheLayer | None) -> bool:
        """Whether the window stream can hold sink tokens: not once the cache stored every row's sinks (decode)."""
        return bool(self.liger.sinks) and not (cache is not None and cache.sinks_complete)

    @staticmethod
    def _real_before(k, cache: LigerCacheLayer | None):
        return cache.real_before_buffer(k.shape[0], k.device) if cache is not None else None

    def _shared(self, q, k, v, valid, position_embeddings, cache: LigerCacheLayer | None):
        """`combine="shared"` (module docstring): window and recurrent branch under one softmax normaliser."""
        if self._steady_decode(q, valid, cache):
            return self._shared_decode(q, k, v, valid, position_embeddings, cache)
        (o_swa, lse), stream = self._sliding_window(q, k, v, valid, position_embeddings, cache, with_lse=True)
        raw_keys = k if cache is None or cache.raw_keys is None else torch.cat([cache.raw_keys, k], dim=1)
        if stream[0].shape[1] < self.liger.window and (cache is None or cache.state is None):
            # Every key so far is inside the window (a prompt shorter than it): nothing has left it, so the shared
            # softmax is the window's alone (N = Z = 0 below gives the same), and there is no state yet.
            return o_swa.float(), None, (*stream, raw_keys)
        numerator, normaliser, state = self._left_the_window(q, raw_keys, stream, cache)
        return _shared_output(o_swa, lse, numerator, normaliser, self.rec_logit()), state, (*stream, raw_keys)

    @property
    def ring_buffer(self) -> bool:
        """Whether steady decode steps run `_shared_decode`, which keeps the window buffer as a ring."""
        c = self.liger
        return (c.combine == "shared" and bool(c.rec_weight and c.swa_weight) and c.window > 1
                and GATES[c.gate].key_log_decay is not None)

    def _steady_decode(self, q, valid, cache: LigerCacheLayer | None) -> bool:
        """Whether this call is a decode step `shared_decode_step` computes: one real token, a full ring buffer with
        a state behind it, every sink stored, and a gate that declares its per-key-dim decay (`ring_buffer`).
        Compiled steps pass the mask on (`token_validity`), but `compiled_decode` compiles only real new tokens."""
        return (self.ring_buffer and cache is not None and q.shape[1] == 1
                and (valid is None or torch.compiler.is_compiling()) and cache.state is not None
                and cache.ring_start is not None and cache.keys.shape[1] == self.liger.window - 1
                and not self._stream_may_hold_sinks(cache))

    def _shared_decode(self, q, k, v, valid, position_embeddings, cache: LigerCacheLayer):
        """`_shared` for a steady decode step (`_steady_decode`) in a few fused ops instead of the general blocked
        forms (a decode step is bound by op dispatch). The window buffer is a ring: the current token overwrites
        the oldest one in place (`LigerCacheLayer.push`) instead of a shifted copy of the buffer per layer and
        step; the step attends over the buffer in slot order and the token it replaced, which it then writes into
        the state. Written before the attention reads the buffer, so that a compiled step writes the one slot in
        place rather than copying the buffer first."""
        q_rope, k_rope = self._rope(q, k, position_embeddings)
        current_valid = valid if valid is not None else cache.key_valid.new_ones(q.shape[0], 1)
        leaving = cache.push(NewToken(k_rope, v, current_valid, k))
        out, state = shared_decode_step(self._features_in(q, "q"), q_rope, (cache.keys, cache.values, cache.key_valid),
                                        leaving, cache.sinks, cache.state[0], self.rec_logit(), self.scaling,
                                        self.liger, leaving_feature_key=self._features_in(leaving.raw_keys, "k"))
        return out, (state,), None

    def _unnormalised(self) -> LigerConfig:
        """The settings with `normalize` off (the shared form divides by Z itself), made once per settings object."""
        if self.__dict__.get("_unnormalised_for") is not self.liger:
            self.__dict__["_unnormalised_for"] = self.liger
            self.__dict__["_unnormalised_config"] = self.liger.replace(normalize=False)
        return self.__dict__["_unnormalised_config"]

    def _left_the_window(self, q, raw_keys, stream, cache: LigerCacheLayer | None):
        """N_t [B, T, H, D], Z_t [B, T, H] over the tokens that left query t's window (no sinks), and the new state.

        The recurrence runs over [one empty token, the window stream] and writes every stream token but the last
        w − 1 (those stay in the window buffer; the state is the cache's "everything before the buffer"). Query t
        reads the state after the token w positions before it: it sits w − 1 positions after that token's place.
        """
        keys, values, valid = stream
        window, length = self.liger.window, q.shape[1]
        buffered = keys.shape[1] - length
        write = valid.clone()
        if self._stream_may_hold_sinks(cache):  # sinks stay exact in the window branch; the recurrence skips them
            write &= ~sink_mask(valid, self.liger.sinks, self._real_before(keys, cache))
        write[:, max(keys.shape[1] - (window - 1), 0):] = False
        pad = lambda x: F.pad(x, (0,) * (2 * (x.dim() - 2)) + (1, 0))  # noqa: E731  one empty token in front
        raw_keys, values, write = pad(raw_keys.float()), pad(with_ones_column(values.float())), pad(write)
        # Query t (stream' index buffered + t + 1) reads the state at stream' index buffered + t + 1 − w.
        first = buffered + 1 - window
        start, count = max(first, 0), max(min(length, first + length), 0)
        skip = length - count  # the first queries, with nothing old yet
        # Past the last token written and the last state read nothing matters: a decode step runs 2 tokens, not w + 1.
        needed = max(keys.shape[1] - window + 2, start + count)
        raw_keys, values, write = raw_keys[:, :needed], values[:, :needed], write[:, :needed]
        reading = torch.zeros(q.shape[0], needed, *q.shape[2:], dtype=torch.float32, device=q.device)
        reading[:, start : start + count] = q[:, skip:].float()
        state = cache.state if cache is not None else None
        out, state = GATES[self.liger.gate].run(self._features_in(reading, "q"), self._features_in(raw_keys, "k"),
                                                values, raw_keys, write, state, self._unnormalised())
        out = F.pad(out[:, start : start + count], (0, 0, 0, 0, skip, 0))  # queries with nothing old: 0
        return out[..., :-1], out[..., -1], state


def shared_decode_step(q, q_rope, window, leaving: NewToken, sinks: Sinks | None, state, omega, scale: float,
                       config: LigerConfig, leaving_feature_key=None):
    """One decode step of `combine="shared"` once the window buffer is full (general form: `LigerAttention._shared`):

        o = σ(lse − ω − log Z) · o^swa + N / (Z + e^{lse − ω})
        o^swa, lse = softmax attention of RoPE(q) over the valid keys of the window buffer (the current token
                     included), the token leaving it and the stored sinks (all inside the window)
        [N | Z] = φ(q) [S | z]                  the state before this step: the tokens that left the window
        [S | z] ← diag(a) [S | z] + φ(k₀)ᵀ [v₀, 1],  a = exp(gate.key_log_decay(k₀))   if token 0 is valid

    Token 0 (raw key k₀, value v₀) is the one leaving the window: this query still sees it, the next one no longer
    does. With `learned_features` φ reads q W_q and k₀ W_k: the caller passes q projected and `leaving_feature_key`.

    q, q_rope: [B, 1, H, D] (what φ reads / RoPE'd); window: the buffer's w − 1 RoPE'd keys, values
    [B, w − 1, H_kv, D] and validity [B, w − 1] bool, in any order; leaving: token 0 (RoPE'd key, value, raw key
    [B, 1, H_kv, D], validity [B, 1]); sinks: G stored sink keys (all before the stream) or None; state:
    [B, H, D, D + 1] fp32 ([S | z]); omega: [H]; leaving_feature_key: [B, 1, H_kv, D], what φ reads for k₀ (None:
    k₀ itself). Returns o [B, 1, H, D] fp32 and the new state.
    """
    batch, _, heads, dim = q.shape
    kv_heads = window[0].shape[2]
    groups = heads // kv_heads
    few = leaving[:3] if sinks is None else _joined((sinks.keys, sinks.values, sinks.valid), leaving[:3])
    # Eagerly one product over the joined keys wins (a step is bound by op count: 4 % faster at int8); compiled,
    # two products per part beat copying the window buffer's keys per layer and step (6 %), so only the few keys
    # of the sinks and the leaving token are joined there.
    parts = [window, few] if torch.compiler.is_compiling() else [_joined(window, few)]
    # Query head h reads kv head h // groups (transformers' repeat_kv): [B, H_kv, groups, D] against [B, S, H_kv, D].
    o_swa, lse = _window_softmax(q_rope.float().view(batch, kv_heads, groups, dim), parts, scale)
    read = (FEATURE_MAPS[config.feature_map].apply(q.float())[:, 0, :, None, :] @ state)[:, :, 0]  # [B, H, D + 1]
    out = _shared_output(o_swa.view(batch, heads, dim), lse.view(batch, heads), read[..., :-1], read[..., -1], omega)
    leaving_key = leaving.raw_keys[:, 0].float()
    leaving_feature = leaving_key if leaving_feature_key is None else leaving_feature_key[:, 0].float()
    return out[:, None], _write_leaving(state, leaving_feature, leaving_key, leaving.values[:, 0].float(),
                                        leaving.key_valid[:, 0], config)


def _joined(*parts):
    """Keys, values and validity of several parts joined along the key axis (dim 1)."""
    return tuple(torch.cat(x, dim=1) for x in zip(*parts))


def _window_softmax(q_groups, parts, scale: float):
    """Softmax attention of one query per head over the keys of every part under one normaliser: q_groups
    [B, H_kv, G, D]; parts: (keys, values [B, S_i, H_kv, D], valid [B, S_i] bool) each, every row with a valid key.
    Returns o [B, H_kv, G, D] and the log-sum-exp [B, H_kv, G], fp32."""
    scores, valid = [group_scores(q_groups, k) for k, _, _ in parts], [v for _, _, v in parts]
    scores, valid = (torch.cat(scores, dim=-1), torch.cat(valid, dim=1)) if len(parts) > 1 else (scores[0], valid[0])
    scores = (scores * scale).masked_fill_(~valid[:, None, None, :], float("-inf"))
    lse = scores.logsumexp(-1)
    weights = (scores - lse[..., None]).exp_()
    if len(parts) == 1:
        return group_weighted_values(weights, parts[0][1]), lse
    weights = weights.split([k.shape[1] for k, _, _ in parts], dim=-1)
    return sum(group_weighted_values(w, v) for w, (_, v, _) in zip(weights, parts)), lse


def _shared_output(o_swa, lse, numerator, normaliser, omega):
    """σ(lse − ω − log Z) · o^swa + N / (Z + e^{lse − ω}) (module docstring): o_swa, N [..., H, D]; lse, Z [..., H];
    ω [H]. A query with nothing to attend (left padding) has an empty denominator: its output is 0, not NaN."""
    offset = lse - omega
    window_share = torch.sigmoid(offset - torch.log(normaliser.clamp(min=NORMALISER_FLOOR)))
    return window_share[..., None] * o_swa.float() + numerator / (normaliser + offset.exp()).clamp(
        min=NORMALISER_FLOOR)[..., None]


def _write_leaving(state, feature_key, key, value, valid, config: LigerConfig):
    """[S | z] ← diag(a) [S | z] + φ(k′)ᵀ [v, 1] for one token per row: a from the raw key k, k′ what φ reads
    (feature_key k′, key, value [B, H_kv, D]; valid [B] bool: a padding token neither decays nor writes), k′ and a
    repeated over each kv head's group of query heads."""
    log_decay = GATES[config.gate].key_log_decay(key, config).clamp(min=MIN_LOG_DECAY)
    feature = FEATURE_MAPS[config.feature_map].apply(feature_key)
    # the gates' own GQA repetition and padding mask, on a one-token time axis
    log_decay, feature, value = (x[:, 0] for x in to_heads(state.shape[1], valid[:, None], log_decay[:, None],
                                                           feature[:, None], with_ones_column(value)[:, None]))
    return torch.addcmul(state * log_decay.exp()[..., None], feature[..., None], value[:, :, None, :])


def _weighted_sum(o_rec, rec_weight: float, o_swa, swa_weight: float) -> torch.Tensor:
    """α · o_rec + β · o_swa in fp32 (a branch that did not run is None), in two fused ops."""
    if o_rec is None:
        return o_swa.float() * swa_weight
    if o_swa is None:
        return o_rec * rec_weight
    return torch.add(o_rec * rec_weight, o_swa.float(), alpha=swa_weight)
