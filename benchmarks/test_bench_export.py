"""Export time and sampling latency per backend at the demo presets, on this machine's CPU.

    pytest benchmarks/test_bench_export.py --benchmark-only          # torch + ONNX Runtime, a few minutes
    pytest benchmarks/test_bench_export.py --benchmark-only -m "slow or not slow"  # + AOTInductor (~6 min more)

Exported artifacts are kept in `.benchmarks/export-cache` (override: MSF_BENCH_DIR) and re-used while
their inputs match (msf-export's no-op re-run), so only the first run pays the export time.

Cascades (random weights; latency does not depend on what the weights learned, DESIGN.md section 6):
`msf-demo` = demo/scale0 + demo/scale1, `dit-demo` = demo/dit, each with the same small random VAE
(block_out_channels 32/64/128/128, 128 px images). Backends: torch eager, ONNX Runtime (CPU
provider), AOTInductor (CPU package). Batch 1 and 8 images with the default CFG (1.4 at scale 0,
none at scale 1; 1.5 for the DiT), so the first stage runs a doubled batch. Few steps (STEPS), so
the whole file runs in minutes; the per-step cost is what differs between backends, which
`test_forward_latency` measures alone (one forward of each denoiser, no CFG, no decode).

The last test prints a table (and writes bench_export.json in the work folder) with the speed-up of
each compiled backend over eager torch; the goal (issue 5) is >= 1.5x for the best one.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

STEPS = {"msf-demo": [10, 5], "dit-demo": [10]}
CASCADE_OF = {"msf-demo": "demo", "dit-demo": "demo-dit"}  # benchmarks.gpu_selftest.CASCADES
BACKENDS = ["torch", "onnx", "aoti"]
# AOTInductor compiles C++ for minutes on 2 cores: opt-in with -m slow, so the default run stays short.
BACKEND_PARAMS = ["torch", "onnx", pytest.param("aoti", marks=pytest.mark.slow)]
BATCHES = [1, 8]
RESULTS: dict = {"export_s": {}, "latency_s": {}}


@pytest.fixture(scope="session")
def work(tmp_path_factory) -> Path:
    d = Path(os.environ.get("MSF_BENCH_DIR") or Path(__file__).resolve().parents[1] / ".benchmarks" / "export-cache")
    d.mkdir(parents=True, exist_ok=True)
    return d


def model_dir(work: Path, cascade: str) -> Path:
    from benchmarks.gpu_selftest import make_cascade

    return make_cascade(CASCADE_OF[cascade], work / "models" / cascade)


def export(work: Path, cascade: str, engine: str):
    """Export (or find the up-to-date export of) one cascade; -> (folder, status, seconds)."""
    from msf_export.export import export_cascade, resolve_options

    opts = resolve_options(engine, "fp32", (1, 8, 16), "cpu")
    t0 = time.perf_counter()
    r = export_cascade(model_dir(work, cascade), work / "artifacts" / f"{cascade}-{engine}", opts, progress=False)
    return r.out, r.status, time.perf_counter() - t0


@pytest.mark.parametrize("engine", ["onnx", pytest.param("aoti", marks=pytest.mark.slow)])
@pytest.mark.parametrize("cascade", list(STEPS))
def test_export_time(benchmark, work, cascade, engine):
    """Wall time of `msf-export` for the whole cascade (denoisers + decoder, parity checks included)."""
    out = {}

    def run():
        out["r"] = export(work, cascade, engine)

    benchmark.pedantic(run, rounds=1, iterations=1)
    folder, status, seconds = out["r"]
    benchmark.extra_info.update(status=status, seconds=seconds)
    if status == "exported":
        RESULTS["export_s"][f"{cascade}/{engine}"] = round(seconds, 1)
    assert (folder / "manifest.json").is_file()


_ENGINES: dict = {}


def engines(work: Path, cascade: str, backend: str):
    """(stages, decoder) of one cascade and backend, loaded once per session."""
    from runtime.engines import load_cascade

    key = (cascade, backend)
    if key not in _ENGINES:
        folder = model_dir(work, cascade) if backend == "torch" else export(work, cascade, backend)[0]
        _ENGINES[key] = load_cascade(folder, backend, "cpu")
    return _ENGINES[key]


def _record(benchmark, key: str, batch: int):
    st = benchmark.stats.stats
    benchmark.extra_info.update(per_image_s=st.median / batch, threads=torch.get_num_threads())
    RESULTS["latency_s"][key] = {"median": st.median, "min": st.min}


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("cascade", list(STEPS))
def test_forward_latency(benchmark, work, cascade, backend, batch):
    """One forward of every denoiser of the cascade at `batch` (what one sampling step costs, no CFG)."""
    from msf_export.onnx import example_feeds

    stages, _ = engines(work, cascade, backend)
    feeds = [(e, example_feeds(e.inputs, batch, num_classes=c.num_classes)) for c, e in stages]

    def step():
        return [e.run(f) for e, f in feeds]

    step()
    benchmark.pedantic(step, rounds=5, warmup_rounds=1, iterations=1)
    _record(benchmark, f"forward/{cascade}/{backend}/b{batch}", batch)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("cascade", list(STEPS))
def test_sampling_latency(benchmark, work, cascade, backend, batch):
    """One msf-run call's work (Algorithm 3 over all stages with CFG + VAE decode) for `batch` images."""
    from runtime.sampler import make_plan, sample

    stages, dec = engines(work, cascade, backend)
    plan = make_plan([c for c, _ in stages], STEPS[cascade])
    y = [k % 10 for k in range(batch)]
    sample(stages, dec, y, 0, plan, timed=False)  # warm-up (first-call allocations, ORT arena)
    result = benchmark.pedantic(lambda: sample(stages, dec, y, 0, plan, timed=False), rounds=3, iterations=1)
    assert result.image.shape[0] == batch
    _record(benchmark, f"sample/{cascade}/{backend}/b{batch}", batch)


