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
            "sinks",
            "window 64 + 4 sink tokens and a normalised GLA branch; attention transfer, then distillation",
            liger=dict(sinks=4, normalize=True, rec_weight=0.2, swa_weight=0.8),
            train=dict(stages=("attn", "kd")),
            data="mix",
        ),
    )
}
DEFAULT_PRESET = "sinks"
