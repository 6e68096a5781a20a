#!/usr/bin/env bash
# The GPU check in one short run (README, Speed and memory: "On a GPU"): the fla kernels' parity tests, then `liger
# bench` at batch 1 and 16 up to 32K, the base model with SDPA against Liger with the fla kernels.
#
#   bash scripts/gpu_check.sh prepare   # here, with the package registries: wheels + the model's config into .whl/
#   bash scripts/gpu_check.sh run       # on the GPU machine, from the repository root (no network needed there)
#
# The GPU machine is expected to hold CUDA torch, Triton, pytest, accelerate, einops and huggingface-hub 1.x.
# `prepare` (after `make setup`; PYTHON= names another interpreter with liger-lm) fetches what it may lack as Python
# 3.12 wheels: transformers 5.24 (tested, and the newest that still runs on huggingface-hub 1.x: 5.25 needs hub 2.4
# and the `kernels` package), peft at the lock's version and fla-core; and it writes the default model's config.json:
# the bench builds the model from it with random weights (`--random-init`), since the speed of a step does not depend
# on the weights and the 94 MiB GGUF need not travel. `run` writes everything under $OUT (default: gpu_check/):
# log.txt, versions.json, pytest.txt and bench/ (model.json, model.md, model.png). Settings for a dry run elsewhere:
# GPU_CHECK_DEVICE (cuda), GPU_CHECK_LENGTHS (1k,16k,32k), GPU_CHECK_BATCH (1,16), GPU_CHECK_DTYPE (bf16),
# GPU_CHECK_SECONDS (the bench's time limit, 330 s; the tests get 150 s, so that the whole run stays under 10
# minutes, a lent machine's limit for one command).
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=.whl
FLA_CORE=0.6.0  # the API ops/fla_backend.py maps (fla-core >= 0.6)
TRANSFORMERS=5.24.0  # see above
# Triton on Hopper: fla's gated kernels give wrong results with 3.4-3.7.0 (fla-org/flash-linear-attention#640,
# fixed in 3.7.1) and several crashed with 3.2-3.6 (#734); torch 2.13 pins 3.7.1. pyproject's `cuda` extra says so.
HOPPER_TRITON=3.7.1

prepare() {
    local python=${PYTHON:-.venv/bin/python}
    mkdir -p "$WHEELS"
    rm -f "$WHEELS"/*.whl  # one version of each package: pip refuses to install two
    grep -qx "/$WHEELS/" .git/info/exclude 2>/dev/null || echo "/$WHEELS/" >> .git/info/exclude
    local peft
    peft=$(grep -E '^peft==' requirements/lock.txt)
    "$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d "$WHEELS" "transformers==$TRANSFORMERS" \
        "$peft" "fla-core==$FLA_CORE" \
        || { echo "gpu_check prepare: pip download failed" >&2; exit 1; }
    "$python" - "$WHEELS/default-model" <<'EOF' || exit 1
import sys
from liger_lm.models import default_config
default_config().save_pretrained(sys.argv[1])
EOF
    ls -l "$WHEELS" "$WHEELS/default-model"
    echo "gpu_check prepare: done; on the GPU machine carry $WHEELS and run: bash scripts/gpu_check.sh run"
}

run() {
    local out=${OUT:-gpu_check} device=${GPU_CHECK_DEVICE:-cuda} failed=()
    mkdir -p "$out"
    exec > >(tee "$out/log.txt") 2>&1
    export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
    if compgen -G "$WHEELS/*.whl" > /dev/null; then
        python3 -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            "$WHEELS"/*.whl || exit 1
        export PYTHONPATH="/tmp/site:$PYTHONPATH"
    fi
    python3 - "$out/versions.json" "$device" "$HOPPER_TRITON" <<'EOF' || failed+=("versions")
import json, sys
import torch
from liger_lm.hardware import environment, package_version
out, device, hopper_triton = sys.argv[1], torch.device(sys.argv[2]), sys.argv[3]
info = environment(device)
info["peft"] = package_version("peft")
print(json.dumps(info, indent=1))
json.dump(info, open(out, "w"), indent=1)
if device.type == "cuda" and "fla kernels" not in info["gla_backend"]:
    sys.exit("gpu_check: fla's GLA kernels do not import here (fla-core and Triton): the bench below measures "
             "the PyTorch ops instead")
if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] == 9:
    from packaging.version import Version
    if info["triton"] is None or Version(info["triton"]) < Version(hopper_triton):
        print(f"WARNING: Triton {info['triton']} on a Hopper GPU: fla's kernels want >= {hopper_triton} there "
              "(scripts/gpu_check.sh); the parity tests below say whether the GLA kernels hold")
EOF
    timeout 150 python3 -m pytest -q -p no:cacheprovider -m cuda -rs tests 2>&1 | tee "$out/pytest.txt"
    [ "${PIPESTATUS[0]}" -eq 0 ] || failed+=("pytest -m cuda")
    timeout "${GPU_CHECK_SECONDS:-330}" python3 -m liger_lm bench --model "$WHEELS/default-model" --random-init \
        --device "$device" --dtype "${GPU_CHECK_DTYPE:-bf16}" --lengths "${GPU_CHECK_LENGTHS:-1k,16k,32k}" \
        --batch "${GPU_CHECK_BATCH:-1,16}" --prefill-token-cap 524288 --decode-tokens 16 --repeats 3 \
        --max-seconds 10 --train-steps 0 --out "$out/bench" --overwrite || failed+=("liger bench")
    if ((${#failed[@]})); then
        printf 'gpu_check: failed: %s\n' "${failed[@]}"
        exit 1
    fi
    echo "gpu_check: done → $out"
}

case "${1:-}" in
    prepare) prepare ;;
    run) run ;;
    *) echo "usage: bash scripts/gpu_check.sh prepare|run" >&2; exit 2 ;;
esac
