"""Facts about the machine: which device to run on, what changes defaults (native bf16), and what results record
(versions, CPU)."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import re
from pathlib import Path

import torch

from .errors import LigerError


DEVICES = "auto, cpu or cuda[:N]"


def resolve_device(
    spec: str | None = "auto", error: type[LigerError] = LigerError, cpu_fallback: bool = False
) -> torch.device:
    """The device `--device` names: "auto" or None (CUDA when torch sees a GPU, else the CPU), "cpu" or "cuda[:N]".

    Anything else, or a GPU torch cannot see, raises `error` with one line; with `cpu_fallback` an unseen GPU means
    "auto" instead (lm-eval's convention: its command line asks for cuda by default).
    """
    if spec is None or spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec != "cpu" and not re.fullmatch(r"cuda(:\d+)?", spec):
        raise error(f"--device: expected {DEVICES}, got {spec!r}")
    device = torch.device(spec)
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        if cpu_fallback:
            return resolve_device("auto")
        raise error(f"--device {spec}: no CUDA GPU is visible to torch at index {device.index or 0} (torch sees "
                    f"{torch.cuda.device_count()} CUDA GPU(s) here; use --device cpu or auto)")
    return device


def fast_bf16(device: str | torch.device = "cpu") -> bool:
    """Whether bf16 matmuls run natively here: CUDA GPUs with bf16, CPUs with AVX-512 BF16 or AMX.

    Without them PyTorch emulates bf16 on the CPU, over 100× slower than fp32 on an AVX2-only CPU (README,
    "Fine-tuning"; `python scripts/matvec_layout.py` measures it), so bf16 must never be chosen by default there.
    """
    if torch.device(device).type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return _cpu_has_bf16()


@functools.cache
def _cpu_has_bf16() -> bool:
    """AVX-512 BF16 or AMX in /proc/cpuinfo, read once per process (quantised linears ask on every call)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def environment(device: torch.device) -> dict:
    """Machine and library versions, for benchmark and run JSON files."""
    import transformers

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "processor": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
        info["cuda"] = torch.version.cuda
        info["triton"] = package_version("triton")
    from .ops.fla_backend import fla_available, fla_version, get_backend

    info["fla_core"] = fla_version()
    info["gla_backend"] = get_backend() + (" (fla kernels on CUDA)" if fla_available() else " (pure PyTorch)")
    return info


def package_version(package: str) -> str | None:
    """The installed distribution's version, or None where it is not installed."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
