"""Benchmark outputs: headline ratios (`summary`), the Fig. 4-style plots, atomic JSON + PNG files."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

from ..io import write_json_atomic


def _rows(results: dict, **match) -> list[dict]:
    return [r for r in results["rows"] if all(r.get(k) == v for k, v in match.items())]


def _decode(results: dict, model: str, dtype: str, batch: int, length: int) -> float | None:
    rows = _rows(results, model=model, dtype=dtype, batch=batch, length=length)
    return rows[0]["decode"]["tokens_per_s"] if rows else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def model_summary(results: dict) -> dict:
    """Headline numbers: Liger decode flatness and bandwidth use, Liger/base speed-ups, prefill scaling, forward."""
    lengths = sorted({r["length"] for r in results["rows"]})
    batches = sorted({r["batch"] for r in results["rows"]})
    short, long = lengths[0], lengths[-1]
    summary: dict = {"lengths": [short, long]}
    for dtype, weights_mb in results["weights_mb"].items():
        liger_short = _decode(results, "liger", dtype, 1, short)
        per_dtype = {
            "liger_decode_b1_tok_s": {str(n): _decode(results, "liger", dtype, 1, n) for n in lengths},
            f"liger_decode_b1_speed_{long}_over_{short}": _ratio(_decode(results, "liger", dtype, 1, long), liger_short),
            # the same ratio with the lengths' steps interleaved (robust to a machine's drift between rows)
            "liger_decode_b1_interleaved": results.get("liger_b1_decode_interleaved", {}).get(dtype),
            # Each batch-1 step reads every weight once: tok/s × weight bytes is the bandwidth the decode achieves.
            "liger_decode_b1_weight_read_gb_s": round(liger_short * weights_mb * 2**20 / 1e9, 2) if liger_short else None,
            "weights_mb": weights_mb,
            "liger_over_base_decode": {f"batch{b}_len{n}": _ratio(_decode(results, "liger", dtype, b, n),
                                                                  _decode(results, "base", dtype, b, n))
                                       for b in batches for n in lengths},
            "liger_prefill_per_token_time_ratio": _prefill_scaling(results, dtype, short, long),
            "cache_mb_b1": {model: {str(n): _cache_mb(results, model, dtype, n) for n in lengths}
                            for model in ("base", "liger")},
        }
        summary[dtype] = per_dtype
    forward = results.get("throughput", {})
    if forward:
        summary["forward"] = {
            "liger_fp32_over_base_fp32": _ratio(forward["liger_fp32"]["tokens_per_s"], forward["base_fp32"]["tokens_per_s"]),
            "liger_bf16_autocast_over_liger_fp32": _ratio(forward["liger_bf16_autocast"]["tokens_per_s"],
                                                          forward["liger_fp32"]["tokens_per_s"])
            if "liger_bf16_autocast" in forward else None,  # bf16 not measured (no native bf16 here)
            "length": forward["length"],
        }
    return summary


def _cache_mb(results: dict, model: str, dtype: str, length: int) -> float | None:
    rows = _rows(results, model=model, dtype=dtype, batch=1, length=length)
    return rows[0]["decode"]["cache_mb"] if rows else None


def _prefill_scaling(results: dict, dtype: str, short: int, long: int) -> dict | None:
    """Per-token prefill time at the longest length over the shortest (1.0 = exactly linear in T)."""
    rows = {r["length"]: r["prefill"] for r in _rows(results, model="liger", dtype=dtype, batch=1) if r["prefill"]}
    if short not in rows or long not in rows:
        return None
    return {f"{long}_over_{short}": round(rows[short]["tokens_per_s"] / rows[long]["tokens_per_s"], 3)}


def ops_summary(results: dict) -> dict:
    return {str(row["length"]): row["ratios"] for row in results["rows"]}


def plot_model(results: dict, path: Path) -> None:
    """Decode tok/s, decode memory (weights + cache) and batch-1 prefill tok/s against context length."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    series = sorted({(r["model"], r["dtype"], r["batch"]) for r in results["rows"]})
    for model, dtype, batch in series:
        rows = sorted(_rows(results, model=model, dtype=dtype, batch=batch), key=lambda r: r["length"])
        style = dict(marker="o", linestyle="-" if dtype == "fp32" else "--", color="C0" if model == "base" else "C1",
                     alpha=1.0 if batch == min(r["batch"] for r in results["rows"]) else 0.55,
                     label=f"{model} {dtype} B={batch}")
        lengths = [r["length"] for r in rows]
        axes[0].plot(lengths, [r["decode"]["tokens_per_s"] for r in rows], **style)
        weights = results["weights_mb"][dtype]
        axes[1].plot(lengths, [weights + r["decode"]["cache_mb"] for r in rows], **style)
        prefill = [(r["length"], r["prefill"]["tokens_per_s"]) for r in rows if r["prefill"] and batch == 1]
        if prefill:
            axes[2].plot(*zip(*prefill), **style)
    titles = ("decode tokens/s (all sequences)", "decode memory MB (weights + cache/state)", "prefill tokens/s, batch 1")
    for axis, title in zip(axes, titles):
        axis.set(xscale="log", yscale="log", xlabel="context length (tokens)", title=title)
        axis.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{results.get('model', '')}: base vs Liger — {results['environment']['processor']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_ops(results: dict, path: Path) -> None:
    """Median time of each op against sequence length (log-log)."""
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(7, 4.8))
    names = [k for k in results["rows"][0] if k not in ("length", "ratios")]
    for name in names:
        points = [(r["length"], r[name]["seconds"]) for r in results["rows"] if "seconds" in r[name]]
        if points:
            axis.plot(*zip(*points), marker="o", label=name)
    shape = results["shape"]
    axis.set(xscale="log", yscale="log", xlabel="sequence length T", ylabel="seconds (median)",
             title=f"ops, [B, T, H, D] = [{shape['batch']}, T, {shape['heads']}, {shape['head_dim']}] fp32")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(out: Path, name: str, results: dict, plot: Callable[[dict, Path], None]) -> None:
    """`out/<name>.json` and `out/<name>.png`, each written under a temporary name and renamed into place."""
    import matplotlib

    matplotlib.use("Agg")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.png.tmp-", suffix=".png", dir=out)
    os.close(fd)
    try:
        plot(results, Path(tmp))
        os.replace(tmp, out / f"{name}.png")
    finally:
        Path(tmp).unlink(missing_ok=True)
    write_json_atomic(out / f"{name}.json", results)
