"""The demo grid of docs/results, annotated: one row per class with its name, a real render of the
class (what it should look like), then the samples of each model, each captioned with what the shapes
classifier (the instrument of docs/RESULTS.md) reads in it: S(hape) P(alette) T(exture), + right, - wrong.

The samples are msf-run's: image j of a model's row block uses seed j, in the order of
`msf-run --class A,B,... --batch N` (N images per class, one row per class), so the picture is that
command's grid with a reference column and captions added.

    python scripts/demo_grid.py --model MSF=runtime/weights/demo-msf --model DiT=runtime/weights/demo-dit \
        --per-class 2 --out docs/results/demo-grid.png   # each folder's own plan (cascade.json "sampling")
"""
import argparse
import time

import torch
from PIL import Image, ImageDraw, ImageFont

from msf_eval.classifier import ATTRIBUTES, accuracy, attributes_of, load_classifier
from msf_eval.evaluate import REFERENCE_SEED, to_uint8
from msf_train.data import class_name, render
from runtime.pipeline import Pipeline

GRID_CLASSES = "0,111,222,333,444,555,666,777,888,999,50,161,272,383,494,505,616,727,838,949"
LABEL_W, CAPTION_H, GAP, HEADER_H = 190, 14, 10, 18


def named(pairs: list[str], what: str) -> dict[str, str]:
    out = {}
    for p in pairs:
        name, sep, value = p.partition("=")
        if not sep or not name or not value:
            raise SystemExit(f"{what} {p!r}: write NAME=VALUE, e.g. MSF=runtime/weights/demo-msf")
        out[name] = value
    return out


def caption(pred: torch.Tensor, label: int) -> str:
    """'S+ P+ T-': which of the class's attributes the classifier reads in a sample."""
    hit = (pred == attributes_of(torch.tensor([label]))[0]).tolist()
    return " ".join(f"{a[0].upper()}{'+' if h else '-'}" for a, h in zip(ATTRIBUTES, hit))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append", required=True, help="NAME=cascade folder (repeatable)")
    ap.add_argument("--cfg", action="append", default=[], help="NAME=w0,w1 (default: msf-run's)")
    ap.add_argument("--steps", action="append", default=[], help="NAME=s0,s1 (default: msf-run's)")
    ap.add_argument("--classes", default=GRID_CLASSES)
    ap.add_argument("--per-class", type=int, default=2)
    ap.add_argument("--classifier", default="msf_eval/weights/shapes-classifier")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    models, cfgs, steps = named(a.model, "--model"), named(a.cfg, "--cfg"), named(a.steps, "--steps")
    classes = [int(c) for c in a.classes.split(",")]
    ids = [c for c in classes for _ in range(a.per_class)]  # msf-run's order: one row per class
    clf, _ = load_classifier(a.classifier)
    fl = lambda s: [float(x) for x in s.split(",")]  # noqa: E731

    samples, verdicts, heads = {}, {}, {}
    for name, folder in models.items():
        t0 = time.time()
        pipe = Pipeline.load(folder, device="cpu")
        plan = pipe.plan([int(x) for x in steps[name].split(",")] if name in steps else None,
                         fl(cfgs[name]) if name in cfgs else None)
        img = to_uint8(pipe.generate(ids, seed=0, plan=plan).image)  # (N, 3, H, W) uint8
        samples[name] = img
        heads[name] = f"{name}: steps {'+'.join(map(str, plan.steps))}, CFG {'/'.join(f'{w:g}' for w in plan.cfg)}"
        verdicts[name] = clf.predict(img)
        size = img.shape[-1]
        acc = accuracy(verdicts[name], torch.tensor(ids))
        print(f"{name}: steps {plan.steps} cfg {plan.cfg}, {time.time() - t0:.0f} s; classifier: "
              + ", ".join(f"{k} {v:.0%}" for k, v in acc.items()), flush=True)

    n = a.per_class
    block = n * size + GAP
    width = LABEL_W + size + GAP + len(models) * block
    row_h = size + CAPTION_H
    sheet = Image.new("RGB", (width, HEADER_H + len(classes) * row_h), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    draw.text((LABEL_W, 3), "real render", fill="black", font=font)
    for k, name in enumerate(models):
        draw.text((LABEL_W + size + GAP + k * block, 3), heads[name], fill="black", font=font)
    for r, c in enumerate(classes):
        y = HEADER_H + r * row_h
        shape_palette = class_name(c).split(", ")
        draw.text((4, y + 40), f"class {c}", fill="black", font=font)
        for i, line in enumerate(shape_palette):
            draw.text((4, y + 56 + 14 * i), line, fill="black", font=font)
        sheet.paste(Image.fromarray(render(c, 0, REFERENCE_SEED, size)), (LABEL_W, y))
        for k, name in enumerate(models):
            for j in range(n):
                i = r * n + j
                x = LABEL_W + size + GAP + k * block + j * size
                sheet.paste(Image.fromarray(samples[name][i].permute(1, 2, 0).numpy()), (x, y))
                draw.text((x + 2, y + size + 1), caption(verdicts[name][i], c), fill="black", font=font)
    sheet.save(a.out)
    print(f"wrote {a.out} ({sheet.width}x{sheet.height})")


if __name__ == "__main__":
    main()
