"""The one error type of the data layer (a `LigerError`, defined with the others in `liger_lm.errors`)."""

from __future__ import annotations

from ..errors import DataError  # noqa: F401 (re-exported)
