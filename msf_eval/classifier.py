"""A small classifier of the procedural shapes dataset, used to score samples.

It predicts the three attributes of a class separately (DESIGN.md section 4): shape = c % 10,
palette = (c // 10) % 10, texture = c // 100, and composes the class from them, so it covers all
1000 classes with three 10-way heads. Class accuracy of samples is "all three right"; attribute
accuracies say which part of the image a generator gets wrong (palette and shape live in the low
frequencies that scale 0 generates, texture in the residual of scale 1).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from msf_train.checkpoint import atomic_save_safetensors, atomic_write_json, read_json
from msf_train.errors import MsfError

ATTRIBUTES = ("shape", "palette", "texture")
WEIGHTS = "classifier.safetensors"
META = "classifier.json"


def attributes_of(y: torch.Tensor) -> torch.Tensor:
    """Class ids (B,) -> (B, 3) attribute ids (shape, palette, texture)."""
    return torch.stack([y % 10, (y // 10) % 10, y // 100], dim=1)


def shape_confusion(asked: torch.Tensor, read: torch.Tensor) -> torch.Tensor:
    """Shape ids asked (B,) and read by the classifier (B,) -> (10, 10) counts, asked x read."""
    return torch.bincount(asked.long() * 10 + read.long(), minlength=100).view(10, 10)


def class_of(attrs: torch.Tensor) -> torch.Tensor:
    """(B, 3) attribute ids -> class ids (B,)."""
    return attrs[:, 0] + 10 * attrs[:, 1] + 100 * attrs[:, 2]


class ShapesClassifier(nn.Module):
    """uint8 or [-1, 1] images (B, 3, H, W) -> logits (B, 3, 10), one 10-way head per attribute.

    Five stride-2 stages, widths w, w, 2w, 4w, 8w. The first convolution reads the full resolution
    (textures have a period of 1/20 of the side, 6.4 px at 128 px, and must not be averaged away
    before a filter has seen them); each later stage halves the side, so the cost is dominated by
    the 64 px stage and stays near 55M multiply-adds per 128 px image at w = 16.
    """

    def __init__(self, width: int = 16):
        super().__init__()
        w = width

        def block(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
                                 nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU())

        self.width = w
        self.features = nn.Sequential(block(3, w), block(w, 2 * w), block(2 * w, 4 * w), block(4 * w, 8 * w))
        self.head = nn.Linear(2 * 8 * w, 3 * 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 127.5 - 1 if images.dtype == torch.uint8 else images.float()
        f = self.features(x)  # (B, 8w, H/16, W/16)
        pooled = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)  # (B, 2 * 8w)
        return self.head(pooled).view(-1, 3, 10)  # (B, 3, 10)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
        """-> (B, 3) predicted attribute ids."""
        out = [self(images[i:i + batch].to(self.head.weight.device)).argmax(-1).cpu() for i in range(0, len(images), batch)]
        return torch.cat(out)


def accuracy(pred_attrs: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Per-attribute and whole-class accuracy of predicted attributes against intended classes y."""
    true = attributes_of(y)
    hit = pred_attrs == true  # (B, 3)
    acc = {name: hit[:, i].float().mean().item() for i, name in enumerate(ATTRIBUTES)}
    acc["class"] = hit.all(dim=1).float().mean().item()
    return acc


def _render_batch(classes: torch.Tensor, indices: torch.Tensor, seed: int, size: int) -> torch.Tensor:
    from msf_train.data import render  # shapes renderer (training-side data code)
    import numpy as np

    imgs = [render(int(c), int(i), seed, size) for c, i in zip(classes, indices)]
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()  # (B, 3, H, W) uint8


class _RenderedBatches(torch.utils.data.IterableDataset):
    """Endless batches of freshly rendered shapes (uniform classes); each worker draws its own."""

    def __init__(self, batch: int, size: int, seed: int):
        self.batch, self.size, self.seed = batch, size, seed

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        g = torch.Generator().manual_seed(self.seed * 1000 + (info.id if info else 0))
        while True:
            y = torch.randint(0, 1000, (self.batch,), generator=g)
            idx = torch.randint(0, 1 << 30, (self.batch,), generator=g)
            yield _render_batch(y, idx, self.seed, self.size), y


