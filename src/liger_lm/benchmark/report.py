"""Benchmark outputs: headline ratios (`summary`), the Fig. 4-style plots, atomic JSON + PNG files."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..io import atomic_file, write_json_atomic


COMPILED = ", compiled"  # the suffix of a variant decoded through `compiled_decode` (`model_bench.variant_name`)


def _variant(row: dict) -> str:
    return row.get("variant", row["dtype"])  # rows written before weight formats existed name only a dtype


def _rows(results: dict, variant: str | None = None, **match) -> list[dict]:
    return [r for r in results["rows"] if all(r.get(k) == v for k, v in match.items())
            and (variant is None or _variant(r) == variant)]


def _decode(results: dict, model: str, variant: str, batch: int, length: int, key: str = "tokens_per_s"):
    """One value of a row's decode measurement (tok/s unless `key`), None where the row was not measured."""
    rows = _rows(results, model=model, variant=variant, batch=batch, length=length)
    return rows[0]["decode"].get(key) if rows else None


def _llama_cpp_decode(results: dict, length: int) -> float | None:
    section = results.get("llama_cpp") or {}
    rows = [r for r in section.get("rows", []) if r["length"] == length]
    return rows[0]["decode"]["tokens_per_s"] if rows else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def model_summary(results: dict) -> dict:
    """Headline numbers per variant (dtype or weight format): Liger decode flatness and bandwidth use, Liger/base
    speed-ups (and over the fp32 base model and llama.cpp), prefill scaling, forward throughput."""
    lengths = sorted({r["length"] for r in results["rows"]})
    batches = sorted({r["batch"] for r in results["rows"]})
    short, long = lengths[0], lengths[-1]
    summary: dict = {"lengths": [short, long]}
    read_mb = results.get("decode_read_mb", {})
    memory_read_gb_s = (results.get("memory_read") or {}).get("gb_s")
    for variant, weights_mb in results["weights_mb"].items():
        liger_short = _decode(results, "liger", variant, 1, short)
        # Each batch-1 step reads every linear layer's weights once: tok/s × those bytes is the bandwidth reached.
        step_mb = read_mb.get(variant, weights_mb)
        weight_read_gb_s = liger_short * step_mb * 2**20 / 1e9 if liger_short else None
        per_variant = {
            "liger_decode_b1_tok_s": {str(n): _decode(results, "liger", variant, 1, n) for n in lengths},
            f"liger_decode_b1_speed_{long}_over_{short}": _ratio(_decode(results, "liger", variant, 1, long),
                                                                 liger_short),
            # the same ratio with the lengths' steps interleaved (robust to a machine's drift between rows)
            "liger_decode_b1_interleaved": results.get("liger_b1_decode_interleaved", {}).get(variant),
            "liger_decode_b1_weight_read_gb_s": round(weight_read_gb_s, 2) if weight_read_gb_s else None,
            # ... and its share of what the memory reads per second (1.0 = the step only waits for its weights)
            "liger_decode_b1_bandwidth_fraction": _ratio(weight_read_gb_s, memory_read_gb_s),
            # the same share with the read rate measured in turns with the steps (`model_bench.bandwidth_in_turns`)
            "liger_decode_b1_bandwidth_in_turns": _decode(results, "liger", variant, 1, short, "bandwidth_in_turns"),
            "weights_mb": weights_mb,
            "decode_read_mb": step_mb,
            "liger_over_base_decode": {f"batch{b}_len{n}": _ratio(_decode(results, "liger", variant, b, n),
                                                                  _decode(results, "base", variant, b, n))
                                       for b in batches for n in lengths},
            "liger_prefill_per_token_time_ratio": _prefill_scaling(results, variant, short, long),
            "cache_mb_b1": {model: {str(n): _decode(results, model, variant, 1, n, "cache_mb") for n in lengths}
                            for model in ("base", "liger")},
        }
        if variant != "fp32":
            per_variant["liger_over_base_fp32_decode"] = {
                f"batch{b}_len{n}": _ratio(_decode(results, "liger", variant, b, n),
                                           _decode(results, "base", "fp32", b, n)) for b in batches for n in lengths}
        if (results.get("llama_cpp") or {}).get("available"):
            per_variant["liger_over_llama_cpp_decode_b1"] = {
                str(n): _ratio(_decode(results, "liger", variant, 1, n), _llama_cpp_decode(results, n))
                for n in lengths}
        if variant.endswith(COMPILED):  # the first length's first step includes the compile
            per_variant["first_step_s"] = {model: _decode(results, model, variant, 1, short, "first_step_s")
                                           for model in ("base", "liger")}
        summary[variant] = per_variant
    summary["memory_read_gb_s"] = memory_read_gb_s
    summary["llama_cpp"] = _llama_cpp_summary(results.get("llama_cpp"))
    forward = results.get("throughput", {})
    if forward:
        summary["forward"] = {
            "liger_fp32_over_base_fp32": _ratio(forward["liger_fp32"]["tokens_per_s"], forward["base_fp32"]["tokens_per_s"]),
            "liger_bf16_autocast_over_liger_fp32": _ratio(forward["liger_bf16_autocast"]["tokens_per_s"],
                                                          forward["liger_fp32"]["tokens_per_s"])
            if "liger_bf16_autocast" in forward else None,  # bf16 not measured (no native bf16 here)
            "length": forward["length"],
        }
    training = results.get("training")
    if training:
        summary["training"] = {"precision": training["precision"], "seq_len": training["seq_len"],
                               "tokens_per_s": {objective: round(stage["tokens_per_s"], 1)
                                                for objective, stage in training["stages"].items()}}
    return summary


