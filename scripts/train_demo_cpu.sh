#!/usr/bin/env bash
# The shipped demo weights, reproduced on a 2-core CPU in about 50 minutes (see MODEL_CARD.md).
# Every step is a plain msf-train / msf-eval command with a wall-clock budget (--max-minutes stops
# training at the next log interval and saves), stage after stage, so the cores are never shared.
# The DiT baseline gets the wall time of scale 0 + scale 1 together: matched training compute on
# the same machine. Afterwards: python scripts/pack_demo.py $WORK $WORK/pack, then copy
# $WORK/pack/{demo,demo-msf,demo-dit} to runtime/weights/ and $WORK/pack/shapes-classifier to msf_eval/weights/.
#   WORK=/tmp/msf-demo-cpu MINUTES=9 bash scripts/train_demo_cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
W=${WORK:-/tmp/msf-demo-cpu}
M=${MINUTES:-7}              # per scale; the DiT gets 2 * M
VAE_MIN=${VAE_MIN:-12}
CLF_MIN=${CLF_MIN:-4}
PER_CLASS=${PER_CLASS:-8}
T=${MSF_TRAIN:-msf-train}
E=${MSF_EVAL:-msf-eval}
mkdir -p "$W"
stamp() { echo "[$(date +%H:%M:%S)] $*"; }
stamp "vae ($VAE_MIN min, 64 px crops of 128 px images: the VAE is convolutional, crops cost 4x less)"
[ -f "$W/vae/config.json" ] || $T vae --out "$W/vae" --steps 100000 --batch 16 --size 128 --crop 64 --workers 1 --widths 16,32,32,32 \
  --scale-images 256 --max-minutes "$VAE_MIN" --device cpu
stamp "cache (1000 classes x $PER_CLASS images)"
[ -f "$W/cache/index.json" ] || $T cache --vae "$W/vae" --data shapes --out "$W/cache" --scales 12,16 --classes 1000 \
  --per-class "$PER_CLASS" --device cpu --workers 1
for s in scale0 scale1 dit; do
  m=$M; [ $s = dit ] && m=$(awk "BEGIN{print 2 * $M}")
  stamp "$s ($m min)"
  $T $s --preset demo/$s --cache "$W/cache" --vae "$W/vae" --out "$W/$s" --steps 1000000 --batch 64 --lr 3e-4 \
    --warmup 100 --ema 0.999 --save-every 250 --log-every 25 --device cpu --resume --max-minutes "$m"
done
$T assemble --out "$W/msf" --vae "$W/vae" "$W/scale0" "$W/scale1"
$T assemble --out "$W/dit-cascade" --vae "$W/vae" "$W/dit"
stamp "classifier ($CLF_MIN min)"
[ -f "$W/classifier/classifier.json" ] || $E classifier --out "$W/classifier" --steps 2000 --batch 64 --size 128 \
  --max-minutes "$CLF_MIN" --device cpu
stamp "done"
