"""Reliability through the real command line: one-line errors for bad inputs, existing outputs kept byte for byte,
SIGKILL + `--resume`, damaged checkpoints, saves killed half-way, a NaN loss, determinism, and a source scan for
pickle / `trust_remote_code` (docs/reliability.md)."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import liger_in_process as run_in_process
from conftest import tiny_model, tiny_tokenizer
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

import liger_lm
from liger_lm.cli import main
from liger_lm.io import output_lock, write_json_atomic

SOURCE = Path(liger_lm.__file__).parent
# 16 optimizer steps of one 64-token row, a checkpoint every 4: long enough to be killed between checkpoints.
TRAIN_ARGS = ["--seq-len", "64", "--batch-size", "1", "--grad-accum", "1", "--max-tokens", "1024", "--eval-records", "4",
              "--save-every", "4", "--precision", "fp32", "--lr", "1e-2", "--seed", "0"]


# One torch thread everywhere: runs in this process and in subprocesses then use the same kernels (bit-identical
# results), and a tiny model is much faster single-threaded on a busy 2-core machine than with competing threads.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def liger_subprocess(*args: str, script: str | None = None) -> subprocess.CompletedProcess:
    """`python -m liger_lm ARGS`, or `python -c SCRIPT ARGS` where SCRIPT patches something and then calls main()."""
    command = [sys.executable, "-c", script] if script else [sys.executable, "-m", "liger_lm"]
    return subprocess.run([*command, *map(str, args)], capture_output=True, text=True, timeout=300, env=ONE_THREAD, check=False)


def liger_in_process(*args: str | Path) -> int:
    """The exit code of `liger ARGS` run through the same entry point (`main`) in this process (its output reaches
    capsys)."""
    return run_in_process(*args).returncode


def patched_main(patch: str) -> str:
    """A `python -c` script: apply `patch` (Python source), then run the CLI with the remaining arguments."""
    return f"import sys\n{patch}\nsys.argv = ['liger', *sys.argv[1:]]\nfrom liger_lm.cli import main\nmain()\n"


def write_records(path: Path, count: int, seed: int = 0) -> Path:
    """Instruction records whose answer shifts each word id by one (w5 w9 → w6 w10)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(count):
        words = [rng.randrange(5, 90) for _ in range(rng.randrange(4, 9))]
        lines.append(json.dumps({"instruction": " ".join(f"w{w}" for w in words),
                                 "output": " ".join(f"w{w + 1}" for w in words)}))
    path.write_text("\n".join(lines) + "\n")
    return path


def write_gguf(path: Path, architecture: str) -> None:
    """A tiny GGUF file declaring `architecture` (one zero embedding tensor)."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(1)
    writer.add_context_length(16)
    writer.add_embedding_length(8)
    writer.add_head_count(2)
    writer.add_feed_forward_length(16)
    writer.add_tensor("token_embd.weight", np.zeros((97, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Every (bad) input of the table, built once: models, weights, configs, data files, a GGUF, an existing folder."""
    from transformers import (
        BertConfig,
        BertModel,
        DistilBertConfig,
        DistilBertModel,
        GPT2Config,
        GPT2LMHeadModel,
    )

    root = tmp_path_factory.mktemp("inputs")
    tokenizer = tiny_tokenizer()

    def save(model, name: str) -> Path:
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        return root / name

    save(tiny_model("llama"), "base")
    save(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=97)), "gpt2")
    save(BertModel(BertConfig(num_hidden_layers=1, hidden_size=16, num_attention_heads=2, intermediate_size=32,
                              vocab_size=97)), "bert")
    save(DistilBertModel(DistilBertConfig(n_layers=1, dim=16, n_heads=2, hidden_dim=32, vocab_size=97)), "distilbert")
    save(liger_lm.convert(tiny_model("llama"), window=4), "converted")
    save(tiny_model("llama"), "no-weights")
    missing = save(tiny_model("llama"), "missing-tensor") / "model.safetensors"
    weights = load_file(missing)
    del weights["model.layers.0.self_attn.q_proj.weight"]
    save_file(weights, missing, metadata={"format": "pt"})
    edit_config(save(liger_lm.convert(tiny_model("llama"), window=4), "edited-method"),
                lambda c: c["liger"].update(method="lolcats"))
    edit_config(save(tiny_model("llama"), "other-shapes"), lambda c: c.update(intermediate_size=32))
    edit_config(save(tiny_model("llama"), "odd-heads"), lambda c: c.update(num_attention_heads=5))
    (root / "no-weights" / "model.safetensors").unlink()
    weights = save(tiny_model("llama"), "truncated") / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    config_file = save(liger_lm.convert(tiny_model("llama"), window=4), "newer") / "config.json"
    config = json.loads(config_file.read_text())
    config["liger"]["format_version"] += 1
    config_file.write_text(json.dumps(config))
    write_gguf(root / "bert.gguf", "bert")
    (root / "existing").mkdir()
    (root / "empty.jsonl").write_text("")
    (root / "malformed.jsonl").write_text('{"instruction": "w5", "output": "w6"}\n{"instruction": w5\n')
    (root / "object.json").write_text('{"instruction": "w5", "output": "w6"}')
    (root / "data.csv").write_text("instruction,output\nw5,w6\n")
    (root / "blank.jsonl").write_text('{"instruction": "w5", "output": ""}\n{"text": "   "}\n')
    (root / "long.jsonl").write_text(json.dumps({"instruction": " ".join(["w5"] * 80), "output": "w6"}) + "\n")
    write_records(root / "three.jsonl", 3)
    write_records(root / "small.jsonl", 60)
    (root / "latin1.jsonl").write_bytes(b'{"instruction": "w5", "output": "w6"}\n{"instruction": "caf\xe9", "output": "w6"}\n')
    (root / "afile").write_text("a file where a folder is expected\n")
    (root / "read-only").mkdir(mode=0o555)
    (root / "text.txt").write_text(" ".join(f"w{(7 * i) % 90 + 5}" for i in range(300)))
    (root / "task.jsonl").write_text("".join(json.dumps({"query": f"w{i} w{i + 1}", "choices": [f"w{i + 2}", f"w{i + 7}"],
                                                        "label": i % 2}) + "\n" for i in range(5, 15)))
    return root


