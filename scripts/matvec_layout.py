"""Rates behind the CPU speed choices: mat-vec weight layout (`liger_lm.decode_layout`), fresh vs reused blocks
(the segments of `liger_lm.ops.recurrence`) and fp32 vs bf16 matmul (`liger_lm.hardware.fast_bf16`).

Usage: python scripts/matvec_layout.py [--copies 30] [--calls 20]
For each weight shape of the default model (30 layers: q/o 576×576, k/v 192×576, gate/up 1536×576, down 576×1536;
the LM head 49152×576), `--copies` distinct weights (so that none stays in cache) are multiplied by one vector with
F.linear, and the read rate in GB/s is printed for both layouts, with a plain sum over 512 MB for reference. Then
filling a reused tensor is timed against allocating and filling a fresh one, at 8 MiB and 40 MiB (glibc serves blocks
over its 32 MB mmap threshold fresh from the kernel, so each use faults its pages in). Last, a 1024² matmul in
fp32 and in bf16.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

SHAPES = {"q/o": (576, 576), "k/v": (192, 576), "gate/up": (1536, 576), "down": (576, 1536), "lm_head": (49152, 576)}


def _seconds(fn, calls: int) -> float:
    fn()
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - started) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=30)
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    big = torch.randn(2**27)
    print(f"sum over 512 MB: {big.numel() * 4 / _seconds(big.sum, 5) / 1e9:.1f} GB/s")
    del big
    for name, (out_features, in_features) in SHAPES.items():
        copies = 2 if name == "lm_head" else args.copies
        row_major = [torch.randn(out_features, in_features) for _ in range(copies)]
        column_major = [w.t().contiguous().t() for w in row_major]
        x = torch.randn(1, in_features)
        rates = []
        for weights in (row_major, column_major):
            seconds = _seconds(lambda ws=weights: [F.linear(x, w) for w in ws], args.calls)
            rates.append(copies * out_features * in_features * 4 / seconds / 1e9)
        print(f"{name:8s} {out_features}×{in_features}: row-major {rates[0]:5.1f} GB/s, "
              f"column-major {rates[1]:5.1f} GB/s ({rates[1] / rates[0]:.2f}×)")
    for megabytes in (8, 40):
        reused = torch.empty(megabytes * 2**18)
        fill_reused = _seconds(lambda t=reused: t.fill_(1.0), args.calls)
        fill_fresh = _seconds(lambda n=reused.numel(): torch.empty(n).fill_(1.0), args.calls)
        gigabytes = reused.numel() * 4 / 1e9
        print(f"fill {megabytes} MiB: reused tensor {gigabytes / fill_reused:5.1f} GB/s, "
              f"freshly allocated {gigabytes / fill_fresh:5.1f} GB/s")
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(1024, 1024).to(dtype)
        seconds = _seconds(lambda a=a: a @ a, 3)
        print(f"matmul 1024² {str(dtype).removeprefix('torch.')}: {2 * 1024**3 / seconds / 1e9:.2f} GFLOP/s")


if __name__ == "__main__":
    main()
