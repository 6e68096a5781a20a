"""`liger`: a thin command line over the library API (convert → train → eval / generate, run, bench).

The settings' options are generated from the config dataclasses' fields (`LigerConfig`, `TrainConfig`, `RunOptions`,
`BenchOptions`): the option is the field's name (`--rec-weight`), its help `metadata["help"]`, and the optional
metadata keys `choices` (the accepted values), `min` (the smallest count), `option` (another option name),
`syntax` ("stages", "tasks" or "repeat": see `_option`) and `cli` (False: not an option). Every generated option
defaults to None, "not given": a command builds its settings from the preset (or the dataclass defaults) and only
the options given on top, and the dataclasses validate them.

Counts (token budgets, lengths, windows, every integer option) take a binary suffix: k = 1,024, M = 1,024²,
G = 1,024³ (`liger_lm.config.parse_count`).

Speed: torch, transformers and the library modules are imported inside the commands, and a command's generated
options are built only when its help or arguments are read (`_Command`), so `liger --help` and usage errors answer
without loading torch; `liger_lm/__init__` defers its own imports in the `liger` process for the same reason.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import inspect
import json
import logging
import math
import re
import sys
import traceback
import types
import typing
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
import typer.main
import typer.models
from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand

from .config import COUNT_SYNTAX, parse_count
from .errors import LigerError, ModelLoadError
from .presets import DEFAULT_PRESET, PRESETS

app = typer.Typer(
    help="Linearize pretrained Llama / Mistral / Qwen2 / Qwen3 models with Liger (arXiv 2503.01496). Counts take "
         f"k, M, G ({COUNT_SYNTAX}).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True, soft_wrap=True)  # one-line errors, however long
# click's exceptions, wherever this typer takes click from (typer ≥ 0.29 vendors it as typer._click).
CLICK_ERRORS = sys.modules[typer.BadParameter.__module__]
STATE = {"debug": False}

MODEL_HELP = "'default' (embedded SmolLM2-135M-Instruct, Q4_1 GGUF), a Hugging Face id, a local folder or a .gguf file"
PRESET_HELP = ("Named recipe (conversion settings and fine-tune): paper is the paper's exact Liger-GLA; the default is "
               "the best measured (README: Presets). Options given override its settings.")


# ---------------------------------------------------------------------------------------------------------------
# Values: one parser per syntax, each raising typer.BadParameter (click prints "Invalid value for '--x': …").


def _count(minimum: int | None = None) -> Callable[[Any], int]:
    """Parser of one count: '16k' → 16,384 (`parse_count`), at least `minimum`."""

    def parse(text: Any) -> int:
        try:
            value = parse_count(text)
        except ValueError as err:
            raise typer.BadParameter(str(err)) from None
        if minimum is not None and value < minimum:
            raise typer.BadParameter(f"must be at least {minimum}, got {text!r}")
        return value

    return parse


def _finite(setting: str) -> Callable[[Any], float]:
    """Parser of a number: inf and nan are refused (they pass every range check, then break the model or the loop)."""

    def parse(text: Any) -> float:
        try:
            value = float(text)
        except ValueError:
            raise typer.BadParameter(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise typer.BadParameter(f"{setting} must be a finite number, got {text}")
        return value

    return parse


def _choice(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise typer.BadParameter(f"{text!r} is not one of {', '.join(choices)}")
        return text

    return parse


def _listed(item: Callable[[str], Any], container: type = list) -> Callable[[Any], Any]:
    """Parser of a comma-separated list ('' or 'none': an empty one), each part read by `item`."""

    def parse(text: Any) -> Any:
        if isinstance(text, (list, tuple)):
            return container(text)
        if text.strip().lower() in ("", "none"):
            return container()
        return container(item(part.strip()) for part in text.split(",") if part.strip())

    return parse


_STAGE = re.compile(r"([\w+.-]+)(?::([^@]+))?(?:@(.+))?")


def _stages(text: Any) -> tuple:
    """'attn:0.25,kd:0.75@3e-4' → ({objective: attn, share: 0.25}, {objective: kd, share: 0.75, lr: 3e-4});
    'attn,kd' = equal shares; 'none' = no stages (one `objective` stage)."""
    if isinstance(text, (list, tuple)):
        return tuple(text)
    stages = []
    for part in _listed(str)(text):
        match = _STAGE.fullmatch(part.replace(" ", ""))
        try:
            if not match:
                raise ValueError
            stage = {"objective": match.group(1)}
            if match.group(2) is not None:
                stage["share"] = float(match.group(2))
            if match.group(3) is not None:
                stage["lr"] = float(match.group(3))
        except ValueError:
            raise typer.BadParameter(f"expected stages like 'attn,kd' or 'attn:0.25,kd:0.75@3e-4' "
                                     f"(objective[:share][@lr], comma-separated), got {text!r}") from None
        stages.append(stage)
    return tuple(stages)


def _pairs(text: Any) -> dict[str, Any]:
    """'gradient_checkpointing=true,dataloader_num_workers=2' → {…: True, …: 2} (values read as JSON where they
    parse, else kept as text)."""
    if isinstance(text, dict):
        return text
    pairs = {}
    for part in _listed(str)(text):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected key=value pairs like 'gradient_checkpointing=true,"
                                     f"dataloader_num_workers=2', got {text!r}")
        try:
            pairs[key.strip()] = json.loads(value)
        except ValueError:
            pairs[key.strip()] = value.strip()
    return pairs


def _tasks(text: Any) -> dict[str, int | None] | None:
    """'default' → None (the suite at the run's budget), else `evaluation.parse_task_spec`."""
    if text is None or isinstance(text, dict):
        return text
    if text.strip() == "default":
        return None
    from .evaluation import parse_task_spec

    return parse_task_spec(text)


def _shown(value: Any) -> str:
    """A default as it is written on the command line."""
    if value is None:
        return ""  # the help says what "not given" means
    if isinstance(value, bool):
        return "on" if value else "off"
    if hasattr(value, "objective"):  # a `training.config.Stage`
        value = dataclasses.asdict(value)
    if isinstance(value, dict) and "objective" in value:  # a stage, as `_stages` reads it
        share, lr = value.get("share", 1.0), value.get("lr")
        return value["objective"] + (f":{share:g}" if share != 1.0 else "") + (f"@{lr:g}" if lr else "")
    if isinstance(value, dict):
        return ",".join(f"{k}={json.dumps(v)}" for k, v in value.items()) or "none"
    if isinstance(value, (list, tuple)):
        return ",".join(_shown(v) for v in value) or "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# ---------------------------------------------------------------------------------------------------------------
# Options from dataclass fields.


@dataclass(frozen=True)
class _Source:
    """Where some of a command's options come from: the fields of a dataclass (imported when the options are first
    built), except `skip` (fields the command sets otherwise); `given(ctx, key)` returns the ones given. `default`
    writes a field's default for the help (None: the dataclass default)."""

    key: str
    load: Callable[[], type]
    panel: str
    skip: tuple[str, ...] = ()
    default: Callable[[dataclasses.Field], str | None] | None = None
    cli_defaults: tuple[tuple[str, str], ...] = ()  # (field, value): where the command line's default differs


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _option(f: dataclasses.Field, kind: Any, source: _Source, default_text: str | None) -> inspect.Parameter:
    """The option of field `f` (type `kind`): a typer option defaulting to None, named after the field.

    bool → --name/--no-name; int → a count (k, M, G; `min`); float → a finite number; str → text (`choices`
    enforced); Path → a path; list/tuple of int or str → comma-separated; dict → key=value pairs; `syntax`
    "stages" → objective[:share][@lr],…; "tasks" → `parse_task_spec`'s syntax; "repeat" → a repeatable option."""
    meta = f.metadata
    if "help" not in meta:
        raise TypeError(f"{source.load().__name__}.{f.name} has no metadata['help']: give it one, or cli=False")
    name = meta.get("option", "--" + f.name.replace("_", "-"))
    args = typing.get_args(kind)
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        kind = next(a for a in args if a is not type(None))  # X | None → X
        args = typing.get_args(kind)
    origin, syntax = typing.get_origin(kind) or kind, meta.get("syntax")
    annotation, extra = Optional[str], {}
    if syntax == "repeat":
        annotation = Optional[list[str]]
    elif syntax == "stages":
        extra = dict(parser=_stages, metavar="OBJ[:SHARE][@LR],…")
    elif syntax == "tasks":
        extra = dict(parser=_tasks, metavar="default|NAME[=N],…")
    elif kind is bool:
        annotation, name = Optional[bool], f"{name}/--no-{name[2:]}"
    elif kind is int:
        extra = dict(parser=_count(meta.get("min")), metavar="N")
    elif kind is float:
        extra = dict(parser=_finite(f.name), metavar="X")
    elif kind is str:
        choices = meta.get("choices")
        extra = dict(parser=_choice(tuple(choices)), metavar="|".join(choices)) if choices else dict(metavar="TEXT")
    elif kind is Path:
        annotation, extra = Optional[Path], dict(metavar="PATH")
    elif origin in (list, tuple) and args and args[0] in (int, str):
        item = _count(meta.get("min")) if args[0] is int else str
        extra = dict(parser=_listed(item, origin), metavar="N,…" if args[0] is int else "A,B,…")
    elif origin is dict:
        extra = dict(parser=_pairs, metavar="KEY=VALUE,…")
    else:
        raise TypeError(f"{source.load().__name__}.{f.name}: no command-line syntax for {kind}; set metadata['syntax']")
    cli_default = dict(source.cli_defaults).get(f.name)
    if default_text is None:
        default_text = cli_default if cli_default is not None else _shown(_field_default(f))
    help_text = escape(f"{meta['help']} [default: {default_text}]" if default_text else meta["help"])
    info = typer.Option(name, help=help_text, rich_help_panel=source.panel, show_default=False, **extra)
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[annotation, info])


