"""`compiled_decode`: stock generate() through torch.compile (inductor) gives the eager tokens, compiles once."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from conftest import needs_torch_compile, tiny_model

import liger_lm
from liger_lm.compat import with_cache
from liger_lm.modeling.compiled import compiled_decode, is_steady_step
from liger_lm.presets import DEFAULT_PRESET, PRESETS


def _left_padded_prompts():
    ids = torch.randint(3, 97, (2, 9), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    ids[1, :4], mask[1, :4] = 0, 0
    return ids, mask


@pytest.fixture
def frame_compiles():
    """Counts the frames dynamo compiles (a recompile of the same frame counts again)."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield lambda: torch._dynamo.utils.counters["stats"]["unique_graphs"]
    torch._dynamo.reset()


CASES = {DEFAULT_PRESET: PRESETS[DEFAULT_PRESET].liger, "paper": PRESETS["paper"].liger,
         "hybrid": {**PRESETS[DEFAULT_PRESET].liger, "softmax_layers": [1]}, "base": None}


@pytest.mark.parametrize("case", CASES)
@torch.no_grad()
@needs_torch_compile
def test_compiled_generate_gives_the_eager_tokens_and_compiles_once(case, frame_compiles):
    """Greedy generate of a left-padded batch: a prompt shorter than the window (its first steps fill the buffer and
    the sinks eagerly), then steady steps through inductor, the padded row's window still holding its padding. The
    default preset takes the fused step, the paper's the general one, the hybrid keeps a softmax layer (and the mask
    with it); the base model's KV cache grows every step."""
    model = tiny_model("llama")
    if CASES[case] is not None:
        model = liger_lm.convert(model, **{**CASES[case], "window": 12})
    ids, mask = _left_padded_prompts()
    greedy = dict(attention_mask=mask, max_new_tokens=30, do_sample=False, pad_token_id=0)
    eager = model.generate(ids, **greedy)
    compiled_model = copy.deepcopy(model)
    with liger_lm.decode_layout(compiled_model), compiled_decode(compiled_model):  # as `liger generate` runs it
        tokens = compiled_model.generate(ids, **greedy)
    assert torch.equal(tokens, eager)
    assert frame_compiles() == 1  # one graph for every steady step: no recompile as positions and masks grow
    assert "forward" not in vars(compiled_model)  # the eager forward is back


@torch.no_grad()
@needs_torch_compile
def test_step_options_keep_the_guards_on_the_inputs(frame_compiles):
    """`STEP_OPTIONS` skips dynamo's guards on the modules, not those on the inputs: in one block a batch of one row,
    then of two, gets a graph each and the eager tokens each."""
    model = liger_lm.convert(tiny_model("llama"), **{**PRESETS[DEFAULT_PRESET].liger, "window": 12})
    ids, mask = _left_padded_prompts()
    greedy = dict(max_new_tokens=24, do_sample=False, pad_token_id=0)
    batches = [(ids[:1], mask[:1]), (ids, mask)]
    eager = [model.generate(batch, attention_mask=batch_mask, **greedy) for batch, batch_mask in batches]
    with liger_lm.decode_layout(model, for_compile=True), compiled_decode(model):
        compiled = [model.generate(batch, attention_mask=batch_mask, **greedy) for batch, batch_mask in batches]
    assert frame_compiles() == 2
    for tokens, expected in zip(compiled, eager):
        assert torch.equal(tokens, expected)


# the operators an uncompiled weight product dispatches (the window attention's own products stay `aten::bmm`)
WEIGHT_PRODUCTS = {"aten::mm", "aten::addmm", "aten::mv", "aten::linear", "aten::_weight_int8pack_mm"}


