"""`liger bench` end to end at tiny sizes: structure, exact cache sizes and sane values (never timings)."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import needs_torch_compile, tiny_model
from liger_lm import LigerConfig
from liger_lm.benchmark import BenchmarkError, BenchOptions, parse_sizes, run_benchmark
from liger_lm.benchmark import llama_cpp, measure, ops_bench
from liger_lm.presets import DEFAULT_PRESET, PRESETS

FP32 = 4


def test_parse_sizes():
    assert parse_sizes("1k,4k,16k", "--lengths") == [1024, 4096, 16384]
    assert parse_sizes(" 1, 16 ", "--batch") == [1, 16]
    assert parse_sizes("2m", "--lengths") == [2 * 1024 * 1024]


@pytest.mark.parametrize("text", ["", "1k,", "0", "abc", "1.5k", "-4"])
def test_parse_sizes_rejects_bad_values(text):
    with pytest.raises(BenchmarkError, match="--lengths"):
        parse_sizes(text, "--lengths")


@pytest.mark.parametrize("field,value", [("dtypes", ["fp16"]), ("repeats", 0), ("max_seconds", 0.0), ("device", "tpu"),
                                         ("llama_cpp_weights", "q4_k")])
def test_bad_options_raise_one_line_value_errors(tmp_path, field, value):
    options = BenchOptions(out=tmp_path, **{field: value})
    with pytest.raises(BenchmarkError) as err:
        run_benchmark(options)
    assert "\n" not in str(err.value)
    assert not any(tmp_path.iterdir())


def test_ops_benchmark_structure(tmp_path, monkeypatch):
    monkeypatch.setattr(ops_bench, "NAIVE_SWA_MAX_LENGTH", 40)
    options = BenchOptions(out=tmp_path, ops=True, lengths=[24, 80], repeats=2, max_seconds=5.0)
    results = run_benchmark(options)
    saved = json.loads((tmp_path / "ops.json").read_text())
    assert saved["rows"] == results["rows"] and (tmp_path / "ops.png").stat().st_size > 0
    assert saved["environment"]["torch"] and saved["shape"]["heads"] == 9
    short, long = saved["rows"]
    assert (short["length"], long["length"]) == (24, 80)
    for name in ("gla_chunked", "gla_naive_loop", "sdpa_causal", "swa_blocked", "swa_naive"):
        assert short[name]["seconds"] > 0 and 1 <= short[name]["runs"] <= 2
        assert short[name]["tokens_per_s"] == pytest.approx(24 / short[name]["seconds"], rel=1e-3, abs=0.1)
    assert "skipped" in long["swa_naive"] and long["ratios"]["swa_blocked_vs_naive"] is None
    expected = short["gla_naive_loop"]["seconds"] / short["gla_chunked"]["seconds"]
    assert short["ratios"]["gla_chunked_vs_naive_loop"] == pytest.approx(expected, rel=1e-2, abs=1e-3)


def test_interleaved_medians_alternate_the_functions():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in ("base", "liger")}
    timings = measure.interleaved_medians(fns, torch.device("cpu"), repeats=3, max_seconds=60.0)
    assert calls == ["base", "liger"] * 4  # one warm-up round, then three measured rounds
    assert {name: t["runs"] for name, t in timings.items()} == {"base": 3, "liger": 3}
    assert all(t["median_s"] == sorted(t["times_s"])[1] for t in timings.values())


def test_interleaved_medians_stop_at_the_time_budget():
    timings = measure.interleaved_medians({"slow": lambda: time.sleep(0.02)}, torch.device("cpu"), repeats=50,
                                          max_seconds=0.05)
    assert 2 <= timings["slow"]["runs"] <= 4


@pytest.mark.parametrize("sample", [False, True], ids=["kernel_record", "sampling_thread"])
def test_peak_memory_sees_what_the_block_held_and_not_an_earlier_peak(sample):
    """64 MiB held inside the block is in its increase; 256 MiB touched and freed before it is not in its peak."""
    if not sample and not measure._reset_kernel_peak_rss():
        pytest.skip("no /proc/self/clear_refs: the kernel's peak RSS cannot be reset here")
    earlier = torch.ones(256 * 2**20 // 4)
    del earlier
    with measure.PeakMemory(torch.device("cpu"), sample=sample) as memory:
        held = torch.ones(64 * 2**20 // 4)
        time.sleep(0.05)  # several 5 ms samples while it is resident
        del held
    assert memory.kind == ("process_rss_sampled_5ms" if sample else "process_peak_rss")
    assert 48 * 2**20 <= memory.increase_bytes < 160 * 2**20  # part of the 64 MiB may reuse resident pages
    assert memory.peak_bytes - memory._start < 160 * 2**20


def _kv_bytes(config, batch, tokens):
    """Base model cache: keys and values [B, H_kv, tokens, D] per layer, fp32."""
    head_dim = config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * batch * config.num_key_value_heads * tokens * head_dim * FP32


def _liger_bytes(config, batch, window):
    """Liger cache: fp32 state [B, H, D, D] + window − 1 keys and values [B, w − 1, H_kv, D] + their validity."""
    head_dim = config.hidden_size // config.num_attention_heads
    state = batch * config.num_attention_heads * head_dim * head_dim * FP32
    buffer = 2 * batch * (window - 1) * config.num_key_value_heads * head_dim * FP32 + batch * (window - 1)
    return config.num_hidden_layers * (state + buffer)


def test_model_benchmark_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setattr(llama_cpp, "_import_llama_cpp", lambda: None)  # the same JSON whether or not it is installed
    model = tiny_model("llama")
    config = model.config
    options = BenchOptions(
        out=tmp_path, lengths=[16, 40], batches=[1, 2], dtypes=["fp32", "bf16"], decode_tokens=2, repeats=1,
        max_seconds=5.0, short_prefill=12, prefill_token_cap=40, forward_length=24, liger=LigerConfig(window=8),
        train_steps=1, train_seq_len=32,
    )
    results = run_benchmark(options, model=model)
    saved = json.loads((tmp_path / "model.json").read_text())
    assert saved["summary"] == results["summary"] and (tmp_path / "model.png").stat().st_size > 0
    rows = {(r["model"], r["dtype"], r["batch"], r["length"]): r for r in saved["rows"]}
    assert len(rows) == 2 * 2 * 2 * 2
    steps = options.decode_tokens + 1  # one warm-up step, then the measured ones
    for (kind, dtype, batch, length), row in rows.items():
        decode = row["decode"]
        assert decode["tokens_per_s"] > 0 and decode["steps"] == options.decode_tokens
        assert decode["tokens_per_s"] == pytest.approx(batch * 1e3 / decode["step_ms"], rel=1e-2)
        prefilled = batch * length <= options.prefill_token_cap
        assert (row["prefill"] is not None) == prefilled
        scale = 1 if dtype == "fp32" else 2  # bf16 halves the KV cache; the Liger state stays fp32
        if kind == "base":
            assert decode["cache_mb"] * 2**20 == pytest.approx(_kv_bytes(config, batch, length + steps) / scale, abs=600)
            assert ("random" in decode["context"]) == (not prefilled)
        else:
            assert "real" in decode["context"] and ("12-token" in decode["context"]) == (not prefilled)
            if dtype == "fp32":
                assert decode["cache_mb"] * 2**20 == pytest.approx(_liger_bytes(config, batch, 8), abs=600)
    # Liger memory does not depend on the context length; the base model's grows with it.
    assert rows["liger", "fp32", 1, 16]["decode"]["cache_mb"] == rows["liger", "fp32", 1, 40]["decode"]["cache_mb"]
    assert rows["base", "fp32", 1, 40]["decode"]["cache_mb"] > rows["base", "fp32", 1, 16]["decode"]["cache_mb"]

    summary = saved["summary"]["fp32"]
    base, liger = rows["base", "fp32", 2, 40]["decode"], rows["liger", "fp32", 2, 40]["decode"]
    ratio = liger["tokens_per_s"] / base["tokens_per_s"]
    assert summary["liger_over_base_decode"]["batch2_len40"] == pytest.approx(ratio, rel=1e-2)
    assert set(saved["throughput"]) >= {"base_fp32", "liger_fp32", "base_bf16_autocast", "liger_bf16_autocast"}
    assert saved["weights_mb"]["bf16"] == pytest.approx(saved["weights_mb"]["fp32"] / 2, abs=1e-3)
    interleaved = summary["liger_decode_b1_interleaved"]
    assert interleaved == saved["liger_b1_decode_interleaved"]["fp32"] and interleaved["steps"] == options.decode_tokens
    speeds = interleaved["tokens_per_s"]
    assert set(speeds) == {"16", "40"} and min(speeds.values()) > 0
    assert interleaved["speed_40_over_16"] == pytest.approx(speeds["40"] / speeds["16"], rel=1e-2)
    assert "random" in saved["protocol"] and saved["environment"]["device"] == "cpu"
    for variant in ("fp32", "bf16"):
        _assert_bandwidth_in_turns(saved["summary"][variant], options.decode_tokens)
    # Conversion settings of no preset: the default preset's recipe is timed (its stages: attn, then kd).
    training = saved["training"]
    assert list(training["stages"]) == ["attn", "kd"] and training["seq_len"] == 32
    assert saved["summary"]["training"]["tokens_per_s"]["kd"] == round(training["stages"]["kd"]["tokens_per_s"], 1)
    table = (tmp_path / "model.md").read_text()
    assert "| attn |" in table and "| kd |" in table


def _assert_bandwidth_in_turns(summary: dict, rounds: int) -> None:
    """The steps' weight read rate (tok/s × the bytes of the linear layers) over the read rate measured in turns."""
    turns = summary["liger_decode_b1_bandwidth_in_turns"]
    assert turns["rounds"] == rounds and turns["tokens_per_s"] > 0 and turns["memory_read_gb_s"] > 0
    weight_read = turns["tokens_per_s"] * summary["decode_read_mb"] * 2**20 / 1e9
    assert turns["weight_read_gb_s"] == pytest.approx(weight_read, rel=1e-2)  # decode_read_mb has 3 decimals
    assert turns["fraction"] == pytest.approx(weight_read / turns["memory_read_gb_s"], rel=1e-2)


