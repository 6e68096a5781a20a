"""The linearization methods: `LigerConfig.method` → the attention class that replaces each softmax attention."""

from __future__ import annotations

from .attention import LinearizedAttention
from .lolcats import LolcatsAttention
from .mixer import LigerAttention

MIXERS: dict[str, type[LinearizedAttention]] = {mixer.method: mixer for mixer in (LigerAttention, LolcatsAttention)}
