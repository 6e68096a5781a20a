"""Gates of the recurrent branch: from the raw key of a head to the log-decay and write key (DESIGN.md §1.1).

Each gate returns `(write_key, log_decay)`, both [B, T, H_kv, K], for the recurrence
`S_t = diag(exp(log_decay_t)) · S_{t-1} + write_key_tᵀ v_t` run by `liger_lm.ops.gla`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import LigerConfig


def gla_gate(key: torch.Tensor, key_features: torch.Tensor, config: LigerConfig):
    """GLA: g_t = Pool_{d→d}(k_t) = k_t;  a_t = exp(logsigmoid(g_t) / τ);  write k'_tᵀ v_t.  Shapes [B, T, H_kv, K]."""
    return key_features, F.logsigmoid(key) / config.gate_normalizer


GATE_FUNCTIONS = {"gla": gla_gate}
