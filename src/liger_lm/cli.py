"""`liger`: a thin command line over the library API (convert → generate → run).

torch, transformers and the library modules are imported inside the commands, so that `liger --help` and usage
errors answer at once.
"""

from __future__ import annotations

import errno
import logging
import math
import sys
import traceback
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand

from .errors import LigerError
from .presets import DEFAULT_PRESET

app = typer.Typer(
    help="Linearize pretrained Llama / Mistral / Qwen2 / Qwen3 models with Liger (arXiv 2503.01496).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True, soft_wrap=True)  # one-line errors, however long
# click's exceptions, wherever this typer takes click from (typer ≥ 0.29 vendors it as typer._click).
CLICK_ERRORS = sys.modules[typer.BadParameter.__module__]
STATE = {"debug": False}

MODEL_HELP = "'default' (embedded SmolLM2-135M-Instruct, Q4_1 GGUF), a Hugging Face id, a local folder or a .gguf file"


def _gate_list() -> str:
    from .modeling.gates import GATES

    lines = [f"{g.name}: {g.description}; decay a = {g.decay}" for g in GATES.values()]
    return "Gates (--gate):\n\n" + "\n\n".join(lines)


GATE_HELP = "Gated recurrence of the linear branch (list below)."


class _WithGateList(TyperCommand):
    """A command whose help ends with the gate list, built only when the help is shown (the gates import torch)."""

    def format_help(self, ctx, formatter) -> None:
        self.epilog = _gate_list()
        super().format_help(ctx, formatter)


class _ConsoleWarnings(logging.Handler):
    """The library's warnings (e.g. a damaged checkpoint skipped on --resume), one yellow line each."""

    def emit(self, record: logging.LogRecord) -> None:
        console.print("[yellow]warning:[/]", escape(" ".join(record.getMessage().split())))


WARNINGS = _ConsoleWarnings(logging.WARNING)


@app.callback()
def _options(debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False):
    STATE["debug"] = debug
    library = logging.getLogger("liger_lm")
    if WARNINGS not in library.handlers:
        library.addHandler(WARNINGS)


def _finite(value: float | None) -> float | None:
    """Option callback: inf and nan pass click's range checks (nan compares false), then break the model or the loop."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"must be a finite number, got {value}")
    return value


def _layers(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated layer indices like '0,8,16', got {text!r}") from None


PRESET_HELP = "Named recipe (conversion settings and fine-tune): 'paper' is the paper's exact Liger-GLA; the default is the best measured (README: Presets)."


@app.command(cls=_WithGateList)
def convert(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the converted model to.")],
    model: Annotated[str, typer.Option("--model", help=MODEL_HELP)] = "default",
    preset: Annotated[str, typer.Option("--preset", help=PRESET_HELP)] = DEFAULT_PRESET,
    method: Annotated[str | None, typer.Option("--method", help="liger (paper) or lolcats (LoLCATs baseline: learned feature maps, window factor).")] = None,
    gate: Annotated[str | None, typer.Option("--gate", help=GATE_HELP)] = None,
    window: Annotated[int | None, typer.Option("--window", help="Sliding-window size w in tokens.")] = None,
    sinks: Annotated[int | None, typer.Option("--sinks", help="Sink tokens: the window also attends to the first N real tokens.")] = None,
    normalize: Annotated[bool | None, typer.Option("--normalize/--no-normalize", help="Normalise the recurrent branch by q'·z.")] = None,
    combine: Annotated[str | None, typer.Option("--combine", help="How the branches meet: sum (paper: α·o_rec + β·o_swa) or shared (one softmax normaliser, recurrence over what left the window).")] = None,
    rec_weight: Annotated[float | None, typer.Option("--rec-weight", help="α: weight of the recurrent branch.")] = None,
    swa_weight: Annotated[float | None, typer.Option("--swa-weight", help="β: weight of the window branch.")] = None,
    softmax_layers: Annotated[str | None, typer.Option("--softmax-layers", help="Layers kept as softmax attention, e.g. '0,8'.")] = None,
    softmax_every: Annotated[int | None, typer.Option("--softmax-every", help="Also keep every k-th layer (k−1, 2k−1, …) as softmax; 0 = off.")] = None,
    gate_source: Annotated[str | None, typer.Option("--gate-source", help="Projection the gate is pooled from: k (paper), q or v.")] = None,
    num_slots: Annotated[int | None, typer.Option("--num-slots", help="GSA slots M.")] = None,
    gate_lower_bound: Annotated[float | None, typer.Option("--gate-lower-bound", help="HGRN2 lower bound γ.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --out if it exists.")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of any newly initialised weights (LoLCATs feature maps).")] = 0,
):
    """Convert a model to Liger and save it (safetensors + config); reload with AutoModelForCausalLM."""
    import torch

    from . import convert as convert_model, load_model
    from .convert import write_model_card
    from .io import atomic_directory, claim_output
    from .models import check_convertible

    overrides = dict(
        method=method, gate=gate, window=window, sinks=sinks, normalize=normalize, combine=combine, rec_weight=rec_weight,
        swa_weight=swa_weight, softmax_layers=None if softmax_layers is None else _layers(softmax_layers),
        softmax_every=softmax_every, gate_source=gate_source, num_slots=num_slots, gate_lower_bound=gate_lower_bound,
    )
    settings = _preset_settings(preset, {name: value for name, value in overrides.items() if value is not None})
    check_convertible(model)
    with claim_output(out, overwrite):
        with console.status(f"loading {model}"):
            base, tokenizer = load_model(model)
        torch.manual_seed(seed)  # same seed, same converted weights (LoLCATs draws feature-map columns when f > D)
        liger = convert_model(base, settings)
        with atomic_directory(out, overwrite=overwrite) as staging:
            liger.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            write_model_card(staging)
    name = "LoLCATs" if settings.method == "lolcats" else f"Liger-{settings.gate} (preset {preset})"
    console.print(f"[green]saved[/] {name} model to {out}")


def _preset_settings(preset: str, overrides: dict):
    """The preset's `LigerConfig` with the options the user gave on top (`--method lolcats`: the LoLCATs baseline's
    own settings; a preset's Liger-only settings such as sinks do not apply to it)."""
    from .config import LigerConfig
    from .presets import PRESETS

    if preset not in PRESETS:
        raise typer.BadParameter(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}", param_hint="--preset")
    base = {} if overrides.get("method") == "lolcats" else PRESETS[preset].liger
    return LigerConfig(**base).replace(**overrides)


@app.command()
def generate(
    model_dir: Annotated[str, typer.Argument(help="A converted model folder (or any model accepted by --model).")],
    prompt: Annotated[list[str], typer.Option("--prompt", help="Prompt text; repeat for a batch.")],
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1)] = 64,
    sample: Annotated[bool, typer.Option("--sample", help="Sample (temperature/top-p) instead of greedy.")] = False,
    temperature: Annotated[float, typer.Option("--temperature", min=0.01, callback=_finite)] = 0.7,
    top_p: Annotated[float, typer.Option("--top-p", min=0.01, max=1.0, callback=_finite)] = 0.9,
    chat: Annotated[bool, typer.Option("--chat/--no-chat", help="Apply the tokenizer's chat template.")] = True,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    device: Annotated[str, typer.Option("--device", help="auto (CUDA when visible), cpu or cuda[:N].")] = "auto",
    weights: Annotated[str, typer.Option("--weights", help="Weight format of the linear layers while generating: fp32, bf16 or int8 (faster decoding, README: Speed and memory).")] = "fp32",
):
    """Generate text with a (converted) model using the constant-memory Liger cache."""
    from . import load_model
    from .generation import check_prompts, generate_text
    from .models import resolve_device
    from .quantize import check_format, quantize_for_decode

    check_prompts(prompt)
    check_format(weights, "--weights")
    target = resolve_device(device)  # before loading: a missing GPU must not cost a model load
    with console.status(f"loading {model_dir}"):
        model, tokenizer = load_model(model_dir)
    model.to(target)
    quantize_for_decode(model, weights)
    texts = generate_text(
        model, tokenizer, prompt, max_new_tokens, sample=sample, temperature=temperature, top_p=top_p, chat=chat, seed=seed
    )
    for question, answer in zip(prompt, texts):
        if len(prompt) > 1:
            console.print(f"[bold]{question}[/]")
        typer.echo(answer)


