"""What the decoding VAE leaves a generator: the shapes classifier on real renders and on their VAE
reconstructions (encode, posterior mode, decode), with the reconstructions' PSNR and border error. No sampler can score above the second row, so it is
the ceiling for every accuracy that msf-eval reports on images decoded by this VAE.

One render per class of `--classes` (msf-eval's syntax; the default, every class, asks every shape:
a class id is shape + 10 x palette + 100 x texture, so `0-999:2` would ask only the five even shapes).
`--fid` also scores both sets with FID-EffNet against msf-eval's own reference renders (render seed
12345, one image per class, as `eval_sweep.py --per-class 1` uses): the renders' figure is the floor
that sampling noise alone leaves at this many images; the reconstructions' is what a perfect
generator would score once decoded by this VAE. A sampled model's FID-EffNet is read against these two.

    python scripts/eval_vae_ceiling.py --vae runtime/weights/demo/vae \
        --classifier msf_eval/weights/shapes-classifier --classes 0-999:2 --fid
    python scripts/eval_vae_ceiling.py --vae NEW_VAE --classifier ... --figure f.png --also OLD_VAE
"""
import argparse
import json

import torch

from msf_eval.classifier import _render_batch, accuracy, attributes_of, load_classifier, shape_confusion
from msf_eval.cli import parse_class_spec
from msf_train.vae import load_vae
from msf_train.vae_train import ReconstructionError, save_reconstructions


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vae", required=True)
    ap.add_argument("--classifier", required=True)
    ap.add_argument("--classes", default="0-999", help="one render per class (msf-eval's syntax; a step "
                    "coprime with 10 keeps every shape, e.g. 0-999:3)")
    ap.add_argument("--seed", type=int, default=7, help="render seed (training used 0, the held-out set 1)")
    ap.add_argument("--fid", action="store_true", help="also FID-EffNet of renders and reconstructions "
                    "against msf-eval's reference renders (needs the eval extra; ~2 min on 2 CPU cores)")
    ap.add_argument("--figure", default=None, help="save a PNG: 8 renders (top row) over their reconstructions "
                    "by --vae, then by each --also VAE (same images)")
    ap.add_argument("--also", nargs="*", default=[], help="other VAE folders for --figure's lower rows")
    a = ap.parse_args()
    y = torch.tensor(parse_class_spec(a.classes))  # (N,) class ids
    vae, (clf, _) = load_vae(a.vae), load_classifier(a.classifier)
    x = _render_batch(y, torch.arange(len(y)), a.seed, 128)  # (N, 3, 128, 128) uint8
    with torch.no_grad():
        rec = torch.cat([vae.decode(vae.encode(c.float() / 127.5 - 1).latent_dist.mode()).sample.clamp(-1, 1)
                         for c in x.split(50)])
    pred = clf.predict(rec)  # (N, 3) shape, palette, texture read in the reconstructions
    err = ReconstructionError(border=4)
    err.add(x.float() / 127.5 - 1, rec)
    quality = err.result()
    out = {"classes": a.classes, "images": len(y), "render_seed": a.seed,
           "psnr_db": round(quality["psnr"], 2), "border_to_interior_mse": round(quality["border_to_interior"], 3),
           "renders": {k: round(v, 4) for k, v in accuracy(clf.predict(x), y).items()},
           "vae_reconstructions": {k: round(v, 4) for k, v in accuracy(pred, y).items()}}
    # Per asked shape, the fraction of reconstructions still read as that shape: which shapes the VAE
    # itself loses (compare scripts/eval_per_shape.py on samples).
    from msf_train.data import SHAPES
    confusion = shape_confusion(attributes_of(y)[:, 0], pred[:, 0])  # (10, 10) asked x read
    out["vae_reconstructions_per_shape"] = {n: round(confusion[k, k].item() / confusion[k].sum().item(), 3)
                                            for k, n in enumerate(SHAPES) if confusion[k].sum()}
    if a.fid:
        from msf_eval.evaluate import REFERENCE_SEED, real_images, to_uint8
        from msf_eval.features import frechet_distance

        ref, _ = real_images(y.tolist(), 1, 128, REFERENCE_SEED)  # exactly msf-eval's reference at 1/class
        fids = {k: frechet_distance(ref, v)[0] for k, v in (("renders", x), ("vae_reconstructions", to_uint8(rec)))}
        out["fid_effnet_vs_reference"] = {k: round(v, 2) for k, v in fids.items()}
    if a.figure:
        pick = torch.linspace(0, len(y) - 1, 8).long()  # spread over the classes: several shapes and textures
        save_reconstructions(vae, x[pick].float() / 127.5 - 1, a.figure, *map(load_vae, a.also))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    from msf_train.errors import MsfError

    try:
        main()
    except MsfError as e:  # bad input: one line, no traceback
        raise SystemExit(f"error: {e}") from None
