"""`LigerConfig`: the typed conversion settings (docs/method.md §1), with the paper's defaults.

Each field carries its help text in `metadata["help"]` (as peft's configs do); `liger convert`, `liger run` and
`liger bench` generate their options from these fields (`liger_lm.cli`). This module imports neither torch nor
transformers, so the command line reads the settings without loading them: the registries the names are checked
against (`GATES`, `FEATURE_MAPS`, `MIXERS`) live beside their implementations and are looked up in `validate()`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

from .errors import LigerConfigError  # noqa: F401 (re-exported)

GATE_SOURCES = ("q", "k", "v")

COMBINES = {
    "sum": "α·o_rec + β·o_swa (the paper)",
    "shared": "the recurrent branch holds what left the window and shares the window's softmax normaliser",
}

CONFIG_FORMAT_VERSION = 1
NUMBERS = ("rec_weight", "swa_weight", "gate_normalizer", "gate_lower_bound", "rec_logit_init", "window_factor_init")

# Counts on the command line and in these settings' string forms: a whole number with an optional binary suffix,
# the same everywhere (token budgets, lengths, batch sizes, windows): k = 1,024, M = 1,024², G = 1,024³, any case.
COUNT_SUFFIXES = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
COUNT_SYNTAX = "k = 1,024, M = 1,024², G = 1,024³"
_COUNT = re.compile(r"\s*([+-]?\d+)\s*([kmg]?)\s*", re.IGNORECASE)


def parse_count(text: str | int) -> int:
    """'16k' → 16,384, '2M' → 2,097,152, '300000' → 300,000 (`COUNT_SUFFIXES`); no fractions ('1.5k' is refused:
    write 1536). Raises `ValueError` for anything else; range checks are the caller's."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    match = _COUNT.fullmatch(str(text))
    if not match:
        raise ValueError(f"expected a count like 2M, 500k or 300000, got {str(text)!r} ({COUNT_SYNTAX})")
    return int(match.group(1)) * COUNT_SUFFIXES[match.group(2).lower()]


@dataclass
class LigerConfig:
    """How to linearize a model. Field names double as keyword overrides of `liger_lm.convert`; each field's
    `metadata["help"]` says what it does (`liger convert --help` lists them all)."""

    gate: str = field(default="gla", metadata={
        "help": "Gated recurrence of the linear branch (`liger_lm.GATES`; `liger convert --help` lists them)."})
    feature_map: str = field(default="softmax", metadata={
        "help": "Feature map φ applied to q and k of the linear branch (`liger_lm.FEATURE_MAPS`)."})
    window: int = field(default=64, metadata={
        "help": "Sliding-window size w of the softmax branch, in tokens (including the current one)."})
    rec_weight: float = field(default=0.5, metadata={
        "help": "α, weight of the recurrent (linear) branch; 0 turns it off."})
    swa_weight: float = field(default=0.5, metadata={
        "help": "β, weight of the sliding-window softmax branch; 0 turns it off."})
    gate_normalizer: float = field(default=16.0, metadata={"help": "τ in exp(logsigmoid(g)/τ) (16 in the paper)."})
    softmax_layers: list[int] = field(default_factory=list, metadata={
        "help": "Layers left as the model's own softmax attention (inter-layer hybrid), e.g. 0,8."})
    softmax_every: int = field(default=0, metadata={
        "help": "Also keep every k-th layer (k−1, 2k−1, …) as softmax attention; 0 = off."})
    gate_source: str = field(default="k", metadata={
        "help": "Raw projection the gate is pooled from: k (the paper), q or v (paper Table 8).",
        "choices": GATE_SOURCES})
    num_slots: int = field(default=64, metadata={"help": "M, slots of the GSA gate."})
    gate_lower_bound: float = field(default=0.0, metadata={"help": "γ, lower bound of the HGRN2 forget gate, in [0, 1)."})
    chunk_size: int = field(default=16, metadata={
        "help": "Block length of the chunked recurrent form (speed only, no effect on results)."})
    method: str = field(default="liger", metadata={  # absent from older checkpoints' config: they are Liger models
        "help": "liger (the paper's mixer) or lolcats (the LoLCATs baseline, docs/method.md §1.3: it uses window, "
                "feature_dim, window_factor_init and the softmax layers, and ignores the gate settings)."})
    feature_dim: int = field(default=64, metadata={
        "help": "LoLCATs: f, output size of each learned feature map W ∈ R^{D×f} (φ has 2f dims)."})
    window_factor_init: float = field(default=-2.197, metadata={
        "help": "LoLCATs: initial logit of the window factor γ = σ(·) (−2.197 → γ ≈ 0.1)."})
    sinks: int = field(default=0, metadata={
        "help": "Sink tokens: the window branch also attends to the first N real tokens of each sequence "
                "(StreamingLLM); 0 = the paper. Liger only."})
    normalize: bool = field(default=False, metadata={
        "help": "Divide the recurrent branch by q′·z (z = the decayed sum of φ(k)): a decayed average of values, as "
                "attention is; off = the paper. Changes nothing for gsa and mlstm (normalised already)."})
    combine: str = field(default="sum", metadata={
        "help": "How the branches meet: sum = α·o_rec + β·o_swa (the paper); shared = the recurrent branch holds "
                "only the tokens that left the window (and are no sinks) and shares the window's softmax normaliser, "
                "weighed by a learned logit ω per head (docs/method.md §1.2; α and β unused, rec_weight 0 still "
                "turns it off).",
        "choices": tuple(COMBINES)})
    rec_logit_init: float = field(default=0.0, metadata={
        "help": "combine=shared: initial ω (e^ω weighs the recurrent pseudo-key against the window's scores)."})
    learned_features: bool = field(default=False, metadata={
        "help": "φ(x W_h) instead of φ(x) in the recurrent branch: a learned D×D matrix per head for q and for k, "
                "identity at first (so nothing changes until training moves it), trained with LoRA; the decay still "
                "reads the raw key. Liger only (LoLCATs learns its own feature maps)."})

    def __post_init__(self) -> None:
        self.softmax_layers = sorted(set(int(i) for i in self.softmax_layers))
        self.validate()

    def validate(self, num_layers: int | None = None) -> None:
        """Raise `LigerConfigError` naming the first bad field; `num_layers` also checks layer indices."""
        from .modeling.gates import FEATURE_MAPS, GATES  # the registries, beside their torch implementations
        from .modeling.methods import MIXERS

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
        for name in ("normalize", "learned_features"):
            if not isinstance(getattr(self, name), bool):
                raise LigerConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.learned_features and self.method != "liger":
            raise LigerConfigError(f"learned_features is a setting of the liger method ({self.method!r} has its own "
                                   "feature maps); set learned_features=False")
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
