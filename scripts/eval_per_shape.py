"""Which shapes a cascade draws: per asked shape, how often the shapes classifier reads that shape in
the samples, and what it reads instead. msf-eval's shape accuracy is the mean of this table's
diagonal; the table says where the misses are (compare the VAE's own per-shape ceiling from
scripts/eval_vae_ceiling.py).

    python scripts/eval_per_shape.py --model runtime/weights/demo-msf --classes 0-999:7 --seeds 0 1
"""
import argparse
import json

import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="a cascade folder (runtime/weights/demo-msf)")
    ap.add_argument("--classifier", default="msf_eval/weights/shapes-classifier")
    ap.add_argument("--classes", default="0-999:7", help="msf-eval's syntax; :7 covers every shape")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--steps", default=None, help="per scale, e.g. 50,25 (default: the cascade's own)")
    ap.add_argument("--batch", type=int, default=50)
    a = ap.parse_args()

    from msf_eval.classifier import attributes_of, load_classifier, shape_confusion
    from msf_eval.cli import parse_class_spec
    from msf_eval.evaluate import to_uint8
    from msf_train.data import SHAPES
    from runtime.pipeline import Pipeline

    classes = parse_class_spec(a.classes)
    pipe, (clf, _) = Pipeline.load(a.model, device="cpu"), load_classifier(a.classifier)
    plan = pipe.plan(tuple(int(s) for s in a.steps.split(","))) if a.steps else pipe.plan()
    confusion = torch.zeros(len(SHAPES), len(SHAPES), dtype=torch.long)  # asked x read
    for seed in a.seeds:
        for i in range(0, len(classes), a.batch):
            chunk = classes[i:i + a.batch]
            read = clf.predict(to_uint8(pipe.generate(chunk, seed=seed, plan=plan).image))[:, 0]  # (B,) shape
            confusion += shape_confusion(attributes_of(torch.tensor(chunk))[:, 0], read)
    rows = {}
    for k, name in enumerate(SHAPES):
        n = int(confusion[k].sum())
        top = [(SHAPES[j], int(confusion[k, j])) for j in confusion[k].argsort(descending=True)[:3] if confusion[k, j]]
        rows[name] = {"asked": n, "drawn": round(int(confusion[k, k]) / max(n, 1), 3), "read_as": dict(top)}
    total = confusion.diag().sum().item() / confusion.sum().item()
    print(json.dumps({"model": a.model, "classes": a.classes, "seeds": a.seeds, "shape_accuracy": round(total, 4),
                      "per_shape": rows}, indent=1))


if __name__ == "__main__":
    from msf_train.errors import MsfError

    try:
        main()
    except MsfError as e:  # bad input: one line, no traceback
        raise SystemExit(f"error: {e}") from None
