"""Step 2 of the pipeline: recovery fine-tuning (LoRA, distillation, attention transfer) on transformers.Trainer."""

from .config import TrainConfig, TrainConfigError, lolcats_stages
from .objectives import OBJECTIVES, attention_transfer, teacher_mode
from .trainer import NonFiniteLossError, TrainResult, train

__all__ = [
    "OBJECTIVES",
    "NonFiniteLossError",
    "TrainConfig",
    "TrainConfigError",
    "TrainResult",
    "attention_transfer",
    "lolcats_stages",
    "teacher_mode",
    "train",
]