def test_bench_times_the_recipe_of_the_preset_whose_conversion_it_measures():
    from liger_lm.benchmark import _preset_of
    from liger_lm.benchmark.training_speed import training_step_speed
    from liger_lm.presets import PRESETS

    assert _preset_of(LigerConfig()) is PRESETS["paper"]
    assert _preset_of(LigerConfig(**PRESETS["shared"].liger)) is PRESETS["shared"]
    paper = training_step_speed(tiny_model("llama"), PRESETS["paper"], torch.device("cpu"), seq_len=16, steps=1)
    assert list(paper["stages"]) == ["ce"]  # the paper's one objective
    assert paper["lora"] == {"r": 8, "targets": ["q_proj", "k_proj", "v_proj"]}


def test_cli_bench_ops_and_bad_lengths(tmp_path):
    from conftest import liger_in_process as liger

    done = liger("bench", "--ops", "--lengths", "20", "--repeats", "1", "--out", tmp_path / "b")
    assert done.returncode == 0, done.stderr
    assert "gla_chunked_vs_naive_loop" in done.stdout and (tmp_path / "b" / "ops.json").is_file()
    bad = liger("bench", "--ops", "--lengths", "1k,x", "--out", tmp_path / "c")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "--lengths" in bad.stderr
    assert not (tmp_path / "c").exists()