@pytest.mark.parametrize("fmt", ["fp32", "bf16", "int8"])
@torch.no_grad()
@needs_torch_compile
def test_batch_one_compiled_steps_read_every_weight_in_a_reduction_kernel(fmt, frame_compiles):
    """At batch 1, inside `decode_layout(for_compile=True)`, a compiled step calls no matrix-product operator: every
    weight (fused q/k/v and gate/up, o, down, the LM head; fp32, bf16 or int8) is read by an inductor reduction
    (`quantize.reduction_linear`). Its greedy tokens are the eager model's, computed with the same stored weights in
    fp32 arithmetic (`force_path`: the quantised layers upcast instead of rounding x to bf16)."""
    from liger_lm.quantize import force_path, quantize_for_decode

    model = liger_lm.convert(tiny_model("llama"), **{**PRESETS[DEFAULT_PRESET].liger, "window": 12})
    model = quantize_for_decode(model, fmt)
    ids = torch.randint(3, 97, (1, 20), generator=torch.Generator().manual_seed(5))
    greedy = dict(attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False, pad_token_id=0)
    with force_path({"fp32": None, "bf16": "fp32", "int8": "dequant_fp32"}[fmt]):
        eager = model.generate(ids, **greedy)
    with liger_lm.decode_layout(model, for_compile=True), compiled_decode(model):
        tokens = model.generate(ids, **greedy)
        assert frame_compiles() == 1  # batch 1 included: a size-1 dim's stride must not change between steps
        cache = _steady_cache(model, tokens)
        model(tokens[:, -1:], **with_cache(cache), use_cache=True)  # compiles for this call's arguments
        with torch.profiler.profile() as profiler:
            model(tokens[:, -1:], **with_cache(cache), use_cache=True)
    assert torch.equal(tokens, eager)
    operators = {event.name for event in profiler.events()}
    assert any(name.startswith("Torch-Compiled Region") for name in operators)  # the step did run compiled
    assert not operators & WEIGHT_PRODUCTS


def _steady_cache(model, tokens):
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    model(tokens[:, :-1], **with_cache(cache), use_cache=True)
    return cache


@torch.no_grad()
@needs_torch_compile
def test_compiled_steady_step_writes_the_ring_slot_in_place():
    """With `STEP_OPTIONS`, inductor's code for a steady default-preset step writes the new token into its ring slot
    and never copies a whole window buffer. With inductor's `reorder_for_locality` (its default) the same step copies
    each buffer out and back (README: Speed and memory), which shows that the count below finds such copies."""
    ours, with_reordering = _whole_buffer_loops(None), _whole_buffer_loops({"reorder_for_locality": True})
    assert ours == 0
    if with_reordering == 0:
        pytest.skip("this inductor writes the ring slot in place even when it reorders for locality")


def _whole_buffer_loops(options):
    """Loops over exactly one window buffer's elements in the code inductor generates for one steady step."""
    from torch._inductor.utils import run_and_get_code

    model = liger_lm.convert(tiny_model("llama"), **{**PRESETS[DEFAULT_PRESET].liger, "window": 30})
    ids = torch.randint(3, 97, (1, 41), generator=torch.Generator().manual_seed(7))
    with liger_lm.decode_layout(model, for_compile=True), compiled_decode(model, options=options):
        cache = _steady_cache(model, ids)
        assert is_steady_step((ids[:, -1:],), with_cache(cache))
        _, code = run_and_get_code(model, ids[:, -1:], **with_cache(cache), use_cache=True)
    elements = cache.layers[0].keys.numel()  # 29 tokens × 2 kv heads × 8: no other tensor of the step has as many
    bounds = re.findall(r"x0<static_cast<int64_t>\((\d+)L\);", "\n".join(code))
    assert bounds, "no loops found: inductor's C++ has changed, update the pattern"
    return bounds.count(str(elements))


