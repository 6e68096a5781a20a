"""Training throughput of the recovery fine-tune's stages on the default model (one optimizer step, timed).

    python scripts/train_step_speed.py [--steps 3] [--seq-len 1024] [--threads N] [--profile]

Converts the default model with the default preset, wraps it in its LoRA adapter, and times whole optimizer steps
(forward, backward, AdamW) of each stage objective on random tokens, under bf16 autocast where the CPU runs bf16
natively (as `liger run --precision auto` does), else fp32. `--profile` prints torch.profiler's top operators of one
step per stage.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import time

import torch
from peft import LoraConfig, get_peft_model

import liger_lm
from liger_lm.hardware import fast_bf16
from liger_lm.presets import DEFAULT_PRESET, PRESETS
from liger_lm.training.objectives import attention_transfer, distillation, teacher_mode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    preset = PRESETS[DEFAULT_PRESET]
    base, _ = liger_lm.load_default_model()
    model = liger_lm.convert(copy.deepcopy(base), **preset.liger)
    lora = LoraConfig(r=preset.train["lora_r"], lora_alpha=preset.train["lora_alpha"],
                      target_modules=list(preset.train["lora_targets"]))
    model = get_peft_model(model, lora).train()
    ids = torch.randint(0, model.config.vocab_size, (1, args.seq_len))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    bf16 = fast_bf16("cpu")
    print(f"{args.threads} threads, {'bf16 autocast' if bf16 else 'fp32'}, rows of {args.seq_len} tokens")

    def step(objective: str) -> None:
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with autocast:
            if objective == "kd":
                with torch.no_grad(), teacher_mode(model):
                    teacher = model(input_ids=ids).logits
                loss = distillation(model(input_ids=ids).logits, teacher, ids)
            else:
                with attention_transfer(model) as losses:
                    model(input_ids=ids)
                loss = torch.stack(losses).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    for objective in ("attn", "kd"):
        step(objective)  # warm-up
        started = time.perf_counter()
        for _ in range(args.steps):
            step(objective)
        seconds = (time.perf_counter() - started) / args.steps
        print(f"{objective}: {seconds:.2f} s per step, {args.seq_len / seconds:.0f} tokens/s", flush=True)
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                step(objective)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