def test_random_model_has_the_configs_architecture_seeded_weights_and_leaves_the_global_rng(tmp_path):
    from liger_lm.models import random_model

    saved = tiny_model("qwen2")
    saved.config.save_pretrained(tmp_path / "qwen2")
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    from_folder = random_model(str(tmp_path / "qwen2"))
    assert torch.equal(torch.rand(3), expected_next)  # the seeded build ran in a forked RNG
    from_file = random_model(str(tmp_path / "qwen2" / "config.json"))
    other_seed = random_model(str(tmp_path / "qwen2"), seed=1)
    assert type(from_folder) is type(saved) and not from_folder.training
    settings = [{k: v for k, v in m.config.to_dict().items() if k != "_name_or_path"} for m in (from_folder, from_file)]
    assert settings[0] == settings[1]
    shapes = {name: p.shape for name, p in saved.named_parameters()}
    assert {name: p.shape for name, p in from_folder.named_parameters()} == shapes
    weight = "model.layers.0.self_attn.q_proj.weight"
    parameters = [dict(m.named_parameters())[weight] for m in (from_folder, from_file, other_seed, saved)]
    assert torch.equal(parameters[0], parameters[1])
    assert not torch.equal(parameters[0], parameters[2]) and not torch.equal(parameters[0], parameters[3])


