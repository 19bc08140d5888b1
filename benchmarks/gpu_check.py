"""One prepared GPU measurement: MSF against DiT-XL/2 at the paper's presets, written as JSON.

    python benchmarks/gpu_check.py --out gpu_check.json            # CUDA: paper presets, <= 6 min (H100)
    python benchmarks/gpu_check.py --dry-run --out /tmp/dry.json    # anywhere: tiny presets, every section

Random weights (latency does not depend on them), bf16 denoisers, the SD-VAE-sized decoder in fp32.
Sections, most important first (issue #11); each one is recorded in the JSON as ran / skipped with
the reason, and skipped when the cost model below says it would not end inside --budget-s:
 1. fast_b64   the fastest torch path at batch 64: torch.compile'd denoisers (runtime.engines,
               mode "default") under one CUDA graph of the whole cascade: MSF 100+50 vs DiT-XL/2 100;
 2. eager_b64  the same cascades eager (no compile, no graph): the baseline of the issue's table;
 3. forward    one forward per preset at the recipe's batch (CFG doubles it), eager and compiled,
               bf16 and fp16, with TFLOP/s and MFU from the analytic multiply-adds;
 4. graph_b16 / eager_b16   batch 16 (CUDA graph of the eager engines, and eager);
 5. fp8        torchao float8 linears (skipped with the reason where torchao or an FP8 GPU is missing);
 6. compile_modes  max-autotune-no-cudagraphs per forward (long compile: last, only if time is left).
Every cascade is timed ONCE after a short warm-up (3 steps per stage, the same shapes). DiT-XL/2 at
250 steps is derived, not run: 250 x (per-step time of the 100-step run) + the decode, with the
per-step time = (T_100 - T_decode) / 100 and T_decode timed alone; the JSON says so.
Every row has the peak GPU memory allocated by torch during it (and the process's peak CPU RSS).
Results are rewritten after every row, so a run cut short still reports what it finished.

The cost model (`predict`) sums, per section, the work it will do at the PAPER presets: forwards x
analytic FLOPs / an assumed throughput (eager 220 TFLOP/s: measured on an H100 in issue #11; compiled
350 TFLOP/s: an assumption), torch.compile per (preset, batch) 45 s (assumption), graph capture
0.02 s per step (issue #11: 9.0 s capture incl. a 6.4 s full warm-up for 150 steps), building random
weights 8 ns per parameter (CPU init + copy). `--dry-run` runs every section on tiny presets,
records its own CPU time per section and writes the GPU prediction next to it ("prediction").
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from msf_train.checkpoint import atomic_write_json  # noqa: E402
from msf_train.config import get_preset  # noqa: E402
from msf_train.model import count_macs, count_params  # noqa: E402

# Dense (no sparsity) bf16/fp16 tensor-core peaks from the datasheets, TFLOP/s.
DATASHEET_PEAK = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.0, "A10": 125.0}

PAPER = dict(msf=("msf-xl/scale0", "msf-xl/scale1"), dit="dit-xl/2", msf_steps=(100, 50), msf_cfg=(1.4, 1.0),
             dit_steps=100, dit_derived_steps=250, dit_cfg=1.5, big=64, small=16, reps=10)
DRY = dict(msf=("tiny/scale0", "tiny/scale1"), dit="tiny/dit", msf_steps=(6, 3), msf_cfg=(1.4, 1.0),
           dit_steps=6, dit_derived_steps=15, dit_cfg=1.5, big=4, small=2, reps=2)
WARM_STEPS = 3
# Cost model constants (see the module docstring); "assumed" ones are to be replaced by measurements.
COST = {"eager_tflops": 220.0, "compiled_tflops": 350.0, "compile_s": 45.0, "capture_s_per_step": 0.02,
        "build_s_per_param": 8e-9, "decode_s_per_image": 0.004, "startup_s": 20.0,
        "measured": ["eager_tflops (issue #11, H100)", "capture_s_per_step (issue #11)"],
        "assumed": ["compiled_tflops", "compile_s", "build_s_per_param", "decode_s_per_image", "startup_s"]}
SECTIONS = ("fast_b64", "eager_b64", "forward", "graph_b16", "eager_b16", "fp8", "compile_modes")


def peak_for(name: str) -> float | None:
    return next((v for k, v in DATASHEET_PEAK.items() if k in name), None)


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ---- the cost model ----------------------------------------------------------------------------
def _fwd_s(preset: str, batch: int, tflops: float) -> float:
    return 2 * count_macs(get_preset(preset)) * batch / (tflops * 1e12)


def _cascade_s(spec, run: str, batch: int, compiled: bool, graph: bool, built: set, compiled_for: set) -> float:
    """Predicted seconds of one timed cascade (warm-up, build, compile, capture included)."""
    presets, steps, cfgs = _runs(spec)[run]
    rate = COST["compiled_tflops" if compiled else "eager_tflops"]
    total = COST["decode_s_per_image"] * batch * 2  # warm-up decode + timed decode
    for p, s, w in zip(presets, steps, cfgs):
        b = batch * (2 if w != 1.0 else 1)
        total += (s + min(s, WARM_STEPS)) * _fwd_s(p, b, rate)
        if p not in built:
            built.add(p)
            total += count_params(get_preset(p)) * COST["build_s_per_param"]
        if compiled and (p, b) not in compiled_for:
            compiled_for.add((p, b))
            total += COST["compile_s"]
        if graph:
            total += s * COST["capture_s_per_step"]
    return total


def predict(spec=PAPER, compile_=True) -> dict:
    """Predicted GPU seconds per section at ``spec``'s presets (same order and work as `main`)."""
    built, compiled_for, out = set(), set(), {}
    big, small = spec["big"], spec["small"]
    out["fast_b64"] = sum(_cascade_s(spec, r, big, compile_, True, built, compiled_for) for r in ("msf", "dit"))
    out["eager_b64"] = sum(_cascade_s(spec, r, big, False, False, built, compiled_for) for r in ("msf", "dit"))
    fwd = 0.0
    for p, mult in _forward_presets(spec):
        b = big * mult
        fwd += (spec["reps"] + 2) * (_fwd_s(p, b, COST["eager_tflops"]) * 2 + _fwd_s(p, b, COST["compiled_tflops"]))
        if compile_ and (p, b) not in compiled_for:
            fwd += COST["compile_s"]
    out["forward"] = fwd
    out["graph_b16"] = sum(_cascade_s(spec, r, small, False, True, built, compiled_for) for r in ("msf", "dit"))
    out["eager_b16"] = sum(_cascade_s(spec, r, small, False, False, built, compiled_for) for r in ("msf", "dit"))
    out["fp8"] = (spec["reps"] + 2) * sum(_fwd_s(p, big * m, COST["compiled_tflops"]) for p, m in _forward_presets(spec))
    out["compile_modes"] = 4 * COST["compile_s"] + (spec["reps"] + 2) * sum(
        _fwd_s(p, big * m, COST["compiled_tflops"]) for p, m in _forward_presets(spec))
    return {k: round(v, 1) for k, v in out.items()}


