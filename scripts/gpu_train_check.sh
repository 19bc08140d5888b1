#!/usr/bin/env bash
# One prepared GPU check of the training pipeline, sized for a few minutes of a lent GPU:
#   1. steps/s of one optimizer step (the training loop's Stepper, bf16 autocast) for the demo presets
#      at batch 64 and 256;
#   2. scripts/train_demo.sh on CUDA at a reduced size (VAE, cache, scale0, scale1, dit, assemble),
#      each phase timed, the VAE's reconstructions and PSNR, every stage's loss curve;
#   3. samples from the two cascades through msf-run (a sanity look, not a quality claim).
# Writes a few files to $OUT (at most 8, flat). Needs diffusers, which the lent GPU machines lack:
# pack it here once and carry devdeps.tgz (an ignored file) with the device call:
#   mkdir .devdeps && cp -r .venv/lib/python3*/site-packages/{diffusers,importlib_metadata,zipp} .devdeps \
#     && find .devdeps -name __pycache__ -prune -exec rm -rf {} + && tar czf devdeps.tgz .devdeps && rm -rf .devdeps
#   echo /devdeps.tgz >> .git/info/exclude
# Run:  OUT=$OUT VAE_STEPS=1200 STEPS=1200 RECIPE_TIMEOUT=300 bash scripts/gpu_train_check.sh
# Seen on an H200 (2026-11-27, wall 309 s): demo steps/s scale0 45 / scale1 55 / dit 27 at batch 64, the
# same at 256 (launch-bound); the recipe at VAE 1200 + 3 x 1200 steps, 16k cached images: 229 s.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-train-check}
RUN=${RUN:-/tmp/gpu-train-run}
PY=${PY:-python3}
mkdir -p "$OUT" "$RUN"
[ -f devdeps.tgz ] && [ ! -d .devdeps ] && tar xzf devdeps.tgz
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}:$PWD/.devdeps"
export HF_HUB_OFFLINE=1

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/env.txt"
$PY -c "import torch, diffusers, os; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'cpus', os.cpu_count())" | tee -a "$OUT/env.txt"

echo "== 1. optimizer-step throughput (Stepper, bf16 autocast)"
timeout 150 $PY - <<'EOF' 2>&1 | tee "$OUT/steps.txt"
import itertools, time, torch
from msf_train.config import get_preset
from msf_train.train import Stepper, TrainOptions, targets
dev = torch.device("cuda")
torch.backends.cuda.matmul.allow_tf32 = True
for name in ("demo/scale0", "demo/scale1", "demo/dit"):
    cfg = get_preset(name)
    stage = "dit" if len(cfg.scale_sizes) == 1 else f"scale{cfg.scale_index}"
    for B in (64, 256):
        st = Stepper(cfg, TrainOptions(stage=stage, cache="", out=""), dev)
        full = torch.randn(B, 4, cfg.scale_sizes[-1], cfg.scale_sizes[-1], device=dev)
        base = torch.randn(B, 4, cfg.scale_sizes[0], cfg.scale_sizes[0], device=dev)
        x, prior = targets(cfg, full, base)
        y = torch.randint(0, cfg.num_classes, (B,), device=dev)
        n = itertools.count()
        for _ in range(10):
            st.step(next(n), x, prior, y)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(60):
            loss, _ = st.step(next(n), x, prior, y)
        torch.cuda.synchronize()
        dt = (time.perf_counter() - t) / 60
        print(f"{name:<12} batch {B:>3}: {1 / dt:7.1f} steps/s  {B / dt:8.0f} img/s  loss {loss.item():.3f}", flush=True)
EOF

echo "== 2. the demo recipe on CUDA, reduced"
t0=$(date +%s)
OUT="$RUN" DEVICE=cuda MSF_TRAIN="$PY -m msf_train.cli" PYTHON=$PY \
  VAE_STEPS=${VAE_STEPS:-1500} VAE_BATCH=${VAE_BATCH:-64} PER_CLASS=${PER_CLASS:-16} \
  STEPS=${STEPS:-1500} BATCH=${BATCH:-256} LR=${LR:-3e-4} WARMUP=${WARMUP:-100} SAVE_EVERY=${SAVE_EVERY:-500} \
  LOG_EVERY=${LOG_EVERY:-100} WORKERS=${WORKERS:-12} \
  timeout ${RECIPE_TIMEOUT:-330} bash scripts/train_demo.sh 2>&1 | tr '\r' '\n' | grep -v -E '^(vae|cache|scale0|scale1|dit): +[0-9]+%' \
  | tee "$OUT/recipe.txt"
echo "recipe wall: $(( $(date +%s) - t0 )) s" | tee -a "$OUT/recipe.txt"

$PY - "$RUN" "$OUT" <<'EOF'
import json, shutil, sys
from pathlib import Path
run, out = Path(sys.argv[1]), Path(sys.argv[2])
summary = {}
for f in ("vae/training.json", "scale0/train.json", "scale1/train.json", "dit/train.json"):
    if (run / f).is_file():
        summary[f] = json.loads((run / f).read_text())
if (run / "cache/index.json").is_file():
    idx = json.loads((run / "cache/index.json").read_text())
    summary["cache"] = {k: v for k, v in idx.items() if k not in ("labels", "data")}
for s in ("vae", "scale0", "scale1", "dit"):
    if (run / s / "log.jsonl").is_file():
        summary[f"{s}/log"] = [json.loads(l) for l in (run / s / "log.jsonl").read_text().splitlines()]
(out / "summary.json").write_text(json.dumps(summary, indent=1))
if (run / "vae/reconstructions.png").is_file():
    shutil.copy(run / "vae/reconstructions.png", out / "vae_reconstructions.png")
EOF

echo "== 3. samples"
for c in msf dit-cascade; do
  [ -f "$RUN/$c/cascade.json" ] || continue
  timeout 60 $PY -m runtime.cli --model "$RUN/$c" --class 0,55,330,417,999 --batch 4 --device cuda \
    --out "$OUT/samples_$c.png" 2>&1 | tail -4
done
ls -la "$OUT"