def edit_config(folder: Path, edit) -> None:
    """Apply `edit` to the config.json of a saved model folder (as a user editing it by hand would)."""
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))


CONVERT = ["convert", "--model", "{d}/base", "--out", "{d}/new"]
TRAIN = ["train", "{d}/converted", "--out", "{d}/new", "--seq-len", "64", "--max-tokens", "1k"]
GENERATE = ["generate", "{d}/converted", "--prompt", "w5 w6", "--max-new-tokens", "4"]
NEEDS_NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
# A folder nothing can be created in: permissions do not stop root, a sysfs folder does.
READ_ONLY = "/sys" if os.geteuid() == 0 else "{d}/read-only"


def case(name: str, args: list[str], fragment: str, subprocess: bool = False, marks=()):
    """One bad input: CLI arguments ({d} = the inputs folder), a fragment of the one-line error message, and whether
    to also run it as a real `python -m liger_lm` subprocess (slower: a few representative cases)."""
    return pytest.param(args, fragment, subprocess, id=name, marks=marks)



# (case, arguments with {d} = the inputs folder, fragment of the one-line message, also as a real subprocess)
BAD_INPUTS = [
    case("gpt2", ["convert", "--model", "{d}/gpt2", "--out", "{d}/new"], "its model_type is 'gpt2'; supported architectures are LlamaForCausalLM"),
    case("encoder", ["convert", "--model", "{d}/bert", "--out", "{d}/new"], "its model_type is 'bert'; supported architectures"),
    case("encoder-load", ["generate", "{d}/distilbert", "--prompt", "w5"], "is a 'distilbert' model, not a causal (decoder) language model"),
    case("no-weights", ["generate", "{d}/no-weights", "--prompt", "w5"], "no file named model.safetensors"),
    case("truncated-weights", ["convert", "--model", "{d}/truncated", "--out", "{d}/new"], "the .safetensors file is damaged or incomplete", subprocess=True),
    case("newer-config", ["generate", "{d}/newer", "--prompt", "w5"], "written by a newer liger-lm (config format 2, this version reads ≤ 1); upgrade"),
    case("unknown-gate", [*CONVERT, "--gate", "lstm"], "unknown gate 'lstm'; choose one of: gla"),
    case("negative-window", [*CONVERT, "--window", "-3"], "window must be a positive integer, got -3"),
    case("negative-swa-weight", [*CONVERT, "--swa-weight", "-0.5"], "swa_weight must be a number ≥ 0, got -0.5"),
    case("both-weights-zero", [*CONVERT, "--rec-weight", "0", "--swa-weight", "0"], "both 0: at least one branch must be on"),
    case("convert-out-exists", ["convert", "--model", "{d}/base", "--out", "{d}/existing"], "existing already exists; choose another --out or pass --overwrite"),
    case("train-out-exists", ["train", "{d}/converted", "--out", "{d}/existing"], "existing already exists; pass --resume to continue it or --overwrite"),
    case("empty-data", [*TRAIN, "--data", "{d}/empty.jsonl"], "empty.jsonl is empty; add records or choose another --data"),
    case("malformed-jsonl", [*TRAIN, "--data", "{d}/malformed.jsonl"], "malformed.jsonl line 2 is not valid JSON"),
    case("json-not-a-list", [*TRAIN, "--data", "{d}/object.json"], "must hold a JSON list of records, got a dict"),
    case("unsupported-data-file", [*TRAIN, "--data", "{d}/data.csv"], "unsupported file type; use a .json, .jsonl or .txt file"),
    case("missing-data", [*TRAIN, "--data", "{d}/missing.jsonl"], "missing.jsonl does not exist"),
    case("no-usable-rows", [*TRAIN, "--data", "{d}/blank.jsonl"], "has no usable rows (every response or text is empty)"),
    case("all-rows-too-long", [*TRAIN, "--data", "{d}/long.jsonl", "--eval-records", "0"], "all 1 records are longer than seq_len=64 tokens; raise seq_len"),
    case("all-rows-held-out", [*TRAIN, "--data", "{d}/three.jsonl", "--eval-records", "3"], "all 3 usable records are held out for evaluation"),
    case("prompt-too-long", ["generate", "{d}/converted", "--prompt", " ".join(["w5"] * 300)], "exceeds the model's 256 positions; shorten the prompt"),
    case("gguf-unsupported-architecture", ["convert", "--model", "{d}/bert.gguf", "--out", "{d}/new"], "GGUF model with architecture bert is not supported"),
    case("non-numeric-window", [*CONVERT, "--window", "abc"], "Invalid value for '--window'", subprocess=True),
    case("non-numeric-max-tokens", [*TRAIN, "--max-tokens", "lots"], "expected a count like 2M, 500k or 300000, got 'lots'"),
    case("non-numeric-max-new-tokens", [*GENERATE, "--max-new-tokens", "x"], "Invalid value for '--max-new-tokens'"),
    case("unknown-objective", [*TRAIN, "--objective", "mse"], "unknown objective 'mse'"),
    case("missing-option", ["convert", "--model", "{d}/base"], "Missing option '--out'"),
    case("unknown-device", [*GENERATE, "--device", "tpu"], "--device: expected auto, cpu or cuda[:N], got 'tpu'"),
    case("cuda-on-cpu", [*GENERATE, "--device", "cuda"], "torch sees 0 CUDA GPU(s) here; use --device cpu",
         marks=NEEDS_NO_CUDA),
    case("bench-cuda-on-cpu", ["bench", "--ops", "--device", "cuda", "--out", "{d}/new"], "no CUDA GPU is visible",
         marks=NEEDS_NO_CUDA),
    # issue 17: settings that would run and be silently wrong
    case("rec-weight-inf", [*CONVERT, "--rec-weight", "inf"], "rec_weight must be a finite number, got inf"),
    case("lr-inf", [*TRAIN, "--data", "{d}/small.jsonl", "--lr", "inf"], "lr must be a finite number, got inf"),
    case("temperature-inf", [*GENERATE, "--sample", "--temperature", "inf"], "must be a finite number, got inf"),
    case("missing-weight", ["convert", "--model", "{d}/missing-tensor", "--out", "{d}/new"],
         "do not match its config.json: 1 weight(s) missing (model.layers.0.self_attn.q_proj.weight)", subprocess=True),
    case("config-edited-to-another-method", ["generate", "{d}/edited-method", "--prompt", "w5"],
         "9 weight(s) missing (model.layers.0.self_attn.feature_map_k.weight"),
    case("weights-of-another-shape", ["generate", "{d}/other-shapes", "--prompt", "w5"],
         "9 weight(s) of another shape (model.layers.0.mlp.down_proj.weight: (48, 64) stored, (48, 32) from config.json)"),
    case("hidden-size-not-divisible-by-heads", ["convert", "--model", "{d}/odd-heads", "--out", "{d}/new"],
         "config.json is not valid (The hidden size (48) is not a multiple of the number of attention heads (5).)"),
    case("seq-len-past-positions", [*TRAIN, "--data", "{d}/small.jsonl", "--seq-len", "512"],
         "seq_len=512 exceeds the model's 256 positions"),
    case("ppl-context-past-positions", ["eval", "{d}/converted", "--tasks", "none", "--ppl", "{d}/text.txt", "--context",
                                        "512", "--stride", "256"], "windows of 299 tokens exceed the model's 256 positions"),
    case("empty-prompt", ["generate", "{d}/converted", "--prompt", ""], "the prompt is empty; give some text"),
    case("blank-prompt", ["generate", "{d}/converted", "--prompt", "  "], "the prompt is empty; give some text"),
    case("empty-prompt-among-several", ["generate", "{d}/converted", "--prompt", "w5", "--prompt", ""],
         "prompt 2 of 2 is empty"),
    case("lora-target-typo", [*TRAIN, "--data", "{d}/small.jsonl", "--lora-targets", "q_proj,k_prj"],
         "lora_targets ['k_prj'] name no module of this model; its linear layers are down_proj, gate_proj, k_proj"),
    # issue 17: raw or late messages
    case("data-not-utf8", [*TRAIN, "--data", "{d}/latin1.jsonl"], "latin1.jsonl line 2 is not UTF-8 text (byte 0xe9)"),
    case("long-record-with-held-out-records", [*TRAIN, "--data", "{d}/long.jsonl"],
         "all 1 records are longer than seq_len=64 tokens; raise seq_len"),
    case("convert-out-through-a-file", ["convert", "--model", "{d}/base", "--out", "{d}/afile/new"],
         "afile is a file, not a folder; choose another --out"),
    case("train-out-through-a-file", [*TRAIN[:3], "{d}/afile/new", *TRAIN[4:]], "afile is a file, not a folder"),
    case("eval-out-through-a-file", ["eval", "{d}/converted", "--tasks", "{d}/task.jsonl", "--out", "{d}/afile/r.json"],
         "afile is a file, not a folder"),
    case("eval-out-is-a-folder", ["eval", "{d}/converted", "--tasks", "{d}/task.jsonl", "--out", "{d}/existing"],
         "existing: it is a folder, not a file"),
    case("bench-out-through-a-file", ["bench", "--ops", "--lengths", "64", "--out", "{d}/afile/new"],
         "afile is a file, not a folder"),
    case("run-out-through-a-file", ["run", "--model", "{d}/base", "--out", "{d}/afile/new", "--budget", "tiny"],
         "afile is a file, not a folder"),
    case("read-only-out", ["convert", "--model", "{d}/base", "--out", f"{READ_ONLY}/new"], "is not writable"),
    case("run-task-file-misspelt", ["run", "--model", "{d}/base", "--out", "{d}/new", "--budget", "tiny", "--data",
                                    "{d}/small.jsonl", "--tasks", "{d}/taks.jsonl"], "task file {d}/taks.jsonl not found"),
]


