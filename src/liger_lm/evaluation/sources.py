"""The texts evaluation reads: the passage shipped with the package, a local file, or a Hugging Face dataset."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..data.hub import PREFIX, SYNTAX, parse_hub_source
from ..errors import EvaluationError, InputNotFoundError
from ..io import read_utf8

DEFAULT_COLUMN = "text"


def sample_text() -> str:
    """The fixed English passage shipped with the package (an original short story, ~420 words)."""
    return resources.files("liger_lm.assets").joinpath("sample_text.txt").read_text(encoding="utf-8")


def read_source_text(source: str) -> str:
    """Text of a local file, or of `hf:<dataset>[:<config>]:<split>[:<column>]` (rows joined by blank lines).

    The column defaults to `text`; `liger_lm.data.hub` gives the syntax.
    """
    if not source.startswith(PREFIX):
        path = Path(source)
        if not path.is_file():
            raise InputNotFoundError(f"text file {source} not found; give a local text file or hf:<dataset>:<split>")
        return read_utf8(path)
    hub = parse_hub_source(source)
    if hub is None:
        raise EvaluationError(f"bad dataset spec {source!r}; use {SYNTAX}, "
                              "e.g. hf:wikitext:wikitext-2-raw-v1:test or hf:my/data::train:body")
    rows = hub.load(EvaluationError, "check the name and network access (the Hugging Face Hub must be reachable), "
                                     "or pass a local text file")
    column = hub.column or DEFAULT_COLUMN
    if column not in rows.column_names:
        raise EvaluationError(f"{source}: no column {column!r}; columns are {', '.join(rows.column_names)}")
    return "\n\n".join(text for text in rows[column] if text)
