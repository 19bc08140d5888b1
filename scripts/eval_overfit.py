"""Is the latent cache big enough for the training a stage got? The stage's flow loss (Eq. 5) on
latents it trained on against the same loss on held-out latents (same classes, another render seed),
at the same times and noise. No gap: the model has not begun to memorise its cache, and more images
per class would not have changed what it learned in those steps. A held-out loss above the training
loss: memorisation, and a bigger cache would pay.

    msf-train cache --vae W/vae --data shapes --out W/cache-heldout --scales 12,16 --classes 1000 --per-class 1 --seed 7
    python scripts/eval_overfit.py --stage runtime/weights/demo/scale0 --train W/cache --heldout W/cache-heldout
"""
import argparse
import json

import numpy as np
import torch

from msf_train.cache import LatentCache
from msf_train.checkpoint import load_stage
from msf_train.flow import interpolate
from msf_train.train import targets

TIMES = (0.05, 0.15, 0.3, 0.5, 0.7, 0.85, 0.95)


@torch.no_grad()
def loss(model, cfg, cache: LatentCache, idx: np.ndarray, seed: int = 0, batch: int = 250) -> float:
    """Mean of Eq. 5 over the latents `idx` of `cache` and the fixed TIMES, with noise seeded per batch."""
    total, n = 0.0, 0
    for lo in range(0, len(idx), batch):
        rows = idx[lo:lo + batch]
        x, prior = targets(cfg, cache.gather(rows, "full").float(), cache.gather(rows, "base").float())
        y = torch.from_numpy(cache.labels[rows])
        g = torch.Generator().manual_seed(seed + lo)
        for t in TIMES:
            z0 = torch.randn(x.shape, generator=g)
            tt = torch.full((len(rows),), t)
            v = model(interpolate(x, z0, tt), tt, y, prior)
            total += ((x - z0) - v).pow(2).mean().item() * len(rows)
            n += len(rows)
    return total / n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stage", required=True, action="append", help="stage folder (repeatable)")
    ap.add_argument("--train", required=True, help="the latent cache the stage trained on")
    ap.add_argument("--heldout", required=True, help="a cache of the same classes from another render seed")
    ap.add_argument("--images", type=int, default=1000)
    a = ap.parse_args()
    train, held = LatentCache(a.train), LatentCache(a.heldout)
    n = min(a.images, held.count)
    rng = np.random.default_rng(0)
    idx_held = np.sort(rng.choice(held.count, n, replace=False))
    # the same classes from the training cache: one training image of each held-out image's class
    by_class = {}
    for i, c in enumerate(train.labels):
        by_class.setdefault(int(c), []).append(i)
    idx_train = np.array([rng.choice(by_class[int(c)]) for c in held.labels[idx_held]])
    for folder in a.stage:
        cfg, model = load_stage(folder)
        lt, lh = loss(model, cfg, train, idx_train), loss(model, cfg, held, idx_held)
        print(json.dumps({"stage": folder, "preset": cfg.name, "images": n, "train_loss": round(lt, 4),
                          "heldout_loss": round(lh, 4), "heldout_over_train": round(lh / lt, 4)}), flush=True)


if __name__ == "__main__":
    main()