@app.command()
def train(
    model_dir: Annotated[str, typer.Argument(help="A converted model folder (from `liger convert`).")],
    out: Annotated[Path, typer.Option("--out", help="Run folder: checkpoints, metrics.jsonl, adapter/, merged/.")],
    data: Annotated[str, typer.Option("--data", help="'default' (BIG-bench instructions), 'prose', 'mix' (both), a .json/.jsonl/.txt file or an HF dataset name[:split].")] = "default",
    max_tokens: Annotated[str, typer.Option("--max-tokens", help="Token budget, e.g. 2M, 500k or 300000.")] = "2M",
    objective: Annotated[str, typer.Option("--objective", help="ce (paper), kd, kd+ce or attn (attention transfer).")] = "ce",
    stages: Annotated[str, typer.Option("--stages", help="Objectives run one after another on one adapter, e.g. 'attn,kd' (overrides --objective; the budget is split evenly).")] = "",
    seq_len: Annotated[int, typer.Option("--seq-len", min=2, help="Packed sequence length.")] = 1024,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Sequences per device per micro-step.")] = 1,
    grad_accum: Annotated[int, typer.Option("--grad-accum", min=1, help="Micro-steps per optimizer step.")] = 8,
    lr: Annotated[float, typer.Option("--lr", min=0.0, help="Peak learning rate (cosine schedule, warm-up).")] = 1e-3,
    lora_r: Annotated[int, typer.Option("--lora-r", min=1)] = 8,
    lora_alpha: Annotated[int, typer.Option("--lora-alpha", min=1)] = 8,
    lora_targets: Annotated[str, typer.Option("--lora-targets", help="Comma-separated module names.")] = "q_proj,k_proj,v_proj",
    eval_records: Annotated[int, typer.Option("--eval-records", min=0, help="Held-out records for the eval loss.")] = 64,
    save_every: Annotated[int | None, typer.Option("--save-every", min=1, help="Checkpoint every N steps (default: 10 per run).")] = None,
    precision: Annotated[str, typer.Option("--precision", help="auto (bf16 where fast), fp32 or bf16.")] = "auto",
    prompt_loss: Annotated[bool, typer.Option("--prompt-loss", help="Also train on prompt tokens (the paper: answers only).")] = False,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the last complete checkpoint in --out (with the settings the run was started with).")] = False,
    merge: Annotated[bool, typer.Option("--merge", help="Also write merged standalone weights to --out/merged.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Start over: the new run is built beside --out and replaces it once finished.")] = False,
):
    """Recover quality with a LoRA fine-tune (transformers Trainer); resumable, with held-out loss and a JSONL log."""
    from . import load_model
    from .data.instructions import LOCAL_SUFFIXES, load_instruction_records
    from .io import check_writable
    from .training import NonFiniteLossError, TrainConfig, train as train_model

    config = TrainConfig(
        data=data, max_tokens=_count(max_tokens, "--max-tokens"), objective=objective, seq_len=seq_len,
        batch_size=batch_size, grad_accum=grad_accum, lr=lr, lora_r=lora_r, lora_alpha=lora_alpha,
        lora_targets=tuple(t.strip() for t in lora_targets.split(",") if t.strip()), eval_records=eval_records,
        save_every=save_every, precision=precision, seed=seed, merge=merge, prompt_loss=prompt_loss,
        stages=tuple(name for name in stages.split(",") if name.strip()),
    ).validate()
    check_writable(out)
    if out.exists() and not (resume or overwrite):
        _fail(f"{out} already exists; pass --resume to continue it or --overwrite to start over")
    if data.lower().endswith(LOCAL_SUFFIXES):  # a bad local file fails before a (possibly long) model load
        load_instruction_records(data)
    with console.status(f"loading {model_dir}"):
        model, tokenizer = load_model(model_dir)
    base_path = model_dir if Path(model_dir).is_dir() else None
    try:
        result = train_model(model, tokenizer, config, out, resume=resume, overwrite=overwrite, base_path=base_path)
    except NonFiniteLossError as err:  # not a usage error, but the message says all the user needs
        console.line()  # below the interrupted progress bar
        _fail(str(err))
    summary = result.results
    if result.finished_earlier:
        console.print(f"[green]finished already[/] {out} holds a finished run ({summary['tokens_trained']:,} tokens, "
                      f"held-out loss {summary['eval_loss_before']} → {summary['eval_loss_after']}); nothing to "
                      "resume: pass --overwrite to train it again")
        return
    console.print(
        f"[green]done[/] {summary['tokens_trained']:,} tokens in {summary['seconds']} s; held-out loss "
        f"{summary['eval_loss_before']} → {summary['eval_loss_after']} (perplexity {summary['eval_perplexity_before']}"
        f" → {summary['eval_perplexity_after']}) → {out}"
    )