def _generated(sources: tuple[_Source, ...], taken: set[str]) -> tuple[list[inspect.Parameter], dict[str, str]]:
    """The options of `sources` and, for each, the key of its source."""
    parameters, keys = [], {}
    for source in sources:
        cls = source.load()
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.metadata.get("cli") is False or f.name in source.skip:
                continue
            if f.name in taken or f.name in keys:
                raise TypeError(f"option --{f.name} comes from two places; skip it in one of them")
            default_text = source.default(f) if source.default else None
            parameters.append(_option(f, hints[f.name], source, default_text))
            keys[f.name] = source.key
    return parameters, keys


def given(ctx: typer.Context, key: str) -> dict[str, Any]:
    """The fields of source `key` that the command line (or the environment) gave, empty values included:
    `--stages none` overrides a preset's stages, a left-out option overrides nothing."""
    values = {}
    repeatable = {p.name for p in ctx.command.params if getattr(p, "multiple", False)}
    for name, source in ctx.command.keys.items():
        value, origin = ctx.params.get(name), ctx.get_parameter_source(name)
        if source == key and value is not None and origin is not None and origin.name not in ("DEFAULT", "DEFAULT_MAP"):
            values[name] = list(value) if name in repeatable else value  # typer < 0.29 gives a tuple
    return values


