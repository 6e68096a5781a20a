"""llama.cpp side by side: the base model's GGUF through `llama-cpp-python`, same threads and context lengths.

Optional (`CMAKE_ARGS=-DGGML_OPENMP=OFF pip install 'liger-lm[bench]'`, which builds llama.cpp from source; never
part of `make setup`): when the module is not importable the benchmark says so in one line and goes on. Per context
length L, batch 1:
  * prefill: `Llama.eval` over L random token ids into a fresh context of L + decode_tokens + 1 positions (one run:
    at 16K it is the slowest part of the whole benchmark);
  * decode: decode_tokens + 1 single-token `eval` calls continuing it (the first is a warm-up); tok/s = 1 / median.
    Each call computes the next token's logits (llama.cpp's own LM head); the fed tokens are random, as the cost of
    a step does not depend on them.
The GGUF runs in the type `weights` asks for: "stored" as it is (the default model: Q4_1, 5 bits per weight), or
requantised by llama.cpp's own quantizer (`llama_model_quantize`, requantisation allowed) to "q8_0" (8.5 bits per
weight, what a Q8_0 model reads; the values are the stored ones re-rounded, so this measures speed, not quality) or
"f16", cached under <cache>/gguf/ (the liger-lm cache, see `liger_lm.data.sdist.cache_root`) and reused while the
source file is unchanged. llama.cpp's default KV cache (f16).
The measurement runs in a forked child process where the platform has fork: a crash inside the compiled library
(llama-cpp-python 0.3.36 built with its default OpenMP threads segfaulted in `llama_decode` on this project's CPU
machine; built with -DGGML_OPENMP=OFF it runs, here and standalone) becomes one line in the results, not the end of
the whole benchmark.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch

INSTALL_HINT = "CMAKE_ARGS=-DGGML_OPENMP=OFF pip install 'liger-lm[bench]' (builds llama.cpp from source)"
# GGUF types the benchmark can requantise to: `weights` value → llama.cpp's file type constant
GGUF_TYPES = {"q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "f16": "LLAMA_FTYPE_MOSTLY_F16"}
WEIGHT_CHOICES = ("stored", *GGUF_TYPES)


def gguf_for(model: str) -> Path | None:
    """The GGUF file behind a `--model` value: the default model's, a .gguf path, else None (a folder or Hub id)."""
    if model == "default":
        from ..models import default_gguf_path

        return default_gguf_path()
    return Path(model) if model.endswith(".gguf") else None


def _import_llama_cpp():
    """The llama_cpp module, or None when it is not installed (a broken install raises, as it should)."""
    try:
        return importlib.import_module("llama_cpp")
    except ImportError:
        return None


def run_llama_cpp(model: str, lengths: list[int], decode_tokens: int, log: Callable[[str], None],
                  threads: int | None = None, weights: str = "stored") -> dict:
    """{"available": bool, "reason" | "rows", …}; never raises for a missing module or a model without a GGUF.
    `weights`: one of WEIGHT_CHOICES (module docstring)."""
    module = _import_llama_cpp()
    if module is None:
        reason = f"llama-cpp-python is not installed ({INSTALL_HINT})"
        log(f"llama.cpp: skipped, {reason}")
        return {"available": False, "reason": reason}
    gguf = gguf_for(model)
    if gguf is None:
        reason = f"--model {model} is not a GGUF file (llama.cpp runs 'default' or a .gguf path)"
        log(f"llama.cpp: skipped, {reason}")
        return {"available": False, "reason": reason}
    threads = threads or torch.get_num_threads()
    version = getattr(module, "__version__", "unknown")
    source = gguf
    if weights != "stored":
        gguf = _isolated(requantized, source, weights, threads)
        if isinstance(gguf, str):
            reason = f"llama-cpp-python {version} could not requantise {source.name} to {weights}: {gguf}"
            log(f"llama.cpp: skipped, {reason}")
            return {"available": False, "reason": reason, "version": version, "gguf": str(source)}
        log(f"llama.cpp: {source.name} requantised to {weights}: {gguf}")
    rows = []
    for length in lengths:
        row = _isolated(_measure_length, gguf, length, decode_tokens, threads)
        if isinstance(row, str):
            reason = f"llama-cpp-python {version} failed at L={length}: {row}"
            log(f"llama.cpp: skipped, {reason}")
            return {"available": False, "reason": reason, "version": version, "gguf": str(gguf)}
        rows.append(row)
        log(f"llama.cpp B=1 L={length}: prefill {row['prefill']['tokens_per_s']} tok/s, "
            f"decode {row['decode']['tokens_per_s']} tok/s")
    return {"available": True, "version": version, "gguf": str(gguf), "weights": gguf.stem.rsplit(".", 1)[-1],
            "requantised_from": None if gguf == source else str(source),
            "threads": threads, "kv_cache": "f16 (llama.cpp default)", "rows": rows}


