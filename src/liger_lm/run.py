"""The main job (`liger run` / `make run`): load → convert → fine-tune → evaluate base and Liger → report.

The run folder holds one output per step, each written atomically, and `run.json` with the settings:
    model/               the converted (untrained) model                      step 1, convert
    train/               the fine-tune (checkpoints, metrics.jsonl, adapter/)  step 2, train (resumable)
    eval/base.json       task scores of the base model                        step 3, evaluate
    eval/liger.json      task scores of the fine-tuned Liger model
    results.json, report.md, recovery.png                                     step 4, report
Running again with the same settings reuses every finished step (and resumes an interrupted fine-tune);
different settings are refused unless `overwrite`.
"""

from __future__ import annotations

import copy
import gc
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import DynamicCache, PreTrainedModel

from . import __version__
from .compat import with_cache
from .config import LigerConfig
from .convert import convert
from .evaluate import evaluate_suite, recovery, sample_text, text_perplexity
from .generation import generate_text
from .hardware import environment
from .io import OutputExistsError, atomic_directory, write_json_atomic, write_text_atomic
from .modeling.cache import cache_bytes
from .models import DEFAULT_MODEL_NOTE, load_model
from .report import plot_recovery, recovery_table_markdown
from .training import TrainConfig, train
from .training.config import PRECISIONS
from .training.trainer import use_bf16

DEFAULT_PROMPTS = ["What is the capital of France?", "Write one sentence about the sea."]
PAPER_RESULTS = [  # DESIGN.md §4: Liger-GLA, 0.02 B training tokens; six tasks (PiQA, ARC-e/c, HellaSwag, WinoGrande, MMLU)
    ("Llama-3-8B → Liger-GLA", 71.7, 67.6),
    ("Llama-3.2-1B → Liger-GLA", 55.1, 52.9),
]


@dataclass(frozen=True)
class Budget:
    """How much work a run does: training tokens and sequence length, and evaluation examples per task."""

    train_tokens: int
    seq_len: int
    grad_accum: int
    eval_records: int  # held-out instruction records for the fine-tune's eval loss
    eval_examples: int | None  # per task; None: the task's DEFAULT_SUITE size
    prompt_loss: bool = False  # train on prompts too (more signal per token on short-answer data)

    def train_config(self, data: str, seed: int, precision: str = "auto") -> TrainConfig:
        return TrainConfig(data=data, max_tokens=self.train_tokens, seq_len=self.seq_len, grad_accum=self.grad_accum,
                           eval_records=self.eval_records, seed=seed, prompt_loss=self.prompt_loss, precision=precision)


# "default" fits `make run` in about 15–20 minutes on a 2-core CPU with the default model (README has the timing).
# It also trains on the prompts: the BIG-bench instructions' answers are short (2.5 % of the tokens), and a budget this
# small needs the signal; the held-out loss is still measured on answers only. "paper" is the paper's recipe
# (20 M tokens of 8 × 1024, answers only); "tiny" is a smoke test.
BUDGETS = {
    "tiny": Budget(train_tokens=512, seq_len=64, grad_accum=2, eval_records=4, eval_examples=8),
    "default": Budget(train_tokens=65_536, seq_len=512, grad_accum=4, eval_records=16, eval_examples=60,
                      prompt_loss=True),
    "paper": Budget(train_tokens=20_000_000, seq_len=1024, grad_accum=8, eval_records=256, eval_examples=None),
}


@dataclass
class RunOptions:
    model: str = "default"
    out: Path = Path("runs/default")
    liger: LigerConfig = field(default_factory=LigerConfig)
    budget: str = "default"
    data: str = "default"
    tasks: dict[str, int | None] | None = None  # None: the default suite at the budget's size
    seed: int = 0
    precision: str = "auto"  # of the fine-tune: "auto" (bf16 where the hardware runs it natively), "fp32" or "bf16"
    prompts: list[str] = field(default_factory=lambda: list(DEFAULT_PROMPTS))
    max_new_tokens: int = 32
    overwrite: bool = False

    def settings(self) -> dict[str, Any]:
        """What the outputs depend on (compared with `run.json` to decide what can be reused)."""
        settings = {
            "model": self.model, "liger": self.liger.to_dict(), "budget": asdict(BUDGETS[self.budget]),
            "data": self.data, "tasks": self.task_sizes(), "seed": self.seed, "precision": self.training_precision(),
        }
        return json.loads(json.dumps(settings))  # as stored in run.json

    def training_precision(self) -> str:
        """The fine-tune's precision as resolved on this machine: "bf16" or "fp32"."""
        return "bf16" if use_bf16(self.precision) else "fp32"

    def task_sizes(self) -> dict[str, int | None]:
        from .data.tasks import DEFAULT_SUITE

        examples = BUDGETS[self.budget].eval_examples
        if self.tasks is not None:
            return dict(self.tasks)
        return {name: examples or size for name, size in DEFAULT_SUITE.items()}


