"""One prepared script for a GPU machine: export, check and time every backend, write JSON.

It lives in benchmarks/ because it drives the runtime (imports flow runtime -> msf_export ->
msf_train; msf_export itself never imports runtime). `scripts/gpu_all.sh` runs it.

    python -m benchmarks.gpu_selftest --out /tmp/msf-gpu          # on a CUDA machine
    python -m benchmarks.gpu_selftest --out /tmp/x --device cpu --cascades tiny --engines onnx --steps 2,2

For each random-weight cascade (tiny: tiny/scale0 + tiny/scale1; demo: demo/scale0 + demo/scale1;
demo-dit: demo/dit, each with a small random VAE) it
1. times the torch backend eager and, on CUDA, as one CUDA graph of the whole cascade (runtime.graphs);
2. exports with each engine (aoti on the chosen device, trt where TensorRT is installed, onnx),
   recording export time and the manifest's parity errors;
3. samples the same seeds with the exported backend, compares the images with the torch backend
   (mean absolute difference in 8-bit pixel units) and times batch 1 and 8.
Failures of one engine are recorded and do not stop the others. Without CUDA and without
`--device cpu` it writes a JSON that says why it skipped and exits 0 (`--require-cuda`: exit 1).
"""
from __future__ import annotations

import json
import platform
import time
import traceback
from pathlib import Path

import click

from msf_train.cliutil import MsfCommand
from msf_train.errors import MsfError

CASCADES = {
    "tiny": (["tiny/scale0", "tiny/scale1"], {"block_out_channels": (8, 8, 8, 8), "norm_num_groups": 4}),
    "demo": (["demo/scale0", "demo/scale1"], {"block_out_channels": (32, 64, 128, 128), "norm_num_groups": 32}),
    "demo-dit": (["demo/dit"], {"block_out_channels": (32, 64, 128, 128), "norm_num_groups": 32}),
}


def make_cascade(name: str, folder: Path, seed: int = 0) -> Path:
    """A random-weight cascade folder for one of CASCADES (reused if already written)."""
    from runtime.cascade import write_random_cascade

    presets, vae = CASCADES[name]
    if not (folder / "cascade.json").is_file():
        write_random_cascade(folder, presets, seed=seed, vae=vae)
    return folder


def pixel_diff(a, b) -> float:
    """Mean absolute difference of two image batches in [-1, 1], in 8-bit pixel units (as PNGs store them)."""
    import torch

    q = lambda x: ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round()  # noqa: E731
    return float(torch.mean(torch.abs(q(a) - q(b))))


def sample_images(stages, decoder, classes, seed, steps):
    from runtime.sampler import make_plan, sample

    plan = make_plan([c for c, _ in stages], steps)
    return sample(stages, decoder, classes, seed, plan, timed=False).image


def _time(stages, decoder, batch, steps, use_graph, repeats):
    from runtime.graphs import time_cascade
    from runtime.sampler import make_plan

    plan = make_plan([c for c, _ in stages], steps)
    r = time_cascade(stages, decoder, batch, plan, use_graph=use_graph, repeats=repeats, warmup=1)
    return {k: r[k] for k in ("mode", "reason", "median_s", "min_s", "per_image_s", "capture_s")}


def run_selftest(out: Path, device: str, cascades: list[str], engines: list[str], steps: list[int] | None,
                 batches: list[int], repeats: int, log=print) -> dict:
    import torch

    from msf_export.export import export_cascade, resolve_options
    from runtime.engines import load_cascade

    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device)
    report = {"device": device, "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
              "host": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
              "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "steps": steps, "batches": batches, "cascades": {}}
    classes = [1, 2]
    for name in cascades:
        model = make_cascade(name, out / "models" / name)
        res = report["cascades"][name] = {"presets": CASCADES[name][0], "backends": {}}
        nsteps = steps[: len(CASCADES[name][0])] if steps else None
        stages, dec = load_cascade(model, "torch", dev)
        ref = sample_images(stages, dec, classes, 7, nsteps)
        torch_res = res["backends"]["torch"] = {"eager": {}, "graph": {}}
        for b in batches:
            torch_res["eager"][str(b)] = _time(stages, dec, b, nsteps, False, repeats)
            if dev.type == "cuda":
                torch_res["graph"][str(b)] = _time(stages, dec, b, nsteps, True, repeats)
        log(f"{name}: torch {json.dumps(torch_res)}")
        for engine in engines:
            entry = res["backends"][engine] = {}
            try:
                opts = resolve_options(engine, None, (1, 8, max(16, 2 * max(batches))),
                                       device if engine == "aoti" else None)
                t0 = time.perf_counter()
                r = export_cascade(model, out / "artifacts" / f"{name}-{engine}-{dev.type}", opts, progress=False)
                entry["export_s"] = round(time.perf_counter() - t0, 2)
                entry["export_status"] = r.status
                entry["parity"] = {e["name"]: e["parity"] for e in r.manifest["stages"] + [r.manifest["decoder"]]}
                estages, edec = load_cascade(r.out, engine, dev)
                img = sample_images(estages, edec, classes, 7, nsteps)
                entry["pixel_diff_vs_torch"] = pixel_diff(img, ref)
                entry["latency"] = {str(b): _time(estages, edec, b, nsteps, dev.type == "cuda", repeats)
                                    for b in batches}
            except Exception as e:  # noqa: BLE001 - record and go on with the next engine
                entry["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                entry["traceback"] = traceback.format_exc()[-2000:]
            log(f"{name}: {engine} {json.dumps({k: v for k, v in entry.items() if k != 'traceback'})}")
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return report


@click.command(cls=MsfCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Work folder; results in OUT/gpu_selftest.json.")
@click.option("--device", type=click.Choice(["auto", "cuda", "cpu"]), default="auto",
              help="auto: cuda when available, else skip (write the reason).")
@click.option("--cascades", default="tiny,demo,demo-dit", help=f"Comma list of {', '.join(CASCADES)}.")
@click.option("--engines", default="aoti,trt,onnx", help="Comma list of aoti, trt, onnx.")
@click.option("--steps", default="8,4", help="Euler steps per stage (few: this times the engines, not quality).")
@click.option("--batches", default="1,8", help="Batches to time.")
@click.option("--repeats", default=5, type=int, help="Timed runs per measurement (median reported).")
@click.option("--require-cuda", is_flag=True, help="Exit 1 instead of skipping when there is no CUDA.")
def main(out, device, cascades, engines, steps, batches, repeats, require_cuda):
    """Export tiny and demo cascades with AOTInductor (and TensorRT, ONNX), check parity, time them."""
    import torch

    out.mkdir(parents=True, exist_ok=True)
    path = out / "gpu_selftest.json"
    from msf_train.checkpoint import atomic_write_json

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else None
    if device is None or (device == "cuda" and not torch.cuda.is_available()):
        reason = "torch sees no CUDA device" + ("" if torch.version.cuda else " (this torch is a CPU build)")
        atomic_write_json(path, {"skipped": True, "reason": reason, "torch": torch.__version__})
        if require_cuda:
            raise MsfError(f"{reason}; --require-cuda asks for a CUDA run (wrote {path})")
        click.echo(f"skipped: {reason}; wrote {path}")
        return
    report = run_selftest(out, device, [c for c in cascades.split(",") if c], [e for e in engines.split(",") if e],
                          [int(s) for s in steps.split(",")] if steps else None,
                          [int(b) for b in batches.split(",")], repeats, log=lambda s: click.echo(s, err=True))
    atomic_write_json(path, report)
    click.echo(f"wrote {path}")


if __name__ == "__main__":
    main()
