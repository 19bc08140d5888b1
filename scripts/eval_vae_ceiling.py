"""What the decoding VAE leaves a generator: the shapes classifier on real renders and on their VAE
reconstructions (encode, posterior mode, decode). No sampler can score above the second row, so it is
the ceiling for every accuracy that msf-eval reports on images decoded by this VAE.

`--fid` also scores both sets with FID-EffNet against msf-eval's own reference renders (render seed
12345, one image per class, the classes of `eval_sweep.py`'s default 0-999:2): the renders' figure is
the floor that sampling noise alone leaves at this many images; the reconstructions' is what a perfect
generator would score once decoded by this VAE. A sampled model's FID-EffNet is read against these two.

    python scripts/eval_vae_ceiling.py --vae runtime/weights/demo/vae --classifier msf_eval/weights/shapes-classifier --fid
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
    ap.add_argument("--fid", action="store_true", help="also FID-EffNet of renders and reconstructions "
                    "against msf-eval's reference renders (needs the eval extra; ~2 min on 2 CPU cores)")
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
    if a.fid:
        from msf_eval.evaluate import REFERENCE_SEED, real_images, to_uint8
        from msf_eval.features import frechet_distance

        ref, _ = real_images(y.tolist(), 1, 128, REFERENCE_SEED)  # exactly msf-eval's reference at 1/class
        fids = {k: frechet_distance(ref, v)[0] for k, v in (("renders", x), ("vae_reconstructions", to_uint8(rec)))}
        out["fid_effnet_vs_reference"] = {k: round(v, 2) for k, v in fids.items()}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
