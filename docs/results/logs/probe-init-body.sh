#!/usr/bin/env bash
# Does --init-body (the shipped 4-channel scale 0's transformer) speed up scale 0 on a new 16-channel latent space?
# Same cache, seed, options; one core each, side by side; compare the logged losses at equal steps.
cd /work/main
T=.venv/bin/msf-train
one() { OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nice -n 10 "$@"; }
[ -f /work/probe/cache/index.json ] || one $T cache --vae /work/demo-train/vae16/p1 --data shapes --out /work/probe/cache \
  --scales 12,16 --classes 1000 --per-class 2 --device cpu --workers 0 > /work/probe/cache.log 2>&1
common=(--preset demo/scale0 --cache /work/probe/cache --steps 100000 --batch 64 --lr 1e-3 --warmup 100 --time-sampling logit_normal
        --ema 0.999 --label-sharing shapes --save-every 1000 --log-every 25 --device cpu --max-minutes ${MIN:-10})
one $T scale0 --out /work/probe/scratch "${common[@]}" > /work/probe/scratch.log 2>&1 &
one $T scale0 --out /work/probe/body "${common[@]}" --init runtime/weights/demo/scale0 --init-body > /work/probe/body.log 2>&1 &
wait
echo done
