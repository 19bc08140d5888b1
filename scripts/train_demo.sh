#!/usr/bin/env bash
# The demo recipe end to end: VAE -> latent cache -> scale 0 -> scale 1 -> DiT baseline -> two cascade
# folders (MSF: scale0 + scale1 + vae; DiT: dit + vae). Every step is a plain msf-train command, so the
# log of this script is the recipe. Re-running resumes: the cache is a no-op when its inputs match,
# training continues from each stage's last checkpoint (--resume), and a finished VAE is kept.
#
# Everything is an environment variable (defaults = the full demo; see docs/DATA.md):
#   OUT=runs/demo          where everything goes
#   DEVICE=auto            auto | cpu | cuda
#   PRESETS=demo           preset family: demo (96/128 px, 1000 classes) or tiny (32/64 px, 20 classes)
#   SCALES=12,16           cache latent sides base,full (tiny: 4,8)
#   CLASSES=1000           shapes classes for the cache and the VAE (a count or ids/ranges)
#   PER_CLASS=100          images per class in the cache
#   VAE_STEPS=5000 VAE_BATCH=32 VAE_SIZE=128 VAE_CROP= VAE_WIDTHS=32,64,64,64 VAE_LR=4e-4
#   STEPS=20000            training steps of every stage; STEPS_SCALE0, STEPS_SCALE1, STEPS_DIT override
#   BATCH=64 LR=1e-4 WARMUP=0 EMA=0.9999 SAVE_EVERY=1000 LOG_EVERY=50 TIME_SAMPLING=uniform
#   RESIDUAL_SCALE=        '' (the preset's, 1.0), 'auto' or a number, for scale 1
#   NPROC=1                processes per stage (torchrun on one machine; gloo on CPU, NCCL on GPU)
#   WORKERS=               DataLoader workers (default: cores - 1, at most 12)
#   COMPILE=0              1: torch.compile the denoisers
#   MSF_TRAIN=msf-train    the command (e.g. "python -m msf_train.cli")
#   PYTHON=python3         the interpreter torchrun runs under (NPROC > 1)
#
# Small on a CPU:  STEPS=200 VAE_STEPS=200 PER_CLASS=4 DEVICE=cpu scripts/train_demo.sh
# Full on a GPU:   DEVICE=cuda BATCH=256 STEPS=20000 scripts/train_demo.sh
set -euo pipefail

OUT=${OUT:-runs/demo}
DEVICE=${DEVICE:-auto}
PRESETS=${PRESETS:-demo}
SCALES=${SCALES:-12,16}
CLASSES=${CLASSES:-1000}
PER_CLASS=${PER_CLASS:-100}
VAE_STEPS=${VAE_STEPS:-5000}
VAE_BATCH=${VAE_BATCH:-32}
VAE_SIZE=${VAE_SIZE:-128}
VAE_CROP=${VAE_CROP:-}
VAE_WIDTHS=${VAE_WIDTHS:-32,64,64,64}
VAE_LR=${VAE_LR:-4e-4}
STEPS=${STEPS:-20000}
STEPS_SCALE0=${STEPS_SCALE0:-$STEPS}
STEPS_SCALE1=${STEPS_SCALE1:-$STEPS}
STEPS_DIT=${STEPS_DIT:-$STEPS}
BATCH=${BATCH:-64}
LR=${LR:-1e-4}
WARMUP=${WARMUP:-0}
EMA=${EMA:-0.9999}
SAVE_EVERY=${SAVE_EVERY:-1000}
LOG_EVERY=${LOG_EVERY:-50}
TIME_SAMPLING=${TIME_SAMPLING:-uniform}
RESIDUAL_SCALE=${RESIDUAL_SCALE:-}
NPROC=${NPROC:-1}
WORKERS=${WORKERS:-}
COMPILE=${COMPILE:-0}
MSF_TRAIN=${MSF_TRAIN:-msf-train}
PYTHON=${PYTHON:-python3}

workers=()
[ -n "$WORKERS" ] && workers=(--workers "$WORKERS")
stamp() { echo "[$(date +%H:%M:%S)] $*"; }
mkdir -p "$OUT"
t0=$(date +%s)

# 1. VAE (kept when already trained: delete $OUT/vae to retrain)
if [ -f "$OUT/vae/config.json" ] && [ -f "$OUT/vae/training.json" ]; then
  stamp "vae: $OUT/vae exists, kept"
else
  crop=()
  [ -n "$VAE_CROP" ] && crop=(--crop "$VAE_CROP")
  stamp "vae: $VAE_STEPS steps"
  $MSF_TRAIN vae --out "$OUT/vae" --steps "$VAE_STEPS" --batch "$VAE_BATCH" --size "$VAE_SIZE" "${crop[@]}" \
    --widths "$VAE_WIDTHS" --lr "$VAE_LR" --classes "$CLASSES" --device "$DEVICE" "${workers[@]}"
fi

# 2. Latent cache
stamp "cache: $CLASSES classes x $PER_CLASS images at latents $SCALES"
$MSF_TRAIN cache --vae "$OUT/vae" --data shapes --out "$OUT/cache" --scales "$SCALES" --classes "$CLASSES" \
  --per-class "$PER_CLASS" --device "$DEVICE" "${workers[@]}"

# 3. The three denoisers
train_stage() {  # stage steps [extra args]
  local stage=$1 steps=$2
  shift 2
  local launch=($MSF_TRAIN)
  if [ "$NPROC" -gt 1 ]; then
    launch=("$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" -m msf_train.cli)
  fi
  local extra=()
  [ "$COMPILE" = 1 ] && extra+=(--compile)
  stamp "$stage: $steps steps, batch $BATCH"
  "${launch[@]}" "$stage" --preset "$PRESETS/$stage" --cache "$OUT/cache" --vae "$OUT/vae" --out "$OUT/$stage" \
    --steps "$steps" --batch "$BATCH" --lr "$LR" --warmup "$WARMUP" --ema "$EMA" --save-every "$SAVE_EVERY" \
    --log-every "$LOG_EVERY" --time-sampling "$TIME_SAMPLING" --device "$DEVICE" --resume "${extra[@]}" "$@"
}
train_stage scale0 "$STEPS_SCALE0"
rs=()
[ -n "$RESIDUAL_SCALE" ] && rs=(--residual-scale "$RESIDUAL_SCALE")
train_stage scale1 "$STEPS_SCALE1" "${rs[@]}"
train_stage dit "$STEPS_DIT"

# 4. Cascade folders: weights and configs only (no optimizer state), ready for msf-run --model
$MSF_TRAIN assemble --out "$OUT/msf" --vae "$OUT/vae" "$OUT/scale0" "$OUT/scale1"
$MSF_TRAIN assemble --out "$OUT/dit-cascade" --vae "$OUT/vae" "$OUT/dit"
stamp "done in $(( $(date +%s) - t0 )) s: $OUT/msf (MSF) and $OUT/dit-cascade (DiT)"
