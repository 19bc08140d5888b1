"""msf-run-native against msf-run, both through AOTInductor, on this machine's CPU (issue 10).

    pytest benchmarks/test_bench_native.py --benchmark-only -s      # ~5 min the first time (export), then ~2 min

The embedded demo cascade (runtime/weights/demo-msf) is exported to AOTInductor once and kept in
`.benchmarks/native-cache` (override: MSF_BENCH_DIR; msf-export's no-op re-run re-uses it). Both
runners are real processes with the same flags and the same threads (MSF_BENCH_THREADS, default 2),
run alternately, ROUNDS times each; medians are reported:
- per-image latency at batch 1 and 8: the sampling time each runner prints ("total: ... s"), / batch;
- the native runner's overhead, end-to-end sampling time / time inside engine calls (goal <= 1.02);
- startup: process start to first image written, at 1 + 1 steps (load, checks, one step per stage,
  decode, PNG), and the process time outside sampling.
STEPS is few steps (10 + 5, CFG 1.4 then none, as the demo recipe), so the file runs in minutes; the
per-step cost is the same at 100 + 50. The last test prints a table and writes bench_native.json.
(Run the whole file: the table needs the latency tests' results.)
"""
from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "runtime" / "weights" / "demo-msf"
STEPS = "10,5"
ROUNDS = 5
THREADS = os.environ.get("MSF_BENCH_THREADS", str(max(1, min(2, os.cpu_count() or 1))))
TOTAL = re.compile(r"total: ([\d.]+) s for (\d+) image\(s\), [\w.+-]+ images/s; engine calls ([\d.]+) s")
RESULTS: dict = {"latency": {}, "startup": {}}


@pytest.fixture(scope="session")
def work() -> Path:
    d = Path(os.environ.get("MSF_BENCH_DIR") or ROOT / ".benchmarks" / "native-cache")
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="session")
def native() -> Path:  # the binary (built if need be), or a skip with the reason
    from runtime.native.build import binary_or_reason

    found = binary_or_reason()
    return found[0] or pytest.skip(found[1])


@pytest.fixture(scope="session")
def demo_aoti(work) -> Path:
    from msf_export.export import export_cascade, resolve_options

    t0 = time.perf_counter()
    r = export_cascade(DEMO, work / "demo-aoti", resolve_options("aoti", "fp32", (1, 8, 16), "cpu"), progress=False)
    RESULTS["export"] = {"status": r.status, "seconds": round(time.perf_counter() - t0, 1)}
    return r.out


def run(cmd: list, out: Path) -> tuple[float, float, float]:
    """-> (process wall s, sampling s, engine-call s) of one runner writing ``out``."""
    env = {**os.environ, "OMP_NUM_THREADS": THREADS, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    r = subprocess.run([str(c) for c in cmd] + ["--out", str(out)], capture_output=True, text=True, env=env,
                       timeout=1800)
    wall = time.perf_counter() - t0
    assert r.returncode == 0 and out.is_file(), r.stderr
    m = TOTAL.search(r.stderr)
    return wall, float(m.group(1)), float(m.group(3))


def runners(native: Path, model: Path, *flags) -> dict[str, list]:
    common = ["--model", model, "--device", "cpu", *flags]
    return {"python": [sys.executable, "-m", "runtime.cli", "--backend", "aoti", *common],
            "native": [native, *common]}


def alternate(cmds: dict[str, list], tmp_path: Path) -> dict[str, list[tuple[float, float, float]]]:
    """ROUNDS rounds, each runner once per round, after one untimed warm-up each (page cache, CPU clocks)."""
    for name, cmd in cmds.items():
        run(cmd, tmp_path / f"warm-{name}.png")
    got: dict[str, list] = {name: [] for name in cmds}
    for k in range(ROUNDS):
        for name, cmd in cmds.items():
            got[name].append(run(cmd, tmp_path / f"{name}-{k}.png"))
    return got


@pytest.mark.parametrize("batch", [1, 8])
def test_native_vs_python_latency(benchmark, native, demo_aoti, tmp_path, batch):
    cmds = runners(native, demo_aoti, "--class", 330, "--batch", batch, "--steps", STEPS, "--seed", 0)
    got = {}
    benchmark.pedantic(lambda: got.update(alternate(cmds, tmp_path)), rounds=1, iterations=1)
    row = {}
    for name, runs in got.items():
        sample = statistics.median(r[1] for r in runs)
        engine = statistics.median(r[2] for r in runs)
        row[name] = {"per_image_s": round(sample / batch, 4), "process_s": round(statistics.median(r[0] for r in runs), 3),
                     "overhead": round(sum(r[1] for r in runs) / sum(r[2] for r in runs), 4), "engine_s": round(engine, 4)}
    row["python/native per image"] = round(row["python"]["per_image_s"] / row["native"]["per_image_s"], 3)
    RESULTS["latency"][batch] = row
    benchmark.extra_info.update(batch=batch, threads=THREADS, steps=STEPS, **row)
    print(f"\n[native bench] batch {batch}: {json.dumps(row)}")
    assert row["native"]["overhead"] > 0


def test_startup_to_first_image(benchmark, native, demo_aoti, tmp_path, work):
    cmds = runners(native, demo_aoti, "--class", 330, "--steps", "1,1")
    got = {}
    benchmark.pedantic(lambda: got.update(alternate(cmds, tmp_path)), rounds=1, iterations=1)
    for name, runs in got.items():
        RESULTS["startup"][name] = {"process_s": round(statistics.median(r[0] for r in runs), 3),
                                    "outside_sampling_s": round(statistics.median(r[0] - r[1] for r in runs), 3)}
    benchmark.extra_info.update(threads=THREADS, **RESULTS["startup"])
    print(f"\n[native bench] startup: {json.dumps(RESULTS['startup'])}")
    report(work)


def report(work: Path) -> None:
    """The table for BENCHMARKS.md, printed (-s) and written to bench_native.json in the work folder."""
    RESULTS.update(threads=THREADS, steps=STEPS, rounds=ROUNDS, date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    (work / "bench_native.json").write_text(json.dumps(RESULTS, indent=1))
    print("\n| batch | Python per image | native per image | Python / native | native overhead | Python overhead |")
    print("|---|---|---|---|---|---|")
    for b, row in sorted(RESULTS["latency"].items()):
        p, n = row["python"], row["native"]
        print(f"| {b} | {p['per_image_s']:.3f} s | {n['per_image_s']:.3f} s | {row['python/native per image']:.2f} "
              f"| x{n['overhead']:.3f} | x{p['overhead']:.3f} |")
    for name, s in RESULTS["startup"].items():
        print(f"startup {name}: {s['process_s']:.2f} s to the first image (1+1 steps), {s['outside_sampling_s']:.2f} s outside sampling")
