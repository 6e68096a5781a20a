"""`liger bench` end to end at tiny sizes: structure, exact cache sizes and sane values (never timings)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch

from conftest import tiny_model
from liger_lm import LigerConfig
from liger_lm.benchmark import BenchmarkError, BenchOptions, parse_sizes, run_benchmark
from liger_lm.benchmark import measure, ops_bench

FP32 = 4


def test_parse_sizes():
    assert parse_sizes("1k,4k,16k", "--lengths") == [1024, 4096, 16384]
    assert parse_sizes(" 1, 16 ", "--batch") == [1, 16]
    assert parse_sizes("2m", "--lengths") == [2 * 1024 * 1024]


@pytest.mark.parametrize("text", ["", "1k,", "0", "abc", "1.5k", "-4"])
def test_parse_sizes_rejects_bad_values(text):
    with pytest.raises(BenchmarkError, match="--lengths"):
        parse_sizes(text, "--lengths")


@pytest.mark.parametrize("field,value", [("dtypes", ["fp16"]), ("repeats", 0), ("max_seconds", 0.0), ("device", "tpu")])
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


def test_model_benchmark_end_to_end(tmp_path):
    model = tiny_model("llama")
    config = model.config
    options = BenchOptions(
        out=tmp_path, lengths=[16, 40], batches=[1, 2], dtypes=["fp32", "bf16"], decode_tokens=2, repeats=1,
        max_seconds=5.0, short_prefill=12, prefill_token_cap=40, forward_length=24, liger=LigerConfig(window=8),
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


def test_cli_bench_ops_and_bad_lengths(tmp_path):
    done = subprocess.run([sys.executable, "-m", "liger_lm", "bench", "--ops", "--lengths", "20", "--repeats", "1",
                           "--out", str(tmp_path / "b")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "gla_chunked_vs_naive_loop" in done.stdout and (tmp_path / "b" / "ops.json").is_file()
    bad = subprocess.run([sys.executable, "-m", "liger_lm", "bench", "--ops", "--lengths", "1k,x", "--out",
                          str(tmp_path / "c")], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "--lengths" in bad.stderr
    assert not (tmp_path / "c").exists()
