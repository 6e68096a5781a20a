"""Helpers for the blocked O(T·w) window forms of `ops.swa` and `ops.lolcats`: w-token blocks, each next to the
block before it."""

import torch
import torch.nn.functional as F


def pad_time(x: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """Zero/False-pad dim 1 of a [B, S, ...] tensor."""
    return F.pad(x, (0, 0) * (x.dim() - 2) + (left, right))


def pair_blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    """[B, (N + 1)·w, ...] -> [B, N, 2w, ...]: each block next to the one before it."""
    x = x.unflatten(1, (-1, block))
    return torch.cat([x[:, :-1], x[:, 1:]], dim=2)
