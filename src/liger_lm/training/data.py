"""The training and held-out sets of a recovery run: instruction records → packed fixed-length sequences."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from ..data.errors import DataError
from ..data.instructions import load_instruction_records
from ..data.packing import pack_records
from .config import TrainConfig


class PackedDataset(Dataset):
    """Rows of packed tensors (`input_ids`, `labels`, `attention_mask`, each [N, seq_len]) as Trainer examples."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors["input_ids"])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {name: values[index] for name, values in self.tensors.items()}


def training_data(
    tokenizer: PreTrainedTokenizerBase, config: TrainConfig, skip_records: int = 0
) -> tuple[PackedDataset, PackedDataset, dict[str, Any]]:
    """(train set, held-out set, stats). The first `eval_records` of the seeded shuffle are held out, never trained on;
    training starts `skip_records` after them (a later stage continues where the earlier one stopped)."""
    records = load_instruction_records(config.data, seed=config.seed)
    held_out, rest = records[: config.eval_records], records[config.eval_records :]
    if skip_records and len(rest) > skip_records:
        rest = rest[skip_records:]
    if not rest:
        # Records that fit no row are the real problem when there are any: this raises naming seq_len.
        pack_records(records, tokenizer, seq_len=config.seq_len, drop_long=True)
        raise DataError(f"{config.data}: all {len(records)} usable records are held out for evaluation "
                        f"(eval_records={config.eval_records}); lower --eval-records or add data")
    if config.records is not None:
        rest = rest[: config.records]
    # Rows the budget consumes; a smaller dataset is repeated (epochs) by the Trainer.
    rows_needed = config.max_steps() * config.batch_size * config.grad_accum
    train = pack_records(rest, tokenizer, seq_len=config.seq_len, drop_long=config.drop_long, max_rows=rows_needed,
                         prompt_loss=config.prompt_loss)
    evaluation = pack_records(held_out, tokenizer, seq_len=config.seq_len, drop_long=True) if held_out else None
    stats = {"source": config.data, "train": train.stats(), "eval": evaluation.stats() if evaluation else None}
    empty = {name: values[:0] for name, values in train.tensors().items()}
    return PackedDataset(train.tensors()), PackedDataset(evaluation.tensors() if evaluation else empty), stats
