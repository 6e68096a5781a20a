"""Step 2 of the pipeline: recover quality with a LoRA fine-tune on `transformers.Trainer`.

`train(model, tokenizer, TrainConfig(...), out)` writes into `out`:
    checkpoints/<stage>/checkpoint-N/   Trainer checkpoints per stage ("finetune"; staged runs "1-attn", "2-kd", …;
                                        LoLCATs "transfer", "finetune"); a `COMPLETE` marker is written last, and only marked
                                        checkpoints are resumed from (a run killed while saving loses nothing)
    metrics.jsonl                       one line per logged step / evaluation
    <stage>.safetensors                 what each stage before the last trained (LoRA, LoLCATs feature maps),
                                        written when it finished: a resumed run skips the stages that have one
    adapter/                            the LoRA adapter (peft; plus LoLCATs feature maps) and the tokenizer
    merged/                             with `merge=True`: a standalone converted model (AutoModelForCausalLM)
    train_config.json                   the settings the run was started with: a resume with others is refused
    train_results.json                  tokens, steps, losses, held-out loss and perplexity before / after
With `overwrite`, an existing run is replaced only once the new one is finished: the new run is built in
`.<out>.new` beside it (a resume continues it there) and then renamed into place.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
import zipfile
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainerCallback, TrainingArguments, set_seed

from ..compat import peft_quietly
from ..convert import is_converted, write_model_card
from ..errors import NonFiniteLossError, ResumeError
from ..hardware import fast_bf16, resolve_device
from ..io import (
    OutputExistsError,
    atomic_directory,
    atomic_file,
    output_lock,
    replace_folder,
    staging_folder,
    write_json_atomic,
    write_text_atomic,
)
from ..modeling.attention import linearized_mixers
from .config import TrainConfig, TrainConfigError, stage_plan
from .data import training_data
from .objectives import objective_loss

COMPLETE = "COMPLETE"
SETTINGS = "train_config.json"
# Settings a resumed run may change: they decide when checkpoints are saved, losses logged and evaluated, and whether
# merged weights are written at the end, not what is trained.
FREE_ON_RESUME = ("save_every", "eval_every", "evals_per_stage", "log_every", "merge", "progress")
logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    model: PreTrainedModel  # the trained model (a peft model, or the merged model when merge=True)
    results: dict[str, Any]  # what train_results.json holds
    finished_earlier: bool = False  # resume=True found the run finished: nothing was trained, results are the stored ones


def train(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    config: TrainConfig | None = None,
    out: str | Path = "runs/train",
    *,
    resume: bool = False,
    overwrite: bool = False,
    base_path: str | Path | None = None,
    callbacks: list[TrainerCallback] | tuple = (),
) -> TrainResult:
    """Fine-tune a converted model (in place) and write the run folder described in the module docstring.

    Args:
        model: a model converted with `liger_lm.convert` (or loaded from a Liger checkpoint).
        config: settings (default `TrainConfig()`, the paper's). LoLCATs models run LoLCATs' two stages.
        out: the run folder. It must not exist unless `resume` (continue its last complete checkpoint, with the
            settings it was started with; a finished run is returned as it is) or `overwrite` (start over: the new
            run replaces the old one once it is finished).
        base_path: where the converted base model is saved, recorded in the adapter so it can be loaded alone.
        callbacks: extra `transformers.TrainerCallback`s.
    """
    config = (config or TrainConfig()).validate()
    if not is_converted(model):
        raise TrainConfigError("the model is not converted; run liger_lm.convert(model) (or `liger convert`) first")
    started = time.perf_counter()
    plan = stage_plan(config, model.config.liger.get("method", "liger"))
    _check_fits(model, plan)
    # Multi-process runs (`accelerate launch`, torchrun): every process trains, but process 0 alone writes the run
    # folder's shared files (out/, metrics.jsonl, checkpoint markers, adapter, results) while the others wait, so no
    # two processes race on one path. Single-process runs: one process, the waits do nothing.
    processes = _processes()
    target = Path(out)
    # Another process writing this run is refused. Multi-process launches are not locked: a refusal in process 0
    # alone would leave the others waiting for it.
    with output_lock(target) if processes.num_processes == 1 else nullcontext():
        work = _work_folder(target, resume, overwrite)
        if resume:
            _check_resumable(work, config)
            if _finished(work, plan, processes.num_processes):
                return _finished_run(model, work)
        # Data first: bad data fails before anything is created or replaced. Each stage trains on the records after
        # those of the stage before it.
        stage_data, used = [], 0
        for _, stage in plan:
            stage_data.append(training_data(tokenizer, stage, skip_records=used))
            used += stage_data[-1][2]["train"]["records"]
        _prepare_out(target, work, config, resume, overwrite, processes)
        history = []
        for index, ((name, stage), data) in enumerate(zip(plan, stage_data)):
            # A resumed run skips the stages an earlier run finished (the last one resumes from its checkpoint).
            last = index == len(plan) - 1
            previous = plan[index - 1][0] if index else None
            model, summary = _run_stage(model, data, stage, work, name, resume, callbacks, processes, last, previous,
                                        base_path)
            history.append({"stage": name, "objective": stage.objective, **summary})
        results = _finish(model, tokenizer, config, work, history, started, processes)
        if config.merge:
            model = _merge(model, tokenizer, work, processes)
        if work != target and processes.is_main_process:
            replace_folder(work, target)  # only now is the run that --overwrite replaces gone
        processes.wait_for_everyone()
    return TrainResult(model=model, results=results)


def _processes() -> PartialState:
    """The launch's processes: the state `TrainingArguments(use_cpu=…)` sets up, created early for `_prepare_out`."""
    return PartialState(cpu=resolve_device().type == "cpu")


def _check_fits(model: nn.Module, plan: list[tuple[str, TrainConfig]]) -> None:
    """Refuse settings the model cannot train with, before anything is written: rows longer than its positions, LoRA
    targets that name none of its modules (peft would quietly train the others)."""
    limit = getattr(model.config, "max_position_embeddings", None)
    seq_len = plan[0][1].seq_len
    if limit and seq_len > limit:
        raise TrainConfigError(f"seq_len={seq_len} exceeds the model's {limit} positions (max_position_embeddings); "
                               f"lower --seq-len to {limit} or less")
    names = [name for name, _ in model.named_modules()]
    for _, stage in plan:
        unknown = [t for t in stage.lora_targets if not any(n == t or n.endswith("." + t) for n in names)]
        if stage.use_lora and unknown:
            linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
            raise TrainConfigError(f"lora_targets {unknown} name no module of this model; its linear layers are "
                                   f"{', '.join(linear)}: fix --lora-targets")


def _work_folder(out: Path, resume: bool, overwrite: bool) -> Path:
    """Where the run is written: `out`, or `.<out>.new` beside it when `overwrite` replaces an existing run (renamed into
    place once finished). `resume` continues such an unfinished replacement if there is one."""
    staging = staging_folder(out)
    if resume:
        return staging if staging.is_dir() else out
    return staging if overwrite and out.exists() else out


def _prepare_out(out: Path, work: Path, config: TrainConfig, resume: bool, overwrite: bool, processes) -> None:
    """Create the run folder `work` (a fresh one unless resuming) and record the run's settings in it."""
    exists = out.exists()
    processes.wait_for_everyone()  # all processes look before process 0 creates it (else the others would refuse it)
    if exists and not (resume or overwrite):
        raise OutputExistsError(f"{out} already exists; pass --resume to continue it, --overwrite to start over")
    if processes.is_main_process:
        if work != out and not resume and work.exists():
            shutil.rmtree(work)  # what an earlier, unfinished --overwrite left: this one starts over
        work.mkdir(parents=True, exist_ok=True)
        if not (work / SETTINGS).is_file():
            write_json_atomic(work / SETTINGS, _settings(config))
    processes.wait_for_everyone()


def _settings(config: TrainConfig) -> dict[str, Any]:
    return json.loads(json.dumps(config.to_dict()))  # as read back from train_config.json


def _check_resumable(folder: Path, config: TrainConfig) -> None:
    """Refuse to resume `folder` with other settings than it was started with (the checkpoint would be trained on
    with a different schedule, or not fit a differently shaped adapter)."""
    record = folder / SETTINGS
    if record.is_file():  # runs started before settings were recorded are resumed unchecked
        try:
            started = json.loads(record.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ResumeError(f"{record} is damaged ({err}); pass --overwrite to start the run over") from None
        now = _settings(config)
        changed = [f"{name} {started.get(name)!r} → {value!r}" for name, value in now.items()
                   if name not in FREE_ON_RESUME and started.get(name) != value]
        if changed:
            raise ResumeError(f"{folder} was started with other settings ({'; '.join(changed)}); resume it with the "
                              "settings it was started with, or pass --overwrite to start over")


def _finished(folder: Path, plan: list[tuple[str, TrainConfig]], world_size: int) -> bool:
    """Whether the run in `folder` trained its whole budget (one stopped early by a callback also writes results)."""
    try:
        last = json.loads((folder / "train_results.json").read_text(encoding="utf-8"))["stages"][-1]
    except (OSError, json.JSONDecodeError, KeyError, IndexError):
        return False
    return last.get("steps", 0) >= plan[-1][1].max_steps(world_size)


def _finished_run(model: PreTrainedModel, folder: Path) -> TrainResult:
    """A resumed run that had already finished: its stored results and its trained adapter, nothing trained."""
    results = json.loads((folder / "train_results.json").read_text(encoding="utf-8"))
    if (folder / "adapter" / "adapter_config.json").is_file():
        with peft_quietly():
            model = PeftModel.from_pretrained(model, str(folder / "adapter"))
    logger.info("%s is finished already: nothing to resume", folder)
    return TrainResult(model=model, results=results, finished_earlier=True)


def _run_stage(model, data, config: TrainConfig, out: Path, name: str, resume: bool, callbacks, processes, last: bool,
               previous: str | None = None, base_path: str | Path | None = None):
    """Train one stage on `data` (from `training_data`); returns the (maybe peft-wrapped) model and a loss summary.
    `previous`: the stage before it, whose last held-out evaluation is this stage's first (the same weights and
    held-out records), carried over instead of evaluated again."""
    set_seed(config.seed)
    model = trainable(model, config)
    _record_base(model, base_path)  # before any checkpoint: peft asks the Hub about a base path with no config.json
    finished = out / f"{name}.safetensors"  # what a stage before the last trained, written when it finished
    if resume and not last and finished.is_file():
        _load_trained(model, finished)  # finished in an earlier run: the later stages continue from it
        return model, {"skipped": "finished in an earlier run"}
    train_set, eval_set, data_stats = data
    checkpoints = out / "checkpoints" / name
    start_from, damaged = _resume_point(checkpoints) if resume else (None, [])
    processes.wait_for_everyone()  # all processes chose start_from before process 0 changes the folder
    if processes.is_main_process:
        MetricsLog.truncate(out / "metrics.jsonl", name, step=_step_of(start_from) if start_from else 0)
        if start_from is None and previous is not None:
            MetricsLog.carry_over(out / "metrics.jsonl", previous, name)
        _remove_incomplete(checkpoints)
        for checkpoint in damaged:
            shutil.rmtree(checkpoint)
    processes.wait_for_everyone()
    # The held-out loss before training, logged at step 0: by the Trainer (eval_on_start), not a trainer.evaluate()
    # before trainer.train(): that marks the model as prepared by accelerate, so train() would no longer wrap it in
    # DistributedDataParallel and the processes of a multi-process run would train apart, unsynchronised.
    eval_first = start_from is None and len(eval_set) > 0 and previous is None
    trainer = RecoveryTrainer(
        model=model,
        args=_training_arguments(config, checkpoints, len(eval_set) > 0, processes.num_processes, eval_first),
        train_dataset=train_set,
        eval_dataset=eval_set if len(eval_set) else None,
        callbacks=[MetricsLog(out / "metrics.jsonl", name), MarkComplete(), *callbacks],
        objective=config.objective,
        kd_temperature=config.kd_temperature,
        lr_scales=_lr_scales(model, config),
    )
    output = trainer.train(resume_from_checkpoint=str(start_from) if start_from else None)
    # Decided from the Trainer's own log (the same in every process), not metrics.jsonl (written by process 0 alone):
    # evaluate() is collective, so a process that skipped it while another ran it would hang.
    evaluated = [r for r in trainer.state.log_history if "eval_loss" in r]
    if len(eval_set) and (not evaluated or evaluated[-1].get("step") != trainer.state.global_step):
        trainer.evaluate()  # unless the schedule just evaluated at the last step
    if processes.is_main_process and not last:  # the last stage's result is the adapter
        _save_trained(model, finished)
    processes.wait_for_everyone()  # process 0 has logged every evaluation: all processes read the same losses
    before = MetricsLog.first_eval(out / "metrics.jsonl", name)
    after = MetricsLog.last_eval(out / "metrics.jsonl", name)
    return model, {
        "steps": trainer.state.global_step,
        "tokens_seen": int(trainer.state.num_input_tokens_seen),
        "train_loss": round(output.training_loss, 4),
        "eval_loss_before": _loss(before),
        "eval_loss_after": _loss(after),
        "eval_perplexity_before": _ppl(before),
        "eval_perplexity_after": _ppl(after),
        "resumed_from": str(start_from.relative_to(out)) if start_from else None,
        "data": data_stats,
    }


def trainable(model: nn.Module, config: TrainConfig) -> nn.Module:
    """Wrap with LoRA (peft) and freeze everything else; LoLCATs feature maps train only in stage 1, the Liger
    `rec_logit` (combine="shared") and feature projections (learned_features) whenever LoRA does."""
    if config.use_lora:
        present = {n.split(".")[-1] for n, _ in model.named_modules()}
        learned = [name for name in (*_declared(model, "stage_one_modules"), *_declared(model, "with_lora_modules"))
                   if name in present]
        lora = LoraConfig(
            r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
            target_modules=list(config.lora_targets), task_type="CAUSAL_LM",
            # Modules with new parameters (trained now or in an earlier stage) go into the adapter, so it is complete.
            modules_to_save=learned or None,
        )
        if not isinstance(model, PeftModel):
            with peft_quietly():
                model = get_peft_model(model, lora)
    stage_one, with_lora_modules = _declared(model, "stage_one_modules"), _declared(model, "with_lora_modules")
    for name, param in model.named_parameters():
        in_stage_one = _in_modules(name, stage_one)
        # peft's modules_to_save keeps the untrained original beside the trained copy: only the copy trains.
        with_lora = _in_modules(name, with_lora_modules) and "original_module" not in name.split(".")
        is_lora = "lora_" in name
        param.requires_grad = ((config.use_lora and (is_lora or with_lora))
                               or (config.train_feature_maps and in_stage_one))
    if not any(p.requires_grad for p in model.parameters()):
        raise TrainConfigError("no trainable parameters: check lora_targets against the model's module names")
    return model


def _declared(model: nn.Module, kind: str) -> tuple[str, ...]:
    """The submodule names the model's mixers declare as theirs (`LinearizedAttention.stage_one_modules` or
    `.with_lora_modules`)."""
    return tuple(sorted({name for mixer in linearized_mixers(model) for name in getattr(mixer, kind)}))


def _lr_scales(model: nn.Module, config: TrainConfig) -> dict[str, float]:
    """Submodule name → multiplier of the learning rate, as the model's mixers declare (`LinearizedAttention.lr_scales`
    names the `TrainConfig` field that holds it)."""
    mixers = linearized_mixers(model)
    return {name: getattr(config, field_name) for mixer in mixers for name, field_name in mixer.lr_scales.items()}


def _in_modules(parameter_name: str, modules: tuple[str, ...]) -> bool:
    """Whether the parameter lives in a submodule named in `modules` (at any depth)."""
    return any(part in modules for part in parameter_name.split("."))


def _training_arguments(
    config: TrainConfig, checkpoints: Path, has_eval: bool, world_size: int = 1, eval_first: bool = False
) -> TrainingArguments:
    steps = config.max_steps(world_size)  # an optimizer step takes a batch from every process: the budget is the total
    return TrainingArguments(
        output_dir=str(checkpoints),
        max_steps=steps,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.lr,
        lr_scheduler_type=config.schedule,
        warmup_steps=config.warmup,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        optim="adamw_torch",
        bf16=use_bf16(config.precision),
        # Trainer refuses bf16 without a GPU unless told it is on the CPU ("Your setup doesn't support bf16/gpu").
        use_cpu=resolve_device().type == "cpu",
        eval_strategy="steps" if has_eval else "no",
        eval_on_start=eval_first,
        # and at the stage's end, whatever the spacing (`_run_stage`)
        eval_steps=config.eval_every or max(1, math.ceil(steps / config.evals_per_stage)),
        save_strategy="steps",
        save_steps=config.save_every or max(1, steps // 10),
        save_total_limit=2,
        logging_steps=config.log_every,
        include_num_input_tokens_seen="non_padding",
        label_names=["labels"],
        # Multi-process runs: the attention-transfer loss comes from hooks inside the layers, not from the outputs that
        # DistributedDataParallel traces for unused parameters, so with that tracing the feature maps would be marked
        # ready twice (a RuntimeError); every feature map gets its gradient from the loss anyway.
        ddp_find_unused_parameters=False if config.objective == "attn" else None,
        remove_unused_columns=False,
        dataloader_pin_memory=False,
        disable_tqdm=not config.progress,
        report_to="none",
        seed=config.seed,
        data_seed=config.seed,
        **config.extra,
    )


def use_bf16(precision: str) -> bool:
    """bf16 autocast for "bf16", and for "auto" where the hardware runs it natively (`hardware.fast_bf16`)."""
    if precision != "auto":
        return precision == "bf16"
    return fast_bf16(resolve_device())


class RecoveryTrainer(Trainer):
    """`Trainer` with the recovery objectives; evaluation always reports next-token CE (comparable across objectives)."""

    # compute_loss returns per-micro-batch means; the Trainer divides them by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, *args, objective: str = "ce", kd_temperature: float = 1.0,
                 lr_scales: dict[str, float] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.objective = objective
        self.kd_temperature = kd_temperature
        self.lr_scales = {name: scale for name, scale in (lr_scales or {}).items() if scale != 1}

    def create_optimizer(self):
        """AdamW as configured, with the parameters of the submodules in `lr_scales` (module name → multiplier of
        the learning rate, from the mixers' `lr_scales`) in groups of their own."""
        if self.optimizer is not None or not self.lr_scales:
            return super().create_optimizer()
        groups: dict[float, list[torch.nn.Parameter]] = {}
        for name, param in self.model.named_parameters():
            if param.requires_grad:
                scale = next((self.lr_scales[part] for part in name.split(".") if part in self.lr_scales), 1.0)
                groups.setdefault(scale, []).append(param)
        groups = [{"params": params, "lr": self.args.learning_rate * scale} for scale, params in sorted(groups.items())]
        self.optimizer = torch.optim.AdamW(groups, lr=self.args.learning_rate, weight_decay=self.args.weight_decay)
        return self.optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        batch = {**{k: v for k, v in inputs.items() if k != "labels"}, "use_cache": False}
        # The held-out loss is next-token CE, whatever the stage trains.
        objective = self.objective if model.training else "ce"
        loss, outputs = objective_loss(model, batch, labels, objective, self.kd_temperature,
                                       unwrapped=self.accelerator.unwrap_model(model))
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"the {self.objective} loss became {loss.item()} at step {self.state.global_step}; training stopped "
                f"and the last complete checkpoint in {self.args.output_dir} is kept: lower the learning rate or "
                "check the data, then rerun with --resume"
            )
        return (loss, outputs) if return_outputs else loss


class MetricsLog(TrainerCallback):
    """Appends every log (train loss, lr, grad norm, eval loss, tokens) to a JSONL file, one object per line."""

    def __init__(self, path: Path, stage: str) -> None:
        self.path, self.stage = path, stage

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"stage": self.stage, "step": state.global_step, "tokens": int(state.num_input_tokens_seen), **logs}
        if "eval_loss" in logs:
            record["eval_perplexity"] = round(math.exp(min(logs["eval_loss"], 50.0)), 3)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    @staticmethod
    def evaluations(path: Path, stage: str) -> list[dict]:
        """The logged evaluations of `stage`, in order (the first is the one before training, also after a resume)."""
        lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
        return [r for r in map(json.loads, lines) if r.get("stage") == stage and "eval_loss" in r]

    @classmethod
    def first_eval(cls, path: Path, stage: str) -> dict | None:
        return next(iter(cls.evaluations(path, stage)), None)

    @classmethod
    def last_eval(cls, path: Path, stage: str) -> dict | None:
        return next(reversed(cls.evaluations(path, stage)), None)

    @classmethod
    def carry_over(cls, path: Path, previous: str, stage: str) -> None:
        """Log the last evaluation of `previous` again as `stage`'s evaluation at step 0 (marked `carried_from`)."""
        last = cls.last_eval(path, previous)
        if last is not None:
            record = {**last, "stage": stage, "step": 0, "tokens": 0, "carried_from": previous}
            with path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")

    @staticmethod
    def truncate(path: Path, stage: str, step: int) -> None:
        """Drop this stage's lines after `step` (all of them for a fresh start): a resumed run logs them again."""
        if not path.is_file():
            return
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        records = [(line, _parsed(line)) for line in lines]
        kept = [line for line, record in records if record is not None and not _logged_after(record, stage, step)]
        if len(kept) != len(lines):
            write_text_atomic(path, "".join(line + "\n" for line in kept))


def _parsed(line: str) -> dict | None:
    """The JSON object of a log line; None for a line cut short by a killed run (dropped on resume)."""
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


def _logged_after(record: dict, stage: str, step: int) -> bool:
    return record.get("stage") == stage and (step == 0 or record.get("step", 0) > step)


class MarkComplete(TrainerCallback):
    """Writes `COMPLETE` into a checkpoint once the Trainer has saved all of it (model, optimizer, RNG, state)."""

    def on_save(self, args, state, control, **kwargs):
        PartialState().wait_for_everyone()  # every process has written its part (rng_state_<rank>.pth) first
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            (folder / COMPLETE).write_text(str(state.global_step), encoding="utf-8")


def last_complete_checkpoint(folder: Path) -> Path | None:
    """The newest `checkpoint-N` in `folder` that has its `COMPLETE` marker."""
    candidates = [p for p in folder.glob("checkpoint-*") if (p / COMPLETE).is_file()] if folder.is_dir() else []
    return max(candidates, key=_step_of, default=None)


def _resume_point(folder: Path) -> tuple[Path | None, list[Path]]:
    """(the newest complete checkpoint whose files can all be read, the newer complete ones that cannot). A file can be
    cut short after the marker was written (a full disk, an interrupted copy): resuming falls back past it, and says so."""
    complete = sorted((p for p in folder.glob("checkpoint-*") if (p / COMPLETE).is_file()), key=_step_of, reverse=True)
    start, damaged = None, []
    for checkpoint in complete:
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            start = checkpoint
            break
        damaged.append(f"{checkpoint} is damaged ({problem})")
    if damaged:
        fallback = f"resuming from {start.name}" if start else "no earlier complete checkpoint: the stage starts over"
        logger.warning("%s; %s (the damaged one is removed)", "; ".join(damaged), fallback)
    return start, complete[: len(damaged)]


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why a checkpoint's files cannot be read (a truncated safetensors, torch zip or JSON file), or None."""
    for path in sorted(checkpoint.iterdir()):
        try:
            if path.suffix == ".safetensors":
                with safe_open(str(path), framework="pt"):
                    pass
            elif path.suffix in (".pt", ".pth", ".bin"):  # torch.save's zip archives: the index is at the end
                zipfile.ZipFile(path).close()
            elif path.suffix == ".json":
                json.loads(path.read_text(encoding="utf-8"))
        except (SafetensorError, zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError, OSError) as err:
            return f"{path.name} cannot be read: {str(err).splitlines()[0]}"
    return None


def _remove_incomplete(folder: Path) -> None:
    for path in folder.glob("checkpoint-*") if folder.is_dir() else []:
        if not (path / COMPLETE).is_file():
            shutil.rmtree(path)


def _step_of(checkpoint: Path) -> int:
    return int(checkpoint.name.rsplit("-", 1)[1])


def _loss(metrics: dict | None) -> float | None:
    return None if metrics is None else round(metrics["eval_loss"], 4)


def _ppl(metrics: dict | None) -> float | None:
    return None if metrics is None else round(math.exp(min(metrics["eval_loss"], 50.0)), 3)


def _trained_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters a stage trains (LoRA, LoLCATs feature maps), by name."""
    return {name: param.detach().contiguous() for name, param in model.named_parameters() if param.requires_grad}


def _save_trained(model: nn.Module, path: Path) -> None:
    with atomic_file(path) as staging:
        save_file(_trained_state(model), str(staging))


def _load_trained(model: nn.Module, path: Path) -> None:
    state = load_file(str(path))
    missing = set(_trained_state(model)) - set(state)
    if missing:
        raise TrainConfigError(f"{path} does not match this model (missing {sorted(missing)[:3]}…); use --overwrite")
    model.load_state_dict(state, strict=False)


def _record_base(model: nn.Module, base_path: str | Path | None) -> None:
    """Name the saved converted base in the adapter config, so the adapter loads alone (`models.load_adapter`)."""
    if isinstance(model, PeftModel) and base_path is not None:
        model.peft_config["default"].base_model_name_or_path = str(Path(base_path).resolve())


def _finish(model, tokenizer, config: TrainConfig, out: Path, history, started, processes) -> dict[str, Any]:
    """Write the adapter (or, without LoRA, nothing more) and train_results.json (process 0; the others wait)."""
    if isinstance(model, PeftModel) and processes.is_main_process:
        with atomic_directory(out / "adapter", overwrite=True) as staging:
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
    last = history[-1]
    results = {
        "config": config.to_dict(),
        "stages": history,
        "tokens_trained": sum(stage.get("tokens_seen", 0) for stage in history),
        "eval_loss_before": history[0].get("eval_loss_before"),
        "eval_loss_after": last.get("eval_loss_after"),
        "eval_perplexity_before": history[0].get("eval_perplexity_before"),
        "eval_perplexity_after": last.get("eval_perplexity_after"),
        "seconds": round(time.perf_counter() - started, 1),
    }
    if processes.is_main_process:
        write_json_atomic(out / "train_results.json", results)
    processes.wait_for_everyone()
    return results


def _merge(model, tokenizer, out: Path, processes: PartialState) -> PreTrainedModel:
    """Fold LoRA into the weights and save a standalone converted model to `out/merged` (process 0; the others wait)."""
    merged = model.merge_and_unload() if isinstance(model, PeftModel) else model
    if processes.is_main_process:
        with atomic_directory(out / "merged", overwrite=True) as staging:
            merged.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            write_model_card(staging)
    processes.wait_for_everyone()
    return merged