def test_only_single_token_steps_over_a_steady_cache_are_compiled():
    from transformers import DynamicCache

    model = liger_lm.convert(tiny_model("llama"), window=4, sinks=2, combine="shared")
    cache = DynamicCache(config=model.config)
    one, three = torch.tensor([[5]]), torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        model(three, **with_cache(cache))
        assert not is_steady_step((one,), with_cache(cache))  # the buffer holds 3 = window − 1, sinks not stored
        model(three, **with_cache(cache))
    assert is_steady_step((one,), with_cache(cache))
    assert not is_steady_step((three,), with_cache(cache))  # prefill
    assert not is_steady_step((), {"input_ids": one})  # no cache


def _invoke(*args):
    from typer.testing import CliRunner

    from liger_lm.cli import app

    return CliRunner().invoke(app, list(args))


@needs_torch_compile
def test_generate_compile_prints_the_eager_text(tiny_model_dir, tmp_path, monkeypatch):
    from liger_lm.modeling import compiled as compiled_module

    out = tmp_path / "liger"
    assert _invoke("convert", "--model", str(tiny_model_dir), "--out", str(out), "--window", "8").exit_code == 0
    prompt = ["--prompt", "w5 w6 w7 w8 w9 w10 w11 w12 w13 w14 w15", "--max-new-tokens", "12", "--no-chat"]
    eager = _invoke("generate", str(out), *prompt)
    steady = []
    check = compiled_module.is_steady_step
    monkeypatch.setattr(compiled_module, "is_steady_step", lambda *a: steady.append(check(*a)) or steady[-1])
    compiled = _invoke("generate", str(out), *prompt, "--compile")
    assert compiled.exit_code == eager.exit_code == 0, compiled.output
    assert compiled.stdout == eager.stdout and eager.stdout.strip()
    assert sum(steady) >= 8  # the steps after the sinks left the window buffer ran compiled


@pytest.mark.parametrize("missing", ["C++ compiler", "newer torch"])
@pytest.mark.parametrize("command", ["generate", "bench"])
def test_compile_that_cannot_build_fails_in_one_line(command, missing, tiny_model_dir, tmp_path, monkeypatch):
    """No C++ compiler for inductor's CPU kernels, or a torch too old to compile these models: refused before any
    load or output."""
    from conftest import liger_in_process

    args = {"generate": ["generate", str(tiny_model_dir), "--prompt", "w5"],
            "bench": ["bench", "--model", str(tiny_model_dir), "--out", str(tmp_path / "bench")]}[command]
    if missing == "C++ compiler":
        monkeypatch.setattr(torch, "__version__", "2.13.0")  # on an older torch, that refusal would come first
        monkeypatch.delenv("CXX", raising=False)
        monkeypatch.setenv("PATH", str(tmp_path))  # no g++
        message = "needs a C++ compiler (g++ or clang++) on PATH"
    else:
        monkeypatch.setattr(torch, "__version__", "2.12.1")
        message = "needs torch >= 2.13 (found 2.12.1"
    done = liger_in_process(*args, "--compile")
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "bench").exists()  # refused before any output


def test_compiled_decode_refuses_a_torch_too_old_to_compile_it(monkeypatch):
    from liger_lm.errors import CompileUnavailableError

    model = tiny_model("llama")
    monkeypatch.setattr(torch, "__version__", "2.6.0+cpu")
    with pytest.raises(CompileUnavailableError, match=r"needs torch >= 2\.13 \(found 2\.6\.0\+cpu"), \
            compiled_decode(model):
        pass
    assert "forward" not in vars(model)  # refused before the forward was swapped


@pytest.mark.parametrize(("version", "compiles"), [("2.9.1", False), ("2.12.1+cpu", False), ("2.13.0", True),
                                                   ("2.13.0+cpu", True), ("2.15.0+cu132", True)])
def test_torch_versions_that_compile_the_decode_steps(version, compiles, monkeypatch):
    from liger_lm.modeling.compiled import torch_compiles_decode_steps

    monkeypatch.setattr(torch, "__version__", version)  # a plain str: compared as versions, not as text
    assert torch_compiles_decode_steps() is compiles
