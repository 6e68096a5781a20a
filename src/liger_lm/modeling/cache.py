"""Per-layer decode cache of a Liger layer: constant size in context length.

A Liger layer keeps, per sequence:
  * the fp32 recurrent state(s), e.g. S [B, H, K, V] (GSA keeps two);
  * a rolling buffer of the last `window − 1` RoPE'd keys and values  [B, L, H_kv, D]  (L ≤ window − 1),
    with a validity flag per buffered token  [B, L]  so that left padding never becomes attendable. Kept in time
    order, or, for a layer whose steady decode steps overwrite its oldest token in place (`ring=True` in
    `advance`, then `push`), as a ring: its oldest token sits at slot `ring_start`;
  * with `combine="shared"`: the same buffer's keys before RoPE (the recurrence reads them when they leave it);
  * with `sinks` = n: the RoPE'd keys and values of the first n real tokens once they have left that buffer
    [B, n, H_kv, D] (+ validity [B, n]), and how many real tokens have left it per row [B];
  * the number of tokens seen (positions for generate(), counted in tokens, not heads).

The layer plugs into any transformers `Cache` (DynamicCache, the one `generate()` builds): `liger_cache_layer`
swaps it in at the mixer's index on first use, so stock `generate()` needs no special arguments.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicLayer

from ..ops.swa import Sinks, gather_sinks, keep_sinks


class NewToken(NamedTuple):
    """One token per row of a window buffer (`LigerCacheLayer.push`): keys (RoPE'd), values [B, 1, H_kv, D],
    validity [B, 1] and raw keys [B, 1, H_kv, D]."""

    keys: torch.Tensor
    values: torch.Tensor
    key_valid: torch.Tensor
    raw_keys: torch.Tensor


class LigerCacheLayer(CacheLayerMixin):
    """Recurrent state + sliding-window buffer for one Liger layer (see module docstring)."""

    is_sliding = False
    is_compileable = False
    is_croppable = False
    supports_early_init = False

    def __init__(self, **kwargs) -> None:
        super().__init__()
        self.state: tuple[torch.Tensor, ...] | None = None  # one or more fp32 recurrent states
        self.key_valid: torch.Tensor | None = None
        self.raw_keys: torch.Tensor | None = None  # the buffer's keys before RoPE (`combine="shared"` only)
        self.sinks: Sinks | None = None  # sink keys that left the window buffer (positions BEFORE_STREAM)
        self.real_dropped: torch.Tensor | None = None  # [B] real tokens that left the window buffer
        # Every row's sinks are stored: no later token can be one, so the sink search stops (and `real_dropped`
        # stops counting, since only that search reads it).
        self.sinks_complete = False
        # [1] long: the buffer slot of its oldest token while the buffer is a ring (None: in time order). A tensor,
        # not an int, so that a compiled step neither specialises on it nor recompiles as it moves.
        self.ring_start: torch.Tensor | None = None
        self.seen_tokens = 0
        self.window, self.sink_count = 0, 0  # the layer's settings, recorded by `advance`

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        raise NotImplementedError("a Liger layer updates its cache with `advance`, not the KV-cache `update`")

    def window_keys(self) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """The buffered past keys, values [B, L, H_kv, D] and their validity [B, L] in time order (None before the
        first call); a ring buffer is put back in time order first."""
        if self.ring_start is not None:
            # a gather rather than a roll by int(ring_start): no host read, so a compiled step runs it in its graph
            length = self.keys.shape[1]
            order = (torch.arange(length, device=self.keys.device) + self.ring_start) % length
            self.keys, self.values, self.key_valid, self.raw_keys = (
                t.index_select(1, order) for t in (self.keys, self.values, self.key_valid, self.raw_keys))
            self.ring_start = None
        return self.keys, self.values, self.key_valid

    def push(self, token: NewToken) -> NewToken:
        """Overwrite the ring buffer's oldest token with `token` (keys, values [B, 1, H_kv, D], ...) in place and
        return the one it replaced, the token leaving the window (a copy, same shapes). The buffer must be a full
        ring (`ring_start` set): the next slot then holds the oldest token. One token a step is written instead of
        a shifted copy of the whole buffer."""
        buffers = (self.keys, self.values, self.key_valid, self.raw_keys)
        oldest = NewToken(*(t.index_select(1, self.ring_start) for t in buffers))
        for buffer, new in zip(buffers, token):
            # index_put_: inductor writes it in place if no read of the old buffer follows it (`STEP_OPTIONS`)
            buffer[:, self.ring_start] = new
        self.ring_start = (self.ring_start + 1) % self.keys.shape[1]
        return oldest

    def real_before_buffer(self, batch: int, device: torch.device) -> torch.Tensor:
        """[B] long: real tokens of each sequence before the window buffer (they left it)."""
        if self.real_dropped is None:
            return torch.zeros(batch, dtype=torch.long, device=device)
        return self.real_dropped

    def advance(
        self,
        state: tuple[torch.Tensor, ...] | None,
        stream: tuple[torch.Tensor, ...] | None,
        new_tokens: int,
        window: int,
        sinks: int = 0,
        ring: bool = False,
    ) -> None:
        """Store the new state and keep only the last `window − 1` tokens of the window stream (buffer + new):
        keys, values [B, S, H_kv, D], validity [B, S] and, when given, raw keys [B, S, H_kv, D]; with `sinks`, the
        sink tokens among those that leave the buffer move to the sink store. With `ring`, the kept buffer becomes a
        ring (its own storage, oldest token at slot 0) that steady decode steps update in place (`push`; their
        stream is None)."""
        self.state, self.window, self.sink_count = state, window, sinks
        if stream is not None:
            keys, values, key_valid = stream[:3]
            start = max(keys.shape[1] - (window - 1), 0)
            if sinks and start and not self.sinks_complete:
                self._store_sinks(keys[:, :start], values[:, :start], key_valid[:, :start], sinks)
            kept = [t[:, start:] for t in stream]
            if ring or torch.compiler.is_compiling():
                # A ring is written in place: it must share no storage (the validity can be a view of the mask
                # the layer was handed). Compiled, one layout for every step (`modeling.compiled`), which inductor
                # writes in the stream's kernel. Not `.contiguous()`: at batch 1 a slice already counts as
                # contiguous, yet its batch stride is the unsliced one, and dynamo guards on it.
                kept = [t.clone(memory_format=torch.contiguous_format) for t in kept]
            elif start > window:
                # clone after a prefill: the slice would keep all its keys alive through the storage (a decode
                # step's slice drops a single token, not worth three copies per layer and token)
                kept = [t.clone() for t in kept]
            self.keys, self.values, self.key_valid = kept[:3]
            self.raw_keys = kept[3] if len(kept) > 3 else None
            self.ring_start = torch.zeros(1, dtype=torch.long, device=keys.device) if ring else None
        self.seen_tokens += new_tokens
        self.is_initialized = True

    def _store_sinks(self, keys, values, key_valid, sinks: int) -> None:
        """Move the sinks among the tokens leaving the buffer into the store, kept at `sinks` slots per row."""
        real_before = self.real_before_buffer(keys.shape[0], keys.device)
        self.sinks = keep_sinks(gather_sinks(keys, values, key_valid, sinks, real_before, self.sinks), sinks)
        self.real_dropped = real_before + key_valid.sum(1)
        self.sinks_complete = bool((self.real_dropped >= sinks).all())

    @property
    def steady(self) -> bool:
        """Whether a one-token step keeps every tensor's shape: the window buffer is full (or the layer has none)
        and every row's sinks are stored (`modeling.compiled` compiles only such steps)."""
        buffer_full = self.keys is None or self.keys.shape[1] == self.window - 1
        return self.is_initialized and buffer_full and (self.sinks_complete or not self.sink_count)

    def get_seq_length(self) -> int:
        return self.seen_tokens

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        # Report full-attention sizes so the model's mask always covers the current tokens.
        return self.seen_tokens + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def _tensors(self) -> list[torch.Tensor]:
        held = (*(self.state or ()), self.keys, self.values, self.key_valid, self.raw_keys, *(self.sinks or ()),
                self.real_dropped, self.ring_start)
        return [t for t in held if t is not None]

    def map_tensors(self, fn) -> None:
        """Apply `fn` to every per-sequence tensor (dim 0 is the batch; not `ring_start`, which all rows share)."""
        if self.state is not None:
            self.state = tuple(fn(t) for t in self.state)
        if self.sinks is not None:
            self.sinks = Sinks(*(fn(t) for t in self.sinks))
        for name in ("keys", "values", "key_valid", "raw_keys", "real_dropped"):
            if getattr(self, name) is not None:
                setattr(self, name, fn(getattr(self, name)))

    def reset(self) -> None:
        self.state = self.keys = self.values = self.key_valid = self.raw_keys = self.sinks = self.real_dropped = None
        self.ring_start = None
        self.seen_tokens = 0
        self.sinks_complete = self.is_initialized = False

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.map_tensors(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self.map_tensors(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.map_tensors(lambda t: t[indices])

    def offload(self) -> None:
        self._move(lambda t: t.to("cpu", non_blocking=True))

    def prefetch(self) -> None:
        device = getattr(self, "device", None)
        if device is not None:
            self._move(lambda t: t.to(device, non_blocking=True))

    def _move(self, fn) -> None:
        self.map_tensors(fn)
        if self.ring_start is not None:
            self.ring_start = fn(self.ring_start)

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError(
            "a Liger cache cannot be cropped (the recurrent state cannot forget tokens); "
            "assisted/speculative decoding is not supported"
        )

    def memory_bytes(self) -> int:
        """Bytes held by this layer's cache (constant in context length)."""
        return sum(t.numel() * t.element_size() for t in self._tensors())


def liger_cache_layer(cache: Cache, layer_idx: int) -> LigerCacheLayer:
    """Return the `LigerCacheLayer` at `layer_idx` of `cache`, installing one in place of an unused KV layer."""
    while len(cache.layers) <= layer_idx:
        cache.layers.append(DynamicLayer())
    layer = cache.layers[layer_idx]
    if isinstance(layer, LigerCacheLayer):
        return layer
    if getattr(layer, "is_initialized", False) and layer.get_seq_length() > 0:
        raise ValueError(
            f"cache layer {layer_idx} already holds softmax keys/values; a cache filled by the unconverted "
            "model cannot be reused after conversion — start generation with a fresh cache"
        )
    cache.layers[layer_idx] = LigerCacheLayer()
    return cache.layers[layer_idx]


def cache_bytes(cache) -> int:
    """Exact bytes held by a transformers Cache (KV layers or Liger layers)."""
    total = 0
    for layer in cache.layers:
        if hasattr(layer, "memory_bytes"):
            total += layer.memory_bytes()
        else:
            total += sum(t.numel() * t.element_size() for t in (layer.keys, layer.values) if isinstance(t, torch.Tensor))
    return total
