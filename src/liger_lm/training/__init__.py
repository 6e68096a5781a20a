"""Step 2 of the pipeline: recovery fine-tuning (LoRA, distillation, attention transfer) on transformers.Trainer.

The names below are imported on first use, so `TrainConfig` (torch-free) can be read without the trainer (`liger train --help`).
"""

import importlib

_EXPORTS = {
    "Stage": "config", "TrainConfig": "config", "TrainConfigError": "config", "lolcats_stages": "config",
    "stage_plan": "config", "OBJECTIVES": "objectives", "attention_transfer": "objectives",
    "teacher_mode": "objectives", "NonFiniteLossError": "trainer", "TrainResult": "trainer", "train": "trainer",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(name)
