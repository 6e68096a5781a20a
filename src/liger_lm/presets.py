"""Named recipes for `liger convert` / `liger run`: conversion settings plus the recovery fine-tune (registry as data).

`paper` reproduces arXiv 2503.01496 exactly (no sinks, the unnormalised sum α·o_rec + β·o_swa, LoRA r 8 on q/k/v
with next-token cross-entropy). The default preset is the best recipe measured on the default model; the README's
"Presets" table gives the measurements and the commands that produced them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    liger: dict[str, Any] = field(default_factory=dict)  # `LigerConfig` overrides
    train: dict[str, Any] = field(default_factory=dict)  # `TrainConfig` overrides (stages, LoRA, learning rate, …)
    data: str = "default"  # training data (`liger_lm.data.instructions.load_instruction_records` sources)


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset("paper", "the paper's Liger-GLA: 0.5 GLA + 0.5 window-64, LoRA r 8 on q/k/v, cross-entropy"),
        Preset(
            "shared",
            "window 256 + 4 sink tokens, GLA with learned feature maps over the tokens that left the window under one "
            "softmax normaliser; attention transfer, then distillation (LoRA r 16 on q/k/v/o)",
            liger=dict(window=256, sinks=4, combine="shared", rec_logit_init=0.0, learned_features=True),
            train=dict(stages=(dict(objective="attn", share=0.25), dict(objective="kd", share=0.75)),
                       lora_r=16, lora_alpha=16, lora_targets=("q_proj", "k_proj", "v_proj", "o_proj"),
                       feature_lr_scale=10.0),
            data="mix",
        ),
    )
}
DEFAULT_PRESET = "shared"