# ---- what is run ----------------------------------------------------------------------------------
def _runs(spec) -> dict:
    return {"msf": (list(spec["msf"]), list(spec["msf_steps"]), list(spec["msf_cfg"])),
            "dit": ([spec["dit"]], [spec["dit_steps"]], [spec["dit_cfg"]])}


def _forward_presets(spec) -> list[tuple[str, int]]:
    """(preset, batch multiplier of the recipe): CFG doubles scale 0 and DiT, scale 1 runs without."""
    return [(spec["msf"][0], 2), (spec["msf"][1], 1), (spec["dit"], 2)]


class Recorder:
    """The JSON written after every row: env, sections (ran / skipped and why), rows, prediction."""

    def __init__(self, path: Path, budget_s: float, prediction: dict):
        self.path, self.budget_s, self.t0 = path, budget_s, time.perf_counter()
        self.prediction = prediction
        self.data = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "budget_s": budget_s if budget_s != float("inf") else None,  # strict JSON: no Infinity
                     "sections": {s: {"status": "pending"} for s in SECTIONS}, "results": []}

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def start(self, section: str, enabled: str | None = None) -> bool:
        """True when ``section`` should run; records why not otherwise."""
        entry = self.data["sections"][section]
        need = self.prediction.get(section, 0.0)
        if enabled:
            entry.update(status="skipped", reason=enabled)
        elif self.elapsed() + need > self.budget_s:
            entry.update(status="skipped", reason=f"predicted {need:.0f} s would end after the {self.budget_s:.0f} s "
                                                  f"budget ({self.elapsed():.0f} s used); raise --budget-s to run it")
        else:
            entry.update(status="running", started_at_s=round(self.elapsed(), 1), predicted_s=need)
            self.save()
            return True
        self.save()
        print(f"[skip] {section}: {entry['reason']}", flush=True)
        return False

    def done(self, section: str, error: str | None = None) -> None:
        entry = self.data["sections"][section]
        entry["seconds"] = round(self.elapsed() - entry["started_at_s"], 1)
        entry["status"] = "failed" if error else "ran"
        if error:
            entry["reason"] = error
        self.save()

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


