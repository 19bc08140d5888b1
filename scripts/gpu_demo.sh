#!/usr/bin/env bash
# Train, evaluate and pack the embedded demo on one GPU machine in one unattended run (~5 min on an
# H100). Every training stage has a wall-clock budget (--max-minutes: stop, then save), so the run
# ends on time; checkpoints are atomic, so even the timeout safety net leaves the last one. The recipe is the same as
# scripts/train_demo.sh (which runs stage after stage and resumes); here two chains share the GPU:
#   chain A: scale 0, then scale 1        chain B: the DiT baseline (as long as A: matched compute)
#   chain C: the shapes classifier for msf-eval
# Outputs (under $OUT): train.log, eval.json, demo.tar.part-* (weights to unpack into the repo).
#   DRY=1 bash scripts/gpu_demo.sh   # tiny presets on the CPU: proves the script end to end
#   VAE_CHANNELS=16 bash scripts/gpu_demo.sh   # a 16-channel encoder: textures survive it (docs/RESULTS.md)
#   VAE_DIR=runtime/weights/demo/vae bash scripts/gpu_demo.sh   # a VAE trained before (the shipped one travels), then cache and denoisers
#   INIT_BODY=runtime/weights/demo ...   # each stage starts from that stage's transformer (--init-body; MSF and DiT alike)
#   INIT=runtime/weights/demo VAE_DIR=runtime/weights/demo/vae ...   # each stage continues the shipped stage whole
#     (--init, fresh optimizer: same VAE, so same latent space; INIT_BODY re-learns the layers that touch latents)
# Step options: lr 1e-3 and logit-normal times, the CPU recipe of run 4: on the CPU they doubled how
# fast the denoisers learn to use the shape of the label (docs/RUNS.md, "Choosing the recipe").
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT=${OUT:-$PWD/out}
W=${WORK:-/tmp/msf-demo}
PY=${PYTHON:-python3}
[ -n "${INIT:-}" ] && [ -n "${INIT_BODY:-}" ] && { echo "give INIT (same VAE) or INIT_BODY (new VAE), not both"; exit 1; }
mkdir -p "$OUT" "$W"
exec > >(tee -a "$OUT/train.log") 2>&1
stamp() { echo "[$(date +%H:%M:%S)] $*"; }
T="$PY -m msf_train.cli"
E="$PY -m msf_eval.cli"

if [ "${DRY:-0}" = 1 ]; then
  DEV=cpu; FAM=tiny; SHARE=none; SCALES=4,8; CLASSES=20; PER_CLASS=8; VAE=(--widths 8,8,8,8 --size 64 --steps 20 --batch 8)
  LOG_EVERY=5; BATCH=16; MIN_A=0.4; MIN_B=0.8; MIN_C=0.3; CLF=(--steps 5 --batch 8 --size 64); EVAL=(--classes 0-19:5 --per-class 2)
  SWEEP_STEPS=(4,2 8,2); SWEEP_CFG=(1.4,1.0 1.0,1.0); DIT_STEPS=4; MSF_STEPS=4,2
else
  DEV=cuda; FAM=demo; SHARE=shapes; SCALES=12,16; CLASSES=1000; PER_CLASS=${PER_CLASS:-100}
  VAE=(--steps ${VAE_STEPS:-20000} --batch 32 --mse 1 --no-mid-attention --max-minutes ${VAE_MIN:-1.5})
  LOG_EVERY=100; BATCH=${BATCH:-256}; MIN_A=${MIN_A:-1.4}; MIN_B=$(awk "BEGIN{print 2 * $MIN_A}"); MIN_C=${MIN_C:-2.0}
  CLF=(--steps 4000 --batch 256 --max-minutes $MIN_C); EVAL=(--classes 0-999 --per-class 2 --seeds 1)
  SWEEP_STEPS=(${SWEEP_STEPS:-25,50 100,10}); SWEEP_CFG=(${SWEEP_CFG:-1.0,1.0 2.0,1.0})
  DIT_STEPS=100; MSF_STEPS=100,50
