"""Step 3 of the pipeline: how much quality survived. (So far: perplexity of one text in one pass.)"""

from __future__ import annotations

import math
from importlib import resources

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase


def sample_text() -> str:
    """The fixed English passage shipped with the package (an original short story, ~420 words)."""
    return resources.files("liger_lm.assets").joinpath("sample_text.txt").read_text(encoding="utf-8")


@torch.no_grad()
def text_perplexity(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, text: str, max_tokens: int = 2048
) -> tuple[float, int]:
    """exp(mean next-token NLL) over the first `max_tokens` tokens of `text`, in one forward pass.

    Returns (perplexity, number of predicted tokens). Every token after the first is predicted exactly once.
    """
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][:, :max_tokens]
    if ids.shape[1] < 2:
        raise ValueError("the text has fewer than 2 tokens; nothing to score")
    ids = ids.to(model.device)
    logits = model(ids).logits[:, :-1].float()
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    return math.exp(nll.item()), ids.shape[1] - 1