def reset_peak(dev):
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)


def memory(dev) -> dict:
    out = {"cpu_peak_rss_mib": round(rss_mib())}
    if dev.type == "cuda":
        out["gpu_peak_allocated_mib"] = round(torch.cuda.max_memory_allocated(dev) / (1 << 20))
    return out


class Models:
    """Random-weight denoisers built once per preset and shared by every section (eager, compiled
    and graph engines wrap the same weights), plus one SD-VAE-sized decoder."""

    def __init__(self, dev, dtype, dry: bool):
        self.dev, self.dtype, self.dry = dev, dtype, dry
        self.modules, self.engines, self._decoder = {}, {}, None

    def module(self, preset: str, dtype=None):
        """The preset's weights; another dtype gets its own copy (engines cast their module in place)."""
        if dtype is not None and dtype != self.dtype:
            key = (preset, dtype)
            if key not in self.modules:
                import copy

                self.modules[key] = copy.deepcopy(self.module(preset))
            return self.modules[key]
        if preset not in self.modules:
            from msf_train.model import build_model
            from runtime.cascade import random_model_state

            cfg = get_preset(preset)
            model = build_model(cfg)
            model.load_state_dict(random_model_state(cfg))
            self.modules[preset] = model
        return self.modules[preset]

    def engine(self, preset: str, compile_mode: str | None = None, dtype=None):
        from runtime.engines import TorchDenoiser

        dtype = dtype or self.dtype
        key = (preset, compile_mode, dtype)
        if key not in self.engines:
            self.engines[key] = TorchDenoiser(self.module(preset, dtype), self.dev, dtype, compile_mode or False)
        return self.engines[key]

    def stages(self, presets, compile_mode=None):
        return [(get_preset(p), self.engine(p, compile_mode)) for p in presets]

    def decoder(self, latent_channels: int, full_size: int):
        if self._decoder is None:
            from diffusers import AutoencoderKL

            from msf_train.vae import LatentDecoder
            from runtime.cascade import SD_VAE_CONFIG, small_vae_config
            from runtime.engines import TorchDecoder

            torch.manual_seed(0)
            vae = {} if self.dry else SD_VAE_CONFIG
            ae = AutoencoderKL(**{**small_vae_config(latent_channels), **vae})
            self._decoder = TorchDecoder(LatentDecoder(ae), full_size, self.dev)
        return self._decoder


def time_cascade_once(stages, dec, batch, plan, use_graph: bool, dev) -> dict:
    """Warm up with a few steps per stage (same shapes), then time ONE full run (graph or eager)."""
    from runtime.graphs import CascadeRunner, short_plan
    from runtime.sampler import sample

    y = [0] * batch
    t0 = time.perf_counter()
    runner = CascadeRunner(stages, dec, batch, plan, use_graph=use_graph, warn=False, warmup_steps=WARM_STEPS)
    if runner.mode == "eager":
        sample(stages, dec, y, 1000, short_plan(plan, WARM_STEPS), timed=False)
    sync(dev)
    prep = time.perf_counter() - t0
    t0 = time.perf_counter()
    runner.sample(y, seeds=0, timed=False)
    sync(dev)
    return {"mode": runner.mode, "reason": runner.reason, "seconds": time.perf_counter() - t0,
            "warmup_capture_s": prep, "capture_s": runner.capture_s}


