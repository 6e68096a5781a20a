"""Training throughput of the recovery fine-tune, per stage objective (issue: how much quality a CPU budget buys).

One optimizer step = forward, backward and AdamW on one row of `seq_len` random tokens, with the preset's LoRA
adapter, under bf16 autocast where the device runs bf16 natively (as `liger train --precision auto` does), else
fp32. The objectives are the trainer's own (`training.objectives`): `attn` (attention transfer: every layer fed the
teacher's hidden states, per-layer MSE, no logits) and `kd` (a teacher forward with softmax attention restored, then
KL of the student's logits), `ce` (cross-entropy). Each objective is warmed up once, then timed over `steps` steps
(median).
"""

from __future__ import annotations

import contextlib
import copy
from typing import Callable

import torch

from ..convert import convert
from ..hardware import fast_bf16
from ..presets import Preset
from ..training.config import TrainConfig, stage_plan
from ..training.objectives import objective_loss
from ..training.trainer import trainable
from .measure import repeat_median


def training_step_speed(
    base: torch.nn.Module,
    preset: Preset,
    device: torch.device,
    seq_len: int = 1024,
    steps: int = 3,
    objectives: tuple[str, ...] | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> dict:
    """Seconds per optimizer step and tokens/s of each objective (default: those of the preset's stages), for `base`
    converted with `preset` and made trainable as the fine-tune does it (`training.trainer.trainable`: the preset's
    LoRA, plus the parameters its mixers train beside LoRA).

    Returns {"precision", "seq_len", "lora": {r, targets}, "stages": {objective: {"s_per_step", "tokens_per_s",
    "runs"}}}. `base` is not modified (a copy is converted).
    """
    config = TrainConfig().replace(**preset.train).validate()
    if objectives is None:
        objectives = tuple(dict.fromkeys(stage.objective for _, stage in stage_plan(config)))
    torch.manual_seed(0)
    model = trainable(convert(copy.deepcopy(base), **preset.liger).to(device), config).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, model.config.vocab_size, (1, seq_len), device=device)
    bf16 = fast_bf16(device)

    def step(objective: str) -> Callable[[], None]:
        def run() -> None:
            autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
            with autocast:
                loss, _ = objective_loss(model, {"input_ids": ids}, ids, objective)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()

        return run

    stages = {}
    for objective in objectives:
        timing = repeat_median(step(objective), device, repeats=steps, max_seconds=float("inf"))
        seconds = timing["median_s"]
        stages[objective] = {"s_per_step": seconds, "tokens_per_s": seq_len / seconds, "runs": timing["runs"]}
        log(f"training step, {objective}: {seconds:.2f} s per step of {seq_len} tokens "
            f"({seq_len / seconds:.0f} tokens/s)")
    return {"precision": "bf16 autocast" if bf16 else "fp32", "seq_len": seq_len,
            "lora": {"r": config.lora_r, "targets": list(config.lora_targets)}, "stages": stages}
