"""Model level: base model vs its Liger conversion — prefill tok/s, decode tok/s and memory per length and batch.

Protocol (also written into the JSON):
  * prefill: one forward over [B, L] random token ids with the cache on (logits of the last token only);
    measured where B·L <= `prefill_token_cap`;
  * decode: `decode_tokens` single-token steps, the median step time gives tok/s = B / step;
    - after the real prefill of the same (B, L) wherever that prefill was measured (always at batch 1);
    - otherwise, base model: a DynamicCache of L random keys/values per layer (decode cost depends only on the
      cache length); Liger model: the state after a real prefill of `short_prefill` tokens (its size does not
      depend on length), so the step costs exactly what it costs at L;
  * the prefill/decode rows of both models run inside `decode_layout` (wide weights column-major on CPU, see
    `modeling.layout`);
  * forward throughput (no cache, [1, forward_length]): the runs of base and Liger (fp32, and bf16 autocast where
    measured) alternate, median per model;
  * Liger flatness: the batch-1 caches of every length (after their real prefill) then decode one step each in
    turn, `decode_tokens` rounds (fewer if `max_seconds` per length run out), so that drift of a shared machine
    hits every length alike;
  * weight formats (`weights`): besides the plain fp32 / bf16 models, copies of both fp32 models with int8 or bf16
    weights in every linear layer (`liger_lm.quantize_for_decode`; activations stay fp32) run the same rows; each
    row names its `dtype`, its `weights` and the `variant` (the dtype, or "int8-weights" / "bf16-weights");
  * compiled decode (`compile`): each variant's models also decode at batch 1 inside `compiled_decode`
    (torch.compile of the steady single-token steps), continuing an untimed prefill (or the stand-in caches above
    beyond `prefill_token_cap`), inside `decode_layout(for_compile=True)` (every weight row-major, for the compiled
    single-row reduction); the variant is "<variant>, compiled" and `first_step_s` is the first step's time, which at
    the first length includes the compile;
  * memory read rate: a `sum` over 512 MiB of fp32 (`measure.read_rate`), against which the summary puts the
    rate at which a batch-1 Liger step reads its linear layers' weights; measured once at the end, and in turns
    with Liger's batch-1 steps at the shortest length (`bandwidth_in_turns`, every variant, eager and compiled),
    so that a shared machine's drift between the two cancels in their ratio.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import torch
from transformers import DynamicCache

from ..compat import with_cache
from ..config import LigerConfig
from ..modeling.cache import cache_bytes
from ..modeling.compiled import compiled_decode, is_steady_step
from ..modeling.layout import decode_layout
from ..quantize import QuantizedLinear, quantize_for_decode
from .measure import PeakMemory, gb_per_s, interleaved_medians, read_probe, read_rate, repeat_median, timed
from .report import COMPILED

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
WARMUP_TOKENS = 64
STEPS_PER_TURN = 4  # decode steps between two reads of the probe (`bandwidth_in_turns`)


@dataclass
class ModelBenchSettings:
    lengths: list[int]
    batches: list[int]
    dtypes: list[str]
    decode_tokens: int  # defaults live in BenchOptions, the one place a run is configured
    repeats: int
    max_seconds: float
    short_prefill: int
    prefill_token_cap: int
    forward_length: int
    weights: tuple[str, ...] = ("fp32",)
    compile: bool = False


def variant_name(dtype: str, weights: str, compiled: bool = False) -> str:
    """A row's variant: the model dtype with plain weights, else '<format>-weights' (fp32 activations); then
    ', compiled' for decode through `compiled_decode`."""
    return (dtype if weights == "fp32" else f"{weights}-weights") + (COMPILED if compiled else "")


def decode_read_bytes(model) -> int:
    """Bytes of every linear layer's tensors (weights, scales, biases): what one batch-1 decode step reads, about
    (the embedding is read one row at a time; the LM head is a linear layer, tied or not)."""
    return sum(t.numel() * t.element_size() for module in model.modules()
               if isinstance(module, (torch.nn.Linear, QuantizedLinear)) for t in module.parameters(recurse=False))


def random_kv_cache(model, batch: int, length: int) -> DynamicCache:
    """A DynamicCache holding `length` random keys/values per layer, [B, H_kv, L, D] in the model's dtype."""
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    shape = (batch, config.num_key_value_heads, length, head_dim)
    param = next(model.parameters())
    cache = DynamicCache(config=config)
    generator = torch.Generator(device=param.device).manual_seed(0)
    for layer in range(config.num_hidden_layers):
        keys, values = (torch.randn(shape, generator=generator, dtype=param.dtype, device=param.device) for _ in "kv")
        cache.update(keys, values, layer)
    return cache