def _error_lines(stderr: str) -> list[str]:
    """Lines that start with `error:`; progress bars end in a carriage return, so split there too."""
    return [line for line in re.split(r"[\r\n]", stderr) if line.startswith("error:")]


@pytest.mark.parametrize("args,fragment,also_subprocess", BAD_INPUTS)
def test_bad_input_fails_with_one_line_and_exit_code_2(inputs, capsys, args, fragment, also_subprocess):
    args = [a.replace("{d}", str(inputs)) for a in args]
    fragment = fragment.replace("{d}", str(inputs))
    assert liger_in_process(*args) == 2
    stderr = capsys.readouterr().err
    assert len(_error_lines(stderr)) == 1 and fragment in _error_lines(stderr)[0], stderr
    assert not (inputs / "new").exists()  # nothing half-made is left behind
    if also_subprocess:  # the installed entry point: same line, no traceback
        done = liger_subprocess(*args)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert len(_error_lines(done.stderr)) == 1 and fragment in _error_lines(done.stderr)[0], done.stderr


def test_debug_flag_reraises_the_error_for_its_traceback(inputs, monkeypatch):
    from liger_lm.config import LigerConfigError

    monkeypatch.setattr(sys, "argv", ["liger", "--debug", "generate", str(inputs / "newer"), "--prompt", "w5"])
    with pytest.raises(LigerConfigError, match="newer liger-lm"):
        main()


