"""int8 / bf16 weights (`liger_lm.quantize_for_decode`): kernel rates, quality cost and decode speed, in one script.

    python scripts/weights_table.py --part kernels [--threads 1]    # ~3 min: which kernel for which M
    python scripts/weights_table.py --part quality [--tokens 16384]  # ~15 min at 1 thread: held-out prose perplexity
    python scripts/weights_table.py --part decode  [--out bench/weights]  # ~5 min: `liger bench` rows, 1K and 16K

kernels: for each weight shape of the default model and M rows of x, the median time (calls of every variant
interleaved, so a shared machine's drift hits all alike) of fp32 F.linear and of each int8 / bf16 path, as a speed-up
over fp32. `--copies` distinct weights per shape keep the reads out of the caches.
quality: `runs/default/train/adapter` (the `shared` model fine-tuned by `make run`, its LoRA merged on load) in fp32,
bf16 and int8, on the held-out prose of `liger run` (`perplexity`'s held-out layout: 16 windows of 1,024 tokens), each ratio to
fp32 paired over the same windows (`perplexity_ratio`, ± one standard error of the log-ratio); "auto" is the path
`quantize_for_decode` picks here for M > 1, the others are forced (`force_path`). Then the greedy answers to the two
`liger run` prompts.
decode: `liger bench --model default --lengths 1k,16k --batch 1 --dtype fp32 --weights fp32,bf16,int8
--decode-tokens 8 --repeats 2 --prefill-token-cap 1024 --forward-length 256` through the API (the `shared` preset's
conversion; llama.cpp's rows too when `llama-cpp-python` is installed); prints the table and the headline ratios.
`--threads` sets torch's threads (and llama.cpp's in the decode part); default: torch's own.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

SHAPES = {"q/o": (576, 576), "k/v": (192, 576), "gate/up": (1536, 576), "down": (576, 1536), "lm_head": (49152, 576)}
PROMPTS = ["What is the capital of France?", "Write one sentence about the sea."]


def _interleaved(fns: dict, rounds: int) -> dict[str, float]:
    """Median seconds per call of each function, one call of each in turn per round, after one warm-up round."""
    times = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(t) for name, t in times.items()}


def kernels(args) -> None:
    from liger_lm.quantize import bf16_linear, int8_linear, quantize_int8

    for rows in (1, 16, 64, 1024):
        for name, (out_features, in_features) in SHAPES.items():
            copies = 2 if name == "lm_head" else (args.copies if rows <= 16 else 4)
            weights = [torch.randn(out_features, in_features) for _ in range(copies)]
            column_major = [w.t().contiguous().t() for w in weights]  # `decode_layout`'s fp32 layout (wide weights)
            int8 = [quantize_int8(w) for w in weights]
            bf16 = [w.to(torch.bfloat16) for w in weights]
            x = torch.randn(rows, in_features)
            fns = {"fp32": lambda: [F.linear(x, w) for w in weights],
                   "fp32 col-major": lambda: [F.linear(x, w) for w in column_major],
                   "int8pack, fp32 x": lambda: [torch.ops.aten._weight_int8pack_mm(x, q, s) for q, s in int8]}
            for path in ("int8pack", "dequant_bf16", "dequant_fp32"):
                fns[f"int8 {path}"] = lambda p=path: [int8_linear(x, q, s, s.to(torch.bfloat16), None, p)
                                                      for q, s in int8]
            for path in ("bf16", "fp32"):
                fns[f"bf16 {path}"] = lambda p=path: [bf16_linear(x, w, None, p) for w in bf16]
            fns["bf16 F.linear"] = lambda: [F.linear(x.to(torch.bfloat16), w).float() for w in bf16]
            rounds = args.rounds if rows * out_features < 2**22 else max(2, args.rounds // 4)
            median = _interleaved(fns, rounds)
            base = median["fp32"]
            ratios = ", ".join(f"{k} {base / v:.2f}×" for k, v in median.items() if k != "fp32")
            print(f"M={rows:5d} {name:8s} fp32 {base / copies * 1e6:9.1f} µs: {ratios}", flush=True)


def quality(args) -> None:
    import liger_lm
    from liger_lm.data.prose import held_out_prose
    from liger_lm.evaluation import HELD_OUT_WINDOWS, perplexity, perplexity_ratio
    from liger_lm.generation import generate_text
    from liger_lm.quantize import force_path, quantize_for_decode

    model, tokenizer = liger_lm.load_model(args.model)  # a converted folder: the Liger model, left-padding tokenizer
    text = held_out_prose()
    variants = {  # name: (format, forced path or None, LM head quantised)
        "fp32": ("fp32", None, True),
        "bf16 (auto: bf16 GEMM here)": ("bf16", None, True),
        "bf16, fp32 compute": ("bf16", "fp32", True),
        "int8 (auto)": ("int8", None, True),
        "int8, fp32 activations": ("int8", "dequant_fp32", True),
        "int8, LM head fp32": ("int8", None, False),
    }
    results, answers = {}, {}
    for name, (fmt, path, head) in variants.items():
        if args.variants and not any(v in name for v in args.variants.split(",")):
            continue
        net = quantize_for_decode(copy.deepcopy(model), fmt, lm_head=head)
        started = time.perf_counter()
        with torch.no_grad(), force_path(path):
            results[name] = perplexity(net, tokenizer, text, max_tokens=args.tokens, **HELD_OUT_WINDOWS).to_dict()
        if path is None and head:
            answers[name] = generate_text(net, tokenizer, PROMPTS, max_new_tokens=32)
        seconds = time.perf_counter() - started
        line = f"{name}: perplexity {results[name]['ppl']:.3f} (± se of mean NLL {results[name]['nll_se']:.4f})"
        if name != "fp32" and "fp32" in results:
            ratio = perplexity_ratio(results[name], results["fp32"])
            results[name]["ratio_to_fp32"] = ratio
            line += f", × fp32 {ratio['ratio']:.4f} ± {ratio['log_ratio_se']:.4f} (log-ratio se)"
        print(f"{line}; by position {results[name]['by_position']} [{seconds:.0f} s]", flush=True)
    for name, texts in answers.items():
        print(f"{name}: " + " | ".join(texts))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "quality.json").write_text(json.dumps({"results": results, "answers": answers}, indent=1))


def decode(args) -> None:
    from liger_lm.benchmark import BenchOptions, run_benchmark

    options = BenchOptions(out=Path(args.out or "bench/weights"), model="default", lengths=[1024, 16384], batches=[1],
                           dtypes=["fp32"], weights=["fp32", "bf16", "int8"], decode_tokens=8, repeats=2,
                           prefill_token_cap=1024, forward_length=256)
    results = run_benchmark(options, log=lambda message: print(message, flush=True))
    summary = results["summary"]
    for variant in ("fp32", "bf16-weights", "int8-weights"):
        print(variant, json.dumps({k: v for k, v in summary[variant].items()
                                   if k.startswith(("liger_decode_b1_tok_s", "liger_over", "decode_read_mb"))}))
    print("llama.cpp", json.dumps(summary["llama_cpp"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["kernels", "quality", "decode"], required=True)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--copies", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--model", default="runs/default/train/adapter")
    parser.add_argument("--tokens", type=int, default=16_384)
    parser.add_argument("--variants", default="", help="quality: only variants whose name contains one of these")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import liger_lm.hardware as hardware

    print(f"{hardware._cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    {"kernels": kernels, "quality": quality, "decode": decode}[args.part](args)


if __name__ == "__main__":
    main()
