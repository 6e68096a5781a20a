"""`liger bench`: speed and memory of a model vs its Liger conversion (paper Fig. 4), and of the ops.

    run_benchmark(BenchOptions(model="default", lengths=[1024, 4096, 16384], batches=[1, 16], out="bench"))
    run_benchmark(BenchOptions(ops=True, lengths=[1024, 4096, 16384], out="bench"))
    run_benchmark(BenchOptions(model="default", lengths=[1024, 16384], batches=[1], weights=["fp32", "bf16", "int8"]))

Writes `model.json` + `model.png` + `model.md` (or `ops.json` + `ops.png`) into `out`; the JSON holds the machine,
versions, protocol and a `summary` of the headline ratios; `model.md` is the decode/prefill table. The model
benchmark also runs the base model's GGUF through llama.cpp (`llama_cpp.py`) when `llama-cpp-python` is installed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..config import COUNT_SYNTAX, LigerConfig, parse_count
from ..errors import BenchmarkError  # noqa: F401 (re-exported)
from ..io import write_text_atomic
from ..presets import DEFAULT_PRESET, PRESETS

if TYPE_CHECKING:
    import torch

# The measuring modules (torch, transformers) are imported by the functions that run them, so that `BenchOptions`'
# fields, which `liger bench` turns into its options, can be read without loading torch (`liger bench --help`).

__all__ = ["BenchOptions", "BenchmarkError", "parse_sizes", "run_benchmark"]


def parse_sizes(text: str, option: str) -> list[int]:
    """'1k,4k,16k' -> [1024, 4096, 16384]: positive counts (`liger_lm.config.parse_count`: k = 1,024, M = 1,024²,
    the rule of every count on the command line); raises BenchmarkError naming `option`."""
    sizes = []
    for part in text.split(","):
        try:
            size = parse_count(part)
        except ValueError:
            size = 0
        if size < 1:
            raise BenchmarkError(f"{option}: expected positive sizes like '1k,4k,16k' or '1,16' ({COUNT_SYNTAX}), "
                                 f"got {text!r}")
        sizes.append(size)
    return sizes


@dataclass
class BenchOptions:
    """What `liger bench` measures (see the module docstrings of model_bench and ops_bench for the protocol); each
    field's `metadata["help"]` is its `liger bench` option's help."""

    out: Path = field(default=Path("bench"), metadata={
        "help": "Folder for model.json + model.png + model.md (ops.json + ops.png with --ops)."})
    model: str = field(default="default", metadata={
        "help": "'default' (embedded SmolLM2-135M-Instruct, Q4_1 GGUF), a Hugging Face id, a local folder or a "
                ".gguf file."})
    random_init: bool = field(default=False, metadata={
        "help": "Build --model from its config with random weights instead of loading them (a config .json file "
                "also works): speed and memory do not depend on the weights, so a GPU machine without them, or a "
                "large model's architecture, can be measured."})
    ops: bool = field(default=False, metadata={
        "help": "Op level instead: chunked vs naive GLA vs torch SDPA, blocked vs naive SWA."})
    lengths: list[int] = field(default_factory=lambda: [1024, 4096, 16384], metadata={
        "help": "Context lengths, comma-separated, e.g. 1k,4k,16k.", "min": 1})
    batches: list[int] = field(default_factory=lambda: [1, 16], metadata={
        "help": "Batch sizes, comma-separated, e.g. 1,16.", "min": 1, "option": "--batch"})
    dtypes: list[str] = field(default_factory=lambda: ["fp32", "bf16"], metadata={
        "help": "Model dtypes, comma-separated: fp32, bf16. On the command line also auto (its default): fp32, "
                "plus bf16 where the device runs it natively.", "option": "--dtype"})
    weights: list[str] = field(default_factory=lambda: ["fp32"], metadata={  # extra rows with int8 / bf16 weights
        "help": "Also measure these weight formats of the linear layers on the fp32 models, e.g. fp32,bf16,int8 "
                "(fp32: nothing more)."})
    decode_tokens: int = field(default=16, metadata={"help": "Decode steps per measurement (median step).", "min": 1})
    repeats: int = field(default=5, metadata={"help": "Timed repeats per prefill / op (median).", "min": 1})
    max_seconds: float = field(default=20.0, metadata={"help": "Stop repeating a measurement after this long."})
    short_prefill: int = field(default=256, metadata={
        "help": "Prefill length of the Liger state for batches too large to prefill.", "min": 1})
    prefill_token_cap: int = field(default=16384, metadata={
        "help": "Prefill only where batch × length ≤ this.", "min": 1})
    forward_length: int = field(default=2048, metadata={
        "help": "T of the forward-throughput test (fp32 vs bf16 autocast).", "min": 1})
    device: str = field(default="auto", metadata={"help": "auto (CUDA when torch sees a GPU), cpu or cuda[:N]."})
    liger: LigerConfig = field(  # the recommended conversion
        default_factory=lambda: LigerConfig(**PRESETS[DEFAULT_PRESET].liger),
        metadata={"help": "Conversion settings (on the command line: --preset and the LigerConfig options).",
                  "cli": False})
    train_steps: int = field(default=2, metadata={
        "help": "Also time this many fine-tune optimizer steps per stage objective (attn, kd) of the preset's recipe "
                "on rows of --train-seq-len tokens (0: skip).", "min": 0})
    train_seq_len: int = field(default=1024, metadata={"help": "Tokens per row of the timed fine-tune steps.", "min": 2})
    compile: bool = field(default=False, metadata={
        "help": "Also decode at batch 1 through torch.compile (liger_lm.compiled_decode), rows '<variant>, "
                "compiled': a compile of minutes per model and weight format on a CPU."})
    llama_cpp: bool = field(default=True, metadata={
        "help": "Also run the GGUF through llama-cpp-python when it is installed (CPU only)."})
    llama_cpp_weights: str = field(default="q8_0", metadata={
        "help": "GGUF type llama.cpp runs: stored (as the file is; the default model: Q4_1), q8_0 or f16 (requantised "
                "once by llama.cpp and cached)."})

    def validate(self) -> None:
        from ..quantize import FORMATS
        from .model_bench import DTYPES

        unknown = [d for d in self.dtypes if d not in DTYPES]
        if unknown:
            raise BenchmarkError(f"--dtype: unknown {unknown[0]!r}; choose from {', '.join(DTYPES)}")
        unknown = [w for w in self.weights if w not in FORMATS] if self.weights else [""]
        if unknown:
            raise BenchmarkError(f"--weights: unknown {unknown[0]!r}; choose from {', '.join(FORMATS)} "
                                 "(comma-separated)")
        if self.train_steps < 0:
            raise BenchmarkError(f"--train-steps must be >= 0, got {self.train_steps}")
        for name in ("decode_tokens", "repeats", "short_prefill", "prefill_token_cap", "forward_length",
                     "train_seq_len"):
            if getattr(self, name) < 1:
                raise BenchmarkError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.max_seconds <= 0:
            raise BenchmarkError(f"--max-seconds must be > 0, got {self.max_seconds}")
        if not self.lengths or not self.batches:
            raise BenchmarkError("--lengths and --batch need at least one value each")
        from .llama_cpp import WEIGHT_CHOICES

        if self.llama_cpp_weights not in WEIGHT_CHOICES:
            raise BenchmarkError(f"--llama-cpp-weights: unknown {self.llama_cpp_weights!r}; choose from "
                                 f"{', '.join(WEIGHT_CHOICES)}")
        if self.compile and not self.ops:
            from ..modeling.compiled import check_compile_support

            check_compile_support(self.torch_device())

    def torch_device(self) -> torch.device:
        from ..hardware import resolve_device

        return resolve_device(self.device, BenchmarkError)


def run_benchmark(options: BenchOptions, log: Callable[[str], None] = lambda _: None, model=None) -> dict:
    """Run the op-level (`options.ops`) or model-level benchmark, write JSON + PNG into `options.out`, return the
    results. `model`: an already loaded base model (otherwise `options.model` is loaded)."""
    from ..hardware import environment
    from .measure import memory_note
    from .model_bench import ModelBenchSettings, run_model_benchmark
    from .model_bench import __doc__ as MODEL_PROTOCOL
    from .ops_bench import OpsBenchSettings, run_ops_benchmark
    from .report import decode_table, model_summary, ops_summary, plot_model, plot_ops, write_outputs

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
        model = _base_model(options, log)
    settings = ModelBenchSettings(
        lengths=options.lengths, batches=options.batches, dtypes=options.dtypes,
        decode_tokens=options.decode_tokens, repeats=options.repeats, max_seconds=options.max_seconds,
        short_prefill=options.short_prefill, prefill_token_cap=options.prefill_token_cap,
        forward_length=options.forward_length, weights=tuple(options.weights), compile=options.compile,
    )
    results.update(kind="model", model=options.model, random_weights=options.random_init,
                   base_attention=model.config._attn_implementation, liger=vars(options.liger).copy(),
                   protocol=" ".join(MODEL_PROTOCOL.split()))
    results.update(run_model_benchmark(model, options.liger, settings, device, log))
    results["llama_cpp"] = _llama_cpp(options, device, log)
    if options.train_steps:
        from .training_speed import training_step_speed

        results["training"] = training_step_speed(model, _preset_of(options.liger), device, options.train_seq_len,
                                                  options.train_steps, log=log)
    results["summary"] = model_summary(results)
    write_outputs(options.out, "model", results, plot_model)
    table = decode_table(results)
    write_text_atomic(Path(options.out) / "model.md", table + "\n")
    for line in table.splitlines():
        log(line)
    return results


def _base_model(options: BenchOptions, log: Callable[[str], None]):
    """The base model `options.model` names: loaded, or with `random_init` built from its config."""
    from ..models import load_model, random_model

    if options.random_init:
        log(f"building {options.model} from its config with random weights")
        return random_model(options.model)
    log(f"loading {options.model}")
    return load_model(options.model)[0]


def _preset_of(liger: LigerConfig):
    """The named recipe whose conversion settings `liger` are (its LoRA and stages are what gets timed), else the
    default preset's recipe with these settings."""
    for preset in PRESETS.values():
        if LigerConfig(**preset.liger).to_dict() == liger.to_dict():
            return preset
    return replace(PRESETS[DEFAULT_PRESET], liger=liger.to_dict())


def _llama_cpp(options: BenchOptions, device: torch.device, log: Callable[[str], None]) -> dict:
    """llama.cpp's batch-1 rows at the same lengths and threads, or why there are none."""
    from .llama_cpp import run_llama_cpp

    if not options.llama_cpp:
        return {"available": False, "reason": "not requested"}
    if device.type != "cpu":
        return {"available": False, "reason": "llama.cpp is compared on the CPU only"}
    return run_llama_cpp(options.model, options.lengths, options.decode_tokens, log,
                         weights=options.llama_cpp_weights)
