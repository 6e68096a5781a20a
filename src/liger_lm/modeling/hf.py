"""Hugging Face classes of converted models, so `save_pretrained` / `AutoModelForCausalLM.from_pretrained` work.

For each supported family X there is `LigerXConfig(XConfig)` (model_type `liger_<x>`, plus a `liger` dict with the
settings, the base model_type and the format version) and `LigerXForCausalLM(XForCausalLM)`, which builds the base
model and installs the mixers. Parameter names are unchanged, so checkpoints are plain base-model safetensors.
Importing `liger_lm` registers them with the Auto classes; no `trust_remote_code` is involved.
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from ..config import CONFIG_FORMAT_VERSION, LigerConfig, LigerConfigError
from .adapters import ADAPTERS, ArchitectureAdapter
from .attention import LinearizedAttention
from .methods import MIXERS


def install_mixers(model: nn.Module, config: LigerConfig, adapter: ArchitectureAdapter) -> None:
    """Replace `self_attn` of every layer not kept as softmax (`softmax_layers`, `softmax_every`) by the mixer of
    `config.method` (`MIXERS`), in place."""
    mixer_class = MIXERS[config.method]
    keep_softmax = config.softmax_layer_set(len(model.model.layers))
    for idx, layer in enumerate(model.model.layers):
        if idx not in keep_softmax and not isinstance(layer.self_attn, LinearizedAttention):
            layer.self_attn = mixer_class(layer.self_attn, config, adapter)


def liger_settings(hf_config) -> LigerConfig:
    """The `LigerConfig` stored in a converted model's HF config; refuses formats newer than this library."""
    stored = dict(hf_config.liger or {})
    version = stored.pop("format_version", CONFIG_FORMAT_VERSION)
    stored.pop("base_model_type", None)
    if version > CONFIG_FORMAT_VERSION:
        raise LigerConfigError(
            f"this checkpoint was written by a newer liger-lm (config format {version}, this version reads "
            f"≤ {CONFIG_FORMAT_VERSION}); upgrade liger-lm"
        )
    return LigerConfig.from_dict(stored)


def _make_classes(adapter: ArchitectureAdapter) -> tuple[type, type]:
    base_name = adapter.causal_lm_class.__name__.removesuffix("ForCausalLM")

    @strict
    class LigerHFConfig(adapter.config_class):
        model_type = f"liger_{adapter.family}"
        liger: dict | None = None

    class LigerForCausalLM(adapter.causal_lm_class):
        config_class = LigerHFConfig

        def __init__(self, config) -> None:
            super().__init__(config)
            install_mixers(self, liger_settings(config), adapter)

    LigerHFConfig.__name__ = LigerHFConfig.__qualname__ = f"Liger{base_name}Config"
    LigerForCausalLM.__name__ = LigerForCausalLM.__qualname__ = f"Liger{base_name}ForCausalLM"
    LigerHFConfig.__module__ = LigerForCausalLM.__module__ = __name__
    return LigerHFConfig, LigerForCausalLM


LIGER_CLASSES: dict[str, tuple[type, type]] = {family: _make_classes(a) for family, a in ADAPTERS.items()}
# Module-level names, so tools that resolve classes by `architectures` / `__qualname__` find them.
LigerLlamaConfig, LigerLlamaForCausalLM = LIGER_CLASSES["llama"]
LigerMistralConfig, LigerMistralForCausalLM = LIGER_CLASSES["mistral"]
LigerQwen2Config, LigerQwen2ForCausalLM = LIGER_CLASSES["qwen2"]
LigerQwen3Config, LigerQwen3ForCausalLM = LIGER_CLASSES["qwen3"]


def register_auto_classes() -> None:
    """Make `AutoConfig` / `AutoModelForCausalLM` resolve `liger_<family>` checkpoints."""
    for config_class, model_class in LIGER_CLASSES.values():
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        AutoModelForCausalLM.register(config_class, model_class, exist_ok=True)
