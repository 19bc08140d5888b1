#!/usr/bin/env bash
# gpu_check alone (scripts/gpu_all.sh runs it with everything else). Writes $OUT/gpu_check.json.
#   bash benchmarks/gpu_check.sh            # CUDA: paper presets, sections fit --budget-s (default 360 s)
#   bash benchmarks/gpu_check.sh --dry-run  # anywhere: tiny presets, every section, plus the H100 prediction
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${OUT:-$PWD/out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
"$PY" benchmarks/gpu_check.py --out "$OUT/gpu_check.json" "$@"
