"""`liger bench`: speed and memory of a model vs its Liger conversion (paper Fig. 4), and of the ops.

    run_benchmark(BenchOptions(model="default", lengths=[1024, 4096, 16384], batches=[1, 16], out="bench"))
    run_benchmark(BenchOptions(ops=True, lengths=[1024, 4096, 16384], out="bench"))
    run_benchmark(BenchOptions(model="default", lengths=[1024, 16384], batches=[1], weights=["fp32", "bf16", "int8"]))

Writes `model.json` + `model.png` + `model.md` (or `ops.json` + `ops.png`) into `out`; the JSON holds the machine,
versions, protocol and a `summary` of the headline ratios; `model.md` is the decode/prefill table. The model
benchmark also runs the base model's GGUF through llama.cpp (`llama_cpp.py`) when `llama-cpp-python` is installed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..config import LigerConfig
from ..errors import BenchmarkError  # noqa: F401 (re-exported)
from ..hardware import environment
from ..io import write_text_atomic
from ..presets import DEFAULT_PRESET, PRESETS
from ..quantize import FORMATS
from .llama_cpp import run_llama_cpp
from .measure import memory_note
from .model_bench import DTYPES, ModelBenchSettings, run_model_benchmark
from .model_bench import __doc__ as MODEL_PROTOCOL
from .ops_bench import OpsBenchSettings, run_ops_benchmark
from .report import decode_table, model_summary, ops_summary, plot_model, plot_ops, write_outputs

__all__ = ["BenchOptions", "BenchmarkError", "parse_sizes", "run_benchmark"]


_SIZE = re.compile(r"^\s*(\d+)\s*([kKmM]?)\s*$")


def parse_sizes(text: str, option: str) -> list[int]:
    """'1k,4k,16k' -> [1024, 4096, 16384] (k = 1024, m = 1024²); raises BenchmarkError naming `option`."""
    sizes = []
    for part in text.split(","):
        match = _SIZE.match(part)
        if not match or int(match.group(1)) == 0:
            raise BenchmarkError(f"{option}: expected positive sizes like '1k,4k,16k' or '1,16', got {text!r}")
        sizes.append(int(match.group(1)) * {"": 1, "k": 1024, "m": 1024**2}[match.group(2).lower()])
    return sizes


@dataclass
class BenchOptions:
    """What `liger bench` measures (see the module docstrings of model_bench and ops_bench for the protocol)."""

    out: Path = Path("bench")
    model: str = "default"
    ops: bool = False
    lengths: list[int] = field(default_factory=lambda: [1024, 4096, 16384])
    batches: list[int] = field(default_factory=lambda: [1, 16])
    dtypes: list[str] = field(default_factory=lambda: ["fp32", "bf16"])
    weights: list[str] = field(default_factory=lambda: ["fp32"])  # extra rows with int8 / bf16 weights (fp32 model)
    decode_tokens: int = 16
    repeats: int = 5
    max_seconds: float = 20.0
    short_prefill: int = 256
    prefill_token_cap: int = 16384
    forward_length: int = 2048
    device: str = "auto"
    liger: LigerConfig = field(default_factory=lambda: LigerConfig(**PRESETS[DEFAULT_PRESET].liger))  # recommended
    llama_cpp: bool = True  # also run the GGUF through llama-cpp-python when it is installed (CPU only)

    def validate(self) -> None:
        unknown = [d for d in self.dtypes if d not in DTYPES]
        if unknown:
            raise BenchmarkError(f"--dtype: unknown {unknown[0]!r}; choose from {', '.join(DTYPES)}")
        unknown = [w for w in self.weights if w not in FORMATS] if self.weights else [""]
        if unknown:
            raise BenchmarkError(f"--weights: unknown {unknown[0]!r}; choose from {', '.join(FORMATS)} "
                                 "(comma-separated)")
        for name in ("decode_tokens", "repeats", "short_prefill", "prefill_token_cap", "forward_length"):
            if getattr(self, name) < 1:
                raise BenchmarkError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.max_seconds <= 0:
            raise BenchmarkError(f"--max-seconds must be > 0, got {self.max_seconds}")
        if not self.lengths or not self.batches:
            raise BenchmarkError("--lengths and --batch need at least one value each")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise BenchmarkError(f"--device: expected auto, cpu or cuda[:N], got {self.device!r}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise BenchmarkError("--device cuda: no CUDA GPU is visible to torch; use --device cpu")

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


def run_benchmark(options: BenchOptions, log: Callable[[str], None] = lambda _: None, model=None) -> dict:
    """Run the op-level (`options.ops`) or model-level benchmark, write JSON + PNG into `options.out`, return the
    results. `model`: an already loaded base model (otherwise `options.model` is loaded)."""
    options.validate()
    device = options.torch_device()
    results = {"environment": environment(device), "memory_note": memory_note(device)}
    if options.ops:
        settings = OpsBenchSettings(lengths=options.lengths, window=options.liger.window,
                                    chunk_size=options.liger.chunk_size, repeats=options.repeats,
                                    max_seconds=options.max_seconds)
        results.update(kind="ops", **run_ops_benchmark(settings, device, log))
        results["summary"] = ops_summary(results)
        write_outputs(options.out, "ops", results, plot_ops)
        return results
    if model is None:
        from ..models import load_model

        log(f"loading {options.model}")
        model, _ = load_model(options.model)
    settings = ModelBenchSettings(
        lengths=options.lengths, batches=options.batches, dtypes=options.dtypes,
        decode_tokens=options.decode_tokens, repeats=options.repeats, max_seconds=options.max_seconds,
        short_prefill=options.short_prefill, prefill_token_cap=options.prefill_token_cap,
        forward_length=options.forward_length, weights=tuple(options.weights),
    )
    results.update(kind="model", model=options.model, liger=vars(options.liger).copy(),
                   protocol=" ".join(MODEL_PROTOCOL.split()))
    results.update(run_model_benchmark(model, options.liger, settings, device, log))
    results["llama_cpp"] = _llama_cpp(options, device, log)
    results["summary"] = model_summary(results)
    write_outputs(options.out, "model", results, plot_model)
    table = decode_table(results)
    write_text_atomic(Path(options.out) / "model.md", table + "\n")
    for line in table.splitlines():
        log(line)
    return results


def _llama_cpp(options: BenchOptions, device: torch.device, log: Callable[[str], None]) -> dict:
    """llama.cpp's batch-1 rows at the same lengths and threads, or why there are none."""
    if not options.llama_cpp:
        return {"available": False, "reason": "not requested"}
    if device.type != "cpu":
        return {"available": False, "reason": "llama.cpp is compared on the CPU only"}
    return run_llama_cpp(options.model, options.lengths, options.decode_tokens, log)