fi
VAE+=(--latent-channels "${VAE_CHANNELS:-4}")

stamp "device: $($PY -c 'import torch;print(torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")')"
if [ "${REUSE:-0}" = 1 ] && [ -f "$W/vae/config.json" ] && [ -d "$W/cache" ]; then
  stamp "REUSE=1: keeping $W/vae and $W/cache"
else
if [ -n "${VAE_DIR:-}" ]; then
  stamp "vae: $VAE_DIR (given, not trained)"
  [ -f "$VAE_DIR/config.json" ] || { stamp "VAE_DIR=$VAE_DIR holds no config.json: give a VAE folder"; exit 1; }
  rm -rf "$W/vae" && mkdir -p "$W/vae" && cp "$VAE_DIR"/config.json "$VAE_DIR"/*.safetensors "$W/vae/"
else
stamp "vae"
$T vae --out "$W/vae" "${VAE[@]}" --classes "$CLASSES" --device $DEV || { stamp "vae failed"; exit 1; }
fi
stamp "cache"
$T cache --vae "$W/vae" --data shapes --out "$W/cache" --scales $SCALES --classes "$CLASSES" \
  --per-class "$PER_CLASS" --device $DEV --batch 256 || { stamp "cache failed"; exit 1; }
fi

stage() {  # name preset minutes: --max-minutes ends training and saves; timeout is the safety net
  timeout "$(awk "BEGIN{print int(60 * $3 + 120)}")" $T "$1" --preset "$2" --cache "$W/cache" --vae "$W/vae" --out "$W/$1" --steps 1000000 --batch $BATCH \
    --lr 1e-3 --warmup 200 --time-sampling logit_normal --ema 0.9995 --label-sharing $SHARE --save-every 500 --log-every $LOG_EVERY --device $DEV --resume --max-minutes "$3" \
    ${INIT_BODY:+--init "$INIT_BODY/$1" --init-body} ${INIT:+--init "$INIT/$1"} 2>&1 | grep --line-buffered -v "it/s]" | sed -u "s/^/[$1] /"
}
stamp "training: chain A (scale0 ${MIN_A} min, scale1 ${MIN_A} min), chain B (dit ${MIN_B} min), chain C (classifier)"
( stage scale0 $FAM/scale0 $MIN_A; stage scale1 $FAM/scale1 $MIN_A ) &
A=$!
( stage dit $FAM/dit $MIN_B ) &
B=$!
( $E classifier --out "$W/classifier" "${CLF[@]}" --device $DEV --workers 4 2>&1 | grep --line-buffered -v "it/s]" | sed -u "s/^/[clf] /" ) &
C=$!
wait $A $B $C
stamp "assemble"
$T assemble --out "$W/msf" --vae "$W/vae" "$W/scale0" "$W/scale1" && \
$T assemble --out "$W/dit-cascade" --vae "$W/vae" "$W/dit" || { stamp "assemble failed"; exit 1; }

stamp "pack weights (denoisers in fp16) -> $OUT/demo.tar.part-*"
$PY scripts/pack_demo.py "$W" "$W/pack" && (cd "$W/pack" && tar cf - .) | split -b 15m - "$OUT/demo.tar.part-"
ls -la "$OUT"

stamp "evaluate (figures go to $OUT/eval.json)"
$PY scripts/eval_sweep.py --msf "$W/pack/demo-msf" --dit "$W/pack/demo-dit" --classifier "$W/pack/shapes-classifier" \
  --device $DEV --out "$OUT/eval.json" --msf-steps $MSF_STEPS --dit-steps $DIT_STEPS \
  --sweep-steps "${SWEEP_STEPS[@]}" --sweep-cfg "${SWEEP_CFG[@]}" "${EVAL[@]}"
stamp "done"
