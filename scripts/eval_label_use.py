"""How much does a stage use each attribute of its class label? The flow loss (Eq. 5) on held-out
latents with the right label, against the same loss with one attribute of the label changed (another
shape, palette or texture, the other two kept) and with the null label, at fixed times and noise.

    loss(wrong shape) - loss(right label) = what knowing the shape is worth to the model at time t

A model that ignores the shape has a gap of 0; the gap grows as the stage learns to draw the shape
it is asked for. Training loss alone cannot show this: on the shapes data the shape is worth a few
thousandths of a loss of ~0.2 (the palette about 100x more), so its progress is invisible in the log.
Used to choose the CPU recipe of the demo (docs/RUNS.md, "Choosing the recipe"):

    msf-train cache --vae W/vae --data shapes --out W/cache-heldout --scales 12,16 --classes 1000 --per-class 1 --seed 7
    python scripts/eval_label_use.py --stage runtime/weights/demo/scale0 --heldout W/cache-heldout
"""
import argparse
import json

import numpy as np
import torch

from msf_train.cache import LatentCache
from msf_train.checkpoint import load_stage
from msf_train.flow import interpolate
from msf_train.train import targets

TIMES = (0.1, 0.3, 0.5, 0.7, 0.9)  # z_t = t x + (1 - t) z_0: t = 0.1 is mostly noise


def variants(y: torch.Tensor, null_class: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    """The right labels and, per attribute, labels with that attribute replaced by another value
    (class = shape + 10 palette + 100 texture, msf_train/data.py)."""
    s, p, t = y % 10, (y // 10) % 10, y // 100

    def other(a):  # a different value of the same attribute, uniformly among the 9 others
        return (a + 1 + torch.randint(0, 9, a.shape, generator=g)) % 10

    return {"right": y, "wrong_shape": t * 100 + p * 10 + other(s), "wrong_palette": t * 100 + other(p) * 10 + s,
            "wrong_texture": other(t) * 100 + p * 10 + s, "null": torch.full_like(y, null_class)}


@torch.no_grad()
def label_use(folder: str, held: LatentCache, images: int) -> dict:
    cfg, model = load_stage(folder)
    idx = np.arange(min(images, held.count))
    x, prior = targets(cfg, held.gather(idx, "full").float(), held.gather(idx, "base").float())  # (N, C, H, W)
    labels = variants(torch.from_numpy(held.labels[idx]).long(), cfg.null_class, torch.Generator().manual_seed(0))
    rows = {}
    for t in TIMES:
        z0 = torch.randn(x.shape, generator=torch.Generator().manual_seed(round(t * 100)))
        tt = torch.full((len(idx),), t)
        zt = interpolate(x, z0, tt)
        loss = {k: ((x - z0) - model(zt, tt, y, prior)).pow(2).mean().item() for k, y in labels.items()}
        rows[f"{t:g}"] = {"loss": round(loss["right"], 4),
                          **{f"gap_{k}": round(v - loss["right"], 4) for k, v in loss.items() if k != "right"}}
    mean = lambda key: round(float(np.mean([r[key] for r in rows.values()])), 4)  # noqa: E731
    return {"stage": folder, "preset": cfg.name, "images": len(idx), "times": rows,
            "mean": {k: mean(k) for k in next(iter(rows.values()))}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stage", required=True, action="append", help="stage folder (repeatable)")
    ap.add_argument("--heldout", required=True, help="a latent cache the stages did not train on")
    ap.add_argument("--images", type=int, default=300)
    a = ap.parse_args()
    held = LatentCache(a.heldout)
    for folder in a.stage:
        print(json.dumps(label_use(folder, held, a.images)), flush=True)


if __name__ == "__main__":
    main()