@pytest.mark.parametrize("name,message", [("missing/config.json", "does not exist"),
                                          ("{tmp}", "has no config.json"),
                                          ("{tmp}/bad.json", "cannot read the config"),
                                          ("{tmp}/encoder.json", "^[^:]*encoder.json is a 't5' model, not a causal")])
def test_random_model_refuses_a_bad_config_in_one_line(tmp_path, name, message):
    from liger_lm.models import ModelLoadError, random_model

    (tmp_path / "bad.json").write_text(json.dumps({"hidden_size": 8}))
    (tmp_path / "encoder.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(ModelLoadError, match=message) as err:
        random_model(name.format(tmp=tmp_path))
    assert "\n" not in str(err.value)


def test_cli_bench_random_init_from_a_config_file(tmp_path):
    from conftest import liger_in_process as liger

    tiny_model("llama").config.save_pretrained(tmp_path / "cfg")
    common = ("--lengths", "16", "--batch", "1", "--dtype", "fp32", "--decode-tokens", "2", "--repeats", "1",
              "--train-steps", "0", "--forward-length", "16", "--no-llama-cpp")
    done = liger("bench", "--model", tmp_path / "cfg" / "config.json", "--random-init", *common,
                 "--out", tmp_path / "b")
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "b" / "model.json").read_text())
    assert results["random_weights"] is True and results["base_attention"] == "sdpa"
    assert {(r["model"], r["length"]) for r in results["rows"]} == {("base", 16), ("liger", 16)}
    table = (tmp_path / "b" / "model.md").read_text()
    assert table.startswith(f"Model {tmp_path / 'cfg' / 'config.json'} (random weights from its config)")
    missing = liger("bench", "--model", tmp_path / "nothing.json", "--random-init", *common, "--out", tmp_path / "c")
    last = missing.stderr.strip().splitlines()[-1]  # after the progress line, one line and no traceback
    assert missing.returncode != 0 and last.startswith("error:") and "does not exist" in last
    assert "Traceback" not in missing.stderr and not (tmp_path / "c").exists()


def test_package_version():
    from packaging.version import Version

    from liger_lm.hardware import package_version

    # The public part only: PyPI's CUDA wheel of torch 2.15 says 2.15.0 in its metadata and 2.15.0+cu132 in Python.
    assert Version(package_version("torch")).public == Version(torch.__version__).public
    assert package_version("no-such-distribution-here") is None


