"""The multi-process path: `accelerate launch -m liger_lm train` with two CPU processes (gloo), then `--resume`.

`accelerate launch --cpu --num_processes 2` starts ONE process (accelerate's simple launcher; several CPU processes
need mpirun), so the launch is `--multi_gpu` (torchrun underneath) with CUDA hidden: the processes see no GPU,
`TrainingArguments(use_cpu=True)` and the gloo backend. That is the launcher users take on several GPUs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from liger_lm.training.trainer import COMPLETE, last_complete_checkpoint

PROCESSES = 2
SEQ_LEN, BATCH = 48, 4
STEPS = 12  # optimizer steps of the whole run; each takes SEQ_LEN × BATCH tokens from every process
SAVE_EVERY = 4  # checkpoints 4, 8, 12; the Trainer keeps the newest two (8 and 12)
TIMEOUT = 240  # seconds per launch (about 15 s on an idle 2-core machine)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(*args: str, home: Path) -> subprocess.CompletedProcess:
    """`accelerate launch --multi_gpu --num_processes 2 -m liger_lm …` on the CPU; on timeout kills the group."""
    inherited = ("ACCELERATE_", "MASTER_", "TORCHELASTIC_", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")
    env = {k: v for k, v in os.environ.items() if not k.startswith(inherited)}  # no outer launch leaks in
    env.update(
        CUDA_VISIBLE_DEVICES="",  # CPU processes even where a GPU is visible
        OMP_NUM_THREADS="1",  # two processes on a small machine
        HF_HOME=str(home),  # no user accelerate config (default_config.yaml) changes the launch
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    port = free_port()
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", f"--num_processes={PROCESSES}",
        "--num_machines=1", "--mixed_precision=no", "--dynamo_backend=no", f"--main_process_port={port}",
        "-m", "liger_lm", *args,
    ]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the launcher and both workers
        stdout, stderr = process.communicate()
        pytest.fail(f"the 2-process launch ran past {TIMEOUT} s:\n{stderr[-4000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def convert(base: Path, out: Path, *extra: str) -> Path:
    done = subprocess.run([sys.executable, "-m", "liger_lm", "convert", "--model", str(base), "--out", str(out),
                           "--window", "4", *extra], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return out


def train_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", str(model), "--data", str(data), "--out", str(out),
        "--max-tokens", str(STEPS * SEQ_LEN * BATCH * PROCESSES), "--seq-len", str(SEQ_LEN),
        "--batch-size", str(BATCH), "--grad-accum", "1", "--lr", "1e-2", "--eval-records", "8",
        "--save-every", str(SAVE_EVERY), "--precision", "fp32", *extra,
    ]


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def logged_once(run: Path) -> None:
    """Every step's train loss and evaluation is in metrics.jsonl once (process 1 writes nothing), steps in order."""
    kinds = [(r["step"], "loss" in r, "eval_loss" in r, "train_loss" in r) for r in records(run)]
    assert len(kinds) == len(set(kinds)), kinds
    assert [step for step, *_ in kinds] == sorted(step for step, *_ in kinds)
    assert [step for step, is_loss, *_ in kinds if is_loss] == list(range(1, STEPS + 1))


def test_two_process_training_then_resume(tiny_model_dir, instruction_file, tmp_path):
    model = convert(tiny_model_dir, tmp_path / "converted")
    run = tmp_path / "run"
    done = launch(*train_args(model, instruction_file, run), home=tmp_path / "hf")
    assert done.returncode == 0, done.stderr[-6000:]
    assert len(re.findall(r"^done [\d,]+ tokens", done.stderr, re.M)) == PROCESSES  # both finished the command

    # One adapter, one results file, written by process 0 alone.
    assert sorted(p.name for p in run.iterdir()) == ["adapter", "checkpoints", "metrics.jsonl", "train_config.json",
                                                     "train_results.json"]
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    results = json.loads((run / "train_results.json").read_text())
    stage = results["stages"][0]
    # Two processes: the budget is split (12 steps, not 24) and every step saw both processes' batches.
    assert stage["steps"] == STEPS and stage["resumed_from"] is None
    assert results["tokens_trained"] == stage["tokens_seen"] > 0
    checkpoints = run / "checkpoints" / "finetune"
    newest = last_complete_checkpoint(checkpoints)
    assert newest.name == f"checkpoint-{STEPS}"
    assert {p.name for p in newest.glob("rng_state_*.pth")} == {f"rng_state_{rank}.pth" for rank in range(PROCESSES)}
    logged_once(run)
    assert results["eval_loss_after"] < results["eval_loss_before"]  # the held-out loss falls
    train_losses = [r["loss"] for r in records(run) if "loss" in r]
    assert sum(train_losses[-3:]) < sum(train_losses[:3])

    # A copy of the run as if killed while saving its last checkpoint: no COMPLETE marker there, no outputs yet.
    split = tmp_path / "split"
    shutil.copytree(run, split)
    (split / "checkpoints" / "finetune" / newest.name / COMPLETE).unlink()
    shutil.rmtree(split / "adapter")
    (split / "train_results.json").unlink()
    done = launch(*train_args(model, instruction_file, split, "--resume"), home=tmp_path / "hf")
    assert done.returncode == 0, done.stderr[-6000:]

    resumed = json.loads((split / "train_results.json").read_text())
    again = resumed["stages"][0]
    assert again["resumed_from"].endswith(f"checkpoint-{STEPS - SAVE_EVERY}")  # the newest complete one
    assert again["steps"] == STEPS and again["tokens_seen"] == stage["tokens_seen"]
    assert (split / "checkpoints" / "finetune" / newest.name / COMPLETE).is_file()  # saved again, whole
    logged_once(split)
    assert resumed["eval_loss_before"] == results["eval_loss_before"]
    # The same run as the uninterrupted one. This also proves the processes trained in step: had they trained apart
    # (gradients not all-reduced), the resumed run, which starts both from process 0's checkpoint, would differ.
    assert resumed["eval_loss_after"] == pytest.approx(results["eval_loss_after"], abs=1e-4)
    full = load_file(run / "adapter" / "adapter_model.safetensors")
    cont = load_file(split / "adapter" / "adapter_model.safetensors")
    assert full.keys() == cont.keys()
    for name in full:
        assert torch.allclose(full[name], cont[name], atol=1e-6), name


def test_two_process_lolcats_stages(tiny_model_dir, instruction_file, tmp_path):
    """LoLCATs' attention transfer (its loss comes from hooks, not the outputs) and then LoRA, in two processes."""
    model = convert(tiny_model_dir, tmp_path / "converted", "--method", "lolcats")
    run = tmp_path / "run"
    steps = 2  # per stage: the budget is split between the two stages
    done = launch("train", str(model), "--data", str(instruction_file), "--out", str(run), "--max-tokens",
                  str(2 * steps * SEQ_LEN * BATCH * PROCESSES), "--seq-len", str(SEQ_LEN), "--batch-size", str(BATCH),
                  "--grad-accum", "1", "--eval-records", "8", "--precision", "fp32", home=tmp_path / "hf")
    assert done.returncode == 0, done.stderr[-6000:]
    results = json.loads((run / "train_results.json").read_text())
    assert [(s["stage"], s["steps"]) for s in results["stages"]] == [("transfer", steps), ("finetune", steps)]
    assert (run / "transfer.safetensors").is_file()
    adapter = load_file(run / "adapter" / "adapter_model.safetensors")
    assert any("feature_map_q" in name for name in adapter) and any("lora_" in name for name in adapter)
