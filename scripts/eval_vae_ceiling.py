"""What the decoding VAE leaves a generator: the shapes classifier on real renders and on their VAE
reconstructions (encode, posterior mode, decode). No sampler can score above the second row, so it is
the ceiling for every accuracy that msf-eval reports on images decoded by this VAE.

    python scripts/eval_vae_ceiling.py --vae runtime/weights/demo/vae --classifier msf_eval/weights/shapes-classifier
"""
import argparse
import json

import torch

from msf_eval.classifier import _render_batch, accuracy, load_classifier
from msf_train.vae import load_vae


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vae", required=True)
    ap.add_argument("--classifier", required=True)
    ap.add_argument("--images", type=int, default=500, help="one per class id 0, 2, 4, ... (all attributes vary)")
    ap.add_argument("--seed", type=int, default=7, help="render seed (training used 0, the held-out set 1)")
    a = ap.parse_args()
    vae, (clf, _) = load_vae(a.vae), load_classifier(a.classifier)
    y = torch.arange(a.images) * 1000 // a.images
    x = _render_batch(y, torch.arange(a.images), a.seed, 128)  # (N, 3, 128, 128) uint8
    with torch.no_grad():
        rec = torch.cat([vae.decode(vae.encode(c.float() / 127.5 - 1).latent_dist.mode()).sample.clamp(-1, 1)
                         for c in x.split(50)])
    out = {"images": a.images, "render_seed": a.seed,
           "renders": {k: round(v, 4) for k, v in accuracy(clf.predict(x), y).items()},
           "vae_reconstructions": {k: round(v, 4) for k, v in accuracy(clf.predict(rec), y).items()}}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