class _Command(TyperCommand):
    """A command whose options are its function's own plus those of its `sources`. The generated ones are built,
    with typer, the first time the command's parameters are read (its help, its arguments), never for `liger
    --help`; invoking it first loads the library (`liger_lm._load`: the public API and the Auto classes)."""

    function: Callable[..., Any] | None = None
    sources: tuple[_Source, ...] = ()
    gate_list: bool = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._full: TyperCommand | None = None
        self.keys: dict[str, str] = {}
        super().__init__(*args, **kwargs)

    def _build(self) -> TyperCommand:
        if self._full is None:
            function = type(self).function
            own = list(inspect.signature(function, eval_str=True).parameters.values())
            generated, self.keys = _generated(self.sources, {p.name for p in own})

            def call(**values: Any) -> Any:
                return function(**{name: value for name, value in values.items() if name not in self.keys})

            call.__signature__ = inspect.Signature(own + generated)  # type: ignore[attr-defined]
            info = typer.models.CommandInfo(name=self.name, callback=call, help=self.help)
            self._full = typer.main.get_command_from_info(
                info, pretty_exceptions_short=True, rich_markup_mode=getattr(self, "rich_markup_mode", None))
        return self._full

    @property
    def params(self) -> list:
        return self._build().params if self.sources else self._own_params

    @params.setter
    def params(self, value: list) -> None:
        self._own_params = value

    @property
    def callback(self) -> Callable[..., Any] | None:
        return self._build().callback if self.sources else self._own_callback

    @callback.setter
    def callback(self, value: Callable[..., Any] | None) -> None:
        self._own_callback = value

    def invoke(self, ctx: typer.Context) -> Any:
        import liger_lm

        liger_lm._load()
        return super().invoke(ctx)

    def format_help(self, ctx, formatter) -> None:
        if self.gate_list:  # built only when the help is shown (the gates import torch)
            self.epilog = _gate_list()
        super().format_help(ctx, formatter)


