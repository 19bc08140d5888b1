"""One prepared GPU measurement: MSF against DiT-XL/2 at the paper's presets, written as JSON.

Run through `benchmarks/gpu_check.sh` on a CUDA machine (it finishes in a few minutes on an H100),
or with `--dry-run` anywhere (tiny presets, few steps, CPU if no CUDA) to prove every code path.

What it measures (random weights: latency does not depend on them):
1. the card's bf16 matrix-product ceiling (8192^3), next to the datasheet dense peak used for MFU;
2. the whole cascade per image, MSF (100 + 50 steps, CFG 1.4 / 1.0) against DiT-XL/2 (100 and 250
   steps, CFG 1.5), at batch 16 and 64, eager and as one CUDA graph (`runtime.graphs`), including
   an SD-VAE-sized decode;
3. one forward of each preset at the batch the recipe runs it at (CFG doubles it), eager and
   `torch.compile`d, bf16 and fp16, with achieved TFLOP/s and MFU from the analytic multiply-adds
   (`msf_train.model.count_macs`).
Results are rewritten after every measurement, so a run cut short still reports what it finished.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from msf_train.checkpoint import atomic_write_json  # noqa: E402
from msf_train.config import get_preset  # noqa: E402
from msf_train.model import build_model, count_macs, sample_inputs  # noqa: E402

# Dense (no sparsity) bf16/fp16 tensor-core peaks from the datasheets, TFLOP/s.
DATASHEET_PEAK = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.0, "A10": 125.0}

PAPER = dict(msf=("msf-xl/scale0", "msf-xl/scale1"), dit="dit-xl/2",
             msf_steps=(100, 50), msf_cfg=(1.4, 1.0), dit_steps=(100, 250), dit_cfg=1.5, batches=(16, 64))
DRY = dict(msf=("tiny/scale0", "tiny/scale1"), dit="tiny/dit",
           msf_steps=(4, 2), msf_cfg=(1.4, 1.0), dit_steps=(4, 10), dit_cfg=1.5, batches=(2, 4))


def peak_for(name: str) -> float | None:
    return next((v for k, v in DATASHEET_PEAK.items() if k in name), None)


class Recorder:
    def __init__(self, path: Path, budget_s: float):
        self.path, self.budget_s, self.t0 = path, budget_s, time.perf_counter()
        self.data = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "results": [], "skipped": []}

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def over(self, what: str) -> bool:
        if self.elapsed() > self.budget_s:
            self.data["skipped"].append(f"{what}: time budget of {self.budget_s:.0f} s spent")
            self.save()
            return True
        return False

    def add(self, row: dict) -> None:
        row["at_s"] = round(self.elapsed(), 1)
        self.data["results"].append(row)
        print(json.dumps(row), flush=True)
        self.save()

    def save(self) -> None:
        self.data["elapsed_s"] = round(self.elapsed(), 1)
        atomic_write_json(self.path, self.data)


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_fn(fn, dev, warmup: int, reps: int) -> list[float]:
    for _ in range(warmup):
        fn()
    sync(dev)
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync(dev)
        out.append(time.perf_counter() - t0)
    return out


def matmul_ceiling(dev) -> float | None:
    if dev.type != "cuda":
        return None
    a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    ts = time_fn(lambda: a @ b, dev, 3, 10)
    return 2 * 8192 ** 3 / statistics.median(ts) / 1e12


def forward_row(name, batch, dtype, mode, dev, peak, warmup, reps):
    """One forward at `batch` (already doubled for CFG where the recipe uses it)."""
    cfg = get_preset(name)
    model = build_model(cfg, dev).eval().requires_grad_(False)
    with torch.no_grad():  # random, non-zero weights: adaLN-Zero would make most of the work trivial
        for p in model.parameters():
            p.normal_(0, 0.02)
    model = model.to(dtype)
    fn = torch.compile(model, dynamic=False) if mode == "compile" else model
    x = sample_inputs(cfg, batch, dev)
    t_compile = time.perf_counter()

    def call():
        with torch.no_grad(), torch.autocast(dev.type, dtype=dtype, enabled=dtype != torch.float32):
            return fn(x["x"].to(dtype), x["t"], x["y"], x["prior"].to(dtype) if "prior" in x else None)

    call()
    sync(dev)
    t_compile = time.perf_counter() - t_compile
    ts = time_fn(call, dev, warmup, reps)
    med = statistics.median(ts)
    tflops = 2 * count_macs(cfg) * batch / med / 1e12
    del model, fn
    return {"kind": "forward", "preset": name, "batch": batch, "dtype": str(dtype).split(".")[-1], "mode": mode,
            "median_ms": round(med * 1e3, 3), "min_ms": round(min(ts) * 1e3, 3), "first_call_s": round(t_compile, 2),
            "tflops": round(tflops, 2), "mfu": round(tflops / peak, 4) if peak else None}


def cascade_rows(spec, batch, dtype, dev, use_graph, rec: Recorder, dry: bool):
    from runtime.cascade import SD_VAE_CONFIG, build_random_cascade
    from runtime.graphs import time_cascade
    from runtime.sampler import make_plan

    vae = None if dry else SD_VAE_CONFIG
    dname = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[dtype]
    runs = [("msf", list(spec["msf"]), list(spec["msf_steps"]), list(spec["msf_cfg"]))]
    runs += [(f"dit-{s}", [spec["dit"]], [s], [spec["dit_cfg"]]) for s in spec["dit_steps"]]
    out = {}
    for label, presets, steps, cfgs in runs:
        if rec.over(f"cascade {label} batch {batch} {'graph' if use_graph else 'eager'}"):
            return out
        stages, dec = build_random_cascade(presets, dev, dname, vae=vae)
        plan = make_plan([c for c, _ in stages], steps, cfgs)
        macs = sum(s * (1 if w == 1.0 else 2) * count_macs(c) for (c, _), s, w in zip(stages, steps, cfgs))
        r = time_cascade(stages, dec, batch, plan, use_graph=use_graph, repeats=2 if not dry else 2, warmup=1)
        row = {"kind": "cascade", "run": label, "presets": presets, "steps": steps, "cfg": cfgs, "batch": batch,
               "dtype": dname, "mode": r["mode"], "reason": r["reason"], "median_s": round(r["median_s"], 4),
               "per_image_ms": round(r["per_image_s"] * 1e3, 3), "capture_s": round(r["capture_s"], 2),
               "gmacs_per_image": round(macs / 1e9, 4), "_macs": macs,
               "denoise_tflops": round(2 * macs * batch / r["median_s"] / 1e12, 2)}
        out[label] = row
        rec.add(row)
        del stages, dec
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    if "msf" in out:
        for label, row in out.items():
            if label != "msf":
                rec.add({"kind": "ratio", "batch": batch, "mode": row["mode"], "dtype": dname,
                         "what": f"{label} / msf per-image time", "measured": round(row["per_image_ms"] / out["msf"]["per_image_ms"], 3),
                         "analytic_macs": round(row["_macs"] / out["msf"]["_macs"], 3)})
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")) / "gpu_check.json")
    ap.add_argument("--dry-run", action="store_true", help="tiny presets and few steps: proves the code paths")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--budget-s", type=float, default=420.0, help="stop starting new measurements after this")
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args(argv)

    dev = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                       ("cpu" if args.device == "auto" else args.device))
    spec = DRY if args.dry_run else PAPER
    rec = Recorder(args.out, args.budget_s)
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu"
    peak = peak_for(gpu) if dev.type == "cuda" else None
    torch.backends.cuda.matmul.allow_tf32 = True
    rec.data["env"] = {"device": gpu, "torch": torch.__version__, "cuda": torch.version.cuda, "dry_run": args.dry_run,
                       "datasheet_peak_tflops": peak, "python": platform.python_version()}
    ceiling = matmul_ceiling(dev)
    rec.data["env"]["measured_bf16_matmul_tflops"] = round(ceiling, 1) if ceiling else None
    rec.save()
    print(f"device {gpu}, bf16 matmul {ceiling} TFLOP/s, peak {peak}", flush=True)

    big, small = max(spec["batches"]), min(spec["batches"])
    bf16 = torch.bfloat16 if dev.type == "cuda" else torch.float32  # CPU dry runs stay in fp32
    graph_modes = [False, True]
    # Most important first: the end-to-end comparison at the large batch, eager and graph.
    for use_graph in graph_modes:
        cascade_rows(spec, big, bf16, dev, use_graph, rec, args.dry_run)
    # Per-forward latency, eager, both batches and both half precisions.
    presets = [(spec["msf"][0], 2), (spec["msf"][1], 1), (spec["dit"], 2)]  # CFG multiplier of the recipe
    dtypes = [bf16] + ([torch.float16] if dev.type == "cuda" else [])
    for dtype in dtypes:
        for b in spec["batches"]:
            for name, mult in presets:
                if rec.over(f"forward {name} {b} {dtype}"):
                    break
                rec.add(forward_row(name, b * mult, dtype, "eager", dev, peak, 3, 10))
    for use_graph in graph_modes:
        cascade_rows(spec, small, bf16, dev, use_graph, rec, args.dry_run)
    if not args.no_compile:
        for name, mult in presets:
            if rec.over(f"forward {name} compile"):
                break
            rec.add(forward_row(name, big * mult, bf16, "compile", dev, peak, 3, 10))
    rec.data["finished"] = True
    rec.save()
    summary(rec.data)


def summary(data):
    print("\n== gpu_check summary ==", data["env"])
    for r in data["results"]:
        if r["kind"] == "cascade":
            print(f"cascade {r['run']:>8} b{r['batch']:<3} {r['dtype']} {r['mode']:<5} {r['per_image_ms']:>9.2f} ms/img "
                  f"{r['denoise_tflops']:>7.1f} TFLOP/s")
        elif r["kind"] == "ratio":
            print(f"ratio   {r['what']:<32} b{r['batch']:<3} {r['mode']:<5} measured {r['measured']:.2f} analytic {r['analytic_macs']:.2f}")
        elif r["kind"] == "forward":
            print(f"forward {r['preset']:>14} b{r['batch']:<4} {r['dtype']:<8} {r['mode']:<7} {r['median_ms']:>8.2f} ms "
                  f"{r['tflops']:>7.1f} TFLOP/s mfu {r['mfu']}")
    for s in data["skipped"]:
        print("skipped:", s)


if __name__ == "__main__":
    main()
