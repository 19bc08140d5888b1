"""What the VAE's latents carry, before any decoder: a small CNN trained on a latent cache to read
each attribute (shape, palette, texture), scored on a held-out cache made with the same VAE.

eval_vae_ceiling.py measures what survives encoding *and* decoding. This separates the two: an
attribute the probe reads far better than the classifier reads it in reconstructions is lost by the
decoder (a better decoder on the same encoder would give it back, and the denoisers trained on these
latents stay valid). One the probe cannot read either is lost by the encoder (a new VAE, a new cache
and retrained denoisers) or merely beyond the probe: it is small and sees only the cache's images (12
per class for the demo), so its figures are lower bounds on what the latents hold ("at least").

The latents are the cache's, i.e. sampled from the posterior exactly as the denoisers see them in
training (mean + std * noise, msf_train.cache).

    python scripts/eval_latent_probe.py --train /tmp/msf-demo-cpu/cache --heldout /tmp/msf-demo-cpu/cache-heldout
"""
import argparse
import json
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from msf_eval.classifier import ATTRIBUTES, accuracy, attributes_of
from msf_train.cache import LatentCache
from msf_train.errors import MsfError
from msf_train.vae import same_vae


def probe_net(channels: int) -> nn.Module:
    """Latents (B, C, H, W) -> logits (B, 3, 10); ~0.3M parameters, one stride-2 stage."""
    return nn.Sequential(
        nn.Conv2d(channels, 64, 3, padding=1), nn.GELU(), nn.Conv2d(64, 64, 3, padding=1), nn.GELU(),
        nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.GELU(), nn.Conv2d(128, 128, 3, padding=1), nn.GELU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 3 * 10), nn.Unflatten(1, (3, 10)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train", required=True, help="latent cache the probe learns from (msf-train cache)")
    ap.add_argument("--heldout", required=True, help="latent cache it is scored on (same VAE, other images)")
    ap.add_argument("--which", default="full", choices=["full", "base"], help="full-resolution or base latents")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    tr, te = LatentCache(a.train), LatentCache(a.heldout)
    if not same_vae(tr.vae, te.vae):
        raise MsfError(f"{a.train} and {a.heldout} were made with different VAEs: make both with the same one")
    x_tr, x_te = tr.load(a.which).float(), te.load(a.which).float()  # (N, C, h, w)
    torch.manual_seed(a.seed)
    y_tr = attributes_of(torch.from_numpy(tr.labels))  # (N, 3)
    y_te = torch.from_numpy(te.labels)
    net = probe_net(x_tr.shape[1])
    steps = a.epochs * -(-len(x_tr) // a.batch)
    opt = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps)
    t0, history = time.time(), []
    for epoch in range(a.epochs):
        net.train()
        for b in torch.randperm(len(x_tr)).split(a.batch):
            x = x_tr[b].flip(-1) if torch.rand(()) < 0.5 else x_tr[b]  # mirror: no attribute changes with it
            logits = net(x)  # (B, 3, 10)
            loss = sum(F.cross_entropy(logits[:, k], y_tr[b, k]) for k in range(len(ATTRIBUTES)))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        net.eval()
        with torch.no_grad():
            acc = accuracy(net(x_te).argmax(-1), y_te)
        history.append({"epoch": epoch, **{k: round(v, 4) for k, v in acc.items()}})
        print(f"epoch {epoch}: held-out " + ", ".join(f"{k} {v:.3f}" for k, v in acc.items())
              + f" ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    print(json.dumps({"train": a.train, "heldout": a.heldout, "which": a.which, "train_images": len(x_tr),
                      "heldout_images": len(x_te), "epochs": a.epochs, "heldout_accuracy": history[-1],
                      "history": history, "wall_s": round(time.time() - t0, 1)}, indent=2))


if __name__ == "__main__":
    try:
        main()
    except MsfError as e:  # bad input: one line, no traceback
        raise SystemExit(f"error: {e}") from None
