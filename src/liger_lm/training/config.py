"""`TrainConfig`: every setting of the recovery fine-tune, with the paper's defaults.

Each field carries its help text in `metadata["help"]`; `liger train` and `liger run` generate their options from
them (`liger_lm.cli`). Like `liger_lm.config`, this module imports no torch: the objectives are looked up in
`validate()`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import TrainConfigError  # noqa: F401 (re-exported)

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class Stage:
    """One stage of a staged recovery: its objective, its share of the token budget and its learning rate."""

    objective: str
    share: float = 1.0  # relative to the other stages' shares
    lr: float | None = None  # None: TrainConfig.lr


@dataclass
class TrainConfig:
    """Recovery fine-tune settings. Defaults are the paper's: LoRA r 8, α 8 on q/k/v, CE, lr 1e-3, 8 × 1024 tokens a
    step. Each field's `metadata["help"]` says what it does (`liger train --help` lists them all)."""

    data: str = field(default="default", metadata={
        "help": "default (BIG-bench instructions), prose, mix (both), a local .json/.jsonl/.txt file or a Hugging "
                "Face dataset name[:split]."})
    max_tokens: int = field(default=2_000_000, metadata={
        "help": "Token budget: steps = ceil(max_tokens / tokens per optimizer step)."})
    seq_len: int = field(default=1024, metadata={"help": "Packed sequence length (tokens per row).", "min": 2})
    batch_size: int = field(default=1, metadata={"help": "Sequences per device per micro-step.", "min": 1})
    grad_accum: int = field(default=8, metadata={"help": "Micro-steps per optimizer step.", "min": 1})
    objective: str = field(default="ce", metadata={
        "help": "ce (next-token cross-entropy, the paper), kd (KL to the original model), kd+ce, or attn "
                "(attention transfer: MSE of each layer's output to its softmax attention's)."})
    kd_temperature: float = field(default=1.0, metadata={"help": "Softmax temperature of the kd objective."})
    logit_lr_scale: float = field(default=100.0, metadata={
        "help": "Learning rate of new per-head logits (combine=shared's ω) relative to lr."})
    feature_lr_scale: float = field(default=1.0, metadata={
        "help": "Learning rate of the learned feature projections (learned_features) relative to lr."})
    lr: float = field(default=1e-3, metadata={"help": "Peak learning rate (after warm-up, then the schedule)."})
    schedule: str = field(default="cosine", metadata={
        "help": "Learning-rate schedule: a transformers lr_scheduler_type (cosine, linear, constant, …)."})
    warmup: float = field(default=0.05, metadata={"help": "Warm-up, as a fraction of the steps, in [0, 1)."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm."})
    use_lora: bool = field(default=True, metadata={
        "help": "Train LoRA adapters (off: only LoLCATs' feature maps, with train_feature_maps)."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank r.", "min": 1})
    lora_alpha: int = field(default=8, metadata={"help": "LoRA α (scale α / r).", "min": 1})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout, in [0, 1)."})
    lora_targets: tuple[str, ...] = field(default=("q_proj", "k_proj", "v_proj"), metadata={
        "help": "Module names LoRA wraps, comma-separated."})
    train_feature_maps: bool = field(default=False, metadata={
        "help": "LoLCATs: also train the feature maps and window factors."})
    records: int | None = field(default=None, metadata={
        "help": "Use at most this many training records (default: all).", "min": 1})
    eval_records: int = field(default=64, metadata={
        "help": "Held-out records (never trained on) for the eval loss.", "min": 0})
    drop_long: bool = field(default=True, metadata={
        "help": "Drop records longer than seq_len (off: refuse them with an error)."})
    prompt_loss: bool = field(default=False, metadata={
        "help": "Also train on prompt tokens (the paper: responses only; the held-out loss always is)."})
    eval_every: int | None = field(default=None, metadata={
        "help": "Optimizer steps between held-out evaluations (default: --evals-per-stage; also before the first "
                "stage and at each stage's end).", "min": 1})
    evals_per_stage: int = field(default=3, metadata={
        "help": "Held-out evaluations per stage without --eval-every, evenly spaced, the last at the stage's end.",
        "min": 1})
    save_every: int | None = field(default=None, metadata={
        "help": "Optimizer steps between checkpoints (default: about 10 per run).", "min": 1})
    log_every: int = field(default=1, metadata={"help": "Optimizer steps between log lines.", "min": 1})
    precision: str = field(default="auto", metadata={
        "help": "auto (bf16 where the hardware runs it fast: CUDA with bf16, CPUs with AVX-512 BF16 or AMX), fp32 "
                "or bf16.", "choices": PRECISIONS})
    seed: int = field(default=0, metadata={"help": "Seed of the data order, held-out split and LoRA initialisation."})
    merge: bool = field(default=False, metadata={"help": "Also write merged standalone weights (merged/)."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})
    extra: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "Passed through to transformers.TrainingArguments, e.g. gradient_checkpointing=true,"
                "dataloader_num_workers=2 (values read as JSON where they parse, else as text)."})
    # Objectives run one after another on one LoRA adapter, e.g. ("attn", "kd"): attention transfer, then
    # distillation (each a `Stage` or an objective name; the budget is split by share). Empty: one `objective` stage.
    stages: tuple[Stage | str, ...] = field(default=(), metadata={
        "help": "Objectives run one after another on one LoRA adapter (overrides objective), each "
                "objective[:share][@lr], comma-separated: attn,kd splits the budget evenly; attn:0.25,kd:0.75@3e-4 "
                "gives attention transfer a quarter and distillation three quarters at lr 3e-4; none = one stage.",
        "syntax": "stages"})

    def tokens_per_step(self, world_size: int = 1) -> int:
        return self.seq_len * self.batch_size * self.grad_accum * world_size

    def max_steps(self, world_size: int = 1) -> int:
        return max(1, math.ceil(self.max_tokens / self.tokens_per_step(world_size)))

    def replace(self, **overrides: Any) -> "TrainConfig":
        unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TrainConfigError(f"unknown training setting(s) {sorted(unknown)}")
        return dataclasses.replace(self, **overrides)

    def validate(self) -> "TrainConfig":
        from .objectives import OBJECTIVES  # beside the losses (torch)

        if self.objective not in OBJECTIVES:
            raise TrainConfigError(f"unknown objective {self.objective!r}; choose one of {', '.join(OBJECTIVES)}")
        if self.precision not in PRECISIONS:
            raise TrainConfigError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        for name in ("lr", "kd_temperature", "logit_lr_scale", "feature_lr_scale", "warmup", "weight_decay",
                     "max_grad_norm", "lora_dropout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise TrainConfigError(f"{name} must be a finite number, got {value!r}")
        positive = {"max_tokens": self.max_tokens, "seq_len": self.seq_len, "batch_size": self.batch_size,
                    "grad_accum": self.grad_accum, "lr": self.lr, "lora_r": self.lora_r, "lora_alpha": self.lora_alpha,
                    "evals_per_stage": self.evals_per_stage}
        for name, value in positive.items():
            if not value > 0:
                raise TrainConfigError(f"{name} must be > 0, got {value}")
        if self.seq_len < 2:
            raise TrainConfigError(f"seq_len must be at least 2, got {self.seq_len}")
        if not 0 <= self.warmup < 1:
            raise TrainConfigError(f"warmup is a fraction of the steps in [0, 1), got {self.warmup}")
        if not 0 <= self.lora_dropout < 1:
            raise TrainConfigError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.eval_records < 0:
            raise TrainConfigError(f"eval_records must be ≥ 0, got {self.eval_records}")
        if not (self.use_lora or self.train_feature_maps):
            raise TrainConfigError("nothing to train: enable LoRA or (for LoLCATs) the feature maps")
        self.stages = tuple(_stage(stage) for stage in self.stages)
        for stage in self.stages:
            if stage.objective not in OBJECTIVES:
                raise TrainConfigError(f"unknown stage objective {stage.objective!r}; choose from {', '.join(OBJECTIVES)}")
            if not 0 < stage.share < math.inf or (stage.lr is not None and not 0 < stage.lr < math.inf):
                raise TrainConfigError(f"stage {stage.objective}: share and lr must be > 0, got {stage}")
        return self

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["lora_targets"] = list(self.lora_targets)
        data["stages"] = [dataclasses.asdict(_stage(stage)) for stage in self.stages]
        return data


def _stage(value: Stage | str | dict) -> Stage:
    if isinstance(value, Stage):
        return value
    return Stage(**value) if isinstance(value, dict) else Stage(str(value).strip())


def stage_plan(config: TrainConfig, method: str = "liger") -> list[tuple[str, TrainConfig]]:
    """(name, settings) of each stage to run: LoLCATs' own two stages, the configured `stages`, or one stage."""
    if method == "lolcats":
        return list(zip(("transfer", "finetune"), lolcats_stages(config)))
    stages = [_stage(stage) for stage in config.stages]
    if not stages:
        return [("finetune", config)]
    total = sum(stage.share for stage in stages)
    return [
        (f"{index}-{stage.objective}", config.replace(
            stages=(), objective=stage.objective, lr=stage.lr or config.lr,
            max_tokens=max(1, round(config.max_tokens * stage.share / total)),
        ))
        for index, stage in enumerate(stages, start=1)
    ]


def lolcats_stages(config: TrainConfig) -> list[TrainConfig]:
    """LoLCATs' two stages (docs/method.md §1.3), splitting the token budget evenly.

    1. attention transfer: only the feature maps and window factors, MSE to softmax attention, lr 1e-2, no LoRA;
    2. LoRA r 8, α 16 on q/k/v/o with next-token CE, lr 1e-4, feature maps frozen.
    """
    half = max(1, config.max_tokens // 2)
    transfer = config.replace(max_tokens=half, objective="attn", lr=1e-2, use_lora=False, train_feature_maps=True)
    finetune = config.replace(
        max_tokens=half, objective="ce", lr=1e-4, use_lora=True, train_feature_maps=False,
        lora_alpha=16, lora_targets=("q_proj", "k_proj", "v_proj", "o_proj"),
    )
    return [transfer, finetune]
