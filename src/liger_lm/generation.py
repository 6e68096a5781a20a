"""Text generation helpers over stock `model.generate()` (which uses the Liger cache automatically)."""

from __future__ import annotations

from contextlib import nullcontext

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .errors import PromptError, PromptTooLongError  # noqa: F401 (re-exported)
from .modeling.compiled import compiled_decode
from .modeling.layout import decode_layout


def check_prompts(prompts: list[str]) -> None:
    """Refuse an empty or blank prompt: batched with others it would be padded into a sequence of padding alone."""
    for number, prompt in enumerate(prompts, start=1):
        if not prompt.strip():
            which = "the prompt" if len(prompts) == 1 else f"prompt {number} of {len(prompts)}"
            raise PromptError(f"{which} is empty; give some text to complete")


def format_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, chat: bool) -> str:
    """Wrap `prompt` in the tokenizer's chat template when it has one and `chat` is set."""
    if chat and tokenizer.chat_template:
        messages = [{"role": "user", "content": prompt}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return prompt


@torch.no_grad()
def generate_text(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int = 64,
    sample: bool = False,
    temperature: float = 0.7,
    top_p: float = 0.9,
    chat: bool = True,
    seed: int = 0,
    compile: bool = False,
) -> list[str]:
    """Complete each prompt (batched, left-padded); returns only the new text of each. `compile`: steady decode
    steps through torch.compile (`modeling.compiled`; worth its compile time for long generations only)."""
    check_prompts(prompts)
    texts = [format_prompt(tokenizer, p, chat) for p in prompts]
    inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not chat).to(model.device)
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and inputs["input_ids"].shape[1] + max_new_tokens > limit:
        raise PromptTooLongError(
            f"prompt ({inputs['input_ids'].shape[1]} tokens) + max_new_tokens ({max_new_tokens}) exceeds the "
            f"model's {limit} positions; shorten the prompt or lower --max-new-tokens"
        )
    torch.manual_seed(seed)
    options = dict(do_sample=True, temperature=temperature, top_p=top_p) if sample else dict(do_sample=False)
    with decode_layout(model, for_compile=compile), compiled_decode(model) if compile else nullcontext():
        output = model.generate(
            **inputs, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **options
        )
    new_tokens = output[:, inputs["input_ids"].shape[1] :]
    return [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