def _llama_cpp_summary(section: dict | None) -> dict:
    if not section:
        return {"available": False, "reason": "not measured"}
    if not section.get("available"):
        return {"available": False, "reason": section.get("reason")}
    return {"available": True, "weights": section.get("weights"), "threads": section.get("threads"),
            "decode_b1_tok_s": {str(r["length"]): r["decode"]["tokens_per_s"] for r in section["rows"]},
            "prefill_b1_tok_s": {str(r["length"]): r["prefill"]["tokens_per_s"] for r in section["rows"]}}


def _prefill_scaling(results: dict, variant: str, short: int, long: int) -> dict | None:
    """Per-token prefill time at the longest length over the shortest (1.0 = exactly linear in T)."""
    rows = {r["length"]: r["prefill"] for r in _rows(results, model="liger", variant=variant, batch=1) if r["prefill"]}
    if short not in rows or long not in rows:
        return None
    return {f"{long}_over_{short}": round(rows[short]["tokens_per_s"] / rows[long]["tokens_per_s"], 3)}


def decode_table(results: dict) -> str:
    """Markdown: prefill and decode tok/s of every row (variant, model, batch, length), llama.cpp's rows last."""
    lines = [f"Model {results.get('model', '?')} ({_weights_note(results)}), base attention "
             f"{results.get('base_attention', 'as loaded')}, GLA backend "
             f"{results['environment'].get('gla_backend', '?')}.", "",
             "| variant | model | batch | context | prefill tok/s | decode tok/s | cache/state MB |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in sorted(results["rows"], key=lambda r: (r["batch"], r["length"], _variant(r), r["model"])):
        prefill = f"{r['prefill']['tokens_per_s']:,.1f}" if r["prefill"] else "–"
        lines.append(f"| {_variant(r)} | {r['model']} | {r['batch']} | {r['length']:,} | {prefill} | "
                     f"{r['decode']['tokens_per_s']:,.2f} | {r['decode']['cache_mb']:,.2f} |")
    llama = results.get("llama_cpp") or {}
    for r in llama.get("rows", []) if llama.get("available") else []:
        lines.append(f"| {llama.get('weights', 'gguf')} (GGUF) | llama.cpp | 1 | {r['length']:,} | "
                     f"{r['prefill']['tokens_per_s']:,.1f} | {r['decode']['tokens_per_s']:,.2f} | – |")
    if not llama.get("available"):
        lines.append(f"\nllama.cpp: {llama.get('reason', 'not measured')}")
    training = results.get("training")
    if training:
        lines += ["", f"Recovery fine-tune, one optimizer step on a row of {training['seq_len']:,} tokens "
                      f"({training['precision']}, LoRA r {training['lora']['r']}):", "",
                  "| stage objective | s per step | tokens/s |", "|---|---:|---:|"]
        lines += [f"| {objective} | {stage['s_per_step']:.2f} | {stage['tokens_per_s']:,.1f} |"
                  for objective, stage in training["stages"].items()]
    return "\n".join(lines)


def _weights_note(results: dict) -> str:
    return "random weights from its config" if results.get("random_weights") else "its own weights"


def ops_summary(results: dict) -> dict:
    return {str(row["length"]): row["ratios"] for row in results["rows"]}


LINESTYLES = {"fp32": "-", "bf16": "--", "int8-weights": ":", "bf16-weights": "-."}


def plot_model(results: dict, path: Path) -> None:
    """Decode tok/s, decode memory (weights + cache) and batch-1 prefill tok/s against context length; llama.cpp's
    decode and prefill (batch 1) beside them when it was measured."""
    from matplotlib.figure import Figure  # the object API draws without pyplot's global backend and figure list

    fig = Figure(figsize=(16, 4.8))
    axes = fig.subplots(1, 3)
    series = sorted({(r["model"], _variant(r), r["batch"]) for r in results["rows"]})
    for model, variant, batch in series:
        rows = sorted(_rows(results, model=model, variant=variant, batch=batch), key=lambda r: r["length"])
        style = dict(marker="^" if variant.endswith(COMPILED) else "o",
                     linestyle=LINESTYLES.get(variant.removesuffix(COMPILED), "-"),
                     color="C0" if model == "base" else "C1",
                     alpha=1.0 if batch == min(r["batch"] for r in results["rows"]) else 0.55,
                     label=f"{model} {variant} B={batch}")
        lengths = [r["length"] for r in rows]
        axes[0].plot(lengths, [r["decode"]["tokens_per_s"] for r in rows], **style)
        weights = results["weights_mb"][variant]
        axes[1].plot(lengths, [weights + r["decode"]["cache_mb"] for r in rows], **style)
        prefill = [(r["length"], r["prefill"]["tokens_per_s"]) for r in rows if r["prefill"] and batch == 1]
        if prefill:
            axes[2].plot(*zip(*prefill), **style)
    llama = results.get("llama_cpp") or {}
    if llama.get("available") and llama.get("rows"):
        style = dict(marker="s", color="C2", label=f"llama.cpp {llama.get('weights', '')} B=1")
        lengths = [r["length"] for r in llama["rows"]]
        axes[0].plot(lengths, [r["decode"]["tokens_per_s"] for r in llama["rows"]], **style)
        axes[2].plot(lengths, [r["prefill"]["tokens_per_s"] for r in llama["rows"]], **style)
    titles = ("decode tokens/s (all sequences)", "decode memory MB (weights + cache/state)", "prefill tokens/s, batch 1")
    for axis, title in zip(axes, titles):
        axis.set(xscale="log", yscale="log", xlabel="context length (tokens)", title=title)
        axis.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{results.get('model', '')}: base vs Liger — {results['environment']['processor']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_ops(results: dict, path: Path) -> None:
    """Median time of each op against sequence length (log-log)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.8))
    axis = fig.subplots()
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


def write_outputs(out: Path, name: str, results: dict, plot: Callable[[dict, Path], None]) -> None:
    """`out/<name>.json` and `out/<name>.png`, each written under a temporary name and renamed into place."""
    with atomic_file(Path(out) / f"{name}.png") as staging:
        plot(results, staging)
    write_json_atomic(Path(out) / f"{name}.json", results)
