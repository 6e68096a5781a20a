"""`LigerConfig`: the typed conversion settings (docs/method.md §1), with the paper's defaults."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from .errors import LigerConfigError  # noqa: F401 (re-exported)
from .modeling.gates import FEATURE_MAPS, GATES
from .modeling.methods import MIXERS

GATE_SOURCES = ("q", "k", "v")

COMBINES = {
    "sum": "α·o_rec + β·o_swa (the paper)",
    "shared": "the recurrent branch holds what left the window and shares the window's softmax normaliser",
}

CONFIG_FORMAT_VERSION = 1
NUMBERS = ("rec_weight", "swa_weight", "gate_normalizer", "gate_lower_bound", "rec_logit_init", "window_factor_init")


@dataclass
class LigerConfig:
    """How to linearize a model. Field names double as keyword overrides of `liger_lm.convert`.

    method:          "liger" (the paper's mixer) or "lolcats" (the LoLCATs baseline, docs/method.md §1.3; it uses
                     window, feature_dim, window_factor_init, softmax_layers/softmax_every and ignores the gate fields).
    gate:            gated recurrence of the linear branch (see `liger_lm.GATES`).
    feature_map:     feature map φ applied to q and k of the linear branch (see `liger_lm.FEATURE_MAPS`).
    window:          sliding-window size w of the softmax branch (tokens, including the current one).
    rec_weight:      α, weight of the recurrent (linear) branch.
    swa_weight:      β, weight of the sliding-window softmax branch.
    gate_normalizer: τ in exp(logsigmoid(g)/τ) (16 in the paper).
    softmax_layers:  layer indices left as the model's own softmax attention (inter-layer hybrid).
    softmax_every:   shorthand: also keep every k-th layer (layers k−1, 2k−1, …) as softmax attention; 0 = off.
    gate_source:     which raw projection the gate is pooled from: "k" (paper), "q" or "v" (paper Table 8).
    num_slots:       M, slots of the GSA gate.
    gate_lower_bound: γ, lower bound of the HGRN2 forget gate.
    chunk_size:      block length of the chunked recurrent form (speed knob, no effect on results).
    feature_dim:     LoLCATs: f, output size of each learned feature map W ∈ R^{D×f} (φ has 2f dims).
    window_factor_init: LoLCATs: initial logit of the window factor γ = σ(·) (−2.197 → γ ≈ 0.1).
    sinks:           the window branch also attends to the first `sinks` real tokens of each sequence
                     (StreamingLLM); 0 = the paper. Liger only.
    normalize:       divide the recurrent branch by q'·z_t, z_t = a_t ⊙ z_{t−1} + k'_t (a decayed average of values,
                     as attention is); False = the paper. gsa (softmax over slots) and mlstm (own normaliser
                     state) are normalised already: for them it changes nothing.
    combine:         how the branches meet. "sum" (the paper): α·o_rec + β·o_swa. "shared": the recurrent branch
                     holds only the tokens that left the window (and are no sinks), and shares the window's softmax
                     normaliser: o = (Σ_win e^s v + e^ω φ(q)S_old) / (Σ_win e^s + e^ω φ(q)z_old), ω a learned logit
                     per head (docs/method.md §1.2); α and β are not used, rec_weight = 0 still turns it off.
    rec_logit_init:  "shared": initial ω (e^ω weighs the recurrent pseudo-key against the window's scores).
    """

    gate: str = "gla"
    feature_map: str = "softmax"
    window: int = 64
    rec_weight: float = 0.5
    swa_weight: float = 0.5
    gate_normalizer: float = 16.0
    softmax_layers: list[int] = field(default_factory=list)
    softmax_every: int = 0
    gate_source: str = "k"
    num_slots: int = 64
    gate_lower_bound: float = 0.0
    chunk_size: int = 16
    method: str = "liger"  # absent from older checkpoints' config: they are Liger models
    feature_dim: int = 64
    window_factor_init: float = -2.197
    sinks: int = 0
    normalize: bool = False
    combine: str = "sum"
    rec_logit_init: float = 0.0

    def __post_init__(self) -> None:
        self.softmax_layers = sorted(set(int(i) for i in self.softmax_layers))
        self.validate()

    def validate(self, num_layers: int | None = None) -> None:
        """Raise `LigerConfigError` naming the first bad field; `num_layers` also checks layer indices."""
        _check_choice("method", self.method, MIXERS)
        _check_choice("gate", self.gate, GATES)
        _check_choice("feature_map", self.feature_map, FEATURE_MAPS)
        _check_choice("gate_source", self.gate_source, GATE_SOURCES)
        for name in NUMBERS:  # inf passes every "≥ 0" check below, and then generates empty text
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise LigerConfigError(f"{name} must be a finite number, got {value!r}")
        for name in ("window", "chunk_size", "num_slots", "feature_dim"):
            _check_positive_int(name, getattr(self, name))
        if isinstance(self.sinks, bool) or not isinstance(self.sinks, int) or self.sinks < 0:
            raise LigerConfigError(f"sinks must be an integer ≥ 0, got {self.sinks!r}")
        if self.sinks and self.method != "liger":
            raise LigerConfigError(f"sinks are a setting of the liger method, not {self.method!r}; set sinks=0")
        _check_choice("combine", self.combine, COMBINES)
        if self.combine == "shared" and (self.method != "liger" or self.gate_source != "k" or self.gate == "rwkv6"):
            raise LigerConfigError("combine='shared' needs method='liger', gate_source='k' (the recurrence reads the "
                                   "raw keys of the tokens leaving the window) and a gate other than rwkv6 (whose "
                                   "bonus term reads the current token); choose another gate or combine='sum'")
        if not isinstance(self.normalize, bool):
            raise LigerConfigError(f"normalize must be true or false, got {self.normalize!r}")
        if isinstance(self.softmax_every, bool) or not isinstance(self.softmax_every, int) or self.softmax_every < 0:
            raise LigerConfigError(f"softmax_every must be an integer ≥ 0, got {self.softmax_every!r}")
        if not 0 <= self.gate_lower_bound < 1:
            raise LigerConfigError(f"gate_lower_bound must be in [0, 1), got {self.gate_lower_bound!r}")
        for name in ("rec_weight", "swa_weight"):
            value = getattr(self, name)
            if not value >= 0:
                raise LigerConfigError(f"{name} must be a number ≥ 0, got {value!r}")
        if self.rec_weight == 0 and self.swa_weight == 0:
            raise LigerConfigError("rec_weight and swa_weight are both 0: at least one branch must be on")
        if self.gate_normalizer <= 0:
            raise LigerConfigError(f"gate_normalizer must be > 0, got {self.gate_normalizer!r}")
        if num_layers is not None:
            bad = [i for i in self.softmax_layers if not 0 <= i < num_layers]
            if bad:
                raise LigerConfigError(
                    f"softmax_layers {bad} out of range: the model has layers 0..{num_layers - 1}"
                )

    def softmax_layer_set(self, num_layers: int) -> set[int]:
        """Layers kept as softmax attention: `softmax_layers` plus every `softmax_every`-th layer."""
        every = set(range(self.softmax_every - 1, num_layers, self.softmax_every)) if self.softmax_every else set()
        return set(self.softmax_layers) | every

    def replace(self, **overrides: Any) -> LigerConfig:
        """A copy with `overrides` applied; unknown names raise `LigerConfigError`."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise LigerConfigError(f"unknown Liger setting(s) {unknown}; valid names: {sorted(known)}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LigerConfig:
        return cls().replace(**data)


def _check_choice(name: str, value: Any, choices) -> None:
    if value not in choices:
        raise LigerConfigError(f"unknown {name} {value!r}; choose one of: {', '.join(choices)}")


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise LigerConfigError(f"{name} must be a positive integer, got {value!r}")