def _count(text: str, option: str) -> int:
    """'2M' → 2_000_000, '500k' → 500_000, '300000' → 300000."""
    scale = {"k": 1_000, "m": 1_000_000, "b": 1_000_000_000}.get(text.strip()[-1:].lower(), 1)
    number = text.strip()[:-1] if scale > 1 else text.strip()
    try:
        value = float(number) * scale
    except ValueError:
        raise typer.BadParameter(f"expected a count like 2M, 500k or 300000, got {text!r}", param_hint=option) from None
    if value < 1:
        raise typer.BadParameter(f"must be at least 1, got {text!r}", param_hint=option)
    return int(value)


@app.command()
def run(
    out: Annotated[Path, typer.Option("--out", help="Run folder: model/, train/, eval/, report.md, results.json, recovery.png.")] = Path("runs/default"),
    model: Annotated[str, typer.Option("--model", help=MODEL_HELP)] = "default",
    preset: Annotated[str, typer.Option("--preset", help=PRESET_HELP)] = DEFAULT_PRESET,
    method: Annotated[str | None, typer.Option("--method", help="liger (paper) or lolcats (baseline).")] = None,
    gate: Annotated[str | None, typer.Option("--gate", help=GATE_HELP)] = None,
    window: Annotated[int | None, typer.Option("--window")] = None,
    budget: Annotated[str, typer.Option("--budget", help="tiny (smoke test), default (~20 min on a 2-core CPU), long (10× the training, ~2 h) or paper (20 M tokens).")] = "default",
    data: Annotated[str | None, typer.Option("--data", help="Fine-tuning data: the preset's by default; 'default' (BIG-bench instructions), 'prose', 'mix', a local file or an HF dataset.")] = None,
    tasks: Annotated[str, typer.Option("--tasks", help="'default' (suite at the budget's size) or 'name[=size],…' (names or .jsonl files).")] = "default",
    seed: Annotated[int, typer.Option("--seed")] = 0,
    precision: Annotated[str, typer.Option("--precision", help="Fine-tune precision: auto (bf16 where the hardware runs it natively), fp32 or bf16.")] = "auto",
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1)] = 32,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Start over instead of reusing finished steps in --out: the new run is built beside it and replaces it once complete.")] = False,
):
    """The whole pipeline: load → convert → fine-tune → evaluate base and Liger → recovery report (reuses finished steps)."""
    from .evaluate import parse_task_spec
    from .run import RunOptions, main_job

    overrides = {name: value for name, value in dict(method=method, gate=gate, window=window).items() if value is not None}
    options = RunOptions(
        model=model, out=out, preset=preset, liger=_preset_settings(preset, overrides), budget=budget, data=data,
        tasks=None if tasks == "default" else parse_task_spec(tasks), seed=seed, precision=precision,
        max_new_tokens=max_new_tokens,
        overwrite=overwrite,
    )
    results = main_job(options, log=lambda message: console.print(f"[cyan]›[/] {message}"))
    typer.echo((out / "report.md").read_text(encoding="utf-8"))
    console.print(f"[green]done[/] in {results['seconds']['this_invocation']} s → {out}")


