"""Differences between the transformers releases we support (5.23 to 5.25), in one place: the cache argument's
name, the name of the activation (gradient) checkpointing switch (peft still reads the old one), and Hub kernels
at load time (`LOAD_OPTIONS`).

transformers 5.24 renamed the cache argument of the decoder layers, their attention modules and the models' forward
from `past_key_values` to `cache` (the old name is deprecated, to be removed in 5.40), and the model outputs' field
with it. A mixer that read only `past_key_values` silently decoded without its state, so every read and write of that
argument goes through here.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from transformers.cache_utils import Cache
from transformers.models.llama.modeling_llama import LlamaAttention

# `deprecate_kwarg` wraps forward with functools.wraps, so the signature is the new one where the rename happened.
CACHE_ARGUMENT = "cache" if "cache" in inspect.signature(LlamaAttention.forward).parameters else "past_key_values"
_CACHE_NAMES = ("cache", "past_key_values")

# transformers 5.25 turned `from_pretrained(use_kernels=...)` on by default: it then needs the `kernels` package
# (raising without it) and swaps layers for kernels fetched from the Hub. Our loads run offline and convert the stock
# modules, so they keep 5.23/5.24's default (off); both releases accept the keyword.
LOAD_OPTIONS = {"use_kernels": False}


def pop_cache(kwargs: dict[str, Any]) -> Cache | None:
    """Remove and return the cache a decoder layer handed to its attention, under either name (None: no cache)."""
    found = [kwargs.pop(name) for name in _CACHE_NAMES if name in kwargs]
    return next((cache for cache in found if cache is not None), None)


def without_cache(kwargs: dict[str, Any]) -> dict[str, Any]:
    """`kwargs` for a stock attention module or model, with "no cache" under the name this transformers reads."""
    rest = {key: value for key, value in kwargs.items() if key not in _CACHE_NAMES}
    return {**rest, CACHE_ARGUMENT: None}


def with_cache(cache: Cache | None) -> dict[str, Any]:
    """The keyword a model's forward takes its cache by, e.g. `model(ids, **with_cache(cache), use_cache=True)`."""
    return {CACHE_ARGUMENT: cache}


def output_cache(outputs: Any) -> Cache | None:
    """The cache returned in a model output (`cache` from 5.24, `past_key_values` before)."""
    for name in _CACHE_NAMES:
        value = getattr(outputs, name, None)
        if value is not None:
            return value
    return None


def enable_activation_checkpointing(model: Any) -> None:
    """Recompute each decoder layer in the backward pass (non-reentrant). transformers 5.24 renamed
    `gradient_checkpointing_enable` to `activation_checkpointing_enable` (the old name warns); 5.23 has only the old."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


@contextmanager
def peft_quietly() -> Iterator[None]:
    """Around peft's wrapping (`get_peft_model`, `PeftModel.from_pretrained`). peft reads
    `model.is_gradient_checkpointing`, which transformers 5.24 deprecated for `is_activation_checkpointing`: that
    FutureWarning is peft's to fix and tells our users nothing, so it is silenced here and only here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield
