"""The main job (`liger run` / `make run`): load → convert → fine-tune → evaluate base and Liger → report.

Conversion and fine-tune follow a named preset (`liger_lm.presets`; `paper` is the paper's recipe). The run folder
holds one output per step, each written atomically, and `run.json` with the settings:
    model/               the converted (untrained) model                      step 1, convert
    train/               the fine-tune (checkpoints, metrics.jsonl, adapter/)  step 2, train (resumable)
    eval/base.json       task scores of the base model                        step 3, evaluate
    eval/liger.json      task scores of the fine-tuned Liger model
    eval/prose.json      held-out prose perplexity of base, untrained and fine-tuned Liger (and its recurrent
                         branch zeroed), overall (Quoref's passages) and by position in 4K-token windows of a novel
    results.json, report.md, recovery.png                                     step 4, report
Running again with the same settings reuses every finished step (and resumes an interrupted fine-tune);
different settings are refused unless `overwrite`, which builds the new run in `.<out>.new` beside the old one and
puts it in place only once it is complete. Every input is checked before anything is written.
"""

from __future__ import annotations

import copy
import gc
import json
import logging
import math
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn
from transformers import DynamicCache, PreTrainedModel

from . import __version__
from .compat import with_cache
from .convert import convert, write_model_card
from .data.instructions import LOCAL_SUFFIXES, load_instruction_records
from .data.prose import held_out_novel, held_out_prose
from .data.tasks import TASKS, local_task_examples
from .evaluation import (
    HELD_OUT_WINDOWS,
    evaluate_suite,
    long_context_ratio,
    perplexity,
    perplexity_ratio,
    plot_recovery,
    recovery,
    render_report,
)
from .evaluation.perplexity import POSITION_BUCKETS
from .modeling.attention import linearized_mixers
from .generation import generate_text
from .hardware import environment
from .errors import DataError, TrainConfigError
from .io import (
    OutputExistsError,
    atomic_directory,
    check_writable,
    output_lock,
    replace_folder,
    staging_folder,
    write_json_atomic,
    write_text_atomic,
)
from .modeling.cache import cache_bytes
from .models import DEFAULT_MODEL_NOTE, check_convertible, load_model
from .training import train
from .training.config import PRECISIONS
from .run_config import BUDGETS, RunOptions


def main_job(options: RunOptions, log: Callable[[str], None] = logging.getLogger(__name__).info) -> dict[str, Any]:
    """Run (or finish) the pipeline in `options.out`; returns what `results.json` holds."""
    if options.budget not in BUDGETS:
        raise TrainConfigError(f"unknown budget {options.budget!r}; choose one of {', '.join(BUDGETS)}")
    if options.precision not in PRECISIONS:
        raise TrainConfigError(f"unknown precision {options.precision!r}; choose one of {', '.join(PRECISIONS)}")
    check_inputs(options)
    out = Path(options.out)
    check_writable(out)
    with output_lock(out):  # a second `liger run` on the same folder is refused
        work = _claim_run_folder(options)
        results = _run_steps(options, _Steps(options, work, log, final=out))
        if work != out:
            replace_folder(work, out)  # --overwrite: only now, complete, does the new run replace the old one
    return results


def check_inputs(options: RunOptions) -> None:
    """Fail on bad data, task files or task names, and on a model folder that cannot be converted, before anything
    is written (or, with `overwrite`, replaced) and before the slow steps."""
    options.train_config().validate()
    if options.data.lower().endswith(LOCAL_SUFFIXES):
        load_instruction_records(options.data)
    for name in options.task_sizes():
        if name.endswith(".jsonl"):
            local_task_examples(Path(name))
        elif name not in TASKS:
            raise DataError(f"unknown task {name!r}; available tasks: {', '.join(TASKS)}, or a .jsonl file of "
                            '{"query", "choices", "label"} lines')
    check_convertible(options.model)


def _run_steps(options: RunOptions, steps: _Steps) -> dict[str, Any]:
    """Every step in order (each reusing its finished output), then results.json, report.md and recovery.png."""
    started = time.perf_counter()
    results = {
        "liger_lm_version": __version__,
        "model": options.model,
        "model_note": DEFAULT_MODEL_NOTE if options.model == "default" else "",
        "preset": options.preset,
        "liger": options.liger.to_dict(),
        "budget": {"name": options.budget, **asdict(BUDGETS[options.budget])},
        "precision": options.training_precision(),
        "machine": environment(torch.device("cpu")),
    }
    results["conversion"] = steps.convert()
    results["training"] = steps.train()
    results["scores"] = steps.evaluate()
    results["recovery"] = recovery(results["scores"]["base"], results["scores"]["liger"])
    results["prose"] = steps.prose()
    results["generations"] = steps.generations()
    results["cache_bytes"] = steps.cache_bytes()
    results["warnings"] = findings(results)
    results["seconds"] = {**steps.seconds, "this_invocation": round(time.perf_counter() - started, 1)}
    plot_recovery(results["scores"]["base"], results["scores"]["liger"], steps.out / "recovery.png",
                  base_name="base", converted_name=f"Liger-{options.liger.gate} + LoRA")
    write_json_atomic(steps.out / "results.json", results)
    write_text_atomic(steps.out / "report.md", render_report(results))
    return results


def _claim_run_folder(options: RunOptions) -> Path:
    """The folder this invocation writes: `out`, new or made with the same settings (its finished steps are reused),
    or with `overwrite` `.<out>.new` beside it, which replaces `out` once the run is complete (`main_job`)."""
    out, settings = Path(options.out), options.settings()
    record = out / "run.json"
    if out.exists() and options.overwrite:
        work = staging_folder(out)
        if work.exists():
            shutil.rmtree(work)  # an earlier --overwrite that did not finish: this one starts over
        work.mkdir(parents=True)
        write_json_atomic(work / "run.json", settings)
        return work
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

    def __init__(self, options: RunOptions, out: Path, log: Callable[[str], None], final: Path | None = None) -> None:
        self.options, self.out, self.log = options, out, log
        self.final = final or out  # where `out` ends up (`overwrite` builds beside it): the path written into files
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
        return {"folder": str(self.final / "model"), "parameters": sum(p.numel() for p in self.untrained().parameters())}

    def _convert_once(self) -> None:
        folder = self.out / "model"
        if not (folder / "config.json").is_file():
            base = self.base()
            self.log("converting (Liger) …")
            liger = self._timed("convert", lambda: convert(copy.deepcopy(base), self.options.liger))
            with atomic_directory(folder, overwrite=True) as staging:
                liger.save_pretrained(staging)
                self.tokenizer().save_pretrained(staging)
                write_model_card(staging)
            self._liger = liger
        elif self._liger is None:
            self.log(f"reusing the converted model in {folder}")

    def train(self) -> dict[str, Any]:
        folder = self.out / "train"
        done = folder / "train_results.json"
        if done.is_file():
            self.log(f"reusing the fine-tune in {folder}")
            return json.loads(done.read_text(encoding="utf-8"))
        config = self.options.train_config()
        resume = folder.exists()
        stages = " → ".join(stage.objective for stage in config.validate().stages) or config.objective
        self.log(f"{'resuming' if resume else 'fine-tuning'} ({stages}): {config.max_tokens:,} tokens, "
                 f"{config.max_steps()} steps of {config.grad_accum} × {config.seq_len} …")
        model = copy.deepcopy(self.untrained())
        result = self._timed("train", lambda: train(
            model, self.tokenizer(), config, folder, resume=resume, base_path=self.final / "model"
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
            scored = model()
            with self._evaluation_precision(scored):
                scores[role] = self._timed(f"eval_{role}", lambda: evaluate_suite(
                    scored, self.tokenizer(), tasks, seed=self.options.seed))
            write_json_atomic(path, scores[role])
        return scores

    def prose(self) -> dict[str, Any]:
        """Held-out prose perplexity (`perplexity` in its held-out layout) of each model, and the ratios to the base
        model."""
        tokens = BUDGETS[self.options.budget].prose_tokens
        if not tokens:
            return {}
        path = self.out / "eval" / "prose.json"
        if path.is_file():
            self.log(f"reusing {path}")
            return json.loads(path.read_text(encoding="utf-8"))
        text, novel = held_out_prose(), held_out_novel()
        models = {"base": self.base, "liger_untrained": self.untrained, "liger": self.trained}

        def held_out(model: PreTrainedModel) -> dict[str, Any]:
            with self._evaluation_precision(model):
                return perplexity(model, self.tokenizer(), text, max_tokens=tokens, long_text=novel,
                                  **HELD_OUT_WINDOWS).to_dict()

        values = {}
        for name, model in models.items():
            self.log(f"held-out prose perplexity of the {name} model ({tokens:,} tokens) …")
            values[name] = self._timed(f"prose_{name}", lambda: held_out(model()))
        if self.options.liger.rec_weight and self.options.liger.swa_weight:
            self.log("… and with its recurrent branch zeroed (is it used?) …")
            with recurrent_branch_off(self.trained()):
                values["liger_recurrent_off"] = self._timed("prose_liger_recurrent_off", lambda: held_out(self.trained()))
        ratios = {name: perplexity_ratio(result, values["base"]) for name, result in values.items() if name != "base"}
        prose = {"source": "Quoref Wikipedia passages (BIG-bench NI subtasks 001-002), never trained on",
                 "long_source": "the novel Botchan (Natsume, tr. Morri 1919; Project Gutenberg #8868, from the "
                                "sentencepiece 0.2.0 sdist), never trained on",
                 **values, "ratio_to_base": ratios}
        if "liger_recurrent_off" in values:
            prose["recurrent_branch_zeroed"] = branch_ablation(values["liger_recurrent_off"], values["liger"])
        write_json_atomic(path, prose)
        return prose

    def generations(self) -> list[dict[str, str]]:
        prompts, limit = self.options.prompts, self.options.max_new_tokens
        base = generate_text(self.base(), self.tokenizer(), prompts, max_new_tokens=limit)
        liger = generate_text(self.trained(), self.tokenizer(), prompts, max_new_tokens=limit)
        return [{"prompt": p, "base": b, "liger": c} for p, b, c in zip(prompts, base, liger)]

    @torch.no_grad()
    def cache_bytes(self, lengths=(1024, 4096)) -> dict[str, dict[int, int]]:
        """Decode-cache bytes per sequence after a prefill of each length: the base model's grows, Liger's does not
        (both lengths are past the presets' windows, whose buffers fill over the first `window + sinks` tokens)."""
        sizes: dict[str, dict[int, int]] = {"base": {}, "liger": {}}
        generator = torch.Generator().manual_seed(self.options.seed)
        for length in lengths:
            ids = torch.randint(3, self.tokenizer().vocab_size, (1, length), generator=generator)
            for name, model in (("base", self.base()), ("liger", self.trained())):
                cache = DynamicCache(config=model.config)
                model(ids.to(model.device), **with_cache(cache), use_cache=True)
                sizes[name][length] = cache_bytes(cache)
        return sizes

    def _evaluation_precision(self, model: PreTrainedModel):
        """`evaluation_precision` in this run's precision, as resolved here (the fine-tune's)."""
        return evaluation_precision(model, bf16=self.options.training_precision() == "bf16")

    def _timed(self, name: str, work: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        value = work()
        self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - started, 1)
        gc.collect()
        return value


@contextmanager
def evaluation_precision(model: nn.Module, bf16: bool) -> Iterator[None]:
    """Inside the block `model` scores under bf16 autocast (with `bf16`; otherwise as it is): `liger run` evaluates
    in its `precision`, as it fine-tunes. On the default model with native bf16 that is 1.4–1.5× faster at × 1.0004
    in held-out perplexity (`scripts/eval_precision.py`, README); base and Liger models are scored alike, so their
    ratios stay paired, and the Liger recurrence keeps fp32 inside (`ops.recurrence`).

    Autocast keeps the bf16 copy of a weight for the whole block only if the weight requires grad (a frozen one is
    cast again at every call: 2× slower forwards of 32 tokens on the default model), so frozen weights (a fine-tuned
    model merged from LoRA) require grad inside and are frozen again after; scoring runs without gradients anyway."""
    if not bf16:
        yield
        return
    frozen = [p for p in model.parameters() if not p.requires_grad and p.is_floating_point()]
    try:
        for parameter in frozen:
            parameter.requires_grad_(True)
        with torch.autocast(next(model.parameters()).device.type, dtype=torch.bfloat16):
            yield
    finally:
        for parameter in frozen:
            parameter.requires_grad_(False)


@contextmanager
def recurrent_branch_off(model: nn.Module) -> Iterator[None]:
    """Inside the block every Liger mixer runs with rec_weight = 0 (the ablation: α·0 + β·o_swa; for
    combine="shared", the window alone)."""
    mixers = linearized_mixers(model)
    saved = [m.liger for m in mixers]
    for mixer in mixers:
        # combine="shared" weighs its branches by the shared softmax, not by α/β: off, the window keeps weight 1.
        swa_weight = 1.0 if mixer.liger.combine == "shared" else mixer.liger.swa_weight
        mixer.liger = mixer.liger.replace(rec_weight=0.0, swa_weight=swa_weight)
    try:
        yield
    finally:
        for mixer, config in zip(mixers, saved):
            mixer.liger = config


def branch_ablation(zeroed: dict[str, Any], used: dict[str, Any]) -> dict[str, Any]:
    """What zeroing the recurrent branch does to the fine-tuned model's held-out perplexity: the ratio zeroed / used,
    paired over the same windows with its standard error (`perplexity_ratio`), the ratio in each position bucket
    of the long windows, and `far` = the ratio past the first 1,024 tokens of the long windows, far beyond the
    window, paired over blocks (`long_context_ratio`): what the branch alone can carry."""
    return {**perplexity_ratio(zeroed, used),
            "by_position": {span: round(zeroed["by_position"][span] / value, 4)
                            for span, value in used["by_position"].items()},
            "far": {"from_position": POSITION_BUCKETS[-1], "block": used["block"], **long_context_ratio(zeroed, used)}}


def findings(results: dict[str, Any]) -> list[str]:
    """What looks broken in a run, in words: empty answers, a cache that does not hold anything, a perplexity far
    above the base model's, a recurrent branch that nothing depends on or that hurts past the training length."""
    found = []
    for item in results["generations"]:
        if not item["liger"].strip():
            found.append(f"the Liger model answered {item['prompt']!r} with an empty string")
    for length, size in results["cache_bytes"]["liger"].items():
        if size <= 0:
            found.append(f"the Liger decode cache after {length} tokens holds 0 bytes")
    prose = results.get("prose", {})
    ratios = prose.get("ratio_to_base", {})
    if ratios.get("liger", {}).get("ratio", 0) > 2:
        found.append(f"held-out perplexity is {ratios['liger']['ratio']:.2f}× the base model's (above 2×)")
    far = prose.get("recurrent_branch_zeroed", {}).get("far")
    if far:
        # Used = zeroing it worsens the perplexity far beyond the window by more than two paired standard errors.
        change = f"perplexity × {far['ratio']}, ± e^{far['log_ratio_se']}"
        where = f"at positions {far['from_position']:,} and later of the long windows"
        if math.log(far["ratio"]) < -2 * far["log_ratio_se"]:
            found.append(f"{where} the model is better with its recurrent branch zeroed ({change}): the branch hurts")
        elif math.log(far["ratio"]) <= 2 * far["log_ratio_se"]:
            found.append(f"zeroing the recurrent branch does not measurably hurt {where} ({change}): the trained "
                         "model does not use it")
    return found