def _token_ids(model, batch: int, length: int) -> torch.Tensor:
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(length * 31 + batch)
    return torch.randint(3, model.config.vocab_size, (batch, length), generator=generator).to(device)


def _prefill(model, ids: torch.Tensor):
    """Forward over ids with a fresh cache; returns the filled cache."""
    cache = DynamicCache(config=model.config)
    model(input_ids=ids, **with_cache(cache), use_cache=True, logits_to_keep=1)
    return cache


def _decode_steps(model, cache, batch: int, steps: int, device: torch.device) -> list[float]:
    """Seconds of each of `steps` single-token forwards (greedy next token) continuing `cache`."""
    step = _greedy_step(model, cache, _token_ids(model, batch, 1))
    return [timed(step, device)[0] for _ in range(steps)]


def _greedy_step(model, cache, token: torch.Tensor) -> Callable[[], None]:
    """A function running one single-token forward continuing `cache`, then feeding back its greedy next token."""
    def step():
        nonlocal token
        out = model(input_ids=token, **with_cache(cache), use_cache=True)
        token = out.logits[:, -1:].argmax(-1)

    return step


def interleaved_decode(model, caches: dict[int, object], settings: ModelBenchSettings, device: torch.device) -> dict:
    """Batch-1 decode tok/s per context length, one step per length in turn (`interleaved_medians`); returns tok/s
    per length and the longest over the shortest."""
    steps = {length: _greedy_step(model, cache, _token_ids(model, 1, 1)) for length, cache in caches.items()}
    timings = interleaved_medians(steps, device, settings.decode_tokens, settings.max_seconds)
    speeds = {length: round(1 / timing["median_s"], 3) for length, timing in timings.items()}
    short, long = min(speeds), max(speeds)
    return {"tokens_per_s": {str(n): speed for n, speed in speeds.items()}, "steps": timings[short]["runs"],
            f"speed_{long}_over_{short}": round(speeds[long] / speeds[short], 3)}


