"""Runtime benchmarks (pytest-benchmark; not collected by the default `pytest`, whose testpaths is tests/).

    .venv/bin/pytest benchmarks/test_bench_runtime.py            # CPU overhead; GPU cases skip without CUDA
    python benchmarks/test_bench_runtime.py --batches 1,16       # on a GPU box: eager vs CUDA graph table
    python benchmarks/test_bench_runtime.py --paper --dtype bf16 # the same at msf-xl / dit-xl/2 (random weights)

CPU: the torch backend's overhead, end-to-end time / summed engine-call time (goal <= 1.05), at the
demo presets (`demo/scale0` + `demo/scale1` and the `demo/dit` baseline) with random weights and a
small random VAE, a few steps each so the file runs in a minute or two. The ratio is in each
benchmark's extra_info and printed (run with -s to see it).

GPU: whole-cascade latency, eager vs one CUDA graph (`runtime.graphs`), batch 1 and 16, at the demo
presets and the paper recipe (100 + 50 steps, CFG 1.4 / 1.0; the DiT 100 steps at CFG 1.5).
"""
from __future__ import annotations

import os
import statistics

import pytest
import torch

from runtime.cascade import SD_VAE_CONFIG, build_random_cascade
from runtime.graphs import CascadeRunner, time_cascade
from runtime.sampler import make_plan, sample

# Two threads, as tests/conftest.py; MSF_BENCH_THREADS=1 on a machine shared with other jobs, where
# OpenMP threads waiting on a descheduled sibling make every op several times slower.
torch.set_num_threads(int(os.environ.get("MSF_BENCH_THREADS", max(1, min(2, os.cpu_count() or 1)))))

CASCADES = {"msf": ("demo/scale0", "demo/scale1"), "dit": ("demo/dit",)}
PAPER = {"msf": ("msf-xl/scale0", "msf-xl/scale1"), "dit": ("dit-xl/2",)}
CPU_STEPS = {"msf": ([6, 3], [1.4, 1.0]), "dit": ([6], [1.5])}  # few steps: the ratio, not the total, matters


@pytest.fixture(scope="module", params=sorted(CASCADES))
def cpu_cascade(request):
    return request.param, build_random_cascade(CASCADES[request.param], device="cpu")


@pytest.mark.parametrize("batch", [1, 8])
def test_cpu_torch_overhead(benchmark, cpu_cascade, batch):
    name, (stages, decoder) = cpu_cascade
    steps, cfg = CPU_STEPS[name]
    plan = make_plan([c for c, _ in stages], steps, cfg)
    results = []

    def once():
        results.append(sample(stages, decoder, [330] * batch, seeds=len(results), plan=plan))

    benchmark.pedantic(once, rounds=4, warmup_rounds=1, iterations=1)
    timed = results[1:]  # the warm-up round is not counted
    overhead = sum(r.total_s for r in timed) / sum(r.engine_s for r in timed)
    per_stage = {rec.name: round(statistics.median(r.timings[k].wall_s for r in timed), 5)
                 for k, rec in enumerate(timed[0].timings)}
    benchmark.extra_info.update(cascade=name, batch=batch, overhead=round(overhead, 4), stage_wall_s=per_stage,
                                engine_s=round(statistics.median(r.engine_s for r in timed), 5),
                                total_s=round(statistics.median(r.total_s for r in timed), 5))
    print(f"\n[cpu torch] {name} batch {batch}: overhead x{overhead:.4f} "
          f"(end-to-end {statistics.median(r.total_s for r in timed) * 1e3:.1f} ms, stages {per_stage})")


# ---- GPU: eager vs one CUDA graph --------------------------------------------------------------
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module", params=sorted(CASCADES))
def gpu_cascade(request):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    return request.param, build_random_cascade(CASCADES[request.param], device="cuda")


@cuda_only
@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["eager", "graph"])
@pytest.mark.parametrize("batch", [1, 16])
def test_gpu_cascade_latency(benchmark, gpu_cascade, batch, mode):
    name, (stages, decoder) = gpu_cascade
    runner = CascadeRunner(stages, decoder, batch, make_plan([c for c, _ in stages]), use_graph=mode == "graph",
                           warn=False)
    assert runner.mode == mode, runner.reason
    y = [330] * batch

    def once():
        runner.sample(y, seeds=0, timed=False)
        torch.cuda.synchronize()

    benchmark.pedantic(once, rounds=5, warmup_rounds=1, iterations=1)
    benchmark.extra_info.update(cascade=name, batch=batch, mode=mode, gpu=torch.cuda.get_device_name(),
                                capture_s=runner.capture_s)


# ---- a script for GPU boxes --------------------------------------------------------------------
def latency_table(batches=(1, 16), paper: bool = False, dtype: str = "fp32", repeats: int = 3) -> list[str]:
    """Markdown rows: cascade, batch, eager and graph median latency, speed-up, on this machine's GPU."""
    presets = PAPER if paper else CASCADES
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = torch.cuda.get_device_name() if device == "cuda" else "cpu (no CUDA: graph rows fall back to eager)"
    rows = [f"device: {gpu}; torch {torch.__version__}; dtype {dtype}; plan: paper defaults (runtime.sampler.make_plan)",
            "| cascade | batch | eager ms | graph ms | eager/graph | graph capture s |", "|---|---|---|---|---|---|"]
    for name in sorted(presets):
        stages, decoder = build_random_cascade(presets[name], device=device, dtype=dtype,
                                               vae=SD_VAE_CONFIG if paper else None)
        plan = make_plan([c for c, _ in stages])
        for b in batches:
            e = time_cascade(stages, decoder, b, plan, use_graph=False, repeats=repeats)
            g = time_cascade(stages, decoder, b, plan, use_graph=True, repeats=repeats)
            label = "+".join(c.name for c, _ in stages)
            note = "" if g["mode"] == "graph" else f" ({g['reason']})"
            rows.append(f"| {label} | {b} | {e['median_s'] * 1e3:.1f} | {g['median_s'] * 1e3:.1f}{note} | "
                        f"{e['median_s'] / g['median_s']:.2f} | {g['capture_s']:.2f} |")
        del stages, decoder
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Eager vs CUDA-graph latency of whole cascades (random weights).")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--paper", action="store_true", help="msf-xl and dit-xl/2 with an SD-VAE-sized decoder")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    print("\n".join(latency_table(tuple(int(b) for b in a.batches.split(",")), a.paper, a.dtype, a.repeats)))