def main_job(options: RunOptions, log: Callable[[str], None] = logging.getLogger(__name__).info) -> dict[str, Any]:
    """Run (or finish) the pipeline in `options.out`; returns what `results.json` holds."""
    if options.budget not in BUDGETS:
        raise ValueError(f"unknown budget {options.budget!r}; choose one of {', '.join(BUDGETS)}")
    if options.precision not in PRECISIONS:
        raise ValueError(f"unknown precision {options.precision!r}; choose one of {', '.join(PRECISIONS)}")
    out = _claim_run_folder(options)
    steps = _Steps(options, out, log)
    started = time.perf_counter()
    results = {
        "liger_lm_version": __version__,
        "model": options.model,
        "model_note": DEFAULT_MODEL_NOTE if options.model == "default" else "",
        "liger": options.liger.to_dict(),
        "budget": {"name": options.budget, **asdict(BUDGETS[options.budget])},
        "precision": options.training_precision(),
        "machine": environment(torch.device("cpu")),
    }
    results["conversion"] = steps.convert()
    results["training"] = steps.train()
    results["scores"] = steps.evaluate()
    results["recovery"] = recovery(results["scores"]["base"], results["scores"]["liger"])
    results["perplexity_sample_text"] = steps.perplexities()
    results["generations"] = steps.generations()
    results["cache_bytes"] = steps.cache_bytes()
    results["seconds"] = {**steps.seconds, "this_invocation": round(time.perf_counter() - started, 1)}
    plot_recovery(results["scores"]["base"], results["scores"]["liger"], out / "recovery.png",
                  base_name="base", converted_name=f"Liger-{options.liger.gate} + LoRA")
    write_json_atomic(out / "results.json", results)
    write_text_atomic(out / "report.md", render_report(results))
    return results


def _claim_run_folder(options: RunOptions) -> Path:
    """Create the run folder, or check that an existing one was made with the same settings."""
    out, settings = Path(options.out), options.settings()
    record = out / "run.json"
    if out.exists() and options.overwrite:
        shutil.rmtree(out)
    if out.exists():
        if not record.is_file():
            raise OutputExistsError(f"{out} exists and is not a liger run folder; choose another --out or pass --overwrite")
        previous = json.loads(record.read_text(encoding="utf-8"))
        if previous != settings:
            changed = sorted(key for key in settings if previous.get(key) != settings[key])
            raise OutputExistsError(
                f"{out} holds a run with other settings ({', '.join(changed)} differ); "
                "choose another --out or pass --overwrite to start over"
            )
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(record, settings)
    return out


class _Steps:
    """The pipeline steps; each reuses its finished output, and models load only when a step needs them."""

    def __init__(self, options: RunOptions, out: Path, log: Callable[[str], None]) -> None:
        self.options, self.out, self.log = options, out, log
        self.seconds: dict[str, float] = {}
        self._base = self._liger = self._trained = self._tokenizer = None

    # --- models, loaded lazily -------------------------------------------------------------------------------
    def base(self) -> PreTrainedModel:
        if self._base is None:
            self._timed("load", lambda: self._load_base())
        return self._base

    def _load_base(self) -> None:
        self.log(f"loading {self.options.model} …")
        self._base, self._tokenizer = load_model(self.options.model)

    def tokenizer(self):
        if self._tokenizer is None:
            self.base()
        return self._tokenizer

    def untrained(self) -> PreTrainedModel:
        if self._liger is None:
            self._convert_once()
        if self._liger is None:
            self._liger, _ = load_model(str(self.out / "model"))
        return self._liger

    def trained(self) -> PreTrainedModel:
        if self._trained is None:
            self.train()
            if self._trained is None:
                self._trained, _ = load_model(str(self.out / "train" / "adapter"))
        return self._trained

    # --- steps -------------------------------------------------------------------------------------------------
    def convert(self) -> dict[str, Any]:
        self._convert_once()
        return {"folder": str(self.out / "model"), "parameters": sum(p.numel() for p in self.untrained().parameters())}

    def _convert_once(self) -> None:
        folder = self.out / "model"
        if not (folder / "config.json").is_file():
            base = self.base()
            self.log("converting (Liger) …")
            liger = self._timed("convert", lambda: convert(copy.deepcopy(base), self.options.liger))
            with atomic_directory(folder, overwrite=True) as staging:
                liger.save_pretrained(staging)
                self.tokenizer().save_pretrained(staging)
            self._liger = liger
        elif self._liger is None:
            self.log(f"reusing the converted model in {folder}")

    def train(self) -> dict[str, Any]:
        folder = self.out / "train"
        done = folder / "train_results.json"
        if done.is_file():
            self.log(f"reusing the fine-tune in {folder}")
            return json.loads(done.read_text(encoding="utf-8"))
        config = BUDGETS[self.options.budget].train_config(self.options.data, self.options.seed,
                                                           self.options.training_precision())
        resume = folder.exists()
        self.log(f"{'resuming' if resume else 'fine-tuning'}: {config.max_tokens:,} tokens, "
                 f"{config.max_steps()} steps of {config.grad_accum} × {config.seq_len} …")
        model = copy.deepcopy(self.untrained())
        result = self._timed("train", lambda: train(
            model, self.tokenizer(), config, folder, resume=resume, base_path=self.out / "model"
        ))
        self._trained = result.model.merge_and_unload().eval()
        return result.results

    def evaluate(self) -> dict[str, dict]:
        tasks = self.options.task_sizes()
        scores = {}
        for role, model in (("base", self.base), ("liger", self.trained)):
            path = self.out / "eval" / f"{role}.json"
            if path.is_file():
                self.log(f"reusing {path}")
                scores[role] = json.loads(path.read_text(encoding="utf-8"))
                continue
            self.log(f"evaluating the {role} model on {', '.join(f'{t} ({n})' for t, n in tasks.items())} …")
            scores[role] = self._timed(f"eval_{role}", lambda: evaluate_suite(
                model(), self.tokenizer(), tasks, seed=self.options.seed
            ))
            write_json_atomic(path, scores[role])
        return scores

    def perplexities(self) -> dict[str, Any]:
        text = sample_text()
        values = {}
        for name, model in (("base", self.base), ("liger_untrained", self.untrained), ("liger", self.trained)):
            values[name], tokens = text_perplexity(model(), self.tokenizer(), text)
            values[name] = round(values[name], 2)
        return {"tokens": tokens, **values}

    def generations(self) -> list[dict[str, str]]:
        prompts, limit = self.options.prompts, self.options.max_new_tokens
        base = generate_text(self.base(), self.tokenizer(), prompts, max_new_tokens=limit)
        liger = generate_text(self.trained(), self.tokenizer(), prompts, max_new_tokens=limit)
        return [{"prompt": p, "base": b, "liger": c} for p, b, c in zip(prompts, base, liger)]

    @torch.no_grad()
    def cache_bytes(self, lengths=(128, 1024)) -> dict[str, dict[int, int]]:
        """Decode-cache bytes per sequence after a prefill of each length: the base model's grows, Liger's does not."""
        sizes: dict[str, dict[int, int]] = {"base": {}, "liger": {}}
        generator = torch.Generator().manual_seed(self.options.seed)
        for length in lengths:
            ids = torch.randint(3, self.tokenizer().vocab_size, (1, length), generator=generator)
            for name, model in (("base", self.base()), ("liger", self.trained())):
                cache = DynamicCache(config=model.config)
                model(ids.to(model.device), **with_cache(cache), use_cache=True)
                sizes[name][length] = cache_bytes(cache)
        return sizes

    def _timed(self, name: str, work: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        value = work()
        self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - started, 1)
        gc.collect()
        return value