def time_decode(dec, cfg, batch, dev) -> float:
    z = torch.randn(batch, *cfg.latent_shape[:1], cfg.full_size, cfg.full_size, device=dev)
    with torch.no_grad():
        dec.run({"latent": z})
        sync(dev)
        t0 = time.perf_counter()
        dec.run({"latent": z})
        sync(dev)
    return time.perf_counter() - t0


def cascade_section(rec: Recorder, models: Models, spec, section: str, batch: int, compile_mode, use_graph, dev, peak):
    from runtime.sampler import make_plan

    dname = str(models.dtype).split(".")[-1]
    rows = {}
    for run, (presets, steps, cfgs) in _runs(spec).items():
        stages = models.stages(presets, compile_mode)
        cfg0 = stages[0][0]
        dec = models.decoder(cfg0.in_channels, cfg0.full_size)
        plan = make_plan([c for c, _ in stages], steps, cfgs)
        reset_peak(dev)
        r = time_cascade_once(stages, dec, batch, plan, use_graph, dev)
        macs = sum(s * (1 if w == 1.0 else 2) * count_macs(c) for (c, _), s, w in zip(stages, steps, cfgs))
        tflops = 2 * macs * batch / r["seconds"] / 1e12
        row = {"kind": "cascade", "section": section, "run": f"{run}-{sum(steps)}" if run == "dit" else run,
               "presets": presets, "steps": steps, "cfg": cfgs, "batch": batch, "dtype": dname,
               "compile": compile_mode, "mode": r["mode"], "reason": r["reason"], "seconds": round(r["seconds"], 4),
               "per_image_ms": round(r["seconds"] / batch * 1e3, 3), "warmup_and_capture_s": round(r["warmup_capture_s"], 2),
               "gmacs_per_image": round(macs / 1e9, 3), "denoise_tflops": round(tflops, 2),
               "mfu": round(tflops / peak, 4) if peak else None,
               "note": "denoise TFLOP/s = denoiser multiply-adds x 2 / whole time (decode included)", **memory(dev)}
        rows[run] = (row, macs)
        rec.add(row)
    if "dit" in rows:  # DiT-XL/2 at 250 steps, derived from the 100-step run's per-step time
        row, macs = rows["dit"]
        cfg = get_preset(spec["dit"])
        t_dec = time_decode(models.decoder(cfg.in_channels, cfg.full_size), cfg, batch, dev)
        n, m = spec["dit_steps"], spec["dit_derived_steps"]
        per_step = max(row["seconds"] - t_dec, 0.0) / n
        t = m * per_step + t_dec
        derived = {**row, "run": f"dit-{m}", "steps": [m], "seconds": round(t, 4), "per_image_ms": round(t / batch * 1e3, 3),
                   "gmacs_per_image": round(macs * m / n / 1e9, 3), "derived": True,
                   "how": f"{m} x per-step time of the dit-{n} run ((T_{n} - T_decode) / {n} = {per_step * 1e3:.2f} ms) "
                          f"+ T_decode {t_dec:.3f} s timed alone; not run in full"}
        rows["dit-derived"] = (derived, macs * m / n)
        rec.add(derived)
    if "msf" in rows:
        msf_row, msf_macs = rows["msf"]
        for key in ("dit", "dit-derived"):
            if key in rows:
                row, macs = rows[key]
                rec.add({"kind": "ratio", "section": section, "batch": batch, "what": f"{row['run']} / msf time",
                         "measured": round(row["seconds"] / msf_row["seconds"], 3), "analytic_macs": round(macs / msf_macs, 3),
                         "derived": bool(row.get("derived"))})
    return rows


