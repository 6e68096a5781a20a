"""`liger`: a thin command line over the library API (convert → generate → run)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(
    help="Linearize pretrained Llama / Mistral / Qwen2 / Qwen3 models with Liger (arXiv 2503.01496).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True, soft_wrap=True)  # one-line errors, however long
STATE = {"debug": False}

MODEL_HELP = "'default' (embedded SmolLM2-135M-Instruct, Q4_1 GGUF), a Hugging Face id, a local folder or a .gguf file"


def _gate_list() -> str:
    from .modeling.gates import GATES

    lines = [f"{g.name}: {g.description}; decay a = {g.decay}" for g in GATES.values()]
    return "Gates (--gate):\n\n" + "\n\n".join(lines)


GATE_HELP = "Gated recurrence of the linear branch (list below)."


@app.callback()
def _options(debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False):
    STATE["debug"] = debug


def _layers(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated layer indices like '0,8,16', got {text!r}") from None


@app.command(epilog=_gate_list())
def convert(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the converted model to.")],
    model: Annotated[str, typer.Option("--model", help=MODEL_HELP)] = "default",
    gate: Annotated[str, typer.Option("--gate", help=GATE_HELP)] = "gla",
    window: Annotated[int, typer.Option("--window", help="Sliding-window size w in tokens.")] = 64,
    rec_weight: Annotated[float, typer.Option("--rec-weight", help="α: weight of the recurrent branch.")] = 0.5,
    swa_weight: Annotated[float, typer.Option("--swa-weight", help="β: weight of the window branch.")] = 0.5,
    softmax_layers: Annotated[str, typer.Option("--softmax-layers", help="Layers kept as softmax attention, e.g. '0,8'.")] = "",
    softmax_every: Annotated[int, typer.Option("--softmax-every", help="Also keep every k-th layer (k−1, 2k−1, …) as softmax; 0 = off.")] = 0,
    gate_source: Annotated[str, typer.Option("--gate-source", help="Projection the gate is pooled from: k (paper), q or v.")] = "k",
    num_slots: Annotated[int, typer.Option("--num-slots", help="GSA slots M.")] = 64,
    gate_lower_bound: Annotated[float, typer.Option("--gate-lower-bound", help="HGRN2 lower bound γ.")] = 0.0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --out if it exists.")] = False,
):
    """Convert a model to Liger and save it (safetensors + config); reload with AutoModelForCausalLM."""
    from . import LigerConfig, convert as convert_model, load_model
    from .io import atomic_directory

    settings = LigerConfig(
        gate=gate, window=window, rec_weight=rec_weight, swa_weight=swa_weight,
        softmax_layers=_layers(softmax_layers), softmax_every=softmax_every,
        gate_source=gate_source, num_slots=num_slots, gate_lower_bound=gate_lower_bound,
    )
    if out.exists() and not overwrite:
        _fail(f"{out} already exists; choose another --out or pass --overwrite")
    with console.status(f"loading {model}"):
        base, tokenizer = load_model(model)
    liger = convert_model(base, settings)
    with atomic_directory(out, overwrite=overwrite) as staging:
        liger.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    console.print(f"[green]saved[/] Liger-{gate} model to {out}")


@app.command()
def generate(
    model_dir: Annotated[str, typer.Argument(help="A converted model folder (or any model accepted by --model).")],
    prompt: Annotated[list[str], typer.Option("--prompt", help="Prompt text; repeat for a batch.")],
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1)] = 64,
    sample: Annotated[bool, typer.Option("--sample", help="Sample (temperature/top-p) instead of greedy.")] = False,
    temperature: Annotated[float, typer.Option("--temperature", min=0.01)] = 0.7,
    top_p: Annotated[float, typer.Option("--top-p", min=0.01, max=1.0)] = 0.9,
    chat: Annotated[bool, typer.Option("--chat/--no-chat", help="Apply the tokenizer's chat template.")] = True,
    seed: Annotated[int, typer.Option("--seed")] = 0,
):
    """Generate text with a (converted) model using the constant-memory Liger cache."""
    from . import load_model
    from .generation import generate_text

    with console.status(f"loading {model_dir}"):
        model, tokenizer = load_model(model_dir)
    texts = generate_text(
        model, tokenizer, prompt, max_new_tokens, sample=sample, temperature=temperature, top_p=top_p, chat=chat, seed=seed
    )
    for question, answer in zip(prompt, texts):
        if len(prompt) > 1:
            console.print(f"[bold]{question}[/]")
        typer.echo(answer)


@app.command()
def run(
    out: Annotated[Path, typer.Option("--out", help="Run folder for report.md, results.json and the model.")] = Path("runs/default"),
    model: Annotated[str, typer.Option("--model", help=MODEL_HELP)] = "default",
    gate: Annotated[str, typer.Option("--gate", help=GATE_HELP)] = "gla",
    window: Annotated[int, typer.Option("--window")] = 64,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1)] = 32,
    save_model: Annotated[bool, typer.Option("--save-model/--no-save-model")] = True,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --out if it exists.")] = False,
):
    """The main job: load the model, convert it, compare it with the base model, write a report."""
    from .config import LigerConfig
    from .run import RunOptions, main_job

    options = RunOptions(
        model=model, out=out, liger=LigerConfig(gate=gate, window=window),
        max_new_tokens=max_new_tokens, save_model=save_model, overwrite=overwrite,
    )
    results = main_job(options, log=lambda message: console.print(f"[cyan]›[/] {message}"))
    typer.echo((out / "report.md").read_text(encoding="utf-8"))
    console.print(f"[green]done[/] in {results['seconds']['total']} s → {out}")


def _fail(message: str) -> None:
    console.print(f"[red]error:[/] {message}")
    raise typer.Exit(2)


def main() -> None:
    """Entry point: user errors become one line and exit code 2 (`--debug` shows the traceback)."""
    try:
        app()  # standalone: usage errors (non-numeric values, missing options) print one message, exit 2
    # Our errors (LigerConfigError, ModelLoadError, OutputExistsError, …) are ValueError / OSError subclasses.
    except (ValueError, OSError) as err:
        if STATE["debug"]:
            raise
        console.print(f"[red]error:[/] {err}")
        sys.exit(2)