def measure_decode(model, cache, batch: int, settings: ModelBenchSettings, device: torch.device, context: str) -> dict:
    """Decode speed and memory continuing `cache`; the first step is a warm-up and is not counted."""
    with PeakMemory(device) as memory:
        times = _decode_steps(model, cache, batch, settings.decode_tokens + 1, device)[1:]
    step = sorted(times)[len(times) // 2]
    return {
        "tokens_per_s": round(batch / step, 3),
        "step_ms": round(step * 1e3, 3),
        "steps": len(times),
        "context": context,
        "cache_mb": round(cache_bytes(cache) / 2**20, 3),
        "memory": memory.as_dict(),
    }


def bandwidth_in_turns(model, cache, device: torch.device, rounds: int, max_seconds: float) -> dict:
    """Batch-1 decode continuing `cache` and the memory read rate, measured in turns (`interleaved_medians`:
    `STEPS_PER_TURN` steps, then one `sum` over the read probe, for `rounds` rounds or until `max_seconds`), and the
    share of that read rate at which the steps read the model's linear weights (`decode_read_bytes`). Measured apart,
    minutes from each other, the two rates drift independently on a shared machine; in turns, the drift cancels in
    the ratio."""
    step, probe = _greedy_step(model, cache, _token_ids(model, 1, 1)), read_probe(device)

    def steps():
        for _ in range(STEPS_PER_TURN):
            step()

    timings = interleaved_medians({"decode": steps, "read": probe.sum}, device, rounds, max_seconds)
    tokens_per_s = STEPS_PER_TURN / timings["decode"]["median_s"]
    weight_read_gb_s = tokens_per_s * decode_read_bytes(model) / 1e9
    read_gb_s = gb_per_s(probe, timings["read"]["median_s"])
    return {"tokens_per_s": round(tokens_per_s, 3), "memory_read_gb_s": read_gb_s,
            "weight_read_gb_s": _significant(weight_read_gb_s), "fraction": _significant(weight_read_gb_s / read_gb_s),
            "rounds": timings["decode"]["runs"]}


def _significant(value: float, digits: int = 4) -> float:
    """`value` to `digits` significant digits (a tiny test model's rates are far below 0.01 GB/s)."""
    return float(f"{value:.{digits}g}")


def measure_prefill(model, batch: int, length: int, settings: ModelBenchSettings, device: torch.device):
    """(prefill result dict, the cache of the last run)."""
    ids = _token_ids(model, batch, length)
    caches = []

    def run():
        caches[:] = [_prefill(model, ids)]

    with PeakMemory(device) as memory:
        timing = repeat_median(run, device, settings.repeats, settings.max_seconds)
    result = {
        "tokens_per_s": round(batch * length / timing["median_s"], 2),
        "seconds": round(timing["median_s"], 4),
        "runs": timing["runs"],
        "memory": memory.as_dict(),
    }
    return result, caches[0]


def _row(model, kind: str, dtype: str, batch: int, length: int, settings: ModelBenchSettings, device, log,
         weights: str = "fp32"):
    """(result row, the cache its decode continued)."""
    variant = variant_name(dtype, weights)
    row = {"model": kind, "dtype": dtype, "weights": weights, "variant": variant, "batch": batch, "length": length,
           "prefill": None}
    with torch.no_grad():
        if batch * length <= settings.prefill_token_cap:
            row["prefill"], cache = measure_prefill(model, batch, length, settings, device)
            context = f"after a real prefill of {length} tokens"
        else:
            cache, context = _stand_in_cache(model, kind, batch, length, settings)
        row["decode"] = measure_decode(model, cache, batch, settings, device, context)
        if kind == "liger" and batch == 1 and length == min(settings.lengths):
            row["decode"]["bandwidth_in_turns"] = bandwidth_in_turns(model, cache, device, settings.decode_tokens,
                                                                     settings.max_seconds)
    prefill = row["prefill"]["tokens_per_s"] if row["prefill"] else "-"
    log(f"{kind} {variant} B={batch} L={length}: prefill {prefill} tok/s, decode {row['decode']['tokens_per_s']} tok/s")
    return row, cache


def _stand_in_cache(model, kind: str, batch: int, length: int, settings: ModelBenchSettings):
    """(cache, description) a decode at `length` continues where its prefill is not measured: random keys for the
    base model, the state of a short real prefill for Liger (module docstring)."""
    if kind == "base":
        return (random_kv_cache(model, batch, length),
                f"KV cache of {length} random keys/values per layer (decode cost depends only on its length)")
    short = min(settings.short_prefill, length)
    return (_prefill(model, _token_ids(model, batch, short)),
            f"state of a real {short}-token prefill (Liger state size does not depend on length)")


def _compiled_rows(model, kind: str, dtype: str, weights: str, settings: ModelBenchSettings, device, log) -> list:
    """Batch-1 decode rows of `model` inside `compiled_decode`, one per length (module docstring)."""
    variant = variant_name(dtype, weights, compiled=True)
    rows = []
    with torch.no_grad(), compiled_decode(model):
        for length in settings.lengths:
            if length <= settings.prefill_token_cap:
                cache, context = _prefill(model, _token_ids(model, 1, length)), f"after a real prefill of {length} tokens"
            else:
                cache, context = _stand_in_cache(model, kind, 1, length, settings)
            token = _token_ids(model, 1, 1)
            step = _greedy_step(model, cache, token)
            first_step_s, _ = timed(step, device)
            steady = _until_steady(step, cache, token)
            decode = measure_decode(model, cache, 1, settings, device, context)
            if kind == "liger" and length == min(settings.lengths):
                decode["bandwidth_in_turns"] = bandwidth_in_turns(model, cache, device, settings.decode_tokens,
                                                                  settings.max_seconds)
            rows.append({"model": kind, "dtype": dtype, "weights": weights, "variant": variant, "batch": 1,
                         "length": length, "prefill": None, "compiled": steady,
                         "decode": {**decode, "first_step_s": round(first_step_s, 3)}})
            log(f"{kind} {variant} B=1 L={length}: decode {decode['tokens_per_s']} tok/s "
                f"(first step {first_step_s:.1f} s{'' if steady else ', not steady: ran eagerly'})")
    torch._dynamo.reset()  # the next model's steps then do not check this one's guards first
    return rows


def _until_steady(step: Callable[[], None], cache, token: torch.Tensor, limit: int = 64) -> bool:
    """Untimed steps until the cache is steady, so that every timed step runs compiled (only steady steps do,
    `compiled_decode`; a stand-in prefill of `short_prefill` = window tokens stores its last sinks a few steps
    later); whether it got there within `limit` steps."""
    for _ in range(limit):
        if is_steady_step((token,), with_cache(cache)):
            return True
        step()
    return is_steady_step((token,), with_cache(cache))


def _warm_up(model, device) -> None:
    with torch.no_grad():
        cache = _prefill(model, _token_ids(model, 1, WARMUP_TOKENS))
        _decode_steps(model, cache, 1, 3, device)


def _fits_in_memory(model, batch: int, length: int) -> bool:
    """False where a base KV cache of this size would not fit in 80 % of the free memory (a DynamicCache step
    copies one layer at a time, so the peak is the cache plus one layer)."""
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    element = next(model.parameters()).element_size()
    needed = 2 * config.num_hidden_layers * batch * config.num_key_value_heads * length * head_dim * element
    device = next(model.parameters()).device
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        free = _available_memory()
    return needed < 0.8 * free if free else True


def _available_memory() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _forward(model, length: int, device, autocast: bool) -> Callable[[], None]:
    """A training-style forward (no cache) at [1, length], optionally under bf16 autocast."""
    ids = _token_ids(model, 1, length)
    context = torch.autocast(device.type, dtype=torch.bfloat16) if autocast else nullcontext()

    def run():
        with torch.no_grad(), context:
            model(input_ids=ids, use_cache=False, logits_to_keep=1)

    return run


def run_model_benchmark(model, liger: LigerConfig, settings: ModelBenchSettings, device, log: Callable) -> dict:
    """Benchmark `model` (moved to `device`) and its Liger conversion; returns rows, throughput, skipped."""
    from ..convert import convert

    base = model.to(device).eval()
    converted = convert(copy.deepcopy(base), liger).eval()
    models = {"base": base, "liger": converted}
    parameters = sum(p.numel() for p in base.parameters())
    rows, skipped, flatness, weights_mb, read_mb = [], [], {}, {}, {}
    throughput = _throughput_section(models, device, settings, log)
    for dtype, weights in _variants(settings):
        variant = variant_name(dtype, weights)
        for kind, net in models.items():
            net = _variant_model(net, dtype, weights)
            if kind == "liger":
                weights_mb[variant] = _weights_mb(net, parameters, dtype, weights)
                read_mb[variant] = round(decode_read_bytes(net) / 2**20, 3)
                if settings.compile:
                    compiled = variant_name(dtype, weights, compiled=True)
                    weights_mb[compiled], read_mb[compiled] = weights_mb[variant], read_mb[variant]
            with decode_layout(net):  # after the cast / quantisation: it fuses what the variant runs
                _warm_up(net, device)
                liger_caches = {}
                for batch in settings.batches:
                    for length in settings.lengths:
                        if kind == "base" and batch * length > settings.prefill_token_cap \
                                and not _fits_in_memory(net, batch, length):
                            skipped.append({"model": kind, "dtype": dtype, "weights": weights, "variant": variant,
                                            "batch": batch, "length": length,
                                            "reason": "KV cache does not fit in 80 % of the free memory"})
                            log(f"skipped {kind} {variant} B={batch} L={length}: KV cache too large for free memory")
                            continue
                        row, cache = _row(net, kind, dtype, batch, length, settings, device, log, weights)
                        rows.append(row)
                        if kind == "liger" and batch == 1 and row["prefill"]:
                            liger_caches[length] = cache
                        del cache
                if len(liger_caches) > 1:
                    flatness[variant] = interleaved_decode(net, liger_caches, settings, device)
                    log(f"liger {variant} B=1 decode, lengths interleaved: {flatness[variant]['tokens_per_s']} tok/s")
            if settings.compile:
                with decode_layout(net, for_compile=True):
                    rows += _compiled_rows(net, kind, dtype, weights, settings, device, log)
            del net
    memory_read = read_rate(device)
    log(f"memory read rate: {memory_read['gb_s']} GB/s ({memory_read['method']})")
    return {"rows": rows, "skipped": skipped, "throughput": throughput, "liger_b1_decode_interleaved": flatness,
            "weights_mb": weights_mb, "decode_read_mb": read_mb, "memory_read": memory_read}


def _variants(settings: ModelBenchSettings) -> list[tuple[str, str]]:
    """(dtype, weights) pairs in running order: the quantised copies are made from the fp32 models before any
    other dtype rounds them (`net.to` changes the models in place)."""
    plain = [(dtype, "fp32") for dtype in settings.dtypes]
    quantised = [("fp32", fmt) for fmt in dict.fromkeys(settings.weights) if fmt != "fp32"]
    return [v for v in plain if v[0] == "fp32"] + quantised + [v for v in plain if v[0] != "fp32"]


def _variant_model(net, dtype: str, weights: str):
    """The model a variant runs: `net` cast to `dtype`, or a copy of the fp32 `net` with quantised weights."""
    if weights == "fp32":
        return net.to(DTYPES[dtype])
    return quantize_for_decode(copy.deepcopy(net.to(torch.float32)), weights)


def _weights_mb(net, parameters: int, dtype: str, weights: str) -> float:
    """MB of the model's weights: parameters × itemsize for plain models; the stored bytes of every distinct tensor
    for quantised ones (the default model's tied fp32 embedding stays beside the LM head's int8 / bf16 copy)."""
    if weights == "fp32":
        return round(parameters * DTYPES[dtype].itemsize / 2**20, 3)
    tensors = {t.data_ptr(): t.numel() * t.element_size() for t in net.parameters()}
    return round(sum(tensors.values()) / 2**20, 3)


def _throughput_section(models: dict, device, settings: ModelBenchSettings, log) -> dict:
    """Forward tok/s at `forward_length` for both models, fp32 and (when bf16 is measured) fp32 + bf16 autocast;
    the runs of all of them are interleaved (`interleaved_medians`)."""
    forwards = {}
    for kind, net in models.items():
        net.to(torch.float32)
        for autocast in (False, True) if "bf16" in settings.dtypes else (False,):
            name = f"{kind}_{'bf16_autocast' if autocast else 'fp32'}"
            forwards[name] = _forward(net, settings.forward_length, device, autocast)
    timings = interleaved_medians(forwards, device, settings.repeats, settings.max_seconds)
    section = {"length": settings.forward_length, "batch": 1, "interleaved": True}
    for name, timing in timings.items():
        section[name] = {"tokens_per_s": round(settings.forward_length / timing["median_s"], 2),
                         "seconds": round(timing["median_s"], 4), "runs": timing["runs"]}
        log(f"forward T={settings.forward_length} {name}: {section[name]['tokens_per_s']} tok/s")
    return section