def forward_row(models: Models, preset, batch, dtype, compile_mode, dev, peak, reps, section="forward"):
    cfg = get_preset(preset)
    eng = models.engine(preset, compile_mode, dtype)
    from msf_train.model import sample_inputs

    x = sample_inputs(cfg, batch, dev)
    feeds = {k: x[k] for k in eng.input_names}
    reset_peak(dev)
    t0 = time.perf_counter()
    eng.run(feeds)
    sync(dev)
    first = time.perf_counter() - t0
    eng.run(feeds)
    ts = []
    for _ in range(reps):
        sync(dev)
        t0 = time.perf_counter()
        eng.run(feeds)
        sync(dev)
        ts.append(time.perf_counter() - t0)
    med = statistics.median(ts)
    tflops = 2 * count_macs(cfg) * batch / med / 1e12
    return {"kind": "forward", "section": section, "preset": preset, "batch": batch, "dtype": str(dtype).split(".")[-1],
            "compile": compile_mode, "median_ms": round(med * 1e3, 3), "min_ms": round(min(ts) * 1e3, 3),
            "first_call_s": round(first, 2), "tflops": round(tflops, 2), "mfu": round(tflops / peak, 4) if peak else None,
            **memory(dev)}


def fp8_blocker(dev) -> str | None:
    if dev.type != "cuda":
        return "FP8 needs a CUDA GPU"
    major, minor = torch.cuda.get_device_capability(dev)
    if (major, minor) < (8, 9):
        return f"this GPU (compute capability {major}.{minor}) has no FP8 tensor cores (needs >= 8.9)"
    try:
        import torchao  # noqa: F401
    except ImportError:
        return "torchao is not installed (carry its wheel: docs/RUNTIME.md, GPU machines)"
    return None


