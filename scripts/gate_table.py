"""Training-free perplexity of the default model converted with each gate (README's gate table).

Usage: python scripts/gate_table.py [--max-tokens 2048]
Text: the passage shipped in src/liger_lm/assets/sample_text.txt (408 tokens with the SmolLM2 tokenizer).
"""

from __future__ import annotations

import argparse
import copy

import liger_lm
from liger_lm.evaluation import perplexity, sample_text


def one_window(model, tokenizer, text: str, max_tokens: int) -> tuple[float, int]:
    """(perplexity, predicted tokens) of the first `max_tokens` tokens of `text`, in one forward pass."""
    result = perplexity(model, tokenizer, text, context=max_tokens, stride=max_tokens, max_tokens=max_tokens - 1)
    return result.ppl, result.tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=2048)
    args = parser.parse_args()
    base, tokenizer = liger_lm.load_default_model()
    text = sample_text()
    base_ppl, tokens = one_window(base, tokenizer, text, args.max_tokens)
    print(f"{liger_lm.DEFAULT_MODEL_NOTE}; {tokens} predicted tokens; base perplexity {base_ppl:.2f}\n")
    print("| gate | decay a_t | state per head | perplexity (Liger Attention, α=β=0.5) | recurrent only (β=0) |")
    print("|---|---|---|---|---|")
    for name, gate in liger_lm.GATES.items():
        mixed = one_window(liger_lm.convert(copy.deepcopy(base), gate=name), tokenizer, text, args.max_tokens)[0]
        recurrent = liger_lm.convert(copy.deepcopy(base), gate=name, swa_weight=0.0)
        rec_only = one_window(recurrent, tokenizer, text, args.max_tokens)[0]
        print(f"| {name} | {gate.decay} | {gate.state_size} | {mixed:,.1f} | {rec_only:,.1f} |")


if __name__ == "__main__":
    main()
