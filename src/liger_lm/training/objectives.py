"""Training objectives and the teacher they need, without a second copy of the model.

Every converted layer keeps its original softmax-attention module (`mixer.softmax_attention`, unregistered, sharing
the q/k/v/o weights). Putting those back and disabling LoRA gives exactly the unconverted model: the teacher.

- `ce`:     next-token cross-entropy on the labelled tokens (the paper).
- `kd`:     KL(teacher ‖ student) of the next-token distributions on the labelled tokens, temperature τ (× τ²).
- `kd+ce`:  their sum.
- `attn`:   attention transfer (LoLCATs stage 1): mean over layers of MSE(mixer output, softmax-attention output),
            each layer fed the teacher's hidden states, so the layers are matched independently.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..compat import without_cache

OBJECTIVES = ("ce", "kd", "kd+ce", "attn")


def converted_layers(model: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """(decoder layer, mixer) for every layer whose attention was replaced (the mixer keeps `softmax_attention`)."""
    found = []
    for module in model.modules():
        mixer = getattr(module, "self_attn", None)
        if mixer is not None and "softmax_attention" in vars(mixer):
            found.append((module, mixer))
    return found


@contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """LoRA off inside the block (a no-op for a model without peft adapters)."""
    with ExitStack() as stack:
        if hasattr(model, "disable_adapter"):
            stack.enter_context(model.disable_adapter())
        yield


@contextmanager
def teacher_mode(model: nn.Module) -> Iterator[None]:
    """Inside the block `model` computes the original model: softmax attention back in every layer, LoRA off."""
    layers = converted_layers(model)
    with adapters_disabled(model):
        for layer, mixer in layers:
            layer.self_attn = mixer.softmax_attention
        try:
            yield
        finally:
            for layer, mixer in layers:
                layer.self_attn = mixer


@contextmanager
def attention_transfer(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect one MSE per converted layer (into the yielded list) while the model runs on teacher activations."""
    losses: list[torch.Tensor] = []

    def match_softmax(mixer, args, kwargs, output):
        with torch.no_grad(), adapters_disabled(model):
            # Without the cache: the mixer has already advanced its own state for these tokens.
            target = mixer.softmax_attention(*args, **without_cache(kwargs))[0]
        losses.append(F.mse_loss(output[0].float(), target.float()))
        return (target, *output[1:])

    handles = [mixer.register_forward_hook(match_softmax, with_kwargs=True) for _, mixer in converted_layers(model)]
    try:
        yield losses
    finally:
        for handle in handles:
            handle.remove()


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, num_items: int | torch.Tensor | None = None) -> torch.Tensor:
    """Next-token CE: logits [B, T, V] predict labels [B, T] shifted by one; -100 is ignored.

    Summed and divided by `num_items` (the labelled tokens of the whole accumulated batch) when given, else the mean.
    """
    shift_logits = logits[:, :-1].float().reshape(-1, logits.shape[-1])
    shift_labels = labels[:, 1:].reshape(-1)
    total = F.cross_entropy(shift_logits, shift_labels, ignore_index=-100, reduction="sum")
    return total / _count(shift_labels, num_items)


