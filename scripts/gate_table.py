"""Training-free perplexity of the default model converted with each gate (README's gate table).

Usage: python scripts/gate_table.py [--max-tokens 2048]
Text: the passage shipped in src/liger_lm/assets/sample_text.txt (408 tokens with the SmolLM2 tokenizer).
"""

from __future__ import annotations

import argparse
import copy

import liger_lm
from liger_lm.evaluate import sample_text, text_perplexity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=2048)
    args = parser.parse_args()
    base, tokenizer = liger_lm.load_default_model()
    text = sample_text()
    base_ppl, tokens = text_perplexity(base, tokenizer, text, args.max_tokens)
    print(f"{liger_lm.DEFAULT_MODEL_NOTE}; {tokens} predicted tokens; base perplexity {base_ppl:.2f}\n")
    print("| gate | decay a_t | state per head | perplexity (Liger Attention, α=β=0.5) | recurrent only (β=0) |")
    print("|---|---|---|---|---|")
    for name, gate in liger_lm.GATES.items():
        mixed = text_perplexity(liger_lm.convert(copy.deepcopy(base), gate=name), tokenizer, text, args.max_tokens)[0]
        recurrent = liger_lm.convert(copy.deepcopy(base), gate=name, swa_weight=0.0)
        rec_only = text_perplexity(recurrent, tokenizer, text, args.max_tokens)[0]
        print(f"| {name} | {gate.decay} | {gate.state_size} | {mixed:,.1f} | {rec_only:,.1f} |")


if __name__ == "__main__":
    main()
