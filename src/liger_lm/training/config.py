"""`TrainConfig`: every setting of the recovery fine-tune, with the paper's defaults."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import TrainConfigError  # noqa: F401 (re-exported)
from .objectives import OBJECTIVES

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class Stage:
    """One stage of a staged recovery: its objective, its share of the token budget and its learning rate."""

    objective: str
    share: float = 1.0  # relative to the other stages' shares
    lr: float | None = None  # None: TrainConfig.lr


@dataclass
class TrainConfig:
    """Recovery fine-tune settings. Defaults are the paper's: LoRA r 8, α 8 on q/k/v, CE, lr 1e-3, 8 × 1024 tokens a step."""

    data: str = "default"  # "default" (BIG-bench instructions), a local .json/.jsonl/.txt file or an HF dataset name
    max_tokens: int = 2_000_000  # token budget: steps = ceil(max_tokens / tokens per optimizer step)
    seq_len: int = 1024
    batch_size: int = 1  # sequences per device per micro-step
    grad_accum: int = 8
    objective: str = "ce"
    kd_temperature: float = 1.0
    logit_lr_scale: float = 100.0  # learning rate of new per-head logits (combine="shared"'s ω) relative to `lr`
    lr: float = 1e-3
    schedule: str = "cosine"
    warmup: float = 0.05  # fraction of the steps
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    use_lora: bool = True
    lora_r: int = 8
    lora_alpha: int = 8
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj")
    train_feature_maps: bool = False  # LoLCATs: also train the feature maps and window factors
    records: int | None = None  # use at most this many training records (None: all)
    eval_records: int = 64  # held-out records (never trained on) for the eval loss
    drop_long: bool = True  # drop records longer than seq_len (False: refuse them with an error)
    prompt_loss: bool = False  # also train on prompt tokens (the paper: response only; the held-out loss always is)
    eval_every: int | None = None  # optimizer steps between evaluations (None: 4 per run)
    save_every: int | None = None  # optimizer steps between checkpoints (None: about 10 per run)
    log_every: int = 1
    precision: str = "auto"  # "auto": bf16 where the hardware runs it fast (CUDA with bf16, CPU with AVX-512 BF16)
    seed: int = 0
    merge: bool = False  # also write merged standalone weights
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # passed through to transformers.TrainingArguments
    # Objectives run one after another on one LoRA adapter, e.g. ("attn", "kd"): attention transfer, then
    # distillation (each a `Stage` or an objective name; the budget is split by share). Empty: one `objective` stage.
    stages: tuple[Stage | str, ...] = ()

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
        if self.objective not in OBJECTIVES:
            raise TrainConfigError(f"unknown objective {self.objective!r}; choose one of {', '.join(OBJECTIVES)}")
        if self.precision not in PRECISIONS:
            raise TrainConfigError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        for name in ("lr", "kd_temperature", "logit_lr_scale", "warmup", "weight_decay", "max_grad_norm", "lora_dropout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise TrainConfigError(f"{name} must be a finite number, got {value!r}")
        positive = {"max_tokens": self.max_tokens, "seq_len": self.seq_len, "batch_size": self.batch_size,
                    "grad_accum": self.grad_accum, "lr": self.lr, "lora_r": self.lora_r, "lora_alpha": self.lora_alpha}
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
