"""Weight layout for batch-1 decoding on CPU.

A decode step is a chain of mat-vecs y = x Wᵀ whose speed is the rate at which W is read, and on a small model also
the number of calls. `decode_layout` changes two things for the duration of a `with` block (same values; results
equal up to fp32 rounding):

  * **fused projections**: the q/k/v projections of every converted attention, and gate/up of every MLP, read as one
    stacked weight [W_q; W_k; W_v] (one mat-vec, then the output split), so a layer makes 4 weight calls instead of 7.
    The separate weights become views of the stacked one, so nothing is stored twice. Fused only where every member
    is a plain `nn.Linear` (or a `QuantizedLinear` of one format) with the same input; a LoRA-wrapped projection is
    left as it is.
  * **column-major wide weights**: MKL reads a wide W [out, in] (out > in: the stacked projections, the LM head)
    faster stored column-major than row-major, while narrow weights read slower (`python scripts/matvec_layout.py`
    measures both, and the fused against the separate calls; numbers in docs/speed-log.md). Not with
    `for_compile=True`: a compiled step reads single-row products as a reduction (`quantize.reduction_linear`),
    which is fastest on row-major weights.

On exit every weight is contiguous and holds its own storage again, because `save_pretrained` and safetensors need
that. For inference only: within the block the stacked weights do not require grad, so no gradient reaches q/k/v or
gate/up.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..quantize import QuantizedLinear, linear_forward


class FusedProjection:
    """n linear layers with one input read as one: x [..., in] → n outputs [..., out_i] (a tuple).

    `linear` is an `nn.Linear` or `QuantizedLinear` whose weight is the members' weights stacked along out
    (biases stacked too, zeros for a member without one); `sizes` are the members' out_features."""

    def __init__(self, members: list[nn.Module]) -> None:
        self.members = tuple(members)
        self.sizes = [m.out_features for m in members]
        self.linear = _stacked(members)
        self.weight_kind = (members[0].weight.dtype, members[0].weight.device)

    def serves(self, *members: nn.Module) -> bool:
        """Whether this still computes exactly `members`: the same modules, their weights of the dtype and device
        they were fused with. A model copied and then quantised, cast or moved inside the block no longer matches,
        and its owner calls the members one by one."""
        return len(members) == len(self.members) and all(a is b for a, b in zip(members, self.members)) \
            and (members[0].weight.dtype, members[0].weight.device) == self.weight_kind

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.linear(x).split(self.sizes, dim=-1)


def _stacked(members: list[nn.Module]) -> nn.Module:
    """One module computing every member's output side by side (quantised members keep their exact values: int8
    scales are per output row, so stacking rows is exact)."""
    first = members[0]
    if isinstance(first, QuantizedLinear):
        stacked = QuantizedLinear.stack(members)
    else:
        stacked = nn.Linear(first.in_features, sum(m.out_features for m in members), bias=False, device="meta")
        stacked.weight = nn.Parameter(torch.cat([m.weight.detach() for m in members]), requires_grad=False)
        stacked.forward = types.MethodType(linear_forward, stacked)  # compiled single-row steps: a reduction
    biases = [m.bias for m in members]
    present = [b for b in biases if b is not None]
    if present:
        like = present[0]
        stacked.bias = nn.Parameter(torch.cat([
            b.detach() if b is not None else like.new_zeros(m.out_features) for m, b in zip(members, biases)
        ]), requires_grad=False)
    return stacked.eval()


def _fusable(members: list[nn.Module]) -> bool:
    """Plain linears (no LoRA wrapper, no subclass but `QuantizedLinear`) of one kind, input and device."""
    first = members[0]
    same = all(type(m) is type(first) and m.in_features == first.in_features and
               m.weight.device == first.weight.device and m.weight.dtype == first.weight.dtype for m in members)
    if type(first) is nn.Linear:
        return same and first.weight.dtype.is_floating_point
    return same and isinstance(first, QuantizedLinear) and len({m.fmt for m in members}) == 1


def _projection_groups(model: nn.Module) -> list[tuple[nn.Module, str, list[nn.Module]]]:
    """(owner, role, members) to fuse: q/k/v of each converted attention ("qkv"), gate/up of each MLP ("gate_up")."""
    from .adapters import gated_mlp_classes
    from .attention import LinearizedAttention

    mlps = gated_mlp_classes()
    groups = []
    for module in model.modules():
        if isinstance(module, LinearizedAttention):
            groups.append((module, "qkv", [module.q_proj, module.k_proj, module.v_proj]))
        elif isinstance(module, mlps):
            groups.append((module, "gate_up", [module.gate_proj, module.up_proj]))
    return [(owner, role, members) for owner, role, members in groups if _fusable(members)]