@app.command()
def bench(
    out: Annotated[Path, typer.Option("--out", help="Folder for model.json + model.png (ops.json + ops.png with --ops).")] = Path("bench"),
    model: Annotated[str, typer.Option("--model", help=MODEL_HELP)] = "default",
    ops: Annotated[bool, typer.Option("--ops", help="Op level: chunked vs naive GLA vs torch SDPA, blocked vs naive SWA.")] = False,
    lengths: Annotated[str, typer.Option("--lengths", help="Context lengths, e.g. '1k,4k,16k' (k = 1024).")] = "1k,4k,16k",
    batch: Annotated[str, typer.Option("--batch", help="Batch sizes, e.g. '1,16'.")] = "1,16",
    dtype: Annotated[str, typer.Option("--dtype", help="Weight dtypes: 'fp32', 'bf16', 'fp32,bf16' or 'auto' (bf16 too where the hardware runs it natively).")] = "auto",
    weights: Annotated[str, typer.Option("--weights", help="Also measure these weight formats of the linear layers on the fp32 models, e.g. 'fp32,bf16,int8' (fp32: nothing more).")] = "fp32",
    decode_tokens: Annotated[int, typer.Option("--decode-tokens", help="Decode steps per measurement (median step).")] = 16,
    repeats: Annotated[int, typer.Option("--repeats", help="Timed repeats per prefill / op (median).")] = 5,
    max_seconds: Annotated[float, typer.Option("--max-seconds", help="Stop repeating a measurement after this long.", callback=_finite)] = 20.0,
    short_prefill: Annotated[int, typer.Option("--short-prefill", help="Prefill length of the Liger state for batches too large to prefill.")] = 256,
    prefill_token_cap: Annotated[int, typer.Option("--prefill-token-cap", help="Prefill only where batch × length <= this.")] = 16384,
    forward_length: Annotated[int, typer.Option("--forward-length", help="T of the forward-throughput test (fp32 vs bf16 autocast).")] = 2048,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda[:N].")] = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the results (NAME.json, NAME.png) already in --out.")] = False,
):
    """Speed and memory: base model vs Liger (prefill, decode, memory per length and batch), or the ops (--ops)."""
    import json

    from .benchmark import BenchOptions, parse_sizes, run_benchmark
    from .io import claim_output

    options = BenchOptions(
        out=out, model=model, ops=ops, lengths=parse_sizes(lengths, "--lengths"), batches=parse_sizes(batch, "--batch"),
        dtypes=_bench_dtypes(dtype, device), decode_tokens=decode_tokens, repeats=repeats,
        max_seconds=max_seconds, short_prefill=short_prefill, prefill_token_cap=prefill_token_cap,
        forward_length=forward_length, device=device, weights=[w.strip() for w in weights.split(",") if w.strip()],
    )
    name = "ops" if ops else "model"
    files = [out / f"{name}.json", out / f"{name}.png"]
    with claim_output(out, overwrite, outputs=files):  # before the benchmark, which can take many minutes
        results = run_benchmark(options, log=lambda message: console.print(f"[cyan]›[/] {message}"))
    typer.echo(json.dumps(results["summary"], indent=2))
    console.print(f"[green]done[/] → {files[0]}, {files[1]}")