def render_report(results: dict[str, Any]) -> str:
    """The Markdown report of a run."""
    liger, training, rec = results["liger"], results["training"], results["recovery"]
    ppl, sec = results["perplexity_sample_text"], results["seconds"]
    lines = [
        "# liger-lm run",
        "",
        f"- model: {results['model']}" + (f" ({results['model_note']})" if results["model_note"] else ""),
        f"- conversion: gate={liger['gate']}, window={liger['window']}, α={liger['rec_weight']}, "
        f"β={liger['swa_weight']}, softmax layers={liger['softmax_layers'] or 'none'}; "
        f"{results['conversion']['parameters']:,} parameters (none added)",
        f"- fine-tune: {training['tokens_trained']:,} tokens (budget '{results['budget']['name']}'), LoRA "
        f"r={training['config']['lora_r']} on {', '.join(training['config']['lora_targets'])}, "
        f"objective {training['config']['objective']}; held-out loss {training['eval_loss_before']} → "
        f"{training['eval_loss_after']}",
        "- time of this invocation (s): " + ", ".join(f"{k} {v}" for k, v in sec.items()),
        "",
        f"## Zero-shot tasks ({rec['metric']}, ×100): recovery {rec['average']:.1f} %",
        "",
        recovery_table_markdown(results["scores"]["base"], results["scores"]["liger"], base_name="base",
                                converted_name="Liger + LoRA"),
        "For comparison, the paper (different, larger models and tasks; 0.02 B training tokens):",
        "",
        "| model | base avg | Liger avg | recovery % |",
        "|---|---:|---:|---:|",
        *(f"| {name} | {b} | {c} | {100 * c / b:.1f} |" for name, b, c in PAPER_RESULTS),
        "",
        f"## Perplexity of the package sample text ({ppl['tokens']} tokens)",
        "",
        "| base | Liger before fine-tuning | Liger after |",
        "|---:|---:|---:|",
        f"| {ppl['base']} | {ppl['liger_untrained']} | {ppl['liger']} |",
        "",
        "## Decode cache per sequence",
        "",
        "| context tokens | base KV cache | Liger state + window |",
        "|---|---|---|",
    ]
    cache = results["cache_bytes"]
    for length in cache["base"]:
        lines.append(f"| {length} | {_mb(cache['base'][length])} | {_mb(cache['liger'][length])} |")
    lines += ["", "## Greedy generations", ""]
    for item in results["generations"]:
        lines += [f"**Prompt:** {item['prompt']}", "", f"- base: {item['base']!r}", f"- Liger: {item['liger']!r}", ""]
    return "\n".join(lines)


def _mb(num_bytes: int) -> str:
    return f"{num_bytes / 2**20:.2f} MiB"
