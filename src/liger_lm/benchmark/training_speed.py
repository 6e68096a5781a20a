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
from peft import LoraConfig, get_peft_model

from ..convert import convert
from ..hardware import fast_bf16
from ..presets import Preset
from ..training.objectives import attention_transfer, cross_entropy, distillation, teacher_mode
from .measure import repeat_median


def _loss(model, ids: torch.Tensor, objective: str) -> torch.Tensor:
    if objective == "attn":
        with attention_transfer(model) as losses:
            model(input_ids=ids, logits_to_keep=1)
        return torch.stack(losses).mean()
    logits = model(input_ids=ids).logits
    if objective == "ce":
        return cross_entropy(logits, ids)
    with torch.no_grad(), teacher_mode(model):
        teacher = model(input_ids=ids).logits
    return distillation(logits, teacher, ids)


def _preset_objectives(preset: Preset) -> tuple[str, ...]:
    stages = preset.train.get("stages") or ()
    if not stages:
        return (preset.train.get("objective", "ce"),)
    return tuple(dict.fromkeys(stage["objective"] if isinstance(stage, dict) else getattr(stage, "objective", stage)
                               for stage in stages))


def training_step_speed(
    base: torch.nn.Module,
    preset: Preset,
    device: torch.device,
    seq_len: int = 1024,
    steps: int = 3,
    objectives: tuple[str, ...] | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> dict:
    """Seconds per optimizer step and tokens/s of each objective (default: the preset's stages, or its one
    objective), for `base` converted with `preset`.

    Returns {"precision", "seq_len", "lora": {r, targets}, "stages": {objective: {"s_per_step", "tokens_per_s",
    "runs"}}}. `base` is not modified (a copy is converted).
    """
    if objectives is None:
        objectives = _preset_objectives(preset)
    torch.manual_seed(0)
    model = convert(copy.deepcopy(base), **preset.liger).to(device)
    train = preset.train
    targets = list(train.get("lora_targets", ("q_proj", "k_proj", "v_proj")))
    lora = LoraConfig(r=train.get("lora_r", 8), lora_alpha=train.get("lora_alpha", 8), target_modules=targets)
    model = get_peft_model(model, lora).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, model.config.vocab_size, (1, seq_len), device=device)
    bf16 = fast_bf16(device)

    def step(objective: str) -> Callable[[], None]:
        def run() -> None:
            autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
            with autocast:
                loss = _loss(model, ids, objective)
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
            "lora": {"r": lora.r, "targets": targets}, "stages": stages}
