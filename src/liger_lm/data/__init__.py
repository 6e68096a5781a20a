"""Training and evaluation data: instruction sets, multiple-choice tasks, prompt template and packing."""

from .errors import DataError
from .multiple_choice import MultipleChoiceExample

__all__ = ["DataError", "MultipleChoiceExample"]
