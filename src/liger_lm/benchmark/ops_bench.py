"""Op level: chunked GLA vs its naive per-token loop vs torch SDPA causal attention; blocked vs naive SWA.

Shapes follow the default model's attention: [B, T, H, D] = [1, T, 9, 64], fp32, window 64.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..ops import chunk_gla, naive_recurrent_gla, naive_sliding_window_attention, sliding_window_attention
from .measure import PeakMemory, repeat_median

NAIVE_SWA_MAX_LENGTH = 4096  # the naive reference builds a [H, T, T] score tensor: 9·T²·4 bytes


@dataclass
class OpsBenchSettings:
    lengths: list[int]
    batch: int = 1
    heads: int = 9
    head_dim: int = 64
    window: int = 64
    chunk_size: int = 16
    repeats: int = 5
    max_seconds: float = 10.0


def _inputs(settings: OpsBenchSettings, length: int, device) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(length)
    shape = (settings.batch, length, settings.heads, settings.head_dim)
    q, k, v, gate = (torch.randn(shape, generator=generator) for _ in range(4))
    # Softmax feature maps and a GLA gate as the default model's layers produce them.
    return {"q": q.softmax(-1).to(device), "k": k.softmax(-1).to(device), "v": v.to(device),
            "g": (F.logsigmoid(gate) / 16).to(device), "raw_q": q.to(device), "raw_k": k.to(device)}


def _cases(x: dict, settings: OpsBenchSettings, length: int) -> dict[str, Callable[[], object] | None]:
    scale = settings.head_dim**-0.5
    sdpa_q, sdpa_k, sdpa_v = (t.transpose(1, 2).contiguous() for t in (x["raw_q"], x["raw_k"], x["v"]))
    naive_swa_ok = length <= NAIVE_SWA_MAX_LENGTH
    return {
        "gla_chunked": lambda: chunk_gla(x["q"], x["k"], x["v"], x["g"], chunk_size=settings.chunk_size),
        "gla_naive_loop": lambda: naive_recurrent_gla(x["q"], x["k"], x["v"], x["g"]),
        "sdpa_causal": lambda: F.scaled_dot_product_attention(sdpa_q, sdpa_k, sdpa_v, is_causal=True),
        "swa_blocked": lambda: sliding_window_attention(x["raw_q"], x["raw_k"], x["v"], settings.window, scale),
        "swa_naive": (lambda: naive_sliding_window_attention(x["raw_q"], x["raw_k"], x["v"], settings.window, scale))
        if naive_swa_ok else None,
    }


def run_ops_benchmark(settings: OpsBenchSettings, device, log: Callable) -> dict:
    """Median seconds, tok/s and peak memory of each op at each length, plus the speed ratios."""
    rows = []
    with torch.no_grad():
        for length in settings.lengths:
            x = _inputs(settings, length, device)
            row: dict = {"length": length}
            for name, fn in _cases(x, settings, length).items():
                if fn is None:
                    row[name] = {"skipped": f"naive SWA materialises [H, T, T] scores; run only for T <= {NAIVE_SWA_MAX_LENGTH}"}
                    continue
                with PeakMemory(device) as memory:
                    timing = repeat_median(fn, device, settings.repeats, settings.max_seconds)
                row[name] = {"seconds": round(timing["median_s"], 9), "runs": timing["runs"],
                             "tokens_per_s": round(settings.batch * length / timing["median_s"], 1),
                             "memory": memory.as_dict()}
            row["ratios"] = _ratios(row)
            log(f"ops T={length}: " + ", ".join(f"{k} {v['seconds'] * 1e3:.2f} ms" for k, v in row.items()
                                                if isinstance(v, dict) and "seconds" in v))
            rows.append(row)
    return {"shape": {"batch": settings.batch, "heads": settings.heads, "head_dim": settings.head_dim,
                      "window": settings.window, "chunk_size": settings.chunk_size, "dtype": "fp32"},
            "rows": rows}


def _ratios(row: dict) -> dict:
    """Speed-ups of the chunked / blocked forms (time of the other op divided by theirs)."""
    def ratio(slow: str, fast: str):
        if "seconds" not in row.get(slow, {}) or "seconds" not in row.get(fast, {}):
            return None
        return round(row[slow]["seconds"] / row[fast]["seconds"], 3)

    return {"gla_chunked_vs_naive_loop": ratio("gla_naive_loop", "gla_chunked"),
            "gla_chunked_vs_sdpa_causal": ratio("sdpa_causal", "gla_chunked"),
            "swa_blocked_vs_naive": ratio("swa_naive", "swa_blocked")}
