"""Timing and memory measurement: warm-up, repeats with the median, CUDA synchronisation, peak memory."""

from __future__ import annotations

import os
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Callable

import torch

RSS_SAMPLE_SECONDS = 0.005


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels so wall time covers the work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    """(seconds, result) of one synchronised call."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result


def repeat_median(fn: Callable[[], object], device: torch.device, repeats: int, max_seconds: float) -> dict:
    """Median over up to `repeats` timed calls after one warm-up call; stops early once `max_seconds` are spent.

    A warm-up call longer than `max_seconds` is kept as the only measurement (long inputs: kernels are already
    warm from shorter ones), so one slow configuration cannot take the whole budget.
    """
    first, _ = timed(fn, device)
    if first > max_seconds:
        return {"median_s": first, "runs": 1, "times_s": [first], "warmup_counted": True}
    times: list[float] = []
    spent = first
    while len(times) < repeats and (not times or spent < max_seconds):
        seconds, _ = timed(fn, device)
        times.append(seconds)
        spent += seconds
    return {"median_s": statistics.median(times), "runs": len(times), "times_s": times, "warmup_counted": False}


def interleaved_medians(fns: dict[str, Callable[[], object]], device: torch.device, repeats: int,
                        max_seconds: float) -> dict[str, dict]:
    """`repeat_median` for several functions whose ratio matters: after one warm-up call each, rounds that call
    each function once, up to `repeats` rounds or until `max_seconds` per function are spent, so that drift of a
    shared machine hits every function alike."""
    for fn in fns.values():
        timed(fn, device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    while len(times[next(iter(fns))]) < repeats:
        for name, fn in fns.items():
            times[name].append(timed(fn, device)[0])
        if sum(map(sum, times.values())) >= max_seconds * len(fns):
            break
    return {name: {"median_s": statistics.median(t), "runs": len(t), "times_s": t} for name, t in times.items()}


def read_rate(device: torch.device, megabytes: int = 512, repeats: int = 5) -> dict:
    """The device's memory read rate: the median time of a `sum` over `megabytes` of fp32, which reads every byte
    once (what a batch-1 decode step does with its weights); GB/s = bytes / seconds / 1e9."""
    data = read_probe(device, megabytes)
    timing = repeat_median(data.sum, device, repeats, max_seconds=30.0)
    return {"gb_s": gb_per_s(data, timing["median_s"]), "megabytes": megabytes,
            "method": f"median of {timing['runs']} sums over {megabytes} MiB of fp32"}


def read_probe(device: torch.device, megabytes: int = 512) -> torch.Tensor:
    """The fp32 tensor whose `sum` measures the read rate (far larger than any CPU cache)."""
    return torch.ones(megabytes * 2**20 // 4, device=device)


def gb_per_s(data: torch.Tensor, seconds: float) -> float:
    return round(data.numel() * data.element_size() / seconds / 1e9, 2)


def _rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def _kernel_peak_rss() -> int:
    """The kernel's record of this process's peak resident set size (`VmHWM`, Linux); 0 where unavailable."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            line = next(line for line in handle if line.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024
    except (OSError, ValueError, StopIteration):
        return 0


def _reset_kernel_peak_rss() -> bool:
    """Set the kernel's peak RSS record to the current RSS (writing 5 to /proc/self/clear_refs, Linux ≥ 4.0);
    whether it could."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
    except OSError:
        return False
    return _kernel_peak_rss() > 0


@dataclass
class PeakMemory:
    """Peak memory during a `with` block.

    CUDA: `torch.cuda.max_memory_allocated` (tensors only). CPU: the process's peak resident set size, reported as
    the peak and as the increase over the RSS at entry (weights and anything allocated before the block are in the
    peak, not in the increase; freed memory may stay resident). On Linux the kernel keeps the peak (reset at entry,
    read at exit): exact, and nothing runs beside the measured code. Elsewhere (or with `sample=True`) a thread
    samples the RSS every 5 ms; that thread takes the GIL and a core from the code it measures, which made a
    compiled decode step 4–5 % slower on a 2-core CPU (docs/speed-log.md).
    """

    device: torch.device
    sample: bool = False
    peak_bytes: int = 0
    increase_bytes: int = 0
    kind: str = ""

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            self.kind = "cuda_max_memory_allocated"
            return self
        self._start = _rss_bytes()
        self._thread = None
        if not self.sample and _reset_kernel_peak_rss():
            self.kind = "process_peak_rss"
            return self
        self.kind = "process_rss_sampled_5ms"
        self._peak = self._start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(RSS_SAMPLE_SECONDS):
            self._peak = max(self._peak, _rss_bytes())

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        elif self._thread is None:
            self.peak_bytes = max(_kernel_peak_rss(), _rss_bytes())
        else:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self._peak, _rss_bytes())
        self.increase_bytes = max(self.peak_bytes - self._start, 0)

    def as_dict(self) -> dict:
        return {"kind": self.kind, "peak_mb": _mb(self.peak_bytes), "increase_mb": _mb(self.increase_bytes)}


def _mb(n: int) -> float:
    return round(n / 2**20, 2)


def memory_note(device: torch.device) -> str:
    if device.type == "cuda":
        return "peak_mb = torch.cuda.max_memory_allocated during the measurement (tensors only)"
    return (
        "peak_mb = the process's peak resident set size (RSS) during the measurement, weights included (memory.kind: "
        "process_peak_rss = the kernel's record, reset at its start; process_rss_sampled_5ms = sampled by a thread); "
        "increase_mb = peak minus RSS at its start; cache_mb = exact bytes of the KV cache / Liger state"
    )
