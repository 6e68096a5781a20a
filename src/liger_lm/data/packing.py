"""Training sequences: records → Alpaca prompt + response → packed rows of `seq_len` tokens with response-only labels.

Each record becomes `tokenize(prompt, with the tokenizer's special tokens, e.g. BOS) + tokenize(response) + [EOS]`;
labels copy the ids on the response and EOS and are -100 on the prompt (Hugging Face convention: the model shifts
them, so logits at t are scored against labels[t + 1]). `{"text"}` records have an empty prompt: every token but the
tokenizer's special prefix is a target. Records are laid end to end (next-fit) into rows of `seq_len`; a record that
does not fit in what is left of the row starts a new one, so no record is ever split, and the rest of a row is
padding (pad id, label -100, attention mask 0). Records in one row see each other (no cross-record masking).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from .errors import DataError

IGNORE_INDEX = -100
TOKENIZE_SLICE = 1024  # records tokenized per batch call

# The Stanford Alpaca prompts (github.com/tatsu-lab/stanford_alpaca, train.py), with and without an input.
ALPACA_TEMPLATE = {
    "prompt_input": (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
    ),
    "prompt_no_input": (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Response:\n"
    ),
}


@dataclass(frozen=True)
class PackedData:
    """Packed rows and what went into them.

    input_ids, labels, attention_mask: [N, seq_len] int64; padding only at the end of a row.
    records: records packed; dropped: records longer than seq_len left out (drop_long=True);
    tokens: real (non-padding) tokens; loss_tokens: tokens with a label (responses and EOS).
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor
    records: int
    dropped: int
    tokens: int
    loss_tokens: int

    @property
    def seq_len(self) -> int:
        return self.input_ids.shape[1]

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def tensors(self) -> dict[str, torch.Tensor]:
        """The model inputs: `input_ids`, `labels`, `attention_mask`, each [N, seq_len]."""
        return {"input_ids": self.input_ids, "labels": self.labels, "attention_mask": self.attention_mask}

    def stats(self) -> dict[str, Any]:
        """JSON-ready counts; padding_fraction = 1 − tokens / (rows × seq_len)."""
        capacity = len(self) * self.seq_len
        return {"rows": len(self), "seq_len": self.seq_len, "records": self.records, "dropped": self.dropped,
                "tokens": self.tokens, "loss_tokens": self.loss_tokens,
                "padding_fraction": 1.0 - self.tokens / capacity if capacity else 0.0}


def format_prompt(record: Mapping[str, str]) -> tuple[str, str]:
    """(prompt, response) of a record: the Alpaca template for instruction records, ("", text) for text records."""
    if "text" in record:
        return "", record["text"]
    if "instruction" not in record or "output" not in record:
        raise DataError(f"record with fields {sorted(record)} has neither instruction + output nor text")
    key = "prompt_input" if record.get("input") else "prompt_no_input"
    prompt = ALPACA_TEMPLATE[key].format(instruction=record["instruction"], input=record.get("input", ""))
    return prompt, record["output"]


def tokenize_records(
    records: Sequence[Mapping[str, str]], tokenizer: PreTrainedTokenizerBase, prompt_loss: bool = False
) -> list[tuple[list[int], list[int]]]:
    """(ids, labels) per record: prompt ids (with special tokens) masked, then response ids + EOS as targets.

    With `prompt_loss` the prompt tokens are targets too (special tokens such as BOS stay masked).
    """
    eos = _eos_id(tokenizer)
    pairs = [format_prompt(record) for record in records]
    if not pairs:
        return []
    prompt_ids = tokenizer([prompt for prompt, _ in pairs], add_special_tokens=True)["input_ids"]
    response_ids = tokenizer([response for _, response in pairs], add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids)
    return [
        (prompt + response + [eos], _prompt_labels(prompt, prompt_loss, special) + response + [eos])
        for prompt, response in zip(prompt_ids, response_ids)
    ]


def _prompt_labels(prompt: list[int], prompt_loss: bool, special: set[int]) -> list[int]:
    if not prompt_loss:
        return [IGNORE_INDEX] * len(prompt)
    return [IGNORE_INDEX if token in special else token for token in prompt]


def pack_records(
    records: Sequence[Mapping[str, str]],
    tokenizer: PreTrainedTokenizerBase,
    seq_len: int = 1024,
    drop_long: bool = False,
    max_rows: int | None = None,
    prompt_loss: bool = False,
) -> PackedData:
    """Pack `records` in order into [N, seq_len] rows (see the module docstring).

    A record longer than seq_len raises DataError, or with drop_long=True is left out and counted in `dropped`.
    With `max_rows`, packing (and tokenizing, done in slices) stops once that many rows are full: a token budget
    never pays for tokenizing a whole large dataset. `prompt_loss` also trains on the prompts (see `tokenize_records`).
    """
    if seq_len < 2:
        raise DataError(f"seq_len must be at least 2 tokens, got {seq_len}")
    rows: list[tuple[list[int], list[int]]] = []
    packed = dropped = 0
    for start in range(0, len(records), TOKENIZE_SLICE):
        for offset, (ids, labels) in enumerate(tokenize_records(records[start : start + TOKENIZE_SLICE], tokenizer, prompt_loss)):
            if len(ids) > seq_len:
                if not drop_long:
                    raise DataError(f"record {start + offset} is {len(ids)} tokens, longer than seq_len={seq_len}; "
                                    "raise seq_len or pass drop_long=True to leave such records out")
                dropped += 1
                continue
            if not rows or len(rows[-1][0]) + len(ids) > seq_len:
                if max_rows is not None and len(rows) == max_rows:
                    return _to_tensors(rows, seq_len, _pad_id(tokenizer), packed, dropped)
                rows.append(([], []))
            rows[-1][0].extend(ids)
            rows[-1][1].extend(labels)
            packed += 1
    if records and not rows:
        raise DataError(f"all {len(records)} records are longer than seq_len={seq_len} tokens; raise seq_len")
    return _to_tensors(rows, seq_len, _pad_id(tokenizer), packed, dropped)


def _to_tensors(rows: list[tuple[list[int], list[int]]], seq_len: int, pad_id: int, packed: int, dropped: int) -> PackedData:
    input_ids = torch.full((len(rows), seq_len), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), seq_len), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), seq_len), dtype=torch.long)
    for row, (ids, targets) in enumerate(rows):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        labels[row, : len(ids)] = torch.tensor(targets, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    return PackedData(input_ids, labels, attention_mask, records=packed, dropped=dropped,
                      tokens=int(attention_mask.sum()), loss_tokens=int((labels != IGNORE_INDEX).sum()))


def _eos_id(tokenizer: PreTrainedTokenizerBase) -> int:
    if tokenizer.eos_token_id is None:
        raise DataError("the tokenizer has no EOS token; set tokenizer.eos_token before packing")
    return tokenizer.eos_token_id


def _pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The tokenizer's pad id, or EOS when it has none (padding is masked out of attention and loss anyway)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else _eos_id(tokenizer)