def test_zz_summary(work):
    """Speed-up of each compiled backend over eager torch (same cascade, batch, machine, run)."""
    lat = RESULTS["latency_s"]
    if not lat:
        pytest.skip("no latency measured in this session")
    rows, best = [], {}
    for what in ("forward", "sample"):
        for cascade in STEPS:
            for batch in BATCHES:
                base = lat.get(f"{what}/{cascade}/torch/b{batch}")
                for backend in BACKENDS:
                    t = lat.get(f"{what}/{cascade}/{backend}/b{batch}")
                    if t is None or base is None:
                        continue
                    speedup = base["median"] / t["median"]
                    if backend != "torch":
                        best[what] = max(best.get(what, 0.0), speedup)
                    rows.append(f"{what:<7} {cascade:<9} b{batch:<2} {backend:<6} median {t['median'] * 1000:8.1f} ms "
                                f"(min {t['min'] * 1000:8.1f})  {t['median'] / batch * 1000:7.1f} ms/img  x{speedup:.2f}")
    report = {**RESULTS, "steps": STEPS, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
              "torch": torch.__version__, "best_compiled_speedup": best, "date": time.strftime("%Y-%m-%d"),
              "load_avg": os.getloadavg()}
    (work / "bench_export.json").write_text(json.dumps(report, indent=2))
    print("\n" + "\n".join(rows) + f"\nexport seconds: {RESULTS['export_s']}\nbest compiled backend vs eager: "
          + ", ".join(f"{k} x{v:.2f}" for k, v in best.items()) + f"\nload average {os.getloadavg()}")


def demo_ratios() -> list[str]:
    """DiT / MSF per-image sampling time at the demo presets, per backend and batch (this run)."""
    from msf_train.config import get_preset
    from msf_train.model import count_macs

    lat = RESULTS["latency_s"]
    m = {n: count_macs(get_preset(n)) for n in ("demo/scale0", "demo/scale1", "demo/dit")}
    (s0, s1), (d,) = STEPS["msf-demo"], STEPS["dit-demo"]
    analytic = (d * 2 * m["demo/dit"]) / (s0 * 2 * m["demo/scale0"] + s1 * m["demo/scale1"])
    lines = []
    for backend in BACKENDS:
        for batch in BATCHES:
            msf, dit = lat.get(f"sample/msf-demo/{backend}/b{batch}"), lat.get(f"sample/dit-demo/{backend}/b{batch}")
            if msf and dit:
                lines.append(f"[{backend}] demo DiT {d} steps / MSF {s0}+{s1} (CFG, decode included), batch {batch}: "
                             f"measured {dit['median'] / msf['median']:.2f}, analytic denoiser MACs {analytic:.2f}")
    return lines