class FakeLlama:
    """Stands in for llama_cpp.Llama: records what the benchmark asks of it in a file (it runs in a forked child),
    sleeps a little per evaluated token."""

    log: Path | None = None
    crash = False

    def __init__(self, model_path, n_ctx, n_batch, n_threads, n_threads_batch, verbose):
        self.n_ctx, self.tokens = n_ctx, 0
        call = {"model_path": model_path, "n_ctx": n_ctx, "n_threads": n_threads, "n_threads_batch": n_threads_batch}
        with FakeLlama.log.open("a") as handle:
            handle.write(json.dumps(call) + "\n")
        if FakeLlama.crash:
            os.kill(os.getpid(), signal.SIGKILL)  # a hard crash (0.3.36 built here segfaulted; SIGSEGV would trip
            # pytest's faulthandler into printing a traceback)

    def n_vocab(self):
        return 97

    def reset(self):
        self.tokens = 0

    def eval(self, tokens):
        assert all(3 <= t < 97 for t in tokens)
        self.tokens += len(tokens)
        assert self.tokens <= self.n_ctx
        time.sleep(0.001 * len(tokens))


class FakeQuantizeParams(ctypes.Structure):
    _fields_ = [("nthread", ctypes.c_int32), ("ftype", ctypes.c_int), ("allow_requantize", ctypes.c_bool)]


def fake_quantize(source: bytes, target: bytes, params) -> int:
    """Stands in for llama_cpp.llama_model_quantize: records its call, writes the source's bytes with a prefix."""
    fields = params._obj
    call = {"quantize": [source.decode(), target.decode()], "ftype": fields.ftype,
            "allow_requantize": fields.allow_requantize, "nthread": fields.nthread}
    with FakeLlama.log.open("a") as handle:
        handle.write(json.dumps(call) + "\n")
    Path(target.decode()).write_bytes(b"requantised:" + Path(source.decode()).read_bytes())
    return 0


