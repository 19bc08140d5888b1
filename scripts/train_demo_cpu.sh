#!/usr/bin/env bash
# The shipped demo weights, reproduced on a 2-core CPU in several runs of at most ~150 minutes of wall time
# each (below), in the background under `nice` so that other work goes on (see MODEL_CARD.md). Every step is a plain
# msf-train / msf-eval command with a wall-clock budget (--max-minutes stops training and saves).
#
#   1. VAE fine-tune (full 128 px images, L1 + squared error) || the shapes classifier   (one core each)
#   2. latent cache: 1000 classes x PER_CLASS images, both scales (one thread: under a loaded CPU two spin-wait)
#   3. lane A: scale 0, then scale 1 (M minutes each) || lane B: the DiT (2 M minutes)     (one core each)
#      Both lanes run single-threaded side by side for the same wall time: matched training compute
#      between MSF (scale 0 + scale 1) and the DiT baseline (MODEL_CARD.md reports the MACs of each).
#      Label sharing (msf_train/labels.py) lets the 1000 class rows learn from their attributes.
#
# Killed? Run it again: finished steps are skipped, the denoisers continue from their last
# checkpoint (--resume). Afterwards: python scripts/pack_demo.py $WORK $WORK/pack, then copy
# $WORK/pack/{demo,demo-msf,demo-dit} to runtime/weights/ and $WORK/pack/shapes-classifier to msf_eval/weights/.
# More training for finished stages: CONTINUE=1 resumes each denoiser from its last checkpoint for M
# (scale 0, scale 1) and 2 M (DiT) more minutes, same options (the VAE, classifier and cache are kept).
# COMPILE=1 trains through torch.compile (about 1.2x the steps per second on one core after a minute
# of compiling; every lane alike). REINIT=1 continues finished stages with other step options (LR,
# TIME_SAMPLING), which --resume refuses: each stage folder moves to STAGE.prev once and a new run
# starts from its weights (--init, fresh optimizer); killed, it resumes its own checkpoint as usual.
# PREV names that folder (default prev): give each re-init its own name, since an existing STAGE.PREV is
# taken as "this re-init was started before" (the killed case) and the stage then resumes, not re-inits.
# A cool-down (run 5): REINIT=1 PREV=run5a LR_SCHEDULE=cosine STEPS0=.. STEPS1=.. DIT_STEPS=.. decays
# the learning rate to 0 at those steps (fit them to the minutes: about 1.2 / 1.05 / 0.43 steps per
# second for scale 0 / scale 1 / DiT on one core with COMPILE=1; the minutes stay as a cap).
# VAE_DIR=runtime/weights/demo/vae CLF_DIR=msf_eval/weights/shapes-classifier take a VAE and a classifier
# trained before (copied into WORK) instead of training them: the denoisers then learn its latent
# channel count (presets name the transformer, the cache fixes C) and start from scratch, or with
# INIT_BODY=runtime/weights/demo from the shipped stages' transformers (--init-body: blocks, time and
# class embeddings; the layers that read and write latents start afresh).
# The shipped weights are these runs, one after the other:
#   WORK=/tmp/msf-demo-cpu M=20 nice -n 10 bash scripts/train_demo_cpu.sh
#   WORK=/tmp/msf-demo-cpu M=30 CONTINUE=1 COMPILE=1 nice -n 10 bash scripts/train_demo_cpu.sh
#   WORK=/tmp/msf-demo-cpu M=10 CONTINUE=1 COMPILE=1 nice -n 10 bash scripts/train_demo_cpu.sh
# and then, with LR=1e-3 TIME_SAMPLING=logit_normal COMPILE=1 for each (MODEL_CARD.md has the detail):
#   M0=43 M=40 DIT_M=83 REINIT=1                                  # run 4
#   M0=40 M=22 DIT_M=62 CONTINUE=1                                # run 5, phase A
#   M0=22 M=20 DIT_M=40 REINIT=1 PREV=run5a LR_SCHEDULE=cosine STEPS0=1250 STEPS1=950 DIT_STEPS=880   # phase B
#   M0=48 M=42 DIT_M=92 REINIT=1 PREV=run5b LR_SCHEDULE=cosine STEPS0=3200 STEPS1=2400 DIT_STEPS=2200 # run 6
#   M0=46 M=39 DIT_M=88 REINIT=1 PREV=run6 LR_SCHEDULE=cosine STEPS0=3000 STEPS1=2250 DIT_STEPS=2050  # run 7
#   M0=44 M=37 DIT_M=84 REINIT=1 PREV=run7 LR_SCHEDULE=cosine STEPS0=2850 STEPS1=2140 DIT_STEPS=1950  # run 8
set -euo pipefail
cd "$(dirname "$0")/.."
W=${WORK:-/tmp/msf-demo-cpu}
M=${M:-20}                   # minutes per scale; the DiT gets 2 * M
M0=${M0:-$M}                 # scale 0's minutes when they differ from scale 1's
DIT_M=${DIT_M:-$((M0 + M))}  # the DiT's minutes: as long as lane A (matched compute), unless told
VAE_MIN=${VAE_MIN:-25}
CLF_MIN=${CLF_MIN:-25}
PER_CLASS=${PER_CLASS:-12}
LR=${LR:-3e-4}
TIME_SAMPLING=${TIME_SAMPLING:-uniform}
LR_SCHEDULE=${LR_SCHEDULE:-constant}
PREV=${PREV:-prev}
declare -A STEPS=([scale0]=${STEPS0:-1000000} [scale1]=${STEPS1:-1000000} [dit]=${DIT_STEPS:-1000000})
INIT_VAE=${INIT_VAE:-runtime/weights/demo/vae}   # fine-tune the previous demo VAE ("" = train from scratch)
T=${MSF_TRAIN:-msf-train}
E=${MSF_EVAL:-msf-eval}
mkdir -p "$W"
stamp() { echo "[$(date +%H:%M:%S)] $*"; }
one() { OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 "$@"; }   # one core per job: two jobs side by side