def _gated_mlp_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """down(act(gate(x)) ⊙ up(x)), the Llama / Mistral / Qwen2 / Qwen3 MLP, with gate and up read as one."""
    if not self.fused_gate_up.serves(self.gate_proj, self.up_proj):
        return type(self).forward(self, x)
    gate, up = self.fused_gate_up(x)
    return self.down_proj(self.act_fn(gate) * up)


def _install(owner: nn.Module, role: str, fused: FusedProjection) -> None:
    if role == "qkv":
        owner.fused_qkv = fused  # read by `LinearizedAttention._project`
    else:
        owner.fused_gate_up = fused
        owner.forward = types.MethodType(_gated_mlp_forward, owner)


def _uninstall(owner: nn.Module, role: str) -> None:
    if role == "qkv":
        del owner.fused_qkv  # the class default (None) again
    else:
        del owner.fused_gate_up, owner.forward


def _column_major(weight: torch.Tensor) -> bool:
    """Whether `weight` [out, in] is read faster column-major: a wide floating-point CPU weight."""
    return weight.dim() == 2 and weight.shape[0] > weight.shape[1] and weight.device.type == "cpu" \
        and weight.dtype.is_floating_point


def _wide_cpu_weights(model: nn.Module, skip: set[int]) -> list[nn.Parameter]:
    """The plain floating-point weights [out, in] with out > in of every CPU nn.Linear, each once (tied weights
    appear once), except those in `skip` (ids); quantized weights (Parameter subclasses, integer dtypes) are left
    alone."""
    weights = {}
    for module in model.modules():
        if isinstance(module, nn.Linear) and type(module.weight) is nn.Parameter and _column_major(module.weight) \
                and id(module.weight) not in skip:
            weights[id(module.weight)] = module.weight
    return list(weights.values())


def _fuse(model: nn.Module, done: list[tuple[nn.Module, str, list[nn.Module]]], column_major: bool) -> None:
    """Install a `FusedProjection` on every fusable group and point the members' weights (and biases) at views of
    it: rows [a, b) of the stacked weight, column-major where that reads faster and `column_major` asks for it.
    Each group is appended to `done` once installed (for `_unfuse`, even when a later one fails)."""
    for owner, role, members in _projection_groups(model):
        fused = FusedProjection(members)
        weight = fused.linear.weight
        if column_major and type(fused.linear) is nn.Linear and _column_major(weight):
            weight.data = weight.data.t().contiguous().t()
        start = 0
        for member in members:
            rows = slice(start, start + member.out_features)
            member.weight.data = weight.data[rows]
            if isinstance(member, QuantizedLinear) and member.fmt == "int8":
                member.weight_scale.data = fused.linear.weight_scale.data[rows]
            if member.bias is not None:
                member.bias.data = fused.linear.bias.data[rows]
            start = rows.stop
        _install(owner, role, fused)
        done.append((owner, role, members))


def _unfuse(groups: list[tuple[nn.Module, str, list[nn.Module]]]) -> None:
    for owner, role, members in groups:
        _uninstall(owner, role)
        for member in members:
            for tensor in (member.weight, member.bias, getattr(member, "weight_scale", None)):
                if tensor is not None:
                    tensor.data = tensor.data.clone(memory_format=torch.contiguous_format)


@contextmanager
def decode_layout(model: nn.Module, fuse: bool = True, for_compile: bool = False) -> Iterator[nn.Module]:
    """Within the block, q/k/v and gate/up read as one stacked weight each (`fuse`) and wide CPU weights are
    column-major, unless the steps run through `compiled_decode` (`for_compile`: every weight stays row-major);
    module docstring. On exit every weight is contiguous and on its own storage again.

    Results are unchanged up to fp32 rounding. Use it around inference:
    `with decode_layout(model): model.generate(...)`.
    """
    groups: list[tuple[nn.Module, str, list[nn.Module]]] = []
    weights: list[nn.Parameter] = []
    try:
        if fuse:
            _fuse(model, groups, column_major=not for_compile)
        fused_ids = {id(member.weight) for _, _, members in groups for member in members}
        weights = [] if for_compile else _wide_cpu_weights(model, skip=fused_ids)
        for weight in weights:
            weight.data = weight.data.t().contiguous().t()
        yield model
    finally:
        _unfuse(groups)
        for weight in weights:
            weight.data = weight.data.contiguous()
