"""Tiny random-initialised models of every supported family, built in-process (no downloads)."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from liger_lm.compat import with_cache
from liger_lm.modeling.compiled import MIN_COMPILE_TORCH, torch_compiles_decode_steps

COMMON = dict(
    vocab_size=97,
    hidden_size=48,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=6,
    num_key_value_heads=2,
    max_position_embeddings=256,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)

FAMILIES = {
    # Llama with biases to pin their handling; default head_dim = 48 / 6 = 8
    "llama": (LlamaForCausalLM, LlamaConfig, dict(attention_bias=True, rope_parameters={"rope_type": "default", "rope_theta": 500.0})),
    "mistral": (MistralForCausalLM, MistralConfig, dict(sliding_window=None)),
    # Qwen2 has q/k/v biases by construction
    "qwen2": (Qwen2ForCausalLM, Qwen2Config, dict()),
    # Qwen3: q/k norms and head_dim != hidden / heads
    "qwen3": (Qwen3ForCausalLM, Qwen3Config, dict(head_dim=16)),
}


# Older torch releases fail to compile these models, and liger-lm refuses `--compile` there (`compiled.py`).
needs_torch_compile = pytest.mark.skipif(not torch_compiles_decode_steps(),
                                         reason=f"compiling the decode steps needs torch >= {MIN_COMPILE_TORCH}")


def tiny_model(family: str, seed: int = 0, **overrides):
    """A tiny fp32 model of `family` in eval mode, with weights scaled up so attention is far from uniform."""
    model_class, config_class, extra = FAMILIES[family]
    torch.manual_seed(seed)
    config = config_class(**{**COMMON, **extra, **overrides})
    model = model_class(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "proj" in name and "weight" in name:
                param.mul_(8.0)
            if name.endswith("bias"):
                param.normal_(0, 0.5)
    return model


@pytest.fixture(params=list(FAMILIES))
def family(request) -> str:
    return request.param


def tiny_tokenizer():
    """A word-level fast tokenizer over a small vocabulary (ids < 97), with a chat template; built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(93)]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    tokenizer.chat_template = "{% for m in messages %}w1 {{ m['content'] }} w2 {% endfor %}"
    return tokenizer


@pytest.fixture
def tiny_model_dir(tmp_path):
    """A saved tiny Llama base model + tokenizer folder, as a user would pass with --model."""
    folder = tmp_path / "tiny-llama"
    tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def prefill_then_decode(model, ids: torch.Tensor, prefill: int) -> torch.Tensor:
    """Logits of `ids` computed as one prefill of `prefill` tokens and then one token at a time through the cache."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    steps = [model(ids[:, :prefill], **with_cache(cache), use_cache=True).logits]
    steps += [model(ids[:, t : t + 1], **with_cache(cache), use_cache=True).logits for t in range(prefill, ids.shape[1])]
    assert cache.get_seq_length() == ids.shape[1]
    return torch.cat(steps, dim=1)


@pytest.fixture
def instruction_file(tmp_path):
    """80 Alpaca-style records whose answer is the instruction's words shifted by one (learnable by a tiny model)."""
    import json
    import random

    rng = random.Random(0)
    path = tmp_path / "instructions.jsonl"
    with path.open("w") as handle:
        for _ in range(80):
            words = [rng.randrange(5, 90) for _ in range(rng.randrange(3, 7))]
            record = {"instruction": " ".join(f"w{w}" for w in words), "output": " ".join(f"w{w + 1}" for w in words)}
            handle.write(json.dumps(record) + "\n")
    return path


@pytest.fixture
def task_file(tmp_path):
    """A 12-example multiple-choice task in the local JSONL format (query, choices, label)."""
    import json

    path = tmp_path / "task.jsonl"
    rows = [{"query": f"w{i} w{i + 1}", "choices": [f"w{i + 2}", f"w{i + 7}", f"w{i + 3}"], "label": i % 3} for i in range(5, 17)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def liger_in_process(*args: str | Path) -> subprocess.CompletedProcess:
    """`liger ARGS` through the real entry point (`liger_lm.cli.main`: its error handling and exit codes), in this
    process: the same result as the subprocess, without importing torch and transformers again (8–13 s a call on the
    2-core Zen 1). Tests of what only a process shows (the `python -m` entry, signals, import side effects) spawn one."""
    from liger_lm.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    args = tuple(map(str, args))
    argv, sys.argv = sys.argv, ["liger", *args]
    try:
        with pytest.raises(SystemExit) as exited:  # main() always ends in sys.exit, as the process would
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                main()
    finally:
        sys.argv = argv
        # Passed on, so pytest's capture (capsys, a failure's report) still sees what the command printed.
        sys.stdout.write(stdout.getvalue())
        sys.stderr.write(stderr.getvalue())
    code = exited.value.code
    code = code if isinstance(code, int) else (0 if code is None else 1)  # sys.exit's own rule
    return subprocess.CompletedProcess(["liger", *args], code, stdout.getvalue(), stderr.getvalue())