# --- training: SIGKILL + resume, NaN, determinism -------------------------------------------------------------------

def adapter_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "adapter" / "adapter_model.safetensors")


def logged_losses(run: Path) -> list[tuple]:
    """(stage, step, loss / eval_loss / grad_norm) of every metrics.jsonl line (timings excluded)."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["stage"], r["step"], r.get("loss"), r.get("eval_loss"), r.get("grad_norm")) for r in records]


@pytest.fixture(scope="module")
def reference_run(inputs) -> Path:
    """An uninterrupted `liger train` (seed 0) on the tiny converted model."""
    out = inputs / "reference-run"
    assert liger_in_process("train", inputs / "converted", "--out", out, "--data", inputs / "small.jsonl", *TRAIN_ARGS) == 0
    return out


def test_sigkill_mid_run_then_resume_equals_uninterrupted(inputs, reference_run):
    out = inputs / "killed-run"
    command = [sys.executable, "-m", "liger_lm", "train", str(inputs / "converted"), "--out", str(out),
               "--data", str(inputs / "small.jsonl"), *TRAIN_ARGS]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ONE_THREAD)
    checkpoints = out / "checkpoints" / "finetune"
    deadline = time.monotonic() + 240
    while not list(checkpoints.glob("checkpoint-*/COMPLETE")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL  # killed, not finished on its own
    assert not (out / "train_results.json").exists() and not (out / "adapter").exists()

    resumed = liger_subprocess("train", inputs / "converted", "--out", out, "--data", inputs / "small.jsonl",
                               *TRAIN_ARGS, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    results = json.loads((out / "train_results.json").read_text())
    assert "/checkpoint-" in results["stages"][0]["resumed_from"]
    expected, got = adapter_weights(reference_run), adapter_weights(out)
    assert expected.keys() == got.keys()
    assert max((expected[name] - got[name]).abs().max().item() for name in expected) <= 1e-6
    assert logged_losses(out) == logged_losses(reference_run)


def test_same_seed_gives_identical_losses_and_adapter_bytes(inputs, reference_run):
    out = inputs / "second-run"
    assert liger_in_process("train", inputs / "converted", "--out", out, "--data", inputs / "small.jsonl", *TRAIN_ARGS) == 0
    assert logged_losses(out) == logged_losses(reference_run)
    adapter = Path("adapter") / "adapter_model.safetensors"
    assert (out / adapter).read_bytes() == (reference_run / adapter).read_bytes()
    other_seed = inputs / "other-seed-run"
    args = [*TRAIN_ARGS[:-1], "1"]
    assert liger_in_process("train", inputs / "converted", "--out", other_seed, "--data", inputs / "small.jsonl", *args) == 0
    assert logged_losses(other_seed) != logged_losses(reference_run)  # the comparison can tell runs apart


NAN_AFTER_6_STEPS = """
import torch
import liger_lm.training.objectives as objectives
real_cross_entropy, training_calls = objectives.cross_entropy, []
def poisoned(logits, labels):
    loss = real_cross_entropy(logits, labels)
    if torch.is_grad_enabled():  # training micro-steps only, not evaluation
        training_calls.append(1)
        return loss * float("nan") if len(training_calls) > 6 else loss
    return loss
