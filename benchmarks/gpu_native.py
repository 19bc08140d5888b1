"""The prepared GPU check of msf-run-native (issue 10), run through `benchmarks/gpu_native.sh`.

On a CUDA machine it
1. builds msf-run-native against the machine's CUDA torch with the CUDA graph runner (-DMSF_WITH_CUDA=ON);
2. writes random-weight cascades, tiny (tiny/scale0 + tiny/scale1, a tiny VAE) and paper-sized
   (msf-xl/scale0 + msf-xl/scale1, an SD-VAE-sized decoder), and exports each with
   `msf-export --engine aoti --device cuda`;
3. samples the same flags with `msf-run --backend aoti --no-cuda-graph` (the reference), then with
   msf-run-native eager (--no-cuda-graph) and as one CUDA graph (--cuda-graph), at batch 1 and 8, and
   records the mean pixel difference to the reference (8-bit levels; goal <= 1), each runner's
   sampling time, overhead and graph capture time from its stderr lines, and the process wall time.

`--dry-run` proves every code path on a CPU: the CPU build, the tiny cascade on --device cpu (the
--cuda-graph runs fall back to eager with a note), and a compile-only check of the CUDA-only code
(main.cpp and cuda_graph.cpp with -DMSF_WITH_CUDA) against this torch's headers and the CUDA
toolkit's, where the toolkit's headers exist. Results are rewritten after every step, so a run cut
short still reports what it finished. Heavy files go to --work; OUTDIR gets gpu_native.json only.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from msf_train.checkpoint import atomic_write_json  # noqa: E402

TOTAL = re.compile(r"total: ([\d.]+) s for (\d+) image\(s\), [\w.+-]+ images/s; engine calls ([\d.]+) s; overhead x([\w.]+)")
CAPTURE = re.compile(r"graph capture \(once per batch size and plan\): ([\d.]+) s")
TINY_VAE = {"block_out_channels": (8, 8, 8, 8), "norm_num_groups": 2}
# name: presets, VAE (None = SD-VAE sized), steps, class id
CASCADES = {"tiny": (["tiny/scale0", "tiny/scale1"], TINY_VAE, "10,5", 3),
            "paper": (["msf-xl/scale0", "msf-xl/scale1"], None, "100,50", 330)}


class Report:
    """gpu_native.json, rewritten after every step."""

    def __init__(self, path: Path, budget_s: float):
        self.path, self.budget_s, self.t0 = path, budget_s, time.perf_counter()
        self.data = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "steps": [], "runs": [], "skipped": []}

    def add(self, key: str, item: dict) -> None:
        self.data[key].append(item)
        self.data["elapsed_s"] = round(time.perf_counter() - self.t0, 1)
        atomic_write_json(self.path, self.data)
        print(f"[gpu_native] {key[:-1]}: {item}", flush=True)

    def over(self, what: str) -> bool:
        if time.perf_counter() - self.t0 <= self.budget_s:
            return False
        self.add("skipped", {"what": what, "why": f"time budget of {self.budget_s:.0f} s spent"})
        return True


def sh(cmd: list, timeout: float = 1800) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout)
    return r, time.perf_counter() - t0


def last_line(r: subprocess.CompletedProcess) -> str:
    lines = [l for l in (r.stderr + r.stdout).splitlines() if l.strip()]
    return lines[-1] if lines else f"exit {r.returncode}"


def cuda_syntax_check() -> dict:
    """Compile (no link) the CUDA-only code against this torch's headers and the CUDA toolkit's: a
    CPU torch wheel ships the c10/cuda and ATen/cuda headers, only not their libraries."""
    import torch
    from torch.utils.cpp_extension import include_paths

    homes = [os.environ.get("CUDA_HOME", ""), "/usr/local/cuda", *map(str, sorted(Path("/usr/local").glob("cuda-*")))]
    cuda_home = next((h for h in homes if h and Path(h, "include", "cuda_runtime_api.h").is_file()), None)
    cxx = shutil.which("c++") or shutil.which("g++")
    if cuda_home is None or cxx is None:
        return {"status": "skipped", "why": "no CUDA toolkit headers" if cxx else "no C++ compiler"}
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    cmd = [cxx, "-std=c++20", "-fsyntax-only", "-DMSF_WITH_CUDA", "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE",
           f"-D_GLIBCXX_USE_CXX11_ABI={abi}", *[f"-I{p}" for p in include_paths()], f"-I{cuda_home}/include",
           str(ROOT / "runtime/native/cuda_graph.cpp"), str(ROOT / "runtime/native/main.cpp")]
    r, secs = sh(cmd, timeout=600)
    errors = [l for l in r.stderr.splitlines() if "error" in l]
    return {"status": "ok" if r.returncode == 0 else "failed", "seconds": round(secs, 1), "cuda": cuda_home,
            **({"first_error": errors[0] if errors else last_line(r)} if r.returncode else {})}


def pixel_diff(a: Path, b: Path) -> float:
    import numpy as np
    from PIL import Image

    x, y = (np.asarray(Image.open(p)).astype(np.float64) for p in (a, b))
    return float(np.abs(x - y).mean()) if x.shape == y.shape else float("inf")


def timing(r: subprocess.CompletedProcess) -> dict:
    m = TOTAL.search(r.stderr)
    out = {"sample_s": float(m.group(1)), "engine_s": float(m.group(3)), "overhead": m.group(4)} if m else {}
    c = CAPTURE.search(r.stderr)
    if c:
        out["capture_s"] = float(c.group(1))
    out["graph"] = " graph]" in r.stderr
    return out


def export(name: str, work: Path, device: str, report: Report) -> Path | None:
    from runtime.cascade import SD_VAE_CONFIG, write_random_cascade

    presets, vae, _, _ = CASCADES[name]
    folder = work / f"{name}-cascade"
    if not (folder / "cascade.json").is_file():
        write_random_cascade(folder, presets, seed=3, vae=vae if vae is not None else SD_VAE_CONFIG)
    art = work / f"{name}-aoti-{device}"
    r, secs = sh([sys.executable, "-m", "msf_export.cli", "--engine", "aoti", "--device", device, "--model", folder,
                  "--out", art, "--max-batch", 16, "--quiet"])
    report.add("steps", {"step": f"export {name} aoti {device}", "ok": r.returncode == 0, "seconds": round(secs, 1),
                         **({} if r.returncode == 0 else {"error": last_line(r)})})
    return art if r.returncode == 0 else None


def compare(name: str, art: Path, binary: Path, device: str, batches, work: Path, report: Report) -> None:
    _, _, steps, cls = CASCADES[name]
    steps = "4,2" if device == "cpu" else steps
    for b in batches:
        if report.over(f"{name} batch {b}"):
            return
        flags = ["--model", art, "--class", cls, "--batch", b, "--steps", steps, "--seed", 0, "--device", device]
        ref = work / f"{name}-b{b}-python.png"
        rp, wall = sh([sys.executable, "-m", "runtime.cli", *flags, "--no-cuda-graph", "--out", ref])
        report.add("runs", {"cascade": name, "batch": b, "runner": "msf-run (python)", "ok": rp.returncode == 0,
                            "process_s": round(wall, 3), **timing(rp),
                            **({} if rp.returncode == 0 else {"error": last_line(rp)})})
        for mode in ("--no-cuda-graph", "--cuda-graph"):
            png = work / f"{name}-b{b}-native{mode.replace('--', '-')}.png"
            rn, wall = sh([binary, *flags, mode, "--out", png])
            item = {"cascade": name, "batch": b, "runner": f"msf-run-native {mode}", "ok": rn.returncode == 0,
                    "process_s": round(wall, 3), **timing(rn)}
            if rn.returncode == 0 and rp.returncode == 0:
                item["mean_pixel_diff_vs_python"] = round(pixel_diff(png, ref), 4)
            if rn.returncode != 0:
                item["error"] = last_line(rn)
            notes = [l for l in rn.stderr.splitlines() if l.startswith("note:")]
            if notes:
                item["note"] = notes[0]
            report.add("runs", item)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for gpu_native.json")
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "msf-gpu-native",
                    help="builds, cascades, exports and images (gigabytes for the paper cascade)")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny cascade: prove every code path")
    ap.add_argument("--tiny-art", type=Path, help="reuse this AOTInductor export of the tiny cascade (same device)")
    ap.add_argument("--skip-paper", action="store_true", help="the tiny cascade only")
    ap.add_argument("--budget-s", type=float, default=480.0, help="start no new step after this many seconds")
    a = ap.parse_args(argv)
    import torch

    from runtime.native.build import BUILD_DIR, BuildError, ensure_binary

    a.out.mkdir(parents=True, exist_ok=True)
    a.work.mkdir(parents=True, exist_ok=True)
    report = Report(a.out / "gpu_native.json", a.budget_s)
    device = "cpu" if a.dry_run else "cuda"
    report.data.update(mode="dry-run" if a.dry_run else "gpu", torch=torch.__version__,
                       gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None)
    if device == "cuda" and not torch.cuda.is_available():
        report.add("skipped", {"what": "everything", "why": f"torch {torch.__version__} sees no CUDA GPU"})
        print("Error: no CUDA GPU here; run with --dry-run to check the code paths on a CPU", file=sys.stderr)
        return 1
    if a.dry_run:
        report.add("steps", {"step": "compile-only check of the CUDA code", **cuda_syntax_check()})
    t0 = time.perf_counter()
    try:
        binary = ensure_binary(BUILD_DIR if a.dry_run else a.work / "build-cuda", cuda=not a.dry_run,
                               jobs=os.cpu_count() or 2)
    except BuildError as e:
        report.add("steps", {"step": "build msf-run-native", "ok": False, "error": str(e)})
        return 1
    report.add("steps", {"step": f"build msf-run-native ({'CPU' if a.dry_run else 'CUDA'})", "ok": True,
                         "seconds": round(time.perf_counter() - t0, 1)})
    names = ["tiny"] + ([] if a.dry_run or a.skip_paper else ["paper"])
    for name in names:
        if report.over(f"export {name}"):
            break
        art = a.tiny_art if name == "tiny" and a.tiny_art else export(name, a.work, device, report)
        if art is not None:
            compare(name, art, binary, device, (1,) if a.dry_run else (1, 8), a.work, report)
    runs = report.data["runs"]
    bad = [r for r in runs if not r["ok"] or r.get("mean_pixel_diff_vs_python", 0) > 1.0]
    bad += [s for s in report.data["steps"] if s.get("ok") is False or s.get("status") == "failed"]
    report.data["summary"] = {"runs": len(runs), "failed_or_over_1_level": len(bad)}
    report.add("steps", {"step": "done", "ok": not bad})
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