def distillation(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 1.0,
    num_items: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """τ² · KL(softmax(teacher/τ) ‖ softmax(student/τ)) summed over the positions that predict a labelled token.

    logits [B, T, V], labels [B, T] (-100: not labelled); divided by `num_items` when given, else by the labelled count.
    """
    predicts = F.pad(labels[:, 1:] != -100, (0, 1))  # position t predicts token t + 1; the last predicts nothing
    rows = predicts.flatten().nonzero()[:, 0]
    kl = _ChunkedKL.apply(student_logits.flatten(0, 1), teacher_logits.flatten(0, 1), rows, temperature)
    return kl / _count(labels[:, 1:].reshape(-1), num_items)


class _ChunkedKL(torch.autograd.Function):
    """τ² Σ_{n ∈ rows} KL(softmax(t_n/τ) ‖ softmax(s_n/τ)) with its gradient τ (softmax(s_n/τ) − softmax(t_n/τ)),
    both computed in one pass over `CHUNK_ROWS` rows at a time (fp32).

    student, teacher [N, V] (any float dtype), rows [n] (long). At [1024, 49152] autograd's log_softmax / kl_div
    chain makes ~10 full-size passes, 1.5–2.7 s a step on a 2-core CPU; chunks that stay in cache take ~0.3 s.
    """

    CHUNK_ROWS = 64

    @staticmethod
    def forward(ctx, student, teacher, rows, temperature):
        grad = torch.zeros_like(student) if student.requires_grad else None
        total = student.new_zeros((), dtype=torch.float32)
        for chunk in rows.split(_ChunkedKL.CHUNK_ROWS):
            log_q = F.log_softmax(student[chunk].float() / temperature, dim=-1)
            log_p = F.log_softmax(teacher[chunk].float() / temperature, dim=-1)
            p = log_p.exp()
            total += (p * (log_p - log_q)).sum()
            if grad is not None:
                grad[chunk] = ((log_q.exp_() - p) * temperature).to(grad.dtype)
        ctx.save_for_backward(grad)
        return total * temperature**2

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return grad * grad_output.to(grad.dtype), None, None, None


def objective_loss(
    model: nn.Module,
    inputs: dict,
    labels: torch.Tensor,
    objective: str,
    kd_temperature: float = 1.0,
    unwrapped: nn.Module | None = None,
):
    """(loss, outputs) of one batch under `objective` (module docstring): the one place the objectives are computed.

    inputs: the model's keyword inputs without labels; labels [B, T] (-100: not labelled); `unwrapped`: the model
    inside a distributed wrapper, whose mixers the hooks and the teacher switch reach (default: `model`).
    """
    plain = model if unwrapped is None else unwrapped
    inputs, labels = without_right_padding(inputs, labels)
    if objective == "ce":
        outputs = model(**inputs)
        return cross_entropy(outputs.logits, labels), outputs
    if objective == "attn":
        with attention_transfer(plain) as layer_losses:
            outputs = model(**inputs, logits_to_keep=1)  # the loss needs no logits
        return torch.stack(layer_losses).mean(), outputs
    with torch.no_grad(), teacher_mode(plain):
        teacher_logits = model(**inputs).logits
    outputs = model(**inputs)
    loss = distillation(outputs.logits, teacher_logits, labels, kd_temperature)
    if objective == "kd+ce":
        loss = loss + cross_entropy(outputs.logits, labels)
    return loss, outputs


def without_right_padding(inputs: dict, labels: torch.Tensor) -> tuple[dict, torch.Tensor]:
    """(inputs, labels) cut to the longest row, without the attention mask, when the rows are right-padded (packing
    pads only the end of a row): in a causal model a pad changes no logit before it and is never labelled, so the
    result is the same while every token costs less (no padded columns; softmax attention takes its unmasked
    causal path and the recurrence its unmasked one). Other masks are left as they are.

    inputs: keyword inputs with `input_ids` [B, T] and maybe `attention_mask` [B, T]; labels [B, T].
    """
    mask = inputs.get("attention_mask")
    if mask is None or mask.dim() != 2 or bool((mask[:, 1:] > mask[:, :-1]).any()):
        return inputs, labels
    width = int(mask.sum(1).max())
    if width == 0:
        return inputs, labels
    cut = {name: value[:, :width] if torch.is_tensor(value) and value.shape == mask.shape else value
           for name, value in inputs.items() if name != "attention_mask"}
    return cut, labels[:, :width]


def _count(shift_labels: torch.Tensor, num_items) -> torch.Tensor | int:
    if num_items is not None:
        return num_items
    return (shift_labels != -100).sum().clamp(min=1)
