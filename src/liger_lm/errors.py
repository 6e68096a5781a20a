"""The one error family of liger-lm: every problem a user can fix is a `LigerError`.

Its message is one line that says what is wrong and what to do. The `liger` command prints exactly that line and exits
with code 2; any other exception is a bug in liger-lm (or a library under it) and keeps its traceback. Each subclass
also derives from the built-in type it replaced (ValueError, RuntimeError, FileExistsError), so code that caught
those keeps working.
"""

from __future__ import annotations


class LigerError(Exception):
    """A problem with the user's input, files or settings; the message says what is wrong and what to do."""


class LigerConfigError(LigerError, ValueError):
    """A Liger setting is invalid; the message says which one and what is allowed."""


class TrainConfigError(LigerError, ValueError):
    """An invalid training setting; the message names it and the accepted values."""


class NonFiniteLossError(LigerError, RuntimeError):
    """The loss became NaN or infinite; training stopped before the optimizer step, checkpoints are intact."""


class ResumeError(LigerError, ValueError):
    """A run cannot be resumed as asked (other settings than the ones it was started with)."""


class DataError(LigerError, ValueError):
    """Unusable data (a missing or malformed file, an unknown task, an unreachable source); the message says what to do."""


class EvaluationError(LigerError, ValueError):
    """Bad evaluation input (empty text, malformed source spec, unreachable dataset); the message says what to do."""


class InputNotFoundError(LigerError, FileNotFoundError):
    """An input file named on the command line does not exist."""


class ModelLoadError(LigerError, ValueError):
    """A model could not be located or read; the message says what to do."""


class UnsupportedModelError(LigerError, ValueError):
    """The model's architecture has no Liger adapter."""


class PromptError(LigerError, ValueError):
    """A prompt that cannot be generated from (empty, or too long for the model)."""


class PromptTooLongError(PromptError):
    """The prompt plus the requested new tokens exceed what the model allows."""


class BenchmarkError(LigerError, ValueError):
    """A benchmark option is invalid; the message says which and what is allowed."""


class BackendError(LigerError, ValueError):
    """The requested kernel backend is unknown or cannot run here; the message says what to do."""


class CompileUnavailableError(LigerError, RuntimeError):
    """torch.compile cannot build here (torch too old, or no C++ compiler for inductor on CPU); the message says
    what to do."""


class HarnessArgumentError(LigerError, ValueError):
    """A bad `--model_args` value for the liger model."""


class OutputError(LigerError, OSError):
    """An output cannot be written: its folder is a file or not writable, or another process is writing it."""


class OutputExistsError(OutputError, FileExistsError):
    """The output already exists and overwriting was not asked for."""