def _bench_dtypes(dtype: str, device: str) -> list[str]:
    from .hardware import fast_bf16

    if dtype.strip() == "auto":
        return ["fp32", "bf16"] if fast_bf16("cuda" if device.startswith("cuda") else "cpu") else ["fp32"]
    return [d.strip() for d in dtype.split(",") if d.strip()]


@app.command(name="eval")
def eval_command(
    model_dir: Annotated[str, typer.Argument(help="Model to evaluate: a converted folder or anything --model accepts.")],
    tasks: Annotated[str, typer.Option("--tasks", help="'default' (suite), 'none', or 'name,name=size,...'.")] = "default",
    base: Annotated[str | None, typer.Option("--base", help=f"Also evaluate this base model and report recovery: {MODEL_HELP}.")] = None,
    ppl: Annotated[str | None, typer.Option("--ppl", help="Perplexity of a text file or hf:<dataset>[:<config>]:<split>[:<column>].")] = None,
    context: Annotated[int, typer.Option("--context", min=1, help="Perplexity window length in tokens.")] = 1024,
    stride: Annotated[int, typer.Option("--stride", min=1, help="New tokens scored per perplexity window (≤ --context).")] = 512,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 16,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="At most N examples per task.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the task example sampling.")] = 0,
    out: Annotated[Path | None, typer.Option("--out", help="Write all results to this JSON file.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --out if it exists.")] = False,
):
    """Zero-shot task accuracy (lm-eval's acc / acc_norm), optional perplexity and recovery against --base."""
    from .evaluate import evaluate_named_models, parse_task_spec
    from .io import claim_output, write_json_atomic

    # --out is checked (and held) before the evaluation, which can take many minutes.
    with claim_output(out, overwrite, is_file=True) if out is not None else nullcontext():
        results = evaluate_named_models(
            model_dir, base=base, tasks=parse_task_spec(tasks, limit), ppl_source=ppl,
            context=context, stride=stride, batch_size=batch_size, seed=seed,
        )
        _print_eval(results)
        if out is not None:
            write_json_atomic(out, results)
            console.print(f"[green]saved[/] {out}")


