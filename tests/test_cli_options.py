"""The command line's options are generated from the config dataclasses: every setting is reachable, options given
override a preset and nothing else does, counts read one way everywhere, and `liger --help` loads no torch."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import typer.main
from typer.testing import CliRunner

from liger_lm.benchmark import BenchOptions, parse_sizes
from liger_lm.cli import _bench_dtypes, _pairs, _stages, app
from liger_lm.config import LigerConfig, parse_count
from liger_lm.presets import PRESETS
from liger_lm.run import RunOptions
from liger_lm.training.config import Stage, TrainConfig

# Fields with no option of their own, and why.
HIDDEN = {
    (RunOptions, "liger"): "set by --preset and the LigerConfig options",
    (RunOptions, "train"): "set by the TrainConfig options",
    (BenchOptions, "liger"): "set by --preset and the LigerConfig options",
}
# TrainConfig fields that `liger run` takes from RunOptions' options of the same name and meaning.
RUN_OWNS = {"data", "seed", "precision"}
COMMANDS = {
    "convert": [LigerConfig],
    "train": [TrainConfig],
    "run": [RunOptions, LigerConfig, TrainConfig],
    "bench": [BenchOptions, LigerConfig],
}


def options_of(command: str) -> dict[str, list[str]]:
    params = typer.main.get_command(app).commands[command].params
    return {param.name: [*param.opts, *param.secondary_opts] for param in params}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_setting_has_an_option(command):
    options = options_of(command)
    for cls in COMMANDS[command]:
        for f in dataclasses.fields(cls):
            if (cls, f.name) in HIDDEN or (command == "run" and cls is TrainConfig and f.name in RUN_OWNS):
                continue
            expected = f.metadata.get("option", "--" + f.name.replace("_", "-"))
            assert expected in options.get(f.name, []), f"{command}: {cls.__name__}.{f.name} has no {expected}"
            assert f.metadata["help"], f"{cls.__name__}.{f.name} has no help"
    if command == "run":  # the fields it owns instead of TrainConfig's
        assert all(f"--{name}" in options[name] for name in RUN_OWNS)


def fake_main_job(seen: dict):
    def main_job(options, log):
        seen["options"] = options
        Path(options.out).mkdir(parents=True, exist_ok=True)
        (Path(options.out) / "report.md").write_text("report\n")
        return {"seconds": {"this_invocation": 0}}

    return main_job


def test_run_options_given_override_the_preset_and_the_others_keep_it(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr("liger_lm.run.main_job", fake_main_job(seen))
    runner = CliRunner()
    done = runner.invoke(app, ["run", "--out", str(tmp_path / "run"), "--preset", "shared", "--budget", "tiny",
                               "--sinks", "0", "--window", "128", "--lr", "3e-4", "--lora-r", "32", "--max-tokens", "2k",
                               "--stages", "attn:0.5,kd:0.5@1e-4", "--prompt", "Hi?", "--prompt", "Sea, sun?"])
    assert done.exit_code == 0, done.output
    options = seen["options"]
    assert (options.liger.sinks, options.liger.window) == (0, 128)  # given
    assert options.liger.combine == "shared"  # the preset's, not LigerConfig's default "sum"
    assert options.prompts == ["Hi?", "Sea, sun?"] and options.budget == "tiny"
    train = options.train_config().validate()
    assert (train.lr, train.lora_r, train.max_tokens) == (3e-4, 32, 2048)  # given (max_tokens over the budget's 512)
    assert train.stages == (Stage("attn", 0.5), Stage("kd", 0.5, 1e-4))
    assert (train.lora_alpha, train.lora_targets) == (16, ("q_proj", "k_proj", "v_proj", "o_proj"))  # the preset's
    assert train.seq_len == 64  # the budget's

    done = runner.invoke(app, ["run", "--out", str(tmp_path / "plain"), "--preset", "paper"])
    assert done.exit_code == 0, done.output
    options = seen["options"]
    assert options.liger == LigerConfig(**PRESETS["paper"].liger) and options.train == {}
    assert options.train_config() == RunOptions(preset="paper").train_config()

    done = runner.invoke(app, ["run", "--out", str(tmp_path / "one-stage"), "--stages", "none", "--objective", "kd"])
    assert done.exit_code == 0, done.output  # an empty value given still overrides the preset's stages
    assert seen["options"].train == {"stages": (), "objective": "kd"}
    assert seen["options"].train_config().validate().stages == ()


def test_convert_options_given_override_the_preset(tiny_model_dir, tmp_path):
    out = tmp_path / "liger"
    done = CliRunner().invoke(app, ["convert", "--model", str(tiny_model_dir), "--out", str(out), "--preset", "shared",
                                    "--window", "8", "--sinks", "2", "--softmax-layers", "1"])
    assert done.exit_code == 0, done.output
    saved = json.loads((out / "config.json").read_text())["liger"]
    assert (saved["window"], saved["sinks"], saved["softmax_layers"]) == (8, 2, [1])  # given
    assert saved["combine"] == "shared"  # the preset's


def test_train_reads_structured_settings(monkeypatch, tmp_path):
    seen = {}

    def fake_train(model, tokenizer, config, out, **kwargs):
        seen["config"] = config
        return SimpleNamespace(finished_earlier=True, results={"tokens_trained": 0, "eval_loss_before": 1,
                                                               "eval_loss_after": 1})

    monkeypatch.setattr("liger_lm.models.load_model", lambda name: (None, None))
    monkeypatch.setattr("liger_lm.training.train", fake_train)
    done = CliRunner().invoke(app, ["train", "model", "--out", str(tmp_path / "new"), "--max-tokens", "16k",
                                    "--lora-targets", "q_proj, o_proj", "--stages", "attn,kd",
                                    "--extra", "gradient_checkpointing=true,dataloader_num_workers=2,optim=adamw_torch",
                                    "--no-use-lora", "--train-feature-maps", "--records", "100"])
    assert done.exit_code == 0, done.output
    config = seen["config"]
    assert config.max_tokens == 16384 and config.lora_targets == ("q_proj", "o_proj")
    assert config.stages == (Stage("attn"), Stage("kd"))
    assert config.extra == {"gradient_checkpointing": True, "dataloader_num_workers": 2, "optim": "adamw_torch"}
    assert (config.use_lora, config.train_feature_maps, config.records) == (False, True, 100)
    assert (config.lr, config.lora_r, config.objective) == (1e-3, 8, "ce")  # not given: TrainConfig's defaults


@pytest.mark.parametrize("text,value", [
    ("300000", 300_000), ("16k", 16_384), ("16K", 16_384), (" 4k ", 4096), ("2M", 2 * 1024**2), ("2m", 2 * 1024**2),
    ("1G", 1024**3), ("-3", -3), (7, 7),
])
def test_parse_count(text, value):
    assert parse_count(text) == value


@pytest.mark.parametrize("text", ["1.5k", "lots", "", "k", "2 MB", "1e3", "2M tokens"])
def test_parse_count_refuses_anything_else(text):
    with pytest.raises(ValueError, match="expected a count like 2M, 500k or 300000"):
        parse_count(text)


def test_one_count_rule_for_token_budgets_and_lengths(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr("liger_lm.run.main_job", fake_main_job(seen))
    monkeypatch.setattr("liger_lm.benchmark.run_benchmark",
                        lambda options, log: seen.update(bench=options) or {"summary": {}})
    runner = CliRunner()
    assert runner.invoke(app, ["run", "--out", str(tmp_path / "r"), "--max-tokens", "16k"]).exit_code == 0
    done = runner.invoke(app, ["bench", "--ops", "--lengths", "16k,1M", "--batch", "2k", "--device", "cpu",
                               "--out", str(tmp_path / "b")])
    assert done.exit_code == 0, done.output
    assert seen["options"].train_config().max_tokens == 16_384
    assert seen["bench"].lengths == [16_384, 1024**2] == parse_sizes("16k,1M", "--lengths")
    assert seen["bench"].batches == [2048]
    bad = runner.invoke(app, ["bench", "--lengths", "1.5k", "--out", str(tmp_path / "c")])
    assert bad.exit_code == 2 and "expected a count like 2M" in bad.output and not (tmp_path / "c").exists()


def test_stage_and_pair_syntax():
    assert _stages("attn:0.25, kd:0.75@3e-4") == ({"objective": "attn", "share": 0.25},
                                                 {"objective": "kd", "share": 0.75, "lr": 3e-4})
    assert _stages("kd+ce") == ({"objective": "kd+ce"},) and _stages("none") == ()
    assert TrainConfig(stages=_stages("attn:1,kd:3")).validate().stages == (Stage("attn", 1.0), Stage("kd", 3.0))
    assert _pairs("a=1,b=x,c=false") == {"a": 1, "b": "x", "c": False}
    with pytest.raises(typer.BadParameter, match="objective\\[:share\\]\\[@lr\\]"):
        _stages("attn:lots")
    with pytest.raises(typer.BadParameter, match="key=value"):
        _pairs("gradient_checkpointing")


def test_bench_dtype_auto_follows_the_resolved_device(monkeypatch):
    import liger_lm.hardware as hardware

    seen = []
    monkeypatch.setattr(hardware, "resolve_device", lambda spec, error=None: torch.device("cuda", 0))
    monkeypatch.setattr(hardware, "fast_bf16", lambda device: seen.append(device) or True)
    assert _bench_dtypes(["auto"], "auto") == ["fp32", "bf16"]
    assert seen == [torch.device("cuda", 0)]  # not the CPU, as "auto" used to mean here
    assert _bench_dtypes(["fp32"], "auto") == ["fp32"]


@pytest.mark.parametrize("args", [["--help"], ["generate", "--help"], ["eval", "--help"], ["bench", "--help"],
                                  ["run", "--help"], ["train", "--help"], ["run", "--window", "abc"]])
def test_help_and_usage_errors_do_not_import_torch(args):
    """`python -m liger_lm` is the `liger` command; `-X importtime` lists every module the process imported."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "liger_lm", *args], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == (0 if "--help" in args else 2), done.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "liger_lm.cli" in imported  # the list is read right
    assert not {"torch", "transformers"} & imported
    assert ("Usage:" in done.stdout) if "--help" in args else ("Invalid value for '--window'" in done.stderr)


def test_import_liger_lm_still_loads_the_api_and_registers_the_auto_classes():
    code = ("import sys, liger_lm; from transformers.models.auto.configuration_auto import CONFIG_MAPPING; "
            "print('torch' in sys.modules, 'liger_llama' in CONFIG_MAPPING, callable(liger_lm.convert))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True", "True"]


@pytest.mark.parametrize("argv,cli", [
    (["python", "/venv/bin/liger", "--help"], True),
    (["python", "-X", "importtime", "-m", "liger_lm", "run"], True),
    (["python", "-m", "liger_lm.harness"], False),
    (["python", "-c", "import liger_lm"], False),
    (["python", "/venv/bin/liger-lm-eval"], False),
    (["python", "-m", "pytest", "tests"], False),
    (["python"], False),
])
def test_the_liger_process_is_recognised_from_the_interpreter_command_line(monkeypatch, argv, cli):
    import liger_lm

    monkeypatch.setattr(sys, "orig_argv", argv)
    assert liger_lm._started_as_cli() is cli
