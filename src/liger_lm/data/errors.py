"""The one error type of the data layer."""

from __future__ import annotations


class DataError(ValueError):
    """Unusable data (a missing or malformed file, an unknown task, an unreachable source); the message says what to do."""
