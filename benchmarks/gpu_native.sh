#!/usr/bin/env bash
# The prepared GPU check of msf-run-native (issue 10; benchmarks/gpu_native.py says what it does).
#   bash benchmarks/gpu_native.sh OUTDIR             # CUDA machine: CUDA build, tiny + paper-sized cascades,
#                                                    #   Python vs native eager vs native CUDA graph, batch 1 and 8
#   bash benchmarks/gpu_native.sh OUTDIR --dry-run   # any CPU: CPU build, tiny cascade, CUDA code compile-checked
# Extra flags go to gpu_native.py (--skip-paper, --budget-s S, --work DIR, --tiny-art DIR).
# Writes OUTDIR/gpu_native.json and OUTDIR/gpu_native.log; exit 0 when every run agreed with msf-run.
# Needs: this repository's Python dependencies importable by $PYTHON (default python3) with its torch
# (a CUDA build on the GPU machine), cmake and a C++ compiler, and the headers of libpng, OpenSSL and
# nlohmann-json. Where those are not installed and cannot be (no network), put their .deb files
# (libpng-dev libpng16-16 zlib1g-dev libssl-dev nlohmann-json3-dev) in $MSF_NATIVE_DEBS: they are
# unpacked under OUTDIR/.sysroot and found from there. Nothing is downloaded.
set -euo pipefail
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
  echo "usage: bash benchmarks/gpu_native.sh OUTDIR [--dry-run] [gpu_native.py flags]" >&2
  exit 2
fi
OUTDIR="$(mkdir -p "$1" && cd "$1" && pwd)"
shift
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
if [ -n "${MSF_NATIVE_DEBS:-}" ] && ls "$MSF_NATIVE_DEBS"/*.deb >/dev/null 2>&1; then
  SYSROOT="$OUTDIR/.sysroot"
  mkdir -p "$SYSROOT"
  for f in "$MSF_NATIVE_DEBS"/*.deb; do dpkg -x "$f" "$SYSROOT"; done
  export CMAKE_PREFIX_PATH="$SYSROOT/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
  export CPATH="$SYSROOT/usr/include${CPATH:+:$CPATH}"
  export LD_LIBRARY_PATH="$SYSROOT/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
set -o pipefail
"$PY" benchmarks/gpu_native.py --out "$OUTDIR" "$@" 2>&1 | tee "$OUTDIR/gpu_native.log"
