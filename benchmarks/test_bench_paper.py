"""MSF against DiT-XL/2 at the paper's presets on this CPU (random weights: latency does not depend on them).

Per-forward latency of `msf-xl/scale0`, `msf-xl/scale1` and `dit-xl/2` for one image, at the batch
the recipe runs each at (CFG doubles scale 0 and DiT; scale 1 runs without CFG), through the
runtime's torch engine and through ONNX Runtime (the fastest CPU backend measured here). From these:
the per-image sampling cost of MSF (100 steps of scale 0 with CFG + 50 of scale 1 without; also
scale 1 at 20 steps) and of DiT-XL/2 (100 and 250 steps with CFG), and the measured ratios next to
the analytic multiply-add ratios (2.15 and 5.4). Achieved GFLOP/s per preset explains the gap.

The ONNX exports of the three presets (~3.6 GB together) are cached under `.benchmarks/onnx-cache`
(override: MSF_BENCH_CACHE), so only the first run pays the ~4 minutes of export.
Run: `pytest benchmarks/test_bench_paper.py --benchmark-only` (the ratios print at the end).
With the released DiT-XL/2 imported (`msf-train import-dit DiT-XL-2-256x256.pt --vae sd-vae-ft-ema --out
runs/dit-xl2`), `MSF_BENCH_DIT=runs/dit-xl2 pytest benchmarks/test_bench_paper.py --benchmark-only` times
its real weights (DDPM-eps -> velocity conversion included) in place of the random dit-xl/2.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from benchmarks.ratios import RESULTS, record
from msf_train.config import get_preset
from msf_train.model import build_model, count_macs, export_contract, sample_inputs

PRESETS = {"msf-xl/scale0": 2, "msf-xl/scale1": 1, "dit-xl/2": 2}  # name -> batch for one image (CFG x2)
CACHE = Path(os.environ.get("MSF_BENCH_CACHE", Path(__file__).resolve().parents[1] / ".benchmarks" / "onnx-cache"))
BACKENDS = ("torch", "onnx")


# The released DiT-XL/2 instead of random weights: MSF_BENCH_DIT=<folder from `msf-train import-dit`>.
# Its forward then includes the DDPM-eps -> velocity conversion, as everything sampling it does.
RELEASED_DIT = os.environ.get("MSF_BENCH_DIT")


@pytest.fixture(scope="module", params=list(PRESETS))
def preset(request):
    from runtime.cascade import random_model_state

    if request.param == "dit-xl/2" and RELEASED_DIT:
        from msf_train.checkpoint import load_stage, read_cascade

        folder = Path(RELEASED_DIT)
        cfg, model = load_stage(read_cascade(folder)[0][0] if (folder / "cascade.json").is_file() else folder)
        if (cfg.depth, cfg.hidden_size, cfg.latent_size) != (28, 1152, 32):
            pytest.exit(f"MSF_BENCH_DIT={folder} holds {cfg.name}, not a DiT-XL/2 at 256 px", returncode=2)
        return cfg.replace(name="dit-xl/2"), model.requires_grad_(False)
    cfg = get_preset(request.param)
    model = build_model(cfg)
    model.load_state_dict(random_model_state(cfg, seed=0))
    return cfg, model.eval().requires_grad_(False)


def _onnx_session(cfg, model):
    import onnxruntime as ort

    from msf_export.onnx import export_onnx

    folder = CACHE / f"{cfg.name.replace('/', '_')}-fp32{'-' + cfg.parameterization if cfg.parameterization != 'velocity' else ''}"
    if not (folder / "model.onnx").exists():
        inputs, outputs = export_contract(cfg)

        class Call(torch.nn.Module):  # keyword inputs in contract order, as the exporter expects
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, x, t, y, prior=None):
                return self.m(x, t, y, prior)

        # Export into a scratch folder and rename it whole: a killed run never leaves a half cache.
        scratch = folder.with_name(folder.name + ".partial")
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        export_onnx(Call(model), inputs, outputs, scratch / "model.onnx", (1, 2, 8), external_data=True)
        shutil.rmtree(folder, ignore_errors=True)
        scratch.rename(folder)
    path = folder / "model.onnx"
    so = ort.SessionOptions()
    so.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_forward(benchmark, preset, backend):
    cfg, model = preset
    batch = PRESETS[cfg.name]
    feeds = sample_inputs(cfg, batch)
    if backend == "torch":
        def fn():
            with torch.no_grad():
                return model(**feeds)
    else:
        session = _onnx_session(cfg, model)
        np_feeds = {k: v.numpy() for k, v in feeds.items()}

        def fn():
            return session.run(None, np_feeds)

    benchmark.group = f"paper presets: one forward for one image"
    benchmark.extra_info.update(preset=cfg.name, batch=batch, gmacs=count_macs(cfg) * batch / 1e9)
    benchmark.pedantic(fn, rounds=2, warmup_rounds=1, iterations=1)
    sec = benchmark.stats.stats.median
    gflops = 2 * count_macs(cfg) * batch / sec / 1e9
    benchmark.extra_info["gflops"] = round(gflops, 1)
    record("paper", backend, cfg.name, sec, gflops=gflops, batch=batch)


def paper_ratios() -> list[str]:
    """MSF vs DiT-XL/2 per-image sampling cost from the recorded per-forward medians."""
    lines = []
    macs = {n: count_macs(get_preset(n)) for n in PRESETS}
    for backend in BACKENDS:
        r = RESULTS.get(("paper", backend), {})
        if len(r) < 3:
            continue
        s0, s1, dit = r["msf-xl/scale0"]["sec"], r["msf-xl/scale1"]["sec"], r["dit-xl/2"]["sec"]
        msf = 100 * s0 + 50 * s1
        msf20 = 100 * s0 + 20 * s1
        a_msf = 100 * 2 * macs["msf-xl/scale0"] + 50 * macs["msf-xl/scale1"]
        a_msf20 = 100 * 2 * macs["msf-xl/scale0"] + 20 * macs["msf-xl/scale1"]
        a_dit = 2 * macs["dit-xl/2"]
        for steps in (100, 250):
            lines.append(f"[{backend}] DiT-XL/2 {steps} steps / MSF 100+50: measured {steps * dit / msf:.2f}, "
                         f"analytic {steps * a_dit / a_msf:.2f}")
        lines.append(f"[{backend}] DiT-XL/2 100 steps / MSF 100+20: measured {100 * dit / msf20:.2f}, "
                     f"analytic {100 * a_dit / a_msf20:.2f}")
        lines.append(f"[{backend}] per image: MSF 100+50 {msf:.1f} s, DiT-XL/2 100 steps {100 * dit:.1f} s, "
                     f"250 steps {250 * dit:.1f} s")
        lines.append(f"[{backend}] achieved GFLOP/s: " + ", ".join(f"{n} {r[n]['gflops']:.0f}" for n in PRESETS))
    return lines
