"""Weight layout for batch-1 decoding on CPU.

A decode step is a chain of mat-vecs y = x Wᵀ whose speed is the rate at which W is read. MKL can read a wide
W [out, in] (out > in: the MLP's gate/up projections, the LM head) faster stored column-major than row-major, while
narrow weights read slower (`python scripts/matvec_layout.py` measures it; numbers in the README, Speed and memory). `decode_layout` stores the wide weights column-major (same shape and values, strides swapped)
for the duration of a `with` block.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


def _wide_cpu_weights(model: nn.Module) -> list[nn.Parameter]:
    """The plain floating-point weights [out, in] with out > in of every CPU nn.Linear, each once (tied weights
    appear once); quantized weights (Parameter subclasses, integer dtypes) are left alone."""
    weights = {}
    for module in model.modules():
        if not isinstance(module, nn.Linear) or module.out_features <= module.in_features:
            continue
        weight = module.weight
        if type(weight) is nn.Parameter and weight.device.type == "cpu" and weight.dtype.is_floating_point:
            weights[id(weight)] = weight
    return list(weights.values())


@contextmanager
def decode_layout(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, wide CPU Linear weights are column-major; on exit they are contiguous again.

    Results are unchanged up to fp32 rounding. The layout is undone on exit because `save_pretrained` and
    safetensors need contiguous weights. Use it around inference: `with decode_layout(model): model.generate(...)`.
    """
    weights = _wide_cpu_weights(model)
    for weight in weights:
        weight.data = weight.data.t().contiguous().t()
    try:
        yield model
    finally:
        for weight in weights:
            weight.data = weight.data.contiguous()