given() {  # folder file: copy a trained folder into WORK once, instead of training it
  [ -n "$1" ] && [ ! -f "$3/$2" ] || return 0
  [ -f "$1/$2" ] || { echo "$1 holds no $2: give a folder trained before"; exit 1; }
  stamp "$(basename "$3"): $1 (given, not trained)"; rm -rf "$3" && cp -r "$1" "$3"
}
given "${VAE_DIR:-}" config.json "$W/vae"
given "${CLF_DIR:-}" classifier.json "$W/classifier"
[ -f "$W/vae/config.json" ] && [ -f "$W/classifier/classifier.json" ] ||
  stamp "vae ($VAE_MIN min, whole 128 px images) || classifier ($CLF_MIN min)"
if [ ! -f "$W/vae/config.json" ]; then
  init=(); [ -n "$INIT_VAE" ] && init=(--init "$INIT_VAE")
  one $T vae --out "$W/vae" "${init[@]}" --steps 1000000 --batch 8 --size 128 --lr 3e-4 --mse 1 --workers 0 \
    --max-minutes "$VAE_MIN" --device cpu > "$W/vae.log" 2>&1 &
fi
if [ ! -f "$W/classifier/classifier.json" ]; then
  one $E classifier --out "$W/classifier" --steps 1000000 --batch 64 --size 128 --max-minutes "$CLF_MIN" \
    --device cpu > "$W/classifier.log" 2>&1 &
fi
wait
tail -c 300 "$W/vae.log" 2>/dev/null || true; tail -c 300 "$W/classifier.log" 2>/dev/null || true; echo
[ -f "$W/vae/config.json" ] && [ -f "$W/classifier/classifier.json" ] || { echo "vae or classifier failed: see $W/*.log"; exit 1; }

stamp "cache (1000 classes x $PER_CLASS images)"
[ -f "$W/cache/index.json" ] || one $T cache --vae "$W/vae" --data shapes --out "$W/cache" --scales 12,16 --classes 1000 \
  --per-class "$PER_CLASS" --device cpu --workers 1

COMPILE_FLAG=(); [ "${COMPILE:-0}" = 1 ] && COMPILE_FLAG=(--compile)
train() {  # stage minutes; a stage that finished (train.json written) is not trained again, unless CONTINUE=1
  [ -f "$W/$1/train.json" ] && [ "${CONTINUE:-0}" != 1 ] && [ "${REINIT:-0}" != 1 ] && return 0
  local init=()
  [ -n "${INIT_BODY:-}" ] && init=(--init "$INIT_BODY/$1" --init-body)  # ignored once the stage has a checkpoint
  if [ "${REINIT:-0}" = 1 ]; then
    [ -d "$W/$1.$PREV" ] || mv "$W/$1" "$W/$1.$PREV"
    init=(--init "$W/$1.$PREV")
  fi
  one $T "$1" --preset "demo/$1" --cache "$W/cache" --vae "$W/vae" --out "$W/$1" --steps "${STEPS[$1]}" --batch 64 \
    --lr "$LR" --lr-schedule "$LR_SCHEDULE" --warmup 100 --time-sampling "$TIME_SAMPLING" --ema 0.999 --label-sharing shapes --save-every 200 \
    --log-every 25 --device cpu --resume --max-minutes "$2" "${init[@]}" "${COMPILE_FLAG[@]}" >> "$W/$1.log" 2>&1
}
stamp "lane A: scale0 ($M0 min) then scale1 ($M min) || lane B: dit ($DIT_M min)"
( train scale0 "$M0" && train scale1 "$M" ) &
lane_a=$!
train dit "$DIT_M" &
lane_b=$!
wait $lane_a && wait $lane_b || { echo "a training lane failed: see $W/*.log"; exit 1; }
$T assemble --force --out "$W/msf" --vae "$W/vae" "$W/scale0" "$W/scale1"
$T assemble --force --out "$W/dit-cascade" --vae "$W/vae" "$W/dit"
stamp "done"