def _fake_llama_cpp(monkeypatch, tmp_path, crash=False):
    module = type(sys)("llama_cpp")
    module.Llama, module.__version__ = FakeLlama, "0.0-fake"
    module.llama_model_quantize_default_params, module.llama_model_quantize = FakeQuantizeParams, fake_quantize
    module.LLAMA_FTYPE_MOSTLY_Q8_0, module.LLAMA_FTYPE_MOSTLY_F16 = 7, 1
    monkeypatch.setenv("LIGER_LM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(FakeLlama, "log", tmp_path / "llama_calls.jsonl")
    monkeypatch.setattr(FakeLlama, "crash", crash)
    monkeypatch.setattr(llama_cpp, "_import_llama_cpp", lambda: module)


def _fake_calls(tmp_path) -> list[dict]:
    path = tmp_path / "llama_calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_llama_cpp_not_installed_is_one_line_and_the_benchmark_goes_on(monkeypatch):
    monkeypatch.setattr(llama_cpp, "_import_llama_cpp", lambda: None)
    lines = []
    section = llama_cpp.run_llama_cpp("default", [16], 2, lines.append)
    assert section == {"available": False, "reason": section["reason"]} and "not installed" in section["reason"]
    assert len(lines) == 1 and "\n" not in lines[0] and "liger-lm[bench]" in lines[0]


def test_llama_cpp_import_of_an_absent_module_returns_none(monkeypatch):
    import importlib

    real = importlib.import_module

    def import_module(name, *args):
        if name == "llama_cpp":
            raise ImportError(f"No module named {name!r}")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", import_module)
    assert llama_cpp._import_llama_cpp() is None


def test_llama_cpp_needs_a_gguf(monkeypatch, tmp_path):
    _fake_llama_cpp(monkeypatch, tmp_path)
    section = llama_cpp.run_llama_cpp(str(tmp_path), [16], 2, lambda _: None)
    assert not section["available"] and "not a GGUF" in section["reason"] and not _fake_calls(tmp_path)


def test_a_crash_inside_llama_cpp_is_one_line_and_the_benchmark_goes_on(monkeypatch, tmp_path):
    _fake_llama_cpp(monkeypatch, tmp_path, crash=True)
    lines = []
    section = llama_cpp.run_llama_cpp("tiny.gguf", [16, 40], 2, lines.append)
    assert not section["available"] and "L=16" in section["reason"] and "-9" in section["reason"]
    assert len(lines) == 1 and "\n" not in lines[0] and len(_fake_calls(tmp_path)) == 1


def test_llama_cpp_runs_a_requantised_copy_made_once(monkeypatch, tmp_path):
    """--llama-cpp-weights q8_0: llama.cpp's quantizer writes a Q8_0 copy into the cache (atomically), llama.cpp runs
    it, and a second run reuses it until the source changes."""
    _fake_llama_cpp(monkeypatch, tmp_path)
    source = tmp_path / "tiny.Q4_1.gguf"
    source.write_bytes(b"stored weights")
    lines = []
    section = llama_cpp.run_llama_cpp(str(source), [16], 2, lines.append, threads=3, weights="q8_0")
    copy = Path(section["gguf"])
    assert section["available"] and section["weights"] == "Q8_0" and section["requantised_from"] == str(source)
    assert copy.parent == tmp_path / "cache" / "gguf" and copy.read_bytes() == b"requantised:stored weights"
    assert [p.name for p in copy.parent.iterdir()] == [copy.name]  # no staging file left behind
    quantize, run = _fake_calls(tmp_path)
    assert quantize["ftype"] == 7 and quantize["allow_requantize"] and quantize["nthread"] == 3
    assert quantize["quantize"][0] == str(source) and run["model_path"] == str(copy)
    llama_cpp.run_llama_cpp(str(source), [16], 2, lines.append, weights="q8_0")
    assert "quantize" not in _fake_calls(tmp_path)[-1]  # reused
    source.write_bytes(b"other weights")
    again = llama_cpp.run_llama_cpp(str(source), [16], 2, lines.append, weights="q8_0")
    assert Path(again["gguf"]).read_bytes() == b"requantised:other weights"
    stored = llama_cpp.run_llama_cpp(str(source), [16], 2, lines.append, weights="stored")
    assert stored["weights"] == "Q4_1" and stored["requantised_from"] is None


def test_llama_cpp_requantising_a_missing_file_is_one_line(monkeypatch, tmp_path):
    _fake_llama_cpp(monkeypatch, tmp_path)
    lines = []
    section = llama_cpp.run_llama_cpp(str(tmp_path / "absent.gguf"), [16], 2, lines.append, weights="q8_0")
    assert not section["available"] and "could not requantise absent.gguf" in section["reason"]
    assert len(lines) == 1 and not _fake_calls(tmp_path)


def test_model_benchmark_with_weight_formats_and_a_fake_llama_cpp(tmp_path, monkeypatch):
    """int8 / bf16 weight rows beside the fp32 ones, and llama.cpp's rows in the same JSON, summary, table and plot."""
    _fake_llama_cpp(monkeypatch, tmp_path)
    options = BenchOptions(
        out=tmp_path, model="tiny.gguf", lengths=[16, 40], batches=[1], dtypes=["fp32"],
        weights=["fp32", "int8", "bf16"], decode_tokens=2, repeats=1, max_seconds=5.0, short_prefill=12,
        prefill_token_cap=40, forward_length=24, liger=LigerConfig(window=8), llama_cpp_weights="stored",
    )
    results = run_benchmark(options, model=tiny_model("llama"))
    saved = json.loads((tmp_path / "model.json").read_text())
    assert saved["summary"] == results["summary"] and (tmp_path / "model.png").stat().st_size > 0
    variants = {(r["model"], r["variant"], r["weights"], r["dtype"]) for r in saved["rows"]}
    assert variants == {(m, v, w, "fp32") for m in ("base", "liger")
                        for v, w in (("fp32", "fp32"), ("int8-weights", "int8"), ("bf16-weights", "bf16"))}
    assert len(saved["rows"]) == 3 * 2 * 2
    read = saved["decode_read_mb"]
    assert read["int8-weights"] < read["bf16-weights"] < read["fp32"]  # bytes a decode step reads
    assert saved["weights_mb"]["fp32"] > saved["weights_mb"]["int8-weights"]
    llama = saved["llama_cpp"]
    assert llama["available"] and llama["gguf"] == "tiny.gguf" and llama["threads"] == torch.get_num_threads()
    assert [r["length"] for r in llama["rows"]] == [16, 40]
    for row in llama["rows"]:
        assert row["decode"]["tokens_per_s"] > 0 and row["decode"]["steps"] == options.decode_tokens
        assert row["prefill"]["tokens_per_s"] == pytest.approx(row["length"] / row["prefill"]["seconds"], rel=1e-2)
    calls = _fake_calls(tmp_path)
    assert [c["n_ctx"] for c in calls] == [16 + 3, 40 + 3] and calls[0]["model_path"] == "tiny.gguf"
    assert all(c["n_threads"] == c["n_threads_batch"] == torch.get_num_threads() for c in calls)
    summary = saved["summary"]
    decode = {str(r["length"]): r["decode"]["tokens_per_s"] for r in llama["rows"]}
    assert summary["llama_cpp"]["decode_b1_tok_s"] == decode
    int8 = summary["int8-weights"]
    liger_int8 = next(r for r in saved["rows"] if r["model"] == "liger" and r["variant"] == "int8-weights"
                      and r["length"] == 40)["decode"]["tokens_per_s"]
    assert int8["liger_over_llama_cpp_decode_b1"]["40"] == pytest.approx(
        liger_int8 / llama["rows"][1]["decode"]["tokens_per_s"], rel=1e-2, abs=1e-3)
    base_fp32 = next(r for r in saved["rows"] if r["model"] == "base" and r["variant"] == "fp32"
                     and r["length"] == 40)["decode"]["tokens_per_s"]
    assert int8["liger_over_base_fp32_decode"]["batch1_len40"] == pytest.approx(liger_int8 / base_fp32, rel=1e-2)
    table = (tmp_path / "model.md").read_text()
    assert "| int8-weights | liger | 1 | 40 |" in table and "llama.cpp" in table


@needs_torch_compile
def test_compiled_decode_rows_beside_the_eager_ones(tmp_path, monkeypatch):
    """--compile: each model decodes again at batch 1 inside compiled_decode (a backend that counts the steps it
    runs stands in for inductor, which tests/test_compiled.py runs), beyond the prefill cap too; the summary puts the
    compiled Liger model against the eager fp32 base model and the weight read rate against the memory's. A
    stand-in cache that is not steady yet takes untimed eager steps until it is."""
    from functools import partial

    from liger_lm.benchmark import model_bench
    from liger_lm.modeling.compiled import compiled_decode

    compiled_steps = []

    def counting_backend(graph, example_inputs):
        def run(*args):
            compiled_steps.append(1)
            return graph(*args)
        return run

    monkeypatch.setattr(model_bench, "compiled_decode", partial(compiled_decode, backend=counting_backend))
    options = BenchOptions(
        out=tmp_path, lengths=[16, 64], batches=[1], dtypes=["fp32"], decode_tokens=2, repeats=1, max_seconds=5.0,
        short_prefill=9, prefill_token_cap=40, forward_length=24, compile=True, llama_cpp=False, train_steps=0,
        liger=LigerConfig(**{**PRESETS[DEFAULT_PRESET].liger, "window": 8}),  # one graph a step (test_compiled.py)
    )
    model = tiny_model("llama")
    results = run_benchmark(options, model=model)
    compiled = [r for r in results["rows"] if r["variant"] == "fp32, compiled"]
    assert {(r["model"], r["length"]) for r in compiled} == {(m, n) for m in ("base", "liger") for n in (16, 64)}
    assert all(r["compiled"] and r["prefill"] is None and r["decode"]["first_step_s"] > 0 for r in compiled)
    # the first step and the decode steps (a warm-up + decode_tokens) of 2 models × 2 lengths, each one graph, except
    # Liger's first step over the 9-token stand-in prefill: 2 of its 4 sinks have left the window buffer, so that
    # step and one more run eagerly (untimed) before every timed step runs compiled
    # and then, for the read rate in turns, Liger's warm-up round and decode_tokens rounds of STEPS_PER_TURN steps
    assert len(compiled_steps) == 3 * (1 + 1 + options.decode_tokens) + (1 + options.decode_tokens) \
        + (1 + options.decode_tokens) * model_bench.STEPS_PER_TURN
    liger_64 = next(r for r in compiled if r["model"] == "liger" and r["length"] == 64)
    assert "9-token prefill" in liger_64["decode"]["context"]
    summary = results["summary"]["fp32, compiled"]
    base_eager = next(r for r in results["rows"] if r["model"] == "base" and r["variant"] == "fp32"
                      and r["length"] == 64)["decode"]["tokens_per_s"]
    assert summary["liger_over_base_fp32_decode"]["batch1_len64"] == pytest.approx(
        liger_64["decode"]["tokens_per_s"] / base_eager, rel=1e-2)
    assert set(summary["first_step_s"]) == {"base", "liger"}
    fp32 = results["summary"]["fp32"]
    read = results["memory_read"]["gb_s"]
    assert read > 0 and results["summary"]["memory_read_gb_s"] == read
    assert fp32["liger_decode_b1_bandwidth_fraction"] == pytest.approx(
        fp32["liger_decode_b1_weight_read_gb_s"] / read, rel=2e-2, abs=2e-3)
    _assert_bandwidth_in_turns(summary, options.decode_tokens)
    assert "forward" not in vars(model)  # the eager forward is back


def test_bad_weight_format_is_one_line(tmp_path):
    with pytest.raises(BenchmarkError, match="--weights: unknown 'int4'") as err:
        run_benchmark(BenchOptions(out=tmp_path, weights=["fp32", "int4"]))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("bf16", [False, True])
def test_training_step_speed_runs_every_objective_and_leaves_the_base_model_alone(monkeypatch, bf16):
    """Both precisions run on every CPU (the bf16 path forced, as `--precision auto` picks it on AVX-512 BF16)."""
    from liger_lm.benchmark import training_speed
    from liger_lm.presets import PRESETS

    monkeypatch.setattr(training_speed, "fast_bf16", lambda device: bf16)
    base = tiny_model("llama")
    before = {name: p.clone() for name, p in base.state_dict().items()}
    result = training_speed.training_step_speed(base, PRESETS["shared"], torch.device("cpu"), seq_len=32, steps=1,
                                                objectives=("attn", "kd", "ce"))
    assert result["precision"] == ("bf16 autocast" if bf16 else "fp32")
    assert result["lora"] == {"r": 16, "targets": ["q_proj", "k_proj", "v_proj", "o_proj"]}
    for stage in result["stages"].values():
        assert stage["runs"] == 1
        assert stage["tokens_per_s"] == pytest.approx(32 / stage["s_per_step"])
    assert not any(hasattr(layer.self_attn, "liger") for layer in base.model.layers)
    assert all(torch.equal(p, before[name]) for name, p in base.state_dict().items())


def test_native_output_is_silenced_and_restored(capfd):
    """llama.cpp's quantizer prints from C straight to the file descriptors: those writes are dropped, and
    Python's own output works again after the block."""
    with llama_cpp._native_output_silenced():
        os.write(1, b"from C to stdout\n")
        os.write(2, b"from C to stderr\n")
    os.write(1, b"after\n")
    out, err = capfd.readouterr()
    assert out == "after\n" and err == ""
