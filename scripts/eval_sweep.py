"""Evaluate the demo MSF cascade against the demo DiT, plus step and CFG sweeps per scale (in the
manner of the paper's Tables 2-5). Writes one JSON with every row; used by scripts/gpu_demo.sh and
for docs/RESULTS.md.

    python scripts/eval_sweep.py --msf runtime/weights/demo-msf --dit runtime/weights/demo-dit \
        --classifier msf_eval/weights/shapes-classifier --device cuda --out eval.json

`--seeds 1 2` repeats both defaults with other sampling seeds: FID-EffNet and the accuracies move from
seed to seed, and a gap between MSF and the DiT smaller than that spread is a tie.
"""
import argparse
import json
import time

from msf_eval.cli import parse_class_spec
from msf_eval.evaluate import evaluate
from msf_train.checkpoint import atomic_write_json


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--msf", required=True)
    ap.add_argument("--dit", required=True)
    ap.add_argument("--classifier", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", required=True)
    ap.add_argument("--classes", default="0-999:11",
                    help="a class list or range lo-hi:step (msf-eval's default: 91 classes). A class id is shape + "
                         "10 x palette + 100 x texture, so a step coprime with 10 (11, 7, 3, 1) asks every shape; "
                         "a step of 2 asks only the five even shapes, 5 two, 10 one")
    ap.add_argument("--per-class", type=int, default=10)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--msf-steps", default="100,50")
    ap.add_argument("--msf-cfg", default="1.4,1.0")
    ap.add_argument("--dit-steps", default="100")
    ap.add_argument("--dit-cfg", default="1.5")
    ap.add_argument("--sweep-steps", nargs="*", default=[], help="MSF step pairs s0,s1 at the default CFG")
    ap.add_argument("--sweep-cfg", nargs="*", default=[], help="MSF CFG pairs w0,w1 at the default steps")
    ap.add_argument("--dit-sweep-cfg", nargs="*", default=["1.0", "2.0"])
    ap.add_argument("--sweep-solver", nargs="*", default=[], choices=["euler", "heun"],
                    help="MSF at the default steps and CFG with this solver (Heun: two forwards per step)")
    ap.add_argument("--sweep-shift", nargs="*", default=[], type=float,
                    help="MSF at the default steps and CFG with this time shift (> 1: more steps near the noise)")
    ap.add_argument("--seeds", nargs="*", default=[], type=int,
                    help="MSF and DiT defaults again with these sampling seeds: the seed-to-seed spread of every "
                         "figure, i.e. how large a difference between the two models must be to mean something")
    a = ap.parse_args()
    classes = parse_class_spec(a.classes)
    ints = lambda s: [int(x) for x in s.split(",")]
    floats = lambda s: [float(x) for x in s.split(",")]
    E = "euler"
    runs = [("msf", a.msf, ints(a.msf_steps), floats(a.msf_cfg), E, 1.0, 0),
            ("dit", a.dit, ints(a.dit_steps), floats(a.dit_cfg), E, 1.0, 0)]
    runs += [("msf-steps", a.msf, ints(s), floats(a.msf_cfg), E, 1.0, 0) for s in a.sweep_steps]
    runs += [("msf-cfg", a.msf, ints(a.msf_steps), floats(c), E, 1.0, 0) for c in a.sweep_cfg]
    runs += [("msf-solver", a.msf, ints(a.msf_steps), floats(a.msf_cfg), s, 1.0, 0) for s in a.sweep_solver]
    runs += [("msf-shift", a.msf, ints(a.msf_steps), floats(a.msf_cfg), E, h, 0) for h in a.sweep_shift]
    runs += [("dit-cfg", a.dit, ints(a.dit_steps), floats(c), E, 1.0, 0) for c in a.dit_sweep_cfg]
    runs += [(f"{r[0]}-seed{seed}", *r[1:-1], seed) for seed in a.seeds for r in runs[:2]]
    rows = []
    for label, model, steps, cfg, solver, shift, seed in runs:
        t0 = time.time()
        try:
            r = evaluate(model, classes, a.per_class, classifier_dir=a.classifier, steps=steps, cfg=cfg,
                         solver=solver, shift=shift, seed=seed, batch=a.batch, device=a.device, progress=False)
        except Exception as e:  # noqa: BLE001 - one failed row must not lose the others
            r = {"error": f"{type(e).__name__}: {e}", "steps": steps, "cfg": cfg, "solver": solver, "shift": shift,
                 "seed": seed}
        r["label"], r["eval_s"] = label, round(time.time() - t0, 1)
        rows.append(r)
        print(json.dumps(r), flush=True)
        atomic_write_json(a.out, {"rows": rows, "classes": a.classes, "per_class": a.per_class, "device": a.device})


if __name__ == "__main__":
    main()
