#!/usr/bin/env bash
# Every GPU measurement of issues 13 and 18 in one command, for a lent GPU machine: at most
# 0.3 + 2 + 1 + 3 + 3 minutes = 560 s (each step has its own limit), under the device tool's
# 600 s per command, inside a 15-minute lease.
#
# From the repository root, with the femnist sample copied into a git-ignored folder that
# travels with the working tree (carry it), e.g.
#   mkdir -p .data && cp -r ../shared/data/femnist_sample .data/   # here, once
#   bash bench/gpu_session.sh                                      # there
# Results (logs and JSON) go to $OUT (the device tool's folder) or runs/gpu-session.
# Test it on a CPU first: DEVICE=cpu QUICK=1 bash bench/gpu_session.sh
set -uo pipefail
OUT=${OUT:-runs/gpu-session}
DATA=${DATA:-.data/femnist_sample}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$OUT"
[ -d "$DATA" ] || DATA=../shared/data/femnist_sample
quick=()
[ "${QUICK:-0}" = 1 ] && quick=(--quick)

step() {  # step NAME SECONDS CMD...: run with a time limit, log to $OUT/NAME.log
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s): $*"
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  echo "== $name: exit ${PIPESTATUS[0]}"
}

step machine 20 bash -c "nvidia-smi || true; nproc; $PY -c 'import torch; print(torch.__version__, torch.version.cuda)'"
# 1. Correctness on the device (CUDA tests skip on a CPU), if pytest is there.
if $PY -c 'import pytest' 2>/dev/null; then
  step tests 120 $PY -m pytest -q -x -p no:cacheprovider tests/test_device_path.py \
    tests/test_device.py tests/test_engine.py tests/test_engine_wiring.py \
    tests/test_engine_functional.py tests/test_compute.py
fi
# 2. The engine's client-examples/s at K = 8, 32, 64 beside the per-client path, fp32 and
#    bf16 (the CPU's table in bench/README.md, "K sweep", measured the same way).
ksweep=(--k 8,32,64 --examples 40 --repeat 2)
[ "${QUICK:-0}" = 1 ] && ksweep=(--k 2 --examples 20 --repeat 1)
step ksweep 60 $PY bench/bench_engine_cpu.py --device "$DEVICE" --precision fp32,bf16 \
  --per-client-clients 8 "${ksweep[@]}"
# 3. The goals: Table-1 FedAvg load (20 clients x 5 epochs), 900 personalization
#    clients, on the engine (the per-client paths' rates come from step 4).
step goal 180 $PY bench/bench_gpu.py --device "$DEVICE" --goal --methods engine \
  --k 20,64,256 --repeat 1 --data-dir "$DATA" --json "$OUT/goal.json" "${quick[@]}"
# 4. Every method side by side on 64 clients, the CPU the same day (CPU methods on 32).
step compare 180 $PY bench/bench_gpu.py --device "$DEVICE" --workers "$(nproc)" \
  --gpu-workers 1,4 --k 8,64 --repeat 1 --data-dir "$DATA" --json "$OUT/compare.json" "${quick[@]}"
