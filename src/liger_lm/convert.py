"""Step 1 of the pipeline: `convert` a pretrained causal LM to Liger, in place."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel

from .config import CONFIG_FORMAT_VERSION, LigerConfig
from .errors import UnsupportedModelError
from .io import write_text_atomic
from .modeling.adapters import adapter_for
from .modeling.hf import LIGER_CLASSES, install_mixers


def convert(model: PreTrainedModel, config: LigerConfig | None = None, **overrides: Any) -> PreTrainedModel:
    """Linearize `model` in place and return it.

    Every attention layer (except `softmax_layers`) becomes a `LigerAttention` that reuses the layer's own
    q/k/v/o weights; nothing else changes and no parameter is added. With `method="lolcats"` it becomes a
    `LolcatsAttention` instead, which adds only its learned feature maps and window factor (submodules
    `feature_map_q`, `feature_map_k`, `window_factor`). The model's class and config become the registered
    `Liger<Family>` ones so that `save_pretrained` / `AutoModelForCausalLM.from_pretrained` round-trip.

    Args:
        model: a LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM or Qwen3ForCausalLM.
        config: the settings (default: the paper's, `LigerConfig()`).
        **overrides: `LigerConfig` field names, e.g. `gate="gla", window=64, softmax_layers=[0]`, or
            `method="lolcats"` (with `feature_dim`, `window_factor_init`) for the LoLCATs baseline.
    """
    adapter = adapter_for(model)
    if is_converted(model):
        raise UnsupportedModelError("this model is already converted to Liger; convert the original model instead")
    settings = (config or LigerConfig()).replace(**overrides)
    settings.validate(num_layers=model.config.num_hidden_layers)
    if getattr(model, "hf_quantizer", None) is not None:
        raise UnsupportedModelError(
            "the model is still marked as quantized (e.g. loaded with gguf_file=); "
            "use liger_lm.load_model(), which dequantises it into a plain model first"
        )

    config_class, model_class = LIGER_CLASSES[adapter.family]
    old_config = model.config
    new_config = config_class.from_dict(
        {**old_config.to_dict(), "model_type": config_class.model_type, "liger": _stored(settings, adapter.family)}
    )
    new_config._attn_implementation = old_config._attn_implementation
    new_config.architectures = [model_class.__name__]

    install_mixers(model, settings, adapter)
    model.__class__ = model_class
    for module in model.modules():
        if getattr(module, "config", None) is old_config:
            module.config = new_config
    return model


def is_converted(model: PreTrainedModel) -> bool:
    """True for a model converted by `convert` or loaded from a Liger checkpoint."""
    return getattr(model.config, "liger", None) is not None


def _stored(settings: LigerConfig, family: str) -> dict[str, Any]:
    return {**settings.to_dict(), "base_model_type": family, "format_version": CONFIG_FORMAT_VERSION}


MODEL_CARD = """# A Liger model (liger-lm)

This folder holds a causal language model linearized by liger-lm (Liger, arXiv 2503.01496): safetensors weights, the
tokenizer, and in `config.json` the conversion settings under `liger`.

## Loading it

Its model type (`{model_type}`) is registered with transformers' Auto classes by `import liger_lm`, so import it
first; no `trust_remote_code` is needed:

```python
import liger_lm  # pip install liger-lm
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")
tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")
```

or, from the command line, `liger generate path/to/this/folder --prompt "..."`. Without `import liger_lm`, transformers stops
with "does not recognize this architecture".
"""


def write_model_card(folder: str | Path) -> None:
    """README.md of a saved converted model: what it is and how to load it (plain transformers cannot, without
    `import liger_lm`). Written beside `config.json`, which it reads."""
    folder = Path(folder)
    model_type = json.loads((folder / "config.json").read_text(encoding="utf-8"))["model_type"]
    write_text_atomic(folder / "README.md", MODEL_CARD.format(model_type=model_type))
