"""How much attention the recurrent branch of a `combine="shared"` model takes, against what the base model gives
the same tokens.

    python scripts/recurrent_share.py MODEL [--base default] [--tokens 4096] [--calibrate [--base-from PROSE_JSON]]

Under `combine="shared"` the recurrent branch stands for the tokens that left the window (and are no sinks) inside
one softmax normaliser, so its share of the normaliser, e^ω Z / (Σ_window e^s + e^ω Z), is the student's counterpart
of the base model's attention mass on those same tokens. Both are measured on the first `--tokens` tokens of the
held-out prose (a measurement only: nothing is fitted on it) and printed by position and, for positions within the
training rows (window – 1,024), by layer.

`--calibrate` asks whether a larger share would help: it sets each head's ω so that its mean share over positions
window – 1,024 of the *training* prose equals the base model's mass there, then scores the held-out prose in
`liger run`'s layout (16,384 tokens, paired ratio to the base model; `--base-from`: an earlier run's
`eval/prose.json` instead of scoring the base model again).
"""

from __future__ import annotations

import argparse

import torch

from checkpoint_prose import base_result
from liger_lm.data.prose import held_out_prose, training_prose_records
from liger_lm.evaluation import HELD_OUT_WINDOWS, perplexity, perplexity_ratio
from liger_lm.modeling import mixer
from liger_lm.models import load_model
from liger_lm.run import BUDGETS

BUCKETS = ((0, 128), (128, 256), (256, 512), (512, 1024), (1024, 2048), (2048, 4096))
TRAINED_UP_TO = BUDGETS["default"].seq_len  # the training rows' length (1,024)


def leading_text(records: list[dict[str, str]], characters: int) -> str:
    """The first records' texts, joined by blank lines, up to about `characters` (enough for the tokens measured,
    without tokenizing megabytes)."""
    texts, total = [], 0
    for record in records:
        if total >= characters:
            break
        texts.append(record["text"])
        total += len(record["text"]) + 2
    return "\n\n".join(texts)


def out_of_window(length: int, window: int, sinks: int) -> torch.Tensor:
    """[T, T] bool: key j is neither in query t's window (j > t − window) nor a sink (j < sinks)."""
    t = torch.arange(length)
    return (t[None, :] <= t[:, None] - window) & (t[None, :] >= sinks)


@torch.no_grad()
def teacher_mass(base, ids: torch.Tensor, window: int, sinks: int) -> torch.Tensor:
    """[L, T, H]: the base model's softmax attention mass on the out-of-window keys of each query (ids [1, T])."""
    mask, masses = out_of_window(ids.shape[1], window, sinks), []

    def keep_mass(module, args, kwargs, output):
        masses.append((output[1][0] * mask).sum(-1).T)  # weights [1, H, T, T] → [T, H]
        return (output[0], None)  # the full weights are not kept

    # Eager attention hands its weights to the hook without output_attentions, which would make the model also keep
    # every layer's [H, T, T] weights (18 GB at 4K tokens).
    previous = base.config._attn_implementation
    base.set_attn_implementation("eager")
    handles = [layer.self_attn.register_forward_hook(keep_mass, with_kwargs=True) for layer in base.model.layers]
    try:
        base(ids)
    finally:
        for handle in handles:
            handle.remove()
        base.set_attn_implementation(previous)
    return torch.stack(masses)


@torch.no_grad()
def share_logits(model, ids: torch.Tensor) -> tuple[torch.Tensor, list[torch.nn.Parameter]]:
    """([L, T, H] log Z − lse, the layers' ω parameters): the recurrent share is σ(ω + log Z − lse) (`_shared_output`)."""
    found, original = [], mixer._shared_output

    def record(o_swa, lse, numerator, normaliser, omega):
        found.append((torch.log(normaliser.clamp(min=mixer.NORMALISER_FLOOR)) - lse)[0])
        return original(o_swa, lse, numerator, normaliser, omega)

    mixer._shared_output = record
    try:
        model(ids)
    finally:
        mixer._shared_output = original
    omegas = [m.rec_logit.logit for m in model.modules() if isinstance(m, mixer.LigerAttention)]
    return torch.stack(found), omegas


