"""lm-evaluation-harness (lm-eval 0.4.13) integration: model type "liger" for base and converted models.

What works, and why this shape:

- lm-eval 0.4.13 has no plugin mechanism for models from other packages: its model registry is filled from its
  own `lm_eval.models.MODEL_MAPPING` and from `@register_model` calls in modules that happen to be imported; it
  reads no entry points (its development branch does, and pyproject.toml declares `LigerLM` as "liger" in the
  `lm_eval.models` entry-point group for it). So with 0.4.x a bare `lm_eval --model liger ...` cannot find this
  class, and `lm_eval --model hf --model_args pretrained=<converted folder>` fails too, because the
  `liger_<family>` model types resolve only after `import liger_lm`.
- Importing this module registers `LigerLM` as "liger". It is lm-eval's own `HFLM` (same tokenisation,
  batching and scoring), with the model loaded by `liger_lm.load_model`: "default" (the embedded SmolLM2 GGUF),
  a Hugging Face id, a base or converted folder, or a `.gguf` file.
- Command line: `python -m liger_lm.harness --model liger --model_args pretrained=PATH[,dtype=bfloat16]
  --tasks X [any other lm_eval option]` runs lm-eval's own CLI with "liger" registered.
- Python: `import liger_lm.harness` and then `lm_eval.simple_evaluate(model="liger",
  model_args="pretrained=PATH", tasks=[...])`, or pass an instance for an in-memory model:
  `simple_evaluate(model=LigerLM(pretrained=model, tokenizer=tokenizer), ...)`.
- `model_args`: `pretrained` (default "default"), `dtype` (float32 default, bfloat16, float16; "auto" = float32),
  `device` (default cuda when available, else cpu) and every other `HFLM` argument that applies to a
  pre-loaded model (`batch_size`, `max_length`, `add_bos_token`, `softmax_dtype`, ...).

lm-eval is optional: only this module imports it (`pip install 'liger-lm[eval]'`).
"""

from __future__ import annotations

import torch

try:
    from lm_eval.api.registry import model_registry
    from lm_eval.models.huggingface import HFLM
except ImportError as err:  # pragma: no cover - exercised only without the optional dependency
    raise ImportError("liger_lm.harness needs lm-eval: pip install 'liger-lm[eval]' (lm-eval>=0.4.10,<0.5)") from err

from .errors import HarnessArgumentError  # noqa: F401 (re-exported)
from .hardware import resolve_device
from .models import load_model

MODEL_NAME = "liger"


def _torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """`float32` / `bfloat16` / `float16` / a torch dtype; "auto" means float32 (the GGUF default is dequantised fp32)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.float32
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype):
        raise HarnessArgumentError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
    return value


class LigerLM(HFLM):
    """`HFLM` over a model loaded by `liger_lm.load_model` (or passed in), so `liger_*` checkpoints resolve."""

    def __init__(self, pretrained="default", tokenizer=None, dtype="float32", device: str | None = None, **kwargs):
        if isinstance(pretrained, str):
            self._source = pretrained
            pretrained, loaded_tokenizer = load_model(pretrained, dtype=_torch_dtype(dtype))
            # like HFLM, "cuda" without a GPU (lm-eval's CLI default) falls back to the CPU
            pretrained.to(resolve_device(device, HarnessArgumentError, cpu_fallback=True))
            tokenizer = tokenizer or loaded_tokenizer
        else:
            self._source = getattr(pretrained, "name_or_path", "") or type(pretrained).__name__
        kwargs.setdefault("backend", "causal")  # liger_* types are not in transformers' causal-LM name table
        super().__init__(pretrained=pretrained, tokenizer=tokenizer, **kwargs)

    def get_model_info(self) -> dict:
        """Parameter count, dtype and source; unlike HFLM, no Hub lookup (the model is often a local folder)."""
        return {
            "model_num_parameters": sum(p.numel() for p in self._model.parameters()),
            "model_dtype": str(self._model.dtype),
            "model_source": self._source,
        }


if MODEL_NAME not in model_registry:
    model_registry.register(MODEL_NAME, target=LigerLM)


def main() -> None:
    """`python -m liger_lm.harness <lm_eval arguments>`: lm-eval's own command line with "liger" registered."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
