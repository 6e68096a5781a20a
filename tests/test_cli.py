"""The `liger` command line on a tiny saved model (no downloads): through its entry point in this process
(`conftest.liger_in_process`), and as a real `python -m liger_lm` subprocess where the process itself is tested."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

import liger_lm
from conftest import liger_in_process as liger
from liger_lm.io import OutputExistsError, atomic_directory


def liger_process(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "liger_lm", *args], capture_output=True, text=True, timeout=300
    )


def test_convert_then_generate_round_trip(tiny_model_dir, tmp_path):
    out = tmp_path / "liger"
    done = liger("convert", "--model", str(tiny_model_dir), "--out", str(out), "--window", "8", "--softmax-layers", "1")
    assert done.returncode == 0, done.stderr
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.liger["window"] == 8 and model.config.liger["softmax_layers"] == [1]
    card = (out / "README.md").read_text()  # plain transformers cannot load it: the folder says how
    assert "import liger_lm" in card and "`liger_llama`" in card
    assert isinstance(model.model.layers[0].self_attn, liger_lm.LigerAttention)

    done = liger("generate", str(out), "--prompt", "w5 w6", "--prompt", "w7", "--max-new-tokens", "5")
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.strip().splitlines()) == 2
    sampled = liger("generate", str(out), "--prompt", "w5", "--sample", "--max-new-tokens", "3", "--seed", "3")
    assert sampled.returncode == 0, sampled.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        (["--window", "0"], "window must be a positive integer"),
        (["--window", "abc"], "Invalid value for '--window'"),
        (["--gate", "nope"], "unknown gate 'nope'"),
        (["--rec-weight", "-1"], "rec_weight must be a number"),
        (["--softmax-layers", "9"], "out of range"),
    ],
)
def test_bad_convert_arguments_fail_with_one_clear_line(tiny_model_dir, tmp_path, args, message):
    done = liger("convert", "--model", str(tiny_model_dir), "--out", str(tmp_path / "x"), *args)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "x").exists()


def test_missing_model_and_existing_output_are_refused(tiny_model_dir, tmp_path):
    done = liger_process("convert", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "x"))
    assert done.returncode == 2 and "does not exist" in done.stderr
    existing = tmp_path / "existing"
    existing.mkdir()
    done = liger("convert", "--model", str(tiny_model_dir), "--out", str(existing))
    assert done.returncode == 2 and "--overwrite" in done.stderr


def test_unsupported_architecture_through_the_cli(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from conftest import tiny_tokenizer

    folder = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=97)).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    done = liger("convert", "--model", str(folder), "--out", str(tmp_path / "x"))
    assert done.returncode == 2 and "supported architectures are LlamaForCausalLM" in done.stderr


def test_help_lists_every_command():
    done = liger_process("--help")
    assert done.returncode == 0
    assert all(name in done.stdout for name in ("convert", "generate", "run"))


def test_run_pipeline_on_a_tiny_model_then_reuse(tiny_model_dir, instruction_file, task_file, tmp_path):
    out = tmp_path / "run"
    args = ["run", "--model", str(tiny_model_dir), "--out", str(out), "--window", "8", "--max-new-tokens", "4",
            "--budget", "tiny", "--data", str(instruction_file), "--tasks", f"{task_file}=10", "--precision", "bf16"]
    done = liger(*args)  # bf16 forced: every CPU runs it (slowly where it is emulated), so CI covers this path
    assert done.returncode == 0, done.stderr
    report = (out / "report.md").read_text()
    assert "recovery" in report and "Greedy generations" in report and "Llama-3-8B" in report
    assert "learned feature maps" in report and "a D×D feature matrix per head" in report  # the default preset's
    results = json.loads((out / "results.json").read_text())
    cache = results["cache_bytes"]  # past the window both lengths: the base cache grows 4×, Liger's stays
    assert cache["base"]["4096"] == 4 * cache["base"]["1024"] and cache["liger"]["4096"] == cache["liger"]["1024"] > 0
    assert results["scores"]["base"][str(task_file)]["n"] == 10
    assert results["precision"] == "bf16" and "evaluation (tasks, held-out prose): bf16 autocast" in report
    assert results["training"]["tokens_trained"] > 0 and (out / "train" / "adapter" / "adapter_config.json").is_file()
    assert (out / "recovery.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    again = liger(*args)
    assert again.returncode == 0, again.stderr
    assert all(f"reusing {what}" in again.stderr.replace("\n", " ") for what in ("the converted model", "the fine-tune"))
    assert json.loads((out / "results.json").read_text())["scores"] == results["scores"]

    changed = liger(*args[:-4], "--tasks", f"{task_file}=6", "--precision", "bf16")
    assert changed.returncode == 2 and "other settings (tasks differ)" in changed.stderr


def test_atomic_directory_leaves_the_previous_output_when_interrupted(tmp_path):
    target = tmp_path / "out"
    with atomic_directory(target) as staging:
        (staging / "a.txt").write_text("first")
    with pytest.raises(RuntimeError):
        with atomic_directory(target, overwrite=True) as staging:
            (staging / "a.txt").write_text("half-written")
            raise RuntimeError("killed")
    assert (target / "a.txt").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    with pytest.raises(OutputExistsError):
        with atomic_directory(target):
            pass


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_outputs_get_the_permissions_of_a_plain_write(tmp_path, umask):
    """Written through temporary files, outputs still get what open() / mkdir would give under the umask (mkstemp
    alone makes them 0600, mkdtemp 0700: unreadable to a colleague on a shared machine)."""
    from liger_lm.io import write_text_atomic

    previous = os.umask(umask)
    try:
        write_text_atomic(tmp_path / "report.md", "text")
        with atomic_directory(tmp_path / "model") as staging:
            (staging / "config.json").write_text("{}")
        (tmp_path / "plain.md").write_text("text")
        (tmp_path / "plain").mkdir()
    finally:
        os.umask(previous)
    mode = lambda name: (tmp_path / name).stat().st_mode & 0o777  # noqa: E731
    assert mode("report.md") == mode("plain.md") == 0o666 & ~umask
    assert mode("model") == mode("plain") == 0o777 & ~umask


def test_token_validity_reads_every_mask_format():
    from liger_lm.modeling.attention import token_validity

    padding = torch.tensor([[0, 1, 1], [1, 1, 1]])
    expected = padding.bool()
    causal = torch.tril(torch.ones(3, 3, dtype=torch.bool))
    bool_4d = (causal[None] & expected[:, None, :])[:, None]
    float_4d = torch.zeros(bool_4d.shape).masked_fill(~bool_4d, torch.finfo(torch.float32).min)
    assert torch.equal(token_validity(padding, 3), expected)
    assert torch.equal(token_validity(bool_4d, 3), expected)
    assert torch.equal(token_validity(float_4d, 3), expected)
    assert token_validity(torch.ones(2, 5), 3) is None
    assert token_validity(padding, 1) is None  # the last token is real in both rows


@pytest.mark.parametrize("gate", list(liger_lm.GATES))
def test_convert_and_generate_every_gate_in_process(tiny_model_dir, tmp_path, gate):
    from typer.testing import CliRunner

    from liger_lm.cli import app

    runner = CliRunner()
    out = tmp_path / gate
    done = runner.invoke(app, ["convert", "--model", str(tiny_model_dir), "--out", str(out), "--gate", gate,
                               "--num-slots", "4", "--softmax-every", "3", "--preset", "paper"])
    assert done.exit_code == 0, done.output
    assert AutoModelForCausalLM.from_pretrained(out).config.liger["gate"] == gate
    done = runner.invoke(app, ["generate", str(out), "--prompt", "w5 w6", "--max-new-tokens", "3"])
    assert done.exit_code == 0, done.output


def test_convert_help_lists_every_gate():
    done = liger("convert", "--help")
    assert done.returncode == 0 and all(f"{gate}:" in done.stdout for gate in liger_lm.GATES)


@pytest.mark.parametrize("bf16, dtype", [(True, torch.bfloat16), (False, torch.float32)])
def test_evaluation_precision_scores_in_bf16_and_leaves_frozen_weights_frozen(bf16, dtype):
    """`liger run` evaluates under the precision it trains in: bf16 forced runs the matmuls in bf16 on any CPU."""
    from conftest import tiny_model
    from liger_lm.run import evaluation_precision

    model = tiny_model("llama").requires_grad_(False)  # as a fine-tuned model merged from LoRA
    model.lm_head.weight.requires_grad_(True)
    with evaluation_precision(model, bf16=bf16):
        logits = model(torch.tensor([[1, 2, 3]])).logits
        if bf16:  # weights require grad inside, so that autocast keeps their bf16 copies for the whole block
            assert all(p.requires_grad for p in model.parameters())
    assert logits.dtype == dtype
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["lm_head.weight"]  # frozen again


def test_run_report_flags_what_looks_broken():
    from liger_lm.run import findings

    def results(far_ratio: float) -> dict:
        far = {"from_position": 1024, "ratio": far_ratio, "log_ratio_se": 0.002}
        return {
            "generations": [{"prompt": "Hi?", "base": "Hello.", "liger": "  "},
                            {"prompt": "Sea?", "base": "x", "liger": "y"}],
            "cache_bytes": {"liger": {128: 0, 1024: 7_000}},
            "prose": {"ratio_to_base": {"liger": {"ratio": 2.4, "log_ratio_se": 0.1}},
                      "recurrent_branch_zeroed": {"ratio": 1.005, "log_ratio_se": 0.004, "far": far,
                                                  "by_position": {"0-64": 1.0, "64-1024": 1.01, "1024-4096": far_ratio}}},
        }

    # far beyond the window, zeroing the branch costs 0.3 %: within two paired standard errors (0.4 %), so unused
    found = findings(results(1.003))
    assert len(found) == 4
    assert "empty string" in found[0] and "'Hi?'" in found[0]
    assert "after 128 tokens holds 0 bytes" in found[1]
    assert "2.40× the base" in found[2]
    assert "does not use it" in found[3] and "1,024 and later" in found[3]
    # zeroing it helps by 0.5 %, beyond two standard errors: the branch hurts there
    assert "the branch hurts" in findings(results(0.995))[3]
    # zeroing it costs 0.5 %: used; with a sound answer, cache and perplexity nothing is flagged
    healthy = results(1.005)
    healthy.update(generations=healthy["generations"][1:], cache_bytes={"liger": {128: 7_000}})
    healthy["prose"]["ratio_to_base"]["liger"]["ratio"] = 1.2
    assert findings(healthy) == []


def test_branch_ablation_pairs_the_windows_of_the_zeroed_and_the_used_model():
    from liger_lm.run import branch_ablation

    # two long windows of 6 blocks of 256 tokens: blocks 4 and 5 lie at positions 1,024 and later
    used = {"window_nll": [3.0, 3.2, 2.8], "by_position": {"0-64": 40.0, "64-1024": 20.0},
            "block_nll": [[9, 9, 9, 9, 2.0, 2.2], [9, 9, 9, 9, 3.0, 3.0]], "block": 256}
    zeroed = {"window_nll": [3.1, 3.3, 2.9], "by_position": {"0-64": 40.0, "64-1024": 21.0},
              "block_nll": [[0, 0, 0, 0, 2.1, 2.2], [0, 0, 0, 0, 3.1, 3.0]], "block": 256}
    result = branch_ablation(zeroed, used)
    assert result["ratio"] == pytest.approx(math.exp(0.1), abs=1e-4)
    assert result["log_ratio_se"] == pytest.approx(0.0, abs=1e-6)  # the same +0.1 in every window: no spread
    assert result["by_position"] == {"0-64": 1.0, "64-1024": 1.05}
    # far: differences 0.1, 0, 0.1, 0 → mean 0.05, sample std 0.0577, standard error 0.0289 (the early blocks unused)
    assert result["far"]["from_position"] == 1024
    assert result["far"]["ratio"] == pytest.approx(math.exp(0.05), abs=1e-4)
    assert result["far"]["log_ratio_se"] == pytest.approx(0.0289, abs=1e-4)


def test_progress_lines_print_brackets_as_written(capsys):
    """A progress message is text, not rich markup: the install hint names the extra in brackets."""
    from liger_lm import cli

    cli._progress("llama.cpp: skipped (pip install 'liger-lm[bench]')")
    assert "pip install 'liger-lm[bench]'" in capsys.readouterr().err  # progress goes to stderr