def shares(logits: torch.Tensor, omegas) -> torch.Tensor:
    return torch.sigmoid(torch.stack([o.detach() for o in omegas])[:, None, :] + logits)


def calibrated_omegas(logits: torch.Tensor, target: torch.Tensor, steps: int = 60) -> torch.Tensor:
    """[L, H] ω with mean_t σ(ω + logits[:, t]) = target (logits [L, T, H], target [L, H]), by bisection."""
    low, high = torch.full_like(target, -30.0), torch.full_like(target, 40.0)
    for _ in range(steps):
        middle = (low + high) / 2
        below = torch.sigmoid(middle[:, None, :] + logits).mean(1) < target
        low, high = torch.where(below, middle, low), torch.where(below, high, middle)
    return (low + high) / 2


def report(teacher: torch.Tensor, student: torch.Tensor, window: int) -> None:
    print("positions    base model's mass outside window and sinks | recurrent share (means over layers, heads)")
    for low, high in BUCKETS:
        if low < teacher.shape[1]:
            print(f"{low:>5}–{high:<5}  {teacher[:, low:high].mean():.4f} | {student[:, low:high].mean():.4f}")
    span = slice(window, TRAINED_UP_TO)
    by_layer = zip(teacher[:, span].mean((1, 2)).tolist(), student[:, span].mean((1, 2)).tolist())
    print(f"by layer, positions {window}–{TRAINED_UP_TO}: " + ", ".join(f"{i}: {t:.3f} | {s:.3f}" for i, (t, s) in enumerate(by_layer)))
    per_head = torch.stack([teacher[:, span].mean(1).flatten(), student[:, span].mean(1).flatten()])
    print(f"correlation over heads: {torch.corrcoef(per_head)[0, 1]:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a converted model with combine='shared' (folder or adapter)")
    parser.add_argument("--base", default="default", help="the base model it was converted from")
    parser.add_argument("--tokens", type=int, default=4096, help="tokens of held-out prose measured (one sequence)")
    parser.add_argument("--calibrate", action="store_true", help="set ω to the base model's mass, score held-out prose")
    parser.add_argument("--base-from", help="with --calibrate: an earlier run's eval/prose.json for the base scores")
    args = parser.parse_args()

    model, tokenizer = load_model(args.model)
    settings = model.config.liger
    if settings.get("combine") != "shared":
        raise SystemExit(f"{args.model} is not a combine='shared' model (combine={settings.get('combine')!r})")
    window, sinks = settings["window"], settings["sinks"]
    base, base_tokenizer = load_model(args.base)

    def ids_of(text: str) -> torch.Tensor:
        return tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[:, : args.tokens]

    held_out = ids_of(held_out_prose())
    logits, omegas = share_logits(model, held_out)
    report(teacher_mass(base, held_out, window, sinks), shares(logits, omegas), window)
    if not args.calibrate:
        return
    training = ids_of(leading_text(training_prose_records(), characters=16 * args.tokens))
    span = slice(window, TRAINED_UP_TO)
    target = teacher_mass(base, training, window, sinks)[:, span].mean(1).clamp(1e-4, 0.95)
    calibrated = calibrated_omegas(share_logits(model, training)[0][:, span], target)
    print("calibrated ω, mean per layer: " + ", ".join(f"{v:.2f}" for v in calibrated.mean(1).tolist()))
    text, tokens = held_out_prose(), BUDGETS["default"].prose_tokens
    reference = base_result(args.base_from, text, tokens, lambda: (base, base_tokenizer))  # the base already loaded
    for name, values in (("as trained", None), ("calibrated ω", calibrated)):
        if values is not None:
            for omega, value in zip(omegas, values):
                omega.data.copy_(value)
        result = perplexity(model, tokenizer, text, max_tokens=tokens, **HELD_OUT_WINDOWS).to_dict()
        print(f"{name}: held-out prose perplexity {result['ppl']:.2f}, {perplexity_ratio(result, reference)}, "
              f"by position {result['by_position']}", flush=True)


if __name__ == "__main__":
    main()
