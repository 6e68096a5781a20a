"""liger-lm: linearize pretrained Llama / Mistral / Qwen2 / Qwen3 models with Liger (arXiv 2503.01496).

`import liger_lm` imports the public API below and registers the `liger_*` model types with transformers' Auto
classes (so `AutoModelForCausalLM.from_pretrained` loads converted folders), which loads torch and transformers.
The one exception is the `liger` command itself (`liger …` or `python -m liger_lm …`): Python runs this file before
any submodule, so there it only defines `__version__` and leaves the rest to `_load()`, which the command calls once
its arguments are parsed (or which the first access to a public name calls). `liger --help` and usage errors then
answer without loading torch.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

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
    "compiled_decode",
    "convert",
    "decode_layout",
    "evaluation",
    "is_converted",
    "load_default_model",
    "load_model",
    "presets",
    "QuantizedLinear",
    "quantize_for_decode",
    "random_model",
]


_loaded = False
_loading = False  # within `_load()`: a public name not defined yet is an ordinary AttributeError, not a second load


def _load() -> None:
    """The public API and the Auto-class registration (idempotent)."""
    global _loading, _loaded
    if _loaded:
        return
    _loading = True
    try:
        _import_api()
        _loaded = True
    finally:
        _loading = False


def _import_api() -> None:
    global LigerConfig, LigerConfigError, convert, is_converted, UnsupportedModelError, LigerCacheLayer
    global FEATURE_MAPS, GATES, decode_layout, LigerAttention, evaluation, presets
    global DEFAULT_MODEL_NOTE, load_default_model, load_model, DEFAULT_PRESET, PRESETS, QuantizedLinear
    global quantize_for_decode, compiled_decode, random_model
    from .config import LigerConfig, LigerConfigError
    from .convert import convert, is_converted
    from .modeling.adapters import UnsupportedModelError
    from .modeling.cache import LigerCacheLayer
    from .modeling.compiled import compiled_decode
    from .modeling.gates import FEATURE_MAPS, GATES
    from .modeling.hf import register_auto_classes
    from .modeling.layout import decode_layout
    from .modeling.mixer import LigerAttention
    from .models import DEFAULT_MODEL_NOTE, load_default_model, load_model, random_model
    from .presets import DEFAULT_PRESET, PRESETS
    from .quantize import QuantizedLinear, quantize_for_decode

    evaluation = importlib.import_module(".evaluation", __name__)  # `from . import` would ask __getattr__ first
    presets = importlib.import_module(".presets", __name__)
    register_auto_classes()


def _started_as_cli() -> bool:
    """Whether this process is the `liger` command, read from the interpreter's own command line: a script named
    `liger` (the console script) or `-m liger_lm`. Getting it wrong only costs speed: `_load()` runs either way before
    a command does any work."""
    args = list(getattr(sys, "orig_argv", ()))[1:]
    while args and args[0].startswith("-") and args[0] != "-":
        option = args.pop(0)
        if option == "-m":
            return bool(args) and args[0] == "liger_lm"
        if option in ("-X", "-W"):  # interpreter options whose value is the next argument
            args = args[1:]
        elif option == "-c" or (not option.startswith("--") and option.endswith("c")):
            return False  # python -c CODE (also combined, -Bc)
    return bool(args) and Path(args[0]).stem == "liger"


def __getattr__(name: str):
    """In the `liger` process, the first access to a public name loads the API."""
    if name in __all__ and not _loading:
        _load()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if not _started_as_cli():
    _load()
