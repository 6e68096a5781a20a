"""Instruction records for recovery fine-tuning: `{"instruction", "input", "output"}` (Alpaca fields) or `{"text"}`.

Sources (`load_instruction_records(source)`):
- `"prose"`: the training prose of `liger_lm.data.prose` as `{"text"}` records; `"mix"`: `"default"` and `"prose"`
  shuffled together;
- `"default"`: every example of the BIG-bench Natural Instructions subtasks except the evaluation subtasks and those
  built from the same questions (`TRAINING_EXCLUDED_SUBTASKS`); instruction = the subtask's "Definition:" paragraph,
  input = the example input, output = its first reference answer. Examples whose input + output exceed
  `MAX_EXAMPLE_CHARS` characters are skipped, so every record fits a 1,024-token row and rows pack well.
- a local `.json` (a list of objects) or `.jsonl` (one object per line) file with `instruction`, optional `input`
  and `output` fields; `prompt` + `response` (prompt becomes the instruction) or `text` rows (cut like `.txt`
  files) are accepted too;
- a local `.txt` file: plain text split at blank lines into `{"text"}` chunks of at most `TEXT_CHUNK_CHARS` characters;
- anything else: a Hugging Face dataset, `hf:<dataset>[:<config>]:<split>` as `liger eval --ppl` writes it
  (`liger_lm.data.hub`; without a column: rows are read whole), or without the prefix `name`, `name:split` or
  `name:config:split` (the split defaults to `train`).
Rows whose response (or text) is empty are skipped. The result is shuffled with `seed`, then cut to `limit`.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .bigbench import EVAL_SUBTASKS, TRAINING_EXCLUDED_SUBTASKS, natural_instruction_subtasks, read_task_json
from ..io import read_utf8
from .errors import DataError
from .hub import parse_hub_source
from .prose import training_prose_records
from .text import TEXT_CHUNK_CHARS, text_chunks

__all__ = ["EVAL_SUBTASKS", "MAX_EXAMPLE_CHARS", "TEXT_CHUNK_CHARS", "TRAINING_EXCLUDED_SUBTASKS",
           "default_instruction_records", "load_instruction_records", "normalize_record", "text_chunks"]

# About 300 tokens of English: with the longest definition (~2,000 characters) and the template a record stays
# well under 1,024 tokens, and the many short records keep packed rows full.
MAX_EXAMPLE_CHARS = 1200
LOCAL_SUFFIXES = (".json", ".jsonl", ".txt")
_SECTION = re.compile(r"Definition:(.*?)(?:Things to Avoid:|Emphasis/Caution:|Prompt:|$)", re.S)


def load_instruction_records(source: str, limit: int | None = None, seed: int = 0) -> list[dict[str, str]]:
    """Records of `source` (see the module docstring), shuffled with `seed` and cut to the first `limit`."""
    if limit is not None and limit <= 0:
        raise DataError(f"limit must be a positive number of records (or None for all), got {limit}")
    if source in BUILTIN_SOURCES:
        records = BUILTIN_SOURCES[source]()
    elif source.lower().endswith(LOCAL_SUFFIXES):
        records = _local_records(Path(source).expanduser())
    elif Path(source).expanduser().is_file():
        raise DataError(f"{source}: unsupported file type; use a .json, .jsonl or .txt file")
    else:
        records = _hub_records(source)
    if not records:
        raise DataError(f"{source} has no usable rows (every response or text is empty); check the file or dataset")
    random.Random(seed).shuffle(records)
    return records[:limit]


def default_instruction_records() -> list[dict[str, str]]:
    """The default training set, in subtask and example order (see the module docstring)."""
    records = []
    for subtask in natural_instruction_subtasks():
        if subtask[: len("subtask000")] in TRAINING_EXCLUDED_SUBTASKS:
            continue
        task = read_task_json(f"natural_instructions/{subtask}/task.json")
        definition = task_definition(task["description"])
        for example in task["examples"]:
            output = example["target"][0].strip() if example["target"] else ""
            text_input = example["input"].strip()
            if output and len(text_input) + len(output) <= MAX_EXAMPLE_CHARS:
                records.append({"instruction": definition, "input": text_input, "output": output})
    return records


def _mixed_records() -> list[dict[str, str]]:
    return default_instruction_records() + training_prose_records()


BUILTIN_SOURCES = {"default": default_instruction_records, "prose": training_prose_records, "mix": _mixed_records}


def task_definition(description: str) -> str:
    """The "Definition:" paragraph of a Natural Instructions description (without the things-to-avoid sections)."""
    match = _SECTION.search(description)
    return " ".join((match.group(1) if match else description).split())


def normalize_record(row: Any, where: str) -> dict[str, str] | None:
    """One row as `{"instruction", "input", "output"}` or `{"text"}`; None when its response is empty.

    `where` names the row in error messages (e.g. `data.jsonl line 3`).
    """
    if not isinstance(row, Mapping):
        raise DataError(f"{where}: expected an object with instruction/output, prompt/response or text fields, "
                        f"got {type(row).__name__}")
    if "instruction" in row and "output" in row:
        record = {"instruction": row["instruction"], "input": row.get("input") or "", "output": row["output"]}
    elif "prompt" in row and "response" in row:
        record = {"instruction": row["prompt"], "input": "", "output": row["response"]}
    elif "text" in row:
        record = {"text": row["text"]}
    else:
        raise DataError(f"{where}: missing fields; each row needs instruction + output (input optional), prompt + response, "
                        f"or text; found {sorted(row)}")
    for name, value in record.items():
        if not isinstance(value, str):
            raise DataError(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
    response = record.get("output", record.get("text"))
    return record if response.strip() else None


def _local_records(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise DataError(f"data file {path} does not exist; pass an existing .json/.jsonl/.txt file, 'default' or a dataset name")
    text = read_utf8(path)
    if not text.strip():
        raise DataError(f"data file {path} is empty; add records or choose another --data")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return [{"text": chunk} for chunk in text_chunks(text)]
    rows = _jsonl_rows(path, text) if suffix == ".jsonl" else _json_rows(path, text)
    return _usable(rows)


def _json_rows(path: Path, text: str) -> Iterable[tuple[Any, str]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}); "
                        "fix it, or name it .jsonl if it holds one object per line") from err
    if not isinstance(data, list):
        raise DataError(f"{path} must hold a JSON list of records, got a {type(data).__name__}; use a list or a .jsonl file")
    return ((row, f"{path} record {index}") for index, row in enumerate(data))


def _jsonl_rows(path: Path, text: str) -> Iterable[tuple[Any, str]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path} line {number} is not valid JSON ({err.msg}, column {err.colno}); "
                            "fix or remove that line") from err
        yield row, f"{path} line {number}"


def _usable(rows: Iterable[tuple[Any, str]]) -> list[dict[str, str]]:
    """Normalised non-empty records; text rows are cut into `text_chunks` so they fit packed rows."""
    records = []
    for row, where in rows:
        record = normalize_record(row, where)
        if record is not None and "text" in record:
            records.extend({"text": chunk} for chunk in text_chunks(record["text"]))
        elif record is not None:
            records.append(record)
    return records


def _hub_records(source: str) -> list[dict[str, str]]:
    """A Hugging Face dataset (`liger_lm.data.hub`; the split defaults to `train`), every row read whole."""
    hub = parse_hub_source(source, default_split="train")
    if hub is None or hub.column is not None:
        raise DataError(f"cannot parse data source {source!r}; use 'default', a .json/.jsonl/.txt file, or "
                        "hf:<dataset>[:<config>]:<split> (or name[:config][:split])")
    dataset = hub.load(DataError, "check the name and split, and that the Hub is reachable (or the dataset is in the "
                                  "local cache)")
    return _usable((row, f"dataset {source} row {index}") for index, row in enumerate(dataset))