def command(*sources: _Source, name: str | None = None, gate_list: bool = False):
    """`app.command` with options generated from `sources`; the function reads them with `given(ctx, key)`."""

    def register(function: Callable[..., Any]) -> Callable[..., Any]:
        cls = type(f"{function.__name__}_command", (_Command,),
                   {"function": staticmethod(function), "sources": sources, "gate_list": gate_list})
        return app.command(name=name, cls=cls)(function)

    return register


def _gate_list() -> str:
    from .modeling.gates import GATES

    lines = [f"{g.name}: {g.description}; decay a = {g.decay}" for g in GATES.values()]
    return "Gates (--gate):\n\n" + "\n\n".join(lines)


def _liger_config() -> type:
    from .config import LigerConfig

    return LigerConfig


def _train_config() -> type:
    from .training.config import TrainConfig

    return TrainConfig


def _run_options() -> type:
    from .run_config import RunOptions

    return RunOptions


def _bench_options() -> type:
    from .benchmark import BenchOptions

    return BenchOptions


def _by_preset(f: dataclasses.Field) -> str | None:
    """A conversion setting's default where presets differ: each preset's value (the default preset first)."""
    values = {name: preset.liger.get(f.name, _field_default(f)) for name, preset in PRESETS.items()}
    if len(set(map(_shown, values.values()))) == 1:
        return None
    order = [DEFAULT_PRESET, *(name for name in values if name != DEFAULT_PRESET)]
    return "by --preset: " + ", ".join(f"{name} {_shown(values[name])}" for name in order)


def _by_budget_and_preset(f: dataclasses.Field) -> str | None:
    """A fine-tune setting's default in `liger run`, which takes the budget's sizes and then the preset's recipe."""
    shown = {key: _shown(getattr(config, f.name)) for key, config in _run_train_configs().items()}
    budgets = list(dict.fromkeys(b for b, _ in shown))
    presets = [DEFAULT_PRESET, *(p for p in PRESETS if p != DEFAULT_PRESET)]
    if len(set(shown.values())) == 1:
        return next(iter(shown.values()))
    if all(len({shown[b, p] for p in presets}) == 1 for b in budgets):
        return "by --budget: " + ", ".join(f"{b} {shown[b, DEFAULT_PRESET]}" for b in budgets)
    if all(len({shown[b, p] for b in budgets}) == 1 for p in presets):
        return "by --preset: " + ", ".join(f"{p} {shown[budgets[0], p]}" for p in presets)
    return "set by --budget and --preset"


@functools.cache
def _run_train_configs() -> dict[tuple[str, str], Any]:
    """The fine-tune settings of `liger run` for each (budget, preset), before any option."""
    from .run_config import BUDGETS

    return {(b, p): budget.train_config("default", 0, **preset.train)
            for b, budget in BUDGETS.items() for p, preset in PRESETS.items()}


LIGER = _Source("liger", _liger_config, "Conversion (LigerConfig; given options override --preset)", default=_by_preset)
TRAIN = _Source("train", _train_config, "Fine-tune (TrainConfig)")
RUN = _Source("run", _run_options, "Run (RunOptions)")
RUN_TRAIN = _Source("train", _train_config, "Fine-tune (TrainConfig; given options override --budget and --preset)",
                    skip=("data", "seed", "precision"), default=_by_budget_and_preset)  # RunOptions' own fields
BENCH = _Source("bench", _bench_options, "Benchmark (BenchOptions)", cli_defaults=(("dtypes", "auto"),))


# ---------------------------------------------------------------------------------------------------------------
# Commands.


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


