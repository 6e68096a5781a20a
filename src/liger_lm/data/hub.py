"""Hugging Face dataset sources, one syntax for training data and evaluation text.

    hf:<dataset>[:<config>]:<split>[:<column>]

Three fields mean dataset:config:split; to name a column without a config leave the config empty
(`hf:my/data::train:body`). Colons inside a split slice (`test[:10]`) belong to the split. Training data
(`liger train --data`) reads whole rows, so it takes no column, and also accepts the name without `hf:` and without a
split (`name`, `name:split`, `name:config:split`; the split defaults to `train`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import LigerError

PREFIX = "hf:"
SYNTAX = "hf:<dataset>[:<config>]:<split>[:<column>]"
_SEPARATOR = re.compile(r":(?![^\[]*\])")  # colons inside a split slice [:10] stay


@dataclass(frozen=True)
class HubSource:
    dataset: str
    config: str | None
    split: str
    column: str | None = None  # None: not named

    def load(self, error: type[LigerError], hint: str):
        """The split as a `datasets.Dataset`; a failure raises `error` in one line that ends with `hint`."""
        import datasets  # slow to import: only when a dataset is really read

        try:
            return datasets.load_dataset(self.dataset, self.config, split=self.split)
        except Exception as err:  # datasets raises many types (connection, missing split, missing config, ...)
            first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise error(f"cannot load Hugging Face dataset {self.dataset!r} (config {self.config}, split "
                        f"{self.split!r}): {first_line}; {hint}") from err


def parse_hub_source(spec: str, default_split: str | None = None) -> HubSource | None:
    """The fields of `spec` (see the module docstring; `hf:` optional), or None when it does not follow the syntax.

    `default_split`: the split of a bare dataset name; without it a split is required.
    """
    fields = _SEPARATOR.split(spec.removeprefix(PREFIX))
    if len(fields) == 1 and default_split:
        fields.append(default_split)
    if len(fields) == 2:
        fields.insert(1, "")
    if not 3 <= len(fields) <= 4 or not fields[0] or not fields[2] or (len(fields) == 4 and not fields[3]):
        return None
    return HubSource(fields[0], fields[1] or None, fields[2], fields[3] if len(fields) == 4 else None)