def fp8_rows(rec, models, spec, dev, peak):
    """torchao's float8 dynamic-activation inference on every denoiser linear, compiled."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    from msf_train.model import build_model
    from runtime.engines import TorchDenoiser

    for preset, mult in _forward_presets(spec):
        model = build_model(get_preset(preset)).to(dev, torch.bfloat16)
        model.load_state_dict(models.module(preset).state_dict())
        quantize_(model, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
        models.engines[(preset, "fp8", torch.bfloat16)] = TorchDenoiser(model, dev, torch.bfloat16, "default")
        rec.add(forward_row(models, preset, spec["big"] * mult, torch.bfloat16, "fp8", dev, peak, spec["reps"], "fp8"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")) / "gpu_check.json")
    ap.add_argument("--dry-run", action="store_true", help="tiny presets, few steps: every section on any device")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--budget-s", type=float, default=360.0, help="skip a section whose predicted end is past this")
    ap.add_argument("--no-compile", action="store_true", help="leave out torch.compile (sections say so)")
    ap.add_argument("--compile-mode", default="default", help="mode of the fast path (runtime.engines.COMPILE_MODES)")
    args = ap.parse_args(argv)

    dev = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                       ("cpu" if args.device == "auto" else args.device))
    spec = DRY if args.dry_run else PAPER
    compile_mode = None if args.no_compile else args.compile_mode
    gpu_prediction = predict(PAPER, compile_mode is not None)
    rec = Recorder(args.out, args.budget_s if not args.dry_run else float("inf"), gpu_prediction)
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu"
    peak = peak_for(gpu) if dev.type == "cuda" else None
    torch.backends.cuda.matmul.allow_tf32 = True
    rec.data["env"] = {"device": gpu, "torch": torch.__version__, "cuda": torch.version.cuda, "dry_run": args.dry_run,
                       "datasheet_peak_tflops": peak, "python": platform.python_version(), "compile_mode": compile_mode}
    rec.data["prediction"] = {"for": "an H100 at the paper presets (" + ", ".join(PAPER["msf"]) + f", {PAPER['dit']})",
                              "model": "per section: forwards x analytic FLOPs / throughput + builds + compiles + "
                                       "captures + decodes (benchmarks/gpu_check.py docstring)",
                              "constants": COST, "sections_s": gpu_prediction,
                              "total_s": round(sum(gpu_prediction.values()) + COST["startup_s"], 1),
                              "within_budget_s": round(sum(v for k, v in gpu_prediction.items() if k != "compile_modes")
                                                       + COST["startup_s"], 1)}
    if dev.type == "cuda":
        a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
        for _ in range(3):
            a @ a
        sync(dev)
        t0 = time.perf_counter()
        for _ in range(10):
            a @ a
        sync(dev)
        rec.data["env"]["measured_bf16_matmul_tflops"] = round(2 * 8192 ** 3 * 10 / (time.perf_counter() - t0) / 1e12, 1)
        del a
    rec.save()
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32  # CPU dry runs: fp32 (bf16 matmuls crawl)
    models = Models(dev, dtype, args.dry_run)
    big, small = spec["big"], spec["small"]

    def section(name, fn, blocker=None):
        if not rec.start(name, blocker):
            return
        try:
            fn()
            rec.done(name)
        except Exception as e:  # noqa: BLE001 - one section's failure must not cost the others
            rec.done(name, f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}")
            print(f"[fail] {name}: {rec.data['sections'][name]['reason']}", flush=True)
            if dev.type == "cuda":
                torch.cuda.empty_cache()

    no_compile = "--no-compile" if compile_mode is None else None
    section("fast_b64", lambda: cascade_section(rec, models, spec, "fast_b64", big, compile_mode, True, dev, peak),
            None)
    section("eager_b64", lambda: cascade_section(rec, models, spec, "eager_b64", big, None, False, dev, peak))

    def forwards():
        for preset, mult in _forward_presets(spec):
            for mode in [None] + ([compile_mode] if compile_mode else []):
                rec.add(forward_row(models, preset, big * mult, dtype, mode, dev, peak, spec["reps"]))
            if dev.type == "cuda":
                rec.add(forward_row(models, preset, big * mult, torch.float16, None, dev, peak, spec["reps"]))

    section("forward", forwards)
    section("graph_b16", lambda: cascade_section(rec, models, spec, "graph_b16", small, None, True, dev, peak))
    section("eager_b16", lambda: cascade_section(rec, models, spec, "eager_b16", small, None, False, dev, peak))
    section("fp8", lambda: fp8_rows(rec, models, spec, dev, peak), fp8_blocker(dev) or no_compile)

    def modes():
        for preset, mult in _forward_presets(spec):
            rec.add(forward_row(models, preset, big * mult, dtype, "max-autotune-no-cudagraphs", dev, peak, spec["reps"],
                                "compile_modes"))

    section("compile_modes", modes, no_compile or ("a CPU dry run compiles the same code path in forward"
                                                   if dev.type != "cuda" else None))
    rec.data["finished"] = True
    rec.data["measured_sections_s"] = {k: v.get("seconds") for k, v in rec.data["sections"].items()}
    rec.save()
    summary(rec.data)


def summary(data):
    print("\n== gpu_check summary ==", json.dumps(data["env"]))
    for r in data["results"]:
        mem = r.get("gpu_peak_allocated_mib", r.get("cpu_peak_rss_mib"))
        if r["kind"] == "cascade":
            print(f"{r['section']:<10} {r['run']:>8} b{r['batch']:<3} {r['mode']:<5} compile={r['compile']} "
                  f"{r['seconds']:>8.3f} s {r['per_image_ms']:>9.2f} ms/img {r['denoise_tflops']:>7.1f} TFLOP/s "
                  f"peak {mem} MiB{' (derived)' if r.get('derived') else ''}")
        elif r["kind"] == "ratio":
            print(f"{r['section']:<10} ratio {r['what']:<22} b{r['batch']:<3} measured {r['measured']:.2f} "
                  f"analytic {r['analytic_macs']:.2f}{' (derived)' if r['derived'] else ''}")
        else:
            print(f"{r['section']:<10} {r['preset']:>14} b{r['batch']:<4} {r['dtype']:<8} compile={r['compile']} "
                  f"{r['median_ms']:>8.2f} ms {r['tflops']:>7.1f} TFLOP/s mfu {r['mfu']} peak {mem} MiB")
    for name, s in data["sections"].items():
        print(f"section {name:<14} {s['status']:<8} {s.get('seconds', '')} {s.get('reason', '')}")
    p = data.get("prediction", {})
    print(f"predicted on an H100: {p.get('sections_s')} total {p.get('total_s')} s")


if __name__ == "__main__":
    main()