def soften(x: torch.Tensor, generator: torch.Generator, max_sigma: float = 1.5) -> torch.Tensor:
    """Blur each image of a [-1, 1] batch (B, 3, H, W) by its own Gaussian, sigma uniform in
    [0, max_sigma] px. Decoded samples are softer than renders (the VAE loses the sharpest detail);
    a class stays the same class when blurred, and the classifier must say so."""
    B = x.shape[0]
    sigma = torch.rand(B, 1, generator=generator) * max_sigma + 1e-3  # (B, 1)
    r = torch.arange(-3, 4, dtype=torch.float32)[None]  # (1, 7)
    k = torch.exp(-0.5 * (r / sigma) ** 2)
    k = (k / k.sum(dim=1, keepdim=True)).to(x)  # (B, 7) normalised 1D kernels
    xs = x.reshape(1, B * 3, *x.shape[2:])  # one group per (image, channel)
    kh = k.repeat_interleave(3, dim=0)[:, None, None, :]  # (3B, 1, 1, 7)
    xs = F.conv2d(F.pad(xs, (3, 3, 0, 0), mode="replicate"), kh, groups=B * 3)
    xs = F.conv2d(F.pad(xs, (0, 0, 3, 3), mode="replicate"), kh.transpose(2, 3), groups=B * 3)
    return xs.view_as(x)


def train_classifier(out_dir, *, size: int = 128, steps: int = 3000, batch: int = 64, lr: float = 2e-3,
                     width: int = 16, seed: int = 0, holdout: int = 2000, device: str = "cpu", workers: int = 0,
                     max_minutes: float | None = None, log=print) -> dict:
    """Train on freshly rendered shapes (render seed `seed`; half of each batch softened, see
    `soften`), measure held-out accuracy on clean images from another render seed, and save weights
    + a JSON record of the accuracy. The learning rate warms up over the first 5% and then follows
    a cosine to zero over training *progress*, the larger of steps done / ``steps`` and time spent
    / ``max_minutes``: a wall-clock budget ends training with a finished schedule, not a cut one."""
    if steps < 1 or batch < 1:
        raise MsfError("--steps and --batch must be >= 1")
    torch.manual_seed(seed)
    dev = torch.device(device)
    model = ShapesClassifier(width).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    loader = torch.utils.data.DataLoader(_RenderedBatches(batch, size, seed), batch_size=None, num_workers=workers,
                                         pin_memory=dev.type == "cuda")
    gen = torch.Generator().manual_seed(seed + 17)
    t0 = time.time()
    done = 0
    for step, (x, y) in enumerate(loader):
        progress = step / steps
        if max_minutes is not None:
            progress = max(progress, (time.time() - t0) / (60 * max_minutes))
        if progress >= 1:
            break
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, progress / 0.05) * 0.5 * (1 + math.cos(math.pi * progress))
        done = step + 1
        x = x.float() / 127.5 - 1
        x[: batch // 2] = soften(x[: batch // 2], gen)
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        logits = model(x)  # (B, 3, 10)
        loss = F.cross_entropy(logits.reshape(-1, 10), attributes_of(y).reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0:
            log(f"classifier step {step} ({100 * progress:.0f}%) loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
    model.eval()
    yh = torch.arange(holdout) % 1000
    xh = _render_batch(yh, torch.arange(holdout), seed + 1, size)
    acc = accuracy(model.predict(xh), yh)
    save_classifier(out_dir, model, {"size": size, "width": width, "steps": done, "planned_steps": steps,
                                     "batch": batch, "lr": lr, "seed": seed, "holdout": holdout,
                                     "holdout_accuracy": acc, "train_seconds": round(time.time() - t0, 1)})
    return acc


def save_classifier(out_dir, model: ShapesClassifier, meta: dict) -> None:
    out = Path(out_dir)
    atomic_save_safetensors(out / WEIGHTS, model.state_dict())
    atomic_write_json(out / META, meta)


def load_classifier(folder, device="cpu") -> tuple[ShapesClassifier, dict]:
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / WEIGHTS).is_file():
        raise MsfError(f"no shapes classifier in {folder}; train one with `msf-eval classifier --out {folder}`")
    meta = read_json(folder / META, "classifier record")
    model = ShapesClassifier(int(meta.get("width", 16)))
    model.load_state_dict(load_file(str(folder / WEIGHTS)))
    return model.to(device).eval(), meta