def _finite_option(value: float | None) -> float | None:
    """Option callback: inf and nan pass click's range checks (nan compares false), then break the model or the loop."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"must be a finite number, got {value}")
    return value


@command(LIGER, gate_list=True)
def convert(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", help="Folder to write the converted model to.")],
    model: Annotated[str, typer.Option("--model", help=MODEL_HELP)] = "default",
    preset: Annotated[str, typer.Option("--preset", help=PRESET_HELP)] = DEFAULT_PRESET,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --out if it exists.")] = False,
    seed: Annotated[int, typer.Option("--seed", parser=_count(), metavar="N", help="Seed of any newly initialised weights (LoLCATs feature maps).")] = 0,
):
    """Convert a model to Liger and save it (safetensors + config); reload with AutoModelForCausalLM."""
    import torch

    from .convert import convert as convert_model, write_model_card
    from .io import atomic_directory, claim_output
    from .models import check_convertible, load_model

    settings = _preset_settings(preset, given(ctx, "liger"))
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

    if preset not in PRESETS:
        raise typer.BadParameter(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}", param_hint="--preset")
    base = {} if overrides.get("method") == "lolcats" else PRESETS[preset].liger
    return LigerConfig(**base).replace(**overrides)


@command()
def generate(
    model_dir: Annotated[str, typer.Argument(help="A converted model folder (or any model accepted by --model).")],
    prompt: Annotated[list[str], typer.Option("--prompt", help="Prompt text; repeat for a batch.")],
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", parser=_count(1), metavar="N")] = 64,
    sample: Annotated[bool, typer.Option("--sample", help="Sample (temperature/top-p) instead of greedy.")] = False,
    temperature: Annotated[float, typer.Option("--temperature", min=0.01, callback=_finite_option)] = 0.7,
    top_p: Annotated[float, typer.Option("--top-p", min=0.01, max=1.0, callback=_finite_option)] = 0.9,
    chat: Annotated[bool, typer.Option("--chat/--no-chat", help="Apply the tokenizer's chat template.")] = True,
    seed: Annotated[int, typer.Option("--seed", parser=_count(), metavar="N")] = 0,
    device: Annotated[str, typer.Option("--device", help="auto (CUDA when visible), cpu or cuda[:N].")] = "auto",
    weights: Annotated[str, typer.Option("--weights", help="Weight format of the linear layers while generating: fp32, bf16 or int8 (faster decoding, README: Speed and memory).")] = "fp32",
    compile: Annotated[bool, typer.Option("--compile", help="Run the decode steps through torch.compile once the cache is steady: about 2x faster at batch 1 on the README's Zen 4 CPU (each weight read by one reduction kernel), after a compile of minutes (README: Speed and memory); for long generations.")] = False,
):
    """Generate text with a (converted) model using the constant-memory Liger cache."""
    from .generation import check_prompts, generate_text
    from .hardware import resolve_device
    from .modeling.compiled import check_compile_support
    from .models import load_model
    from .quantize import check_format, quantize_for_decode

    check_prompts(prompt)
    check_format(weights, "--weights")
    target = resolve_device(device, ModelLoadError)  # before loading: a missing GPU must not cost a model load
    if compile:  # nor a torch or a C++ compiler that cannot compile the steps
        check_compile_support(target)
    with console.status(f"loading {model_dir}"):
        model, tokenizer = load_model(model_dir)
    model.to(target)
    quantize_for_decode(model, weights)
    texts = generate_text(
        model, tokenizer, prompt, max_new_tokens, sample=sample, temperature=temperature, top_p=top_p, chat=chat,
        seed=seed, compile=compile,
    )
    for question, answer in zip(prompt, texts):
        if len(prompt) > 1:
            console.print(f"[bold]{question}[/]")
        typer.echo(answer)


@command(TRAIN)
def train(
    ctx: typer.Context,
    model_dir: Annotated[str, typer.Argument(help="A converted model folder (from `liger convert`).")],
    out: Annotated[Path, typer.Option("--out", help="Run folder: checkpoints, metrics.jsonl, adapter/, merged/.")],
    resume: Annotated[bool, typer.Option("--resume", help="Continue the last complete checkpoint in --out (with the settings the run was started with).")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Start over: the new run is built beside --out and replaces it once finished.")] = False,
):
    """Recover quality with a LoRA fine-tune (transformers Trainer); resumable, with held-out loss and a JSONL log."""
    from .data.instructions import LOCAL_SUFFIXES, load_instruction_records
    from .io import check_writable
    from .models import load_model
    from .training import NonFiniteLossError, TrainConfig, train as train_model

    config = TrainConfig(**given(ctx, "train")).validate()
    check_writable(out)
    if out.exists() and not (resume or overwrite):
        _fail(f"{out} already exists; pass --resume to continue it or --overwrite to start over")
    if config.data.lower().endswith(LOCAL_SUFFIXES):  # a bad local file fails before a (possibly long) model load
        load_instruction_records(config.data)
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


@command(RUN, LIGER, RUN_TRAIN)
def run(ctx: typer.Context):
    """The whole pipeline: load → convert → fine-tune → evaluate base and Liger → recovery report (reuses finished steps)."""
    from .run import main_job
    from .run_config import RunOptions

    settings = given(ctx, "run")
    liger = _preset_settings(settings.get("preset", DEFAULT_PRESET), given(ctx, "liger"))
    options = RunOptions(**settings, liger=liger, train=given(ctx, "train"))
    results = main_job(options, log=_progress)
    typer.echo((Path(options.out) / "report.md").read_text(encoding="utf-8"))
    console.print(f"[green]done[/] in {results['seconds']['this_invocation']} s → {options.out}")


@command(BENCH, LIGER)
def bench(
    ctx: typer.Context,
    preset: Annotated[str, typer.Option("--preset", help="Conversion recipe of the Liger model measured (README: Presets); options given override its settings.")] = DEFAULT_PRESET,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the results (NAME.json, NAME.png) already in --out.")] = False,
):
    """Speed and memory: base model vs Liger (prefill, decode, memory per length and batch), or the ops (--ops)."""
    from .benchmark import BenchmarkError, BenchOptions, run_benchmark
    from .io import claim_output

    settings = given(ctx, "bench")
    dtypes = settings.pop("dtypes", ["auto"])
    options = BenchOptions(**settings, liger=_preset_settings(preset, given(ctx, "liger")))
    options.dtypes = _bench_dtypes(dtypes, options.device, BenchmarkError)
    name = "ops" if options.ops else "model"
    out = Path(options.out)
    files = [out / f"{name}.json", out / f"{name}.png"]
    with claim_output(out, overwrite, outputs=files):  # before the benchmark, which can take many minutes
        results = run_benchmark(options, log=_progress)
    typer.echo(json.dumps(results["summary"], indent=2))
    console.print(f"[green]done[/] → {files[0]}, {files[1]}")


def _progress(message: str) -> None:
    """One progress line of a long command; the message is plain text ("liger-lm[bench]" is not markup)."""
    console.print(f"[cyan]›[/] {escape(message)}")


def _bench_dtypes(dtypes: list[str], device: str, error: type[LigerError] = LigerError) -> list[str]:
    """`--dtype`: 'auto' is fp32, plus bf16 where the device `--device` resolves to runs it natively."""
    from .hardware import fast_bf16, resolve_device

    if dtypes == ["auto"]:
        return ["fp32", "bf16"] if fast_bf16(resolve_device(device, error)) else ["fp32"]
    return dtypes


@command(name="eval")
def eval_command(
    model_dir: Annotated[str, typer.Argument(help="Model to evaluate: a converted folder or anything --model accepts.")],
    tasks: Annotated[str, typer.Option("--tasks", help="'default' (suite), 'none', or 'name,name=size,...'.")] = "default",
    base: Annotated[str | None, typer.Option("--base", help=f"Also evaluate this base model and report recovery: {MODEL_HELP}.")] = None,
    ppl: Annotated[str | None, typer.Option("--ppl", help="Perplexity of a text file or hf:<dataset>[:<config>]:<split>[:<column>].")] = None,
    context: Annotated[int, typer.Option("--context", parser=_count(1), metavar="N", help="Perplexity window length in tokens.")] = 1024,
    stride: Annotated[int, typer.Option("--stride", parser=_count(1), metavar="N", help="New tokens scored per perplexity window (≤ --context).")] = 512,
    batch_size: Annotated[int, typer.Option("--batch-size", parser=_count(1), metavar="N")] = 16,
    limit: Annotated[int | None, typer.Option("--limit", parser=_count(1), metavar="N", help="At most N examples per task.")] = None,
    seed: Annotated[int, typer.Option("--seed", parser=_count(), metavar="N", help="Seed of the task example sampling.")] = 0,
    out: Annotated[Path | None, typer.Option("--out", help="Write all results to this JSON file.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --out if it exists.")] = False,
):
    """Zero-shot task accuracy (lm-eval's acc / acc_norm), optional perplexity and recovery against --base."""
    from .evaluation import evaluate_named_models, parse_task_spec
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
    """`evaluate_named_models`' results: the rows of `evaluation.report` as a rich table, then the perplexity."""
    from rich.table import Table

    from .evaluation.report import eval_table, perplexity_line

    header, rows = eval_table(results)
    if rows:
        table = Table(title=f"{results['model']} (scores ×100)")
        for index, column in enumerate(header):
            table.add_column(column, justify="right" if index else "left")
        for row in rows:
            table.add_row(*row)
        Console(soft_wrap=True).print(table)
    if "perplexity" in results:
        typer.echo(perplexity_line(results["perplexity"]))


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
