#!/usr/bin/env bash
# Everything a lent GPU should run, in one command, inside the device tool's 10-minute limit (issue #11):
#   1. benchmarks/gpu_check.py   MSF vs DiT-XL/2 at the paper presets (fast path first; sections that
#                                 the cost model says would not fit are skipped, and say so)
#   2. pytest -m gpu              CUDA graph replay, compile inside the graph, flash/cuDNN attention,
#                                 AOTInductor-CUDA export parity (test_aoti_cuda_export_matches_torch), TensorRT
#   3. benchmarks/gpu_selftest.py AOTInductor (CUDA), TensorRT and ONNX exports of the tiny cascade:
#                                 parity, pixel difference against torch, latency
#   4. benchmarks/gpu_native.sh OUT/native, if that file exists (the native C++ runner)
# Usage (repository root; diffusers travels as wheels in .whl, see docs/RUNTIME.md "GPU machines"):
#   bash scripts/gpu_all.sh "$OUT"          # device tool: timeout_s=600, carry [".whl"]
#   TOTAL_S=570 CHECK_BUDGET_S=300 bash scripts/gpu_all.sh /tmp/out
#   DRY=1 bash scripts/gpu_all.sh /tmp/out  # on a CPU: every step in its dry form (CI-sized)
# Writes at most 8 files: env.txt, gpu_check.json, gpu_check.log, pytest.log, gpu_selftest.json,
# selftest.log, and native/ (whatever gpu_native.sh writes; it should keep to 2 files).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-$PWD/out}}
mkdir -p "$OUT"
START=$(date +%s)
TOTAL_S=${TOTAL_S:-570}
PY=${PYTHON:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then  # carried wheels (diffusers and what the GPU image lacks)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/msf-site .whl/*.whl \
    && export PYTHONPATH=/tmp/msf-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
left() { echo $(( TOTAL_S - ($(date +%s) - START) )); }
cap() { local l; l=$(left); [ "$1" -lt "$l" ] && echo "$1" || echo $(( l > 5 ? l - 5 : 1 )); }
stamp() { echo "[$(( $(date +%s) - START )) s] $*"; }

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  "$PY" -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available(), 'python', sys.version.split()[0])"
  "$PY" -c "import diffusers; print('diffusers', diffusers.__version__)" 2>&1 | tail -1
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

if [ "${DRY:-0}" = 1 ]; then
  CHECK=(--dry-run --no-compile --device cpu); PYTEST=(-m "gpu" -x -q); SELF=(--device cpu --engines onnx,trt --steps 2,2 --batches 2 --repeats 1)
else
  CHECK=(--budget-s "${CHECK_BUDGET_S:-300}"); PYTEST=(-m "gpu" -q -rs); SELF=(--device cuda --engines aoti,trt --steps 8,4 --batches 1,8 --repeats 3)
fi

stamp "1. gpu_check"
timeout "$(cap $(( ${CHECK_BUDGET_S:-300} + 60 )))" "$PY" benchmarks/gpu_check.py --out "$OUT/gpu_check.json" "${CHECK[@]}" \
  > "$OUT/gpu_check.log" 2>&1; echo "gpu_check exit $?" | tee -a "$OUT/gpu_check.log"
tail -25 "$OUT/gpu_check.log"

stamp "2. pytest -m gpu"
timeout "$(cap 200)" "$PY" -m pytest tests "${PYTEST[@]}" -p no:cacheprovider > "$OUT/pytest.log" 2>&1
echo "pytest exit $?" | tee -a "$OUT/pytest.log"
tail -15 "$OUT/pytest.log"

stamp "3. gpu_selftest (AOTInductor CUDA / TensorRT parity and latency)"
W=$(mktemp -d /tmp/msf-selftest.XXXX)
timeout "$(cap 180)" "$PY" -m benchmarks.gpu_selftest --out "$W" --cascades tiny "${SELF[@]}" > "$OUT/selftest.log" 2>&1
echo "selftest exit $?" | tee -a "$OUT/selftest.log"
[ -f "$W/gpu_selftest.json" ] && cp "$W/gpu_selftest.json" "$OUT/"
tail -8 "$OUT/selftest.log"

if [ -f benchmarks/gpu_native.sh ]; then
  stamp "4. native runner"
  mkdir -p "$OUT/native"
  timeout "$(cap 120)" bash benchmarks/gpu_native.sh "$OUT/native"; echo "gpu_native exit $?"
else
  stamp "4. native runner: benchmarks/gpu_native.sh not present, skipped"
fi
stamp "done; files: $(cd "$OUT" && find . -type f | wc -l)"