objectives.cross_entropy = poisoned
"""


def test_nan_loss_stops_the_cli_with_one_line_and_keeps_the_last_good_checkpoint(inputs):
    out = inputs / "nan-run"
    done = liger_subprocess("train", inputs / "converted", "--out", out, "--data", inputs / "small.jsonl", *TRAIN_ARGS,
                            script=patched_main(NAN_AFTER_6_STEPS))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "loss became nan at step 6" in _error_lines(done.stderr)[0] and "--resume" in _error_lines(done.stderr)[0]
    checkpoints = out / "checkpoints" / "finetune"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-4"] and (checkpoints / "checkpoint-4" / "COMPLETE").is_file()
    kept = load_file(checkpoints / "checkpoint-4" / "adapter_model.safetensors")
    assert kept and all(torch.isfinite(t).all() for t in kept.values())
    assert not (out / "train_results.json").exists()


# --- existing outputs: nothing lost (issue 17) ---------------------------------------------------------------------

def checksums(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder` (hidden ones too): equal before and after = nothing lost, nothing left."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def finished_run(root: Path, reference: Path) -> None:
    shutil.copytree(reference, root / "run")


def unfinished_run(root: Path, reference: Path) -> None:
    """The reference run as a kill after checkpoint-12 leaves it (checkpoint-16, the adapter and the results gone)."""
    finished_run(root, reference)
    shutil.rmtree(root / "run" / "checkpoints" / "finetune" / "checkpoint-16")
    shutil.rmtree(root / "run" / "adapter")
    (root / "run" / "train_results.json").unlink()


def earlier_results(root: Path, _reference: Path) -> None:
    (root / "results.json").write_text('{"earlier": true}\n')
    (root / "bench").mkdir()
    (root / "bench" / "ops.json").write_text('{"earlier": true}\n')
    (root / "bench" / "ops.png").write_bytes(b"earlier")


RESUME = ["train", "{d}/converted", "--out", "{t}/run", "--data", "{d}/small.jsonl", *TRAIN_ARGS]
# (case, set-up of the earlier outputs in {t}, arguments, exit code, fragment of the one error line / of the output)
KEEP_EXISTING = [
    pytest.param(finished_run, [*RESUME, "--overwrite", "--lora-targets", "q_prj"], 2,
                 "lora_targets ['q_prj'] name no module", id="overwrite-with-a-typo"),
    pytest.param(unfinished_run, [*RESUME, "--resume", "--seq-len", "128"], 2,
                 "run was started with other settings (seq_len 64 → 128); resume it with the settings", id="resume-seq-len"),
    pytest.param(unfinished_run, [*RESUME, "--resume", "--lr", "1e-3"], 2, "(lr 0.01 → 0.001)", id="resume-lr"),
    pytest.param(unfinished_run, [*RESUME, "--resume", "--max-tokens", "2k"], 2, "(max_tokens 1024 → 2048)",
                 id="resume-token-budget"),
    pytest.param(unfinished_run, [*RESUME, "--resume", "--lora-r", "4"], 2, "(lora_r 8 → 4)", id="resume-lora-r"),
    pytest.param(finished_run, [*RESUME, "--resume"], 0, "holds a finished run", id="resume-finished"),
    pytest.param(earlier_results, ["eval", "{d}/converted", "--tasks", "{d}/task.jsonl", "--out", "{t}/results.json"], 2,
                 "results.json already exists; choose another --out or pass --overwrite", id="eval-out-exists"),
    pytest.param(earlier_results, ["bench", "--ops", "--lengths", "64", "--repeats", "1", "--out", "{t}/bench"], 2,
                 "ops.json already exists; choose another --out or pass --overwrite", id="bench-out-exists"),
]


@pytest.mark.parametrize("setup,args,code,fragment", KEEP_EXISTING)
def test_existing_outputs_are_kept_byte_for_byte(inputs, reference_run, tmp_path, capsys, setup, args, code, fragment):
    setup(tmp_path, reference_run)
    before = checksums(tmp_path)
    assert liger_in_process(*[a.replace("{d}", str(inputs)).replace("{t}", str(tmp_path)) for a in args]) == code
    stderr = capsys.readouterr().err
    lines = _error_lines(stderr)
    assert (len(lines) == 1 and fragment in lines[0]) if code else (not lines and fragment in stderr), stderr
    assert checksums(tmp_path) == before  # every earlier file unchanged, and no staging folder or lock left


def test_overwrite_that_fails_half_way_keeps_the_finished_run(inputs, reference_run, tmp_path, capsys, monkeypatch):
    finished_run(tmp_path, reference_run)
    before = checksums(tmp_path / "run")
    monkeypatch.setattr("liger_lm.training.objectives.cross_entropy", lambda *_: torch.tensor(float("nan")))
    assert liger_in_process(*[a.replace("{d}", str(inputs)).replace("{t}", str(tmp_path)) for a in RESUME],
                            "--overwrite") == 2
    assert "the ce loss became nan" in _error_lines(capsys.readouterr().err)[0]
    assert checksums(tmp_path / "run") == before
    assert (tmp_path / ".run.new").is_dir()  # the new run, kept for --resume; the old one is still in place


@pytest.fixture(scope="module")
def pipeline_run(inputs) -> tuple[Path, list[str]]:
    """A finished tiny `liger run` (fp32, one thread) and its arguments."""
    out = inputs / "pipeline"
    args = ["run", "--model", inputs / "base", "--out", out, "--window", "8", "--max-new-tokens", "2", "--budget", "tiny",
            "--data", inputs / "small.jsonl", "--tasks", f"{inputs / 'task.jsonl'}=6", "--precision", "fp32"]
    assert liger_in_process(*args) == 0
    return out, [str(a) for a in args]


def test_run_overwrite_replaces_the_run_only_once_complete(pipeline_run, capsys, monkeypatch):
    out, args = pipeline_run
    before = checksums(out)
    misspelt = [a.replace("task.jsonl", "taks.jsonl") for a in args]
    assert liger_in_process(*misspelt, "--overwrite") == 2  # refused before anything is touched
    assert "taks.jsonl not found" in _error_lines(capsys.readouterr().err)[0]
    assert checksums(out) == before

    def fails(*_, **__):
        raise liger_lm.errors.DataError("the evaluation failed half-way")

    with monkeypatch.context() as patch:  # a failure after conversion and training: the old run is still whole
        patch.setattr("liger_lm.run.evaluate_suite", fails)
        assert liger_in_process(*args, "--seed", "1", "--overwrite") == 2
    assert checksums(out) == before

    assert liger_in_process(*args, "--seed", "1", "--overwrite") == 0
    assert json.loads((out / "run.json").read_text())["seed"] == 1 and not (out.parent / ".pipeline.new").exists()
    model, _ = liger_lm.load_model(str(out / "train" / "adapter"))  # its base model path points into the new run
    assert model.config.liger["window"] == 8


def test_a_second_writer_is_refused_and_a_stale_lock_is_not(inputs, tmp_path, capsys):
    out = tmp_path / "model"
    with output_lock(out):  # another process writing `out`, as a second `liger run` on one folder would
        assert liger_in_process("convert", "--model", inputs / "base", "--out", out) == 2
    assert "is being written by another liger process" in _error_lines(capsys.readouterr().err)[0]
    (tmp_path / ".model.lock").write_text("12345")  # left by a killed process: the lock itself died with it
    assert liger_in_process("convert", "--model", inputs / "base", "--out", out) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


@pytest.mark.parametrize("damaged", ["adapter_model.safetensors", "optimizer.pt", "trainer_state.json"])
def test_resume_falls_back_past_a_damaged_checkpoint(inputs, reference_run, tmp_path, capsys, damaged):
    finished_run(tmp_path, reference_run)
    run = tmp_path / "run"
    shutil.rmtree(run / "adapter")
    (run / "train_results.json").unlink()
    broken = run / "checkpoints" / "finetune" / "checkpoint-16" / damaged  # complete, then cut short (a full disk)
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])
    assert liger_in_process(*[a.replace("{d}", str(inputs)).replace("{t}", str(tmp_path)) for a in RESUME],
                            "--resume") == 0
    warning = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and f"checkpoint-16 is damaged ({damaged} cannot be read" in warning[0]
    assert "resuming from checkpoint-12" in warning[0]
    expected, got = adapter_weights(reference_run), adapter_weights(run)
    assert max((expected[name] - got[name]).abs().max().item() for name in expected) <= 1e-6
    assert logged_losses(run) == logged_losses(reference_run)


@pytest.mark.parametrize("args", [
    ["convert", "--model", "{d}/base", "--out", "{d}/afile/x"],
    ["train", "{d}/converted", "--out", "{d}/afile/x", "--data", "{d}/small.jsonl"],
    ["eval", "{d}/converted", "--tasks", "{d}/task.jsonl", "--out", "{d}/afile/x.json"],
    ["bench", "--model", "{d}/base", "--lengths", "64", "--batch", "1", "--out", "{d}/afile/x"],
    ["run", "--model", "{d}/base", "--out", "{d}/afile/x", "--budget", "tiny", "--data", "{d}/small.jsonl",
     "--tasks", "{d}/task.jsonl"],
], ids=["convert", "train", "eval", "bench", "run"])
def test_out_is_checked_before_any_model_is_loaded(inputs, capsys, monkeypatch, args):
    def loading(*_, **__):
        raise AssertionError("a model was loaded before --out was checked")

    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", loading)
    assert liger_in_process(*[a.replace("{d}", str(inputs)) for a in args]) == 2
    assert "afile is a file, not a folder" in _error_lines(capsys.readouterr().err)[0]


def test_a_bug_shows_its_traceback_and_asks_for_a_report(inputs, capsys, monkeypatch):
    def broken(*_, **__):
        raise KeyError("a bug, not a bad input")

    monkeypatch.setattr("liger_lm.generation.generate_text", broken)
    assert liger_in_process("generate", inputs / "converted", "--prompt", "w5") == 1
    stderr = capsys.readouterr().err
    assert "Traceback" in stderr and "KeyError: 'a bug, not a bad input'" in stderr and not _error_lines(stderr)
    assert "bug: this is a bug in liger-lm" in stderr and "please report it" in stderr


def test_every_error_is_a_liger_error_and_keeps_its_old_base():
    from liger_lm import errors
    from liger_lm.benchmark import BenchmarkError
    from liger_lm.data.errors import DataError
    from liger_lm.evaluation import EvaluationError
    from liger_lm.generation import PromptTooLongError
    from liger_lm.harness import HarnessArgumentError
    from liger_lm.io import OutputExistsError
    from liger_lm.models import ModelLoadError
    from liger_lm.ops.fla_backend import BackendError
    from liger_lm.training import NonFiniteLossError, TrainConfigError

    old_bases = {liger_lm.LigerConfigError: ValueError, TrainConfigError: ValueError, DataError: ValueError,
                 EvaluationError: ValueError, ModelLoadError: ValueError, liger_lm.UnsupportedModelError: ValueError,
                 PromptTooLongError: ValueError, BenchmarkError: ValueError, BackendError: ValueError,
                 HarnessArgumentError: ValueError, NonFiniteLossError: RuntimeError, OutputExistsError: FileExistsError}
    for error, base in old_bases.items():
        assert issubclass(error, errors.LigerError) and issubclass(error, base), error
        assert error.__module__ == "liger_lm.errors", error  # one module holds the family


# --- atomic writes ----------------------------------------------------------------------------------------------

DIE_HALF_WAY_THROUGH_SAVE = """
import os, signal
import safetensors.torch
import transformers.modeling_utils
def write_half_then_die(tensors, filename, metadata=None):
    data = safetensors.torch.save(tensors, metadata=metadata)
    with open(filename, "wb") as handle:
        handle.write(data[: len(data) // 2])
        handle.flush()
    os.kill(os.getpid(), signal.SIGKILL)
transformers.modeling_utils.safe_save_file = write_half_then_die
"""


def test_convert_killed_half_way_through_saving_leaves_the_previous_output_readable(inputs, tmp_path):
    out = tmp_path / "converted"
    assert liger_in_process("convert", "--model", inputs / "base", "--out", out, "--window", "8") == 0
    before = (out / "model.safetensors").read_bytes()
    killed = liger_subprocess("convert", "--model", inputs / "base", "--out", out, "--window", "16", "--overwrite",
                              script=patched_main(DIE_HALF_WAY_THROUGH_SAVE))
    assert killed.returncode == -signal.SIGKILL
    assert (out / "model.safetensors").read_bytes() == before
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.liger["window"] == 8
    assert torch.isfinite(model(torch.tensor([[5, 6, 7]])).logits).all()


def test_json_write_interrupted_before_the_rename_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    write_json_atomic(path, {"score": 1})

    def interrupted(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_json_atomic(path, {"score": 2})
    assert json.loads(path.read_text()) == {"score": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary file left


# --- determinism of conversion and evaluation --------------------------------------------------------------------

@pytest.mark.parametrize("method", ["liger", "lolcats"])
def test_same_seed_gives_identical_converted_weights(inputs, tmp_path, method):
    # LoLCATs draws feature-map columns at random here (f = 64 > head_dim = 8): the seed must fix them.
    runs = {name: tmp_path / name for name in ("a", "b")}
    for folder in runs.values():
        assert liger_in_process("convert", "--model", inputs / "base", "--out", folder, "--method", method) == 0
    assert (runs["a"] / "model.safetensors").read_bytes() == (runs["b"] / "model.safetensors").read_bytes()


def test_evaluation_numbers_are_identical_across_loads(inputs):
    from liger_lm.data.multiple_choice import MultipleChoiceExample
    from liger_lm.evaluation import perplexity, score_multiple_choice

    examples = [MultipleChoiceExample(query=f"w{i} w{i + 1}", choices=(f" w{i + 2}", f" w{i + 7}", f" w{i}"), label=0)
                for i in range(5, 25)]
    text = " ".join(f"w{(7 * i) % 90 + 5}" for i in range(120))
    numbers = []
    for _ in range(2):
        model, tokenizer = liger_lm.load_model(str(inputs / "converted"))
        ppl = perplexity(model, tokenizer, text, context=32, stride=16)
        numbers.append((score_multiple_choice(model, tokenizer, examples, batch_size=4, progress=False), ppl))
    assert numbers[0] == numbers[1]
    assert 1.0 < numbers[0][1].ppl < float("inf")


# --- no pickle, no remote code ------------------------------------------------------------------------------------

def _calls(tree: ast.AST):
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)]


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def test_sources_never_unpickle_or_trust_remote_code():
    unpicklers = {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
    problems = []
    files = sorted(SOURCE.rglob("*.py"))
    assert len(files) > 20
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            problems += [f"{path.name}: imports {n}" for n in names if n.split(".")[0] in unpicklers]
        for call in _calls(tree):
            keywords = {k.arg: k.value for k in call.keywords}
            name = _dotted(call.func)
            if name.endswith("torch.load") or name == "load" and "weights_only" in keywords:
                safe = isinstance(keywords.get("weights_only"), ast.Constant) and keywords["weights_only"].value is True
                problems += [] if safe else [f"{path.name}:{call.lineno}: torch.load without weights_only=True"]
            if name.endswith("torch.save"):
                problems.append(f"{path.name}:{call.lineno}: torch.save writes a pickle; use safetensors")
            remote = keywords.get("trust_remote_code")
            if remote is not None and not (isinstance(remote, ast.Constant) and remote.value is False):
                problems.append(f"{path.name}:{call.lineno}: trust_remote_code")
    assert problems == []
