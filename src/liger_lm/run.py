"""The main job (`liger run` / `make run`): default model → convert → generate → report.

Later pipeline steps (fine-tuning, task evaluation) plug in here; today the report is training-free.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import DynamicCache

from . import __version__
from .config import LigerConfig
from .convert import convert
from .evaluate import sample_text, text_perplexity
from .generation import generate_text
from .io import atomic_directory, write_json_atomic, write_text_atomic
from .models import DEFAULT_MODEL_NOTE, load_model

DEFAULT_PROMPTS = ["What is the capital of France?", "Write one sentence about the sea."]


@dataclass
class RunOptions:
    model: str = "default"
    out: Path = Path("runs/default")
    liger: LigerConfig = field(default_factory=LigerConfig)
    prompts: list[str] = field(default_factory=lambda: list(DEFAULT_PROMPTS))
    max_new_tokens: int = 32
    save_model: bool = True
    overwrite: bool = False


def main_job(options: RunOptions, log=logging.getLogger(__name__).info) -> dict[str, Any]:
    """Run the pipeline and write `report.md`, `results.json` (and the converted model) into `options.out`."""
    with atomic_directory(options.out, overwrite=options.overwrite) as staging:
        started = time.perf_counter()
        log(f"loading {options.model} …")
        base, tokenizer = load_model(options.model)
        loaded = time.perf_counter()

        log("converting (Liger) …")
        liger = convert(copy.deepcopy(base), options.liger)
        converted = time.perf_counter()

        log("scoring perplexity and generating …")
        results = {
            "liger_lm_version": __version__,
            "model": options.model,
            "model_note": DEFAULT_MODEL_NOTE if options.model == "default" else "",
            "liger": options.liger.to_dict(),
            "parameters": sum(p.numel() for p in liger.parameters()),
            "seconds": {"load": round(loaded - started, 1), "convert": round(converted - loaded, 2)},
            "perplexity_sample_text": _perplexities(base, liger, tokenizer),
            "generations": _generations(base, liger, tokenizer, options),
            "cache_bytes": _cache_bytes(base, liger, tokenizer),
        }
        if options.save_model:
            log("saving the converted model …")
            liger.save_pretrained(staging / "model")
            tokenizer.save_pretrained(staging / "model")
        results["seconds"]["total"] = round(time.perf_counter() - started, 1)
        write_json_atomic(staging / "results.json", results)
        write_text_atomic(staging / "report.md", render_report(results))
    return results


def _perplexities(base, liger, tokenizer) -> dict[str, Any]:
    text = sample_text()
    base_ppl, tokens = text_perplexity(base, tokenizer, text)
    liger_ppl, _ = text_perplexity(liger, tokenizer, text)
    return {"tokens": tokens, "base": round(base_ppl, 2), "liger": round(liger_ppl, 2)}


def _generations(base, liger, tokenizer, options: RunOptions) -> list[dict[str, str]]:
    outputs = {
        name: generate_text(model, tokenizer, options.prompts, max_new_tokens=options.max_new_tokens)
        for name, model in (("base", base), ("liger", liger))
    }
    return [
        {"prompt": p, "base": b, "liger": c} for p, b, c in zip(options.prompts, outputs["base"], outputs["liger"])
    ]


@torch.no_grad()
def _cache_bytes(base, liger, tokenizer, lengths=(128, 1024)) -> dict[str, dict[int, int]]:
    """Decode-cache bytes per sequence after a prefill of each length: the base model's grows, Liger's does not."""
    sizes: dict[str, dict[int, int]] = {"base": {}, "liger": {}}
    for length in lengths:
        ids = torch.randint(3, tokenizer.vocab_size, (1, length))
        for name, model in (("base", base), ("liger", liger)):
            cache = DynamicCache(config=model.config)
            model(ids.to(model.device), past_key_values=cache, use_cache=True)
            sizes[name][length] = sum(_layer_bytes(layer) for layer in cache.layers)
    return sizes


def _layer_bytes(layer) -> int:
    if hasattr(layer, "memory_bytes"):
        return layer.memory_bytes()
    return sum(t.numel() * t.element_size() for t in (layer.keys, layer.values) if t is not None)


def render_report(results: dict[str, Any]) -> str:
    """The Markdown report of a run."""
    ppl, cache, sec = results["perplexity_sample_text"], results["cache_bytes"], results["seconds"]
    liger = results["liger"]
    lines = [
        "# liger-lm run",
        "",
        f"- model: {results['model']}" + (f" ({results['model_note']})" if results["model_note"] else ""),
        f"- conversion: gate={liger['gate']}, window={liger['window']}, α={liger['rec_weight']}, "
        f"β={liger['swa_weight']}, softmax layers={liger['softmax_layers'] or 'none'}; "
        f"{results['parameters']:,} parameters (none added)",
        f"- time: load {sec['load']} s, convert {sec['convert']} s, total {sec['total']} s",
        "",
        "## Training-free perplexity (package sample text, lower is better)",
        "",
        f"| model | perplexity ({ppl['tokens']} tokens) |",
        "|---|---|",
        f"| base | {ppl['base']} |",
        f"| Liger, before fine-tuning | {ppl['liger']} |",
        "",
        "Liger needs its LoRA recovery fine-tune to approach the base model; this is the untrained starting point.",
        "",
        "## Decode cache per sequence",
        "",
        "| context tokens | base KV cache | Liger state + window |",
        "|---|---|---|",
    ]
    for length in cache["base"]:
        lines.append(f"| {length} | {_mb(cache['base'][length])} | {_mb(cache['liger'][length])} |")
    lines += ["", "## Greedy generations", ""]
    for item in results["generations"]:
        lines += [f"**Prompt:** {item['prompt']}", "", f"- base: {item['base']!r}", f"- Liger: {item['liger']!r}", ""]
    return "\n".join(lines)


def _mb(num_bytes: int) -> str:
    return f"{num_bytes / 2**20:.2f} MiB"
