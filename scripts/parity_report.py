"""Worst-case parity errors of the converted tiny test models under the installed transformers (fresh-install check).

    python scripts/parity_report.py        # run it in each venv whose transformers you want to compare

Four families × {window 8; window 8 + 4 sinks; combine="shared" + 2 sinks}: full forward vs prefill + token-by-token
decode, a left-padded batch vs each row alone, greedy generate with vs without the cache.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import liger_lm  # noqa: E402
from conftest import FAMILIES, prefill_then_decode, tiny_model  # noqa: E402
from test_model import left_pad, token_ids  # noqa: E402

SETTINGS = (dict(window=8), dict(window=8, sinks=4), dict(window=4, sinks=2, combine="shared", rec_logit_init=2.0))


@torch.no_grad()
def main() -> None:
    decode = padding = 0.0
    generate_equal = True
    for family in FAMILIES:
        for settings in SETTINGS:
            model = liger_lm.convert(tiny_model(family), **settings)
            ids = token_ids()
            full = model(ids).logits
            for prefill in (1, 3, 25):
                decode = max(decode, (prefill_then_decode(model, ids, prefill) - full).abs().max().item())
            rows = [token_ids(1, 30, seed=2)[0], token_ids(1, 11, seed=3)[0]]
            padded, mask = left_pad(rows)
            batch = model(padded, attention_mask=mask).logits
            for i, row in enumerate(rows):
                padding = max(padding, (batch[i, -len(row):] - model(row[None]).logits[0]).abs().max().item())
            cached = model.generate(ids, max_new_tokens=16, do_sample=False, pad_token_id=0)
            uncached = model.generate(ids, max_new_tokens=16, do_sample=False, use_cache=False, pad_token_id=0)
            generate_equal &= bool(torch.equal(cached, uncached))
    print(f"transformers {transformers.__version__}: max |decode - prefill| {decode:.2e}, "
          f"max |padded - alone| {padding:.2e}, generate with cache == without: {generate_equal}")


if __name__ == "__main__":
    main()
