"""llama.cpp side by side: the base model's GGUF through `llama-cpp-python`, same threads and context lengths.

Optional (`pip install 'liger-lm[bench]'`, which builds llama.cpp from source; never part of `make setup`): when the
module is not importable the benchmark says so in one line and goes on. Per context length L, batch 1:
  * prefill: `Llama.eval` over L random token ids into a fresh context of L + decode_tokens + 1 positions (one run:
    at 16K it is the slowest part of the whole benchmark);
  * decode: decode_tokens + 1 single-token `eval` calls continuing it (the first is a warm-up); tok/s = 1 / median.
    Each call computes the next token's logits (llama.cpp's own LM head); the fed tokens are random, as the cost of
    a step does not depend on them.
The GGUF is run as stored (the default model: Q4_1, 4.5 bits per weight), with llama.cpp's default KV cache (f16).
The measurement runs in a forked child process where the platform has fork: a crash inside the compiled library
(llama-cpp-python 0.3.36 built here segfaulted in `llama_decode`) becomes one line in the results, not the end of
the whole benchmark.
"""

from __future__ import annotations

import importlib
import multiprocessing
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

INSTALL_HINT = "pip install 'liger-lm[bench]' (builds llama.cpp from source)"


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
                  threads: int | None = None) -> dict:
    """{"available": bool, "reason" | "rows", …}; never raises for a missing module or a model without a GGUF."""
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
            "threads": threads, "kv_cache": "f16 (llama.cpp default)", "rows": rows}


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
