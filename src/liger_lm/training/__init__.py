"""Step 2 of the pipeline: recovery fine-tuning (LoRA, distillation, attention transfer) on transformers.Trainer."""

from .config import Stage, TrainConfig, TrainConfigError, lolcats_stages, stage_plan
from .objectives import OBJECTIVES, attention_transfer, teacher_mode
from .trainer import NonFiniteLossError, TrainResult, train

__all__ = [
    "OBJECTIVES",
    "Stage",
    "NonFiniteLossError",
    "TrainConfig",
    "TrainConfigError",
    "TrainResult",
    "attention_transfer",
    "lolcats_stages",
    "stage_plan",
    "teacher_mode",
    "train",
]
