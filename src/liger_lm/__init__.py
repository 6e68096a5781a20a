"""liger-lm: linearize pretrained Llama / Mistral / Qwen2 / Qwen3 models with Liger (arXiv 2503.01496)."""

from .config import LigerConfig, LigerConfigError
from .convert import convert, is_converted
from .modeling.adapters import UnsupportedModelError
from .modeling.cache import LigerCacheLayer
from .modeling.gates import FEATURE_MAPS, GATES
from .modeling.hf import register_auto_classes
from .modeling.layout import decode_layout
from .modeling.mixer import LigerAttention
from . import evaluate, presets
from .models import DEFAULT_MODEL_NOTE, load_default_model, load_model
from .presets import DEFAULT_PRESET, PRESETS
from .quantize import QuantizedLinear, quantize_for_decode

register_auto_classes()

__version__ = "0.1.0"
__all__ = [
    "DEFAULT_MODEL_NOTE",
    "DEFAULT_PRESET",
    "PRESETS",
    "FEATURE_MAPS",
    "GATES",
    "LigerAttention",
    "LigerCacheLayer",
    "LigerConfig",
    "LigerConfigError",
    "UnsupportedModelError",
    "convert",
    "decode_layout",
    "evaluate",
    "is_converted",
    "load_default_model",
    "load_model",
    "presets",
    "QuantizedLinear",
    "quantize_for_decode",
]