def requantized(source: Path, weights: str, threads: int) -> Path:
    """`source` requantised by llama.cpp to `weights` (a GGUF_TYPES key), cached under <cache>/gguf/ and named
    `<source stem>.<key of the source's path, size and mtime>.<TYPE>.gguf`, so an edited source is requantised again."""
    from ..data.sdist import cache_root
    from ..io import atomic_file

    stat = source.stat()
    key = hashlib.sha256(f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = cache_root() / "gguf" / f"{source.stem}.{key}.{weights.upper()}.gguf"
    if target.is_file():
        return target
    module = _import_llama_cpp()
    params = module.llama_model_quantize_default_params()
    params.ftype = getattr(module, GGUF_TYPES[weights])
    params.allow_requantize = True  # the source may itself be quantised (the default model is Q4_1)
    params.nthread = threads
    with atomic_file(target) as staging, _native_output_silenced():
        status = module.llama_model_quantize(str(source).encode(), str(staging).encode(), ctypes.byref(params))
        if status != 0:
            raise RuntimeError(f"llama_model_quantize returned {status}")
    return target


def _isolated(fn, *args):
    """fn(*args) in a forked child (where fork exists, else here); a one-line string when it raised or crashed."""
    if "fork" not in multiprocessing.get_all_start_methods():
        try:
            return fn(*args)
        except Exception as err:  # noqa: BLE001 — an optional comparison must not stop the benchmark
            return f"{type(err).__name__}: {' '.join(str(err).split())}"
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(sender, fn, args), daemon=True)
    process.start()
    sender.close()
    try:
        status, value = receiver.recv()
    except EOFError:  # the child died without an answer
        status, value = "error", None
    process.join()
    if status == "ok":
        return value
    return value or f"the process died (exit code {process.exitcode}, a negative code is the signal)"


def _child(sender, fn, args) -> None:
    try:
        sender.send(("ok", fn(*args)))
    except Exception as err:  # noqa: BLE001 — reported to the parent as one line
        sender.send(("error", f"{type(err).__name__}: {' '.join(str(err).split())}"))
    finally:
        sender.close()


def _measure_length(gguf: Path, length: int, decode_tokens: int, threads: int) -> dict:
    module = _import_llama_cpp()
    llm = module.Llama(model_path=str(gguf), n_ctx=length + decode_tokens + 1, n_batch=min(512, length),
                       n_threads=threads, n_threads_batch=threads, verbose=False)
    generator = torch.Generator().manual_seed(length * 31 + 1)
    ids = torch.randint(3, llm.n_vocab(), (length + decode_tokens + 1,), generator=generator).tolist()
    llm.reset()
    started = time.perf_counter()
    llm.eval(ids[:length])
    prefill = time.perf_counter() - started
    times = []
    for token in ids[length:]:
        started = time.perf_counter()
        llm.eval([token])
        times.append(time.perf_counter() - started)
    step = statistics.median(times[1:]) if len(times) > 1 else times[0]
    close = getattr(llm, "close", None)
    if close is not None:
        close()  # frees the context now, not whenever the garbage collector gets to it
    return {"length": length,
            "prefill": {"tokens_per_s": round(length / prefill, 2), "seconds": round(prefill, 4), "runs": 1},
            "decode": {"tokens_per_s": round(1 / step, 3), "step_ms": round(step * 1e3, 3),
                       "steps": max(len(times) - 1, 1)}}


@contextmanager
def _native_output_silenced() -> Iterator[None]:
    """Within the block, the process's stdout and stderr file descriptors go to /dev/null: llama.cpp's quantizer
    prints a line per tensor from C, past Python's sys.stdout."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)