def _print_eval(results: dict) -> None:
    from rich.table import Table

    table = Table(title=f"{results['model']} (scores ×100)")
    if results.get("recovery"):
        for column in ("task", "chance", "base", "converted", "recovery %"):
            table.add_column(column, justify="left" if column == "task" else "right")
        summary = results["recovery"]
        for task, ratio in summary["tasks"].items():
            base, converted = results["base_scores"][task], results["scores"][task]
            values = (base["chance"], base[summary["metric"]], converted[summary["metric"]])
            table.add_row(f"{task} ({summary['metric']})", *(f"{100 * v:.1f}" for v in values), _pct(ratio))
        table.add_row("average", "", f"{100 * summary['base_average']:.1f}",
                      f"{100 * summary['converted_average']:.1f}", _pct(summary["average"]))
    else:
        for column in ("task", "acc", "acc_norm", "n"):
            table.add_column(column, justify="left" if column == "task" else "right")
        for task, score in results["scores"].items():
            table.add_row(task, f"{100 * score['acc']:.1f}", f"{100 * score['acc_norm']:.1f}", str(score["n"]))
    if table.rows:
        Console(soft_wrap=True).print(table)
    if "perplexity" in results:
        ppl = results["perplexity"]
        parts = [f"{role} {ppl[role]['ppl']:.2f}" for role in ("model", "base") if role in ppl]
        tokens = ppl["model"]["tokens"]
        typer.echo(f"perplexity of {ppl['source']} ({tokens} tokens, context {ppl['context']}): " + ", ".join(parts))


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _fail(message: str) -> None:
    _print_error(message)
    raise typer.Exit(2)


def _print_error(message: str) -> None:
    """One red line: newlines of library messages are folded, brackets are printed literally (no rich markup)."""
    console.print("[red]error:[/]", escape(" ".join(str(message).split())))


# Failures of the machine rather than of liger-lm: a full disk, a read-only or forbidden folder met half-way.
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES}
BUG_HINT = ("this is a bug in liger-lm (or a library it uses), not a problem with your input: please report it "
            "with the command you ran and the traceback above")


def main() -> None:
    """Entry point. A `LigerError` (bad input, an unusable file or output) or a usage error prints one line and exits
    with code 2 (`--debug` shows its traceback); any other exception is a bug: its traceback, a line asking to report
    it, exit code 1."""
    try:
        # Not standalone, so usage errors (non-numeric values, missing options) reach us and print as one line too.
        code = app(standalone_mode=False)
    except CLICK_ERRORS.ClickException as err:
        if type(err).__name__ == "NoArgsIsHelpError":  # bare `liger`: the help text, as standalone click shows it
            err.show()
        else:
            hint = f" (see `{err.ctx.command_path} --help`)" if getattr(err, "ctx", None) else ""
            _print_error(err.format_message() + hint)
        sys.exit(err.exit_code)
    except (KeyboardInterrupt, typer.Abort):  # Ctrl-C (older click wraps it in Abort); every output is still whole
        _print_error("interrupted")
        sys.exit(130)
    except LigerError as err:
        if STATE["debug"]:
            raise
        _print_error(str(err))
        sys.exit(2)
    except OSError as err:
        if STATE["debug"] or err.errno not in ENVIRONMENT_ERRNOS:
            _report_bug()
        _print_error(f"{err.strerror}: {err.filename}; free some space or fix the permissions, then run again")
        sys.exit(2)
    except Exception:
        _report_bug()
    sys.exit(code if isinstance(code, int) else 0)


def _report_bug() -> None:
    """An unexpected exception: its traceback (`--debug`: re-raised as is) and a line asking to report it."""
    if STATE["debug"]:
        raise
    traceback.print_exc()
    console.print("[red]bug:[/]", BUG_HINT)
    sys.exit(1)
