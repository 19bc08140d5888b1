#!/usr/bin/env bash
# One prepared GPU run (issue: benchmarks). Writes $OUT/gpu_check.json and prints a summary.
#   bash benchmarks/gpu_check.sh            # on a CUDA machine, paper presets, < 8 min on an H100
#   bash benchmarks/gpu_check.sh --dry-run  # anywhere: tiny presets, proves every code path
# Needs torch (+CUDA), diffusers and this repository on PYTHONPATH; nothing is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${OUT:-$PWD/out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
"$PY" benchmarks/gpu_check.py --out "$OUT/gpu_check.json" "$@"
