"""Zero-shot multiple-choice examples, the common format of every evaluation task."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MultipleChoiceExample:
    """Score each `query + choice` by log-likelihood of the choice; `label` indexes the right one."""

    query: str
    choices: tuple[str, ...]
    label: int
