"""The whole cascade as one CUDA graph: every step of every scale, the Up/Down between scales and
the VAE decode, captured once for a fixed batch and plan, then replayed.

Why: at batch 1 a DiT step is a few hundred small kernels, and launching them from Python costs
about as much as running them. A graph replays the recorded launches with no Python and no CPU
launch cost in between. What changes between replays (class ids, noise) lives in *static input
buffers* that the graph reads: a new request copies its class ids and its noise (drawn outside the
graph, on the CPU, per image as `runtime.sampler.make_noise` does) into them and replays. Outputs
are static too, and are copied out after each replay.

When a graph cannot be had (no CUDA, an engine that is not capturable, or capture raising), the
runner samples eagerly instead and says why, once.
"""
from __future__ import annotations

import statistics
import time
import warnings
from typing import Sequence

import torch

from msf_train.errors import MsfError
from runtime.engines import Engine
from runtime.sampler import (Plan, SampleResult, Stage, StageTiming, check_classes, make_noise, make_plan,
                             run_cascade, sample, time_grids)

_SAID: set[str] = set()
WARMUP_STEPS = 3  # steps per stage of the warm-up before a capture (None: the whole plan)


def short_plan(plan: Plan, steps: int | None) -> Plan:
    """The same plan with at most ``steps`` steps per stage: same shapes, a fraction of the work."""
    if not steps:
        return plan
    return Plan(tuple(min(s, steps) for s in plan.steps), plan.cfg, plan.solver, plan.shift)


def say_once(reason: str) -> None:
    """Warn that the graph is off, once per distinct reason per process."""
    if reason not in _SAID:
        _SAID.add(reason)
        warnings.warn(f"CUDA graph off, running eager: {reason}", RuntimeWarning, stacklevel=3)


def capture_blocker(stages: Sequence[Stage], decoder: Engine | None) -> str | None:
    """Why this cascade cannot be captured, or None if it can be tried."""
    engines = [e for _, e in stages] + ([decoder] if decoder is not None else [])
    devices = {str(e.device) for e in engines}
    if len(devices) != 1:
        return f"the engines sit on different devices ({', '.join(sorted(devices))})"
    if engines[0].device.type != "cuda":
        return "CUDA graphs need a CUDA device"
    for e in engines:
        if not getattr(e, "capturable", False):
            return f"the {e.backend} {e.kind} engine cannot be captured"
    return None


class CascadeGraph:
    """One `torch.cuda.CUDAGraph` of `runtime.sampler.run_cascade` for ``batch`` images and ``plan``.

    Static inputs: ``y`` (B,) int64 and ``noises`` (one (B, C, h_i, w_i) buffer per stage); the time
    grids are baked in. `replay(y, noises)` writes them and returns copies of the outputs.
    """

    def __init__(self, stages: Sequence[Stage], decoder: Engine | None, batch: int, plan: Plan,
                 save_scales: bool = False, warmup: int = 1, warmup_steps: int | None = WARMUP_STEPS):
        self.stages, self.decoder, self.batch, self.plan = list(stages), decoder, batch, plan
        dev = self.stages[0][1].device
        self.device = dev
        with torch.cuda.device(dev):
            self.y = torch.zeros(batch, dtype=torch.int64, device=dev)  # class 0 is valid for any model
            self.noises = [torch.randn((batch, *c.latent_shape), device=dev) for c, _ in self.stages]
            self.grids = time_grids(plan, dev)
            short = short_plan(plan, warmup_steps)
            short_grids = time_grids(short, dev)

            def cascade(p=plan, grids=self.grids):
                return run_cascade(self.stages, decoder, self.y, self.noises, grids, p, save_scales)

            # Warm up on a side stream (lazy inits, cuDNN/cuBLAS autotuning, torch.compile) so that
            # none of it lands in the graph, then capture on the stream torch.cuda.graph provides.
            # Every step of a stage runs the same shapes, so a few steps per stage warm up as much
            # as the whole plan would (a whole DiT-XL/2 run at batch 64 is 13 s on an H100).
            side = torch.cuda.Stream(dev)
            side.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(side):
                for _ in range(max(1, warmup)):
                    cascade(short, short_grids)
            torch.cuda.current_stream(dev).wait_stream(side)
            torch.cuda.synchronize(dev)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.latent, self.image, self.scales = cascade()
            torch.cuda.synchronize(dev)

    def replay(self, y: torch.Tensor, noises: Sequence[torch.Tensor]):
        """-> (latent, image or None, scales or None) for class ids ``y`` (B,) and per-stage noise."""
        if y.shape != self.y.shape:
            raise MsfError(f"this graph was captured for {self.batch} images, got {y.numel()}")
        self.y.copy_(y, non_blocking=True)
        for buf, z in zip(self.noises, noises):
            buf.copy_(z, non_blocking=True)
        self.graph.replay()
        image = None if self.image is None else self.image.clone()
        scales = None if self.scales is None else [s.clone() for s in self.scales]
        return self.latent.clone(), image, scales


class CascadeRunner:
    """Samples batches of a fixed size with one plan: by graph replay where possible, else eagerly.

    ``mode`` is "graph" or "eager"; ``reason`` says why eager when a graph was asked for.
    """

    def __init__(self, stages: Sequence[Stage], decoder: Engine | None, batch: int, plan: Plan | None = None,
                 save_scales: bool = False, use_graph: bool = True, warn: bool = True, warmup: int = 1,
                 warmup_steps: int | None = WARMUP_STEPS):
        self.stages, self.decoder, self.batch, self.save_scales = list(stages), decoder, batch, save_scales
        self.cfgs = [c for c, _ in self.stages]
        self.plan = plan or make_plan(self.cfgs)
        self.graph: CascadeGraph | None = None
        self.reason: str | None = None
        self.capture_s = 0.0
        if not use_graph:
            return
        self.reason = capture_blocker(self.stages, decoder)
        if self.reason is None:
            t0 = time.perf_counter()
            try:
                self.graph = CascadeGraph(self.stages, decoder, batch, self.plan, save_scales, warmup, warmup_steps)
            except Exception as e:  # noqa: BLE001 - any capture failure means: run eager
                self.graph = None
                self.reason = f"capture failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                try:
                    torch.cuda.synchronize()
                except Exception:  # noqa: BLE001 - a poisoned context shows up in the eager run
                    pass
            self.capture_s = time.perf_counter() - t0
        if self.reason and warn:
            say_once(self.reason)

    @property
    def mode(self) -> str:
        return "graph" if self.graph is not None else "eager"

    @property
    def device(self) -> torch.device:
        return self.stages[0][1].device

    def sample(self, class_ids, seeds: Sequence[int] | int = 0, noises: Sequence[torch.Tensor] | None = None,
               timed: bool = True) -> SampleResult:
        """Like `runtime.sampler.sample` for this runner's batch and plan. In graph mode the timing is
        one record for the whole replay (its per-stage split is not observable)."""
        if self.graph is None:
            return sample(self.stages, self.decoder, class_ids, seeds, self.plan, save_scales=self.save_scales,
                          noises=noises, timed=timed)
        y = torch.as_tensor(class_ids, dtype=torch.int64).reshape(-1)
        check_classes(self.cfgs, y.tolist())
        dev = self.device
        torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        if noises is None:
            seeds = list(range(seeds, seeds + y.numel())) if isinstance(seeds, int) else list(seeds)
            noises = make_noise(self.cfgs, seeds, dev)
        t1 = time.perf_counter()
        latent, image, scales = self.graph.replay(y.to(dev), [z.to(dev) for z in noises])
        torch.cuda.synchronize(dev)
        t2 = time.perf_counter()
        rec = StageTiming("cascade", wall_s=t2 - t1, engine_s=t2 - t1, calls=1,
                          detail=f"one CUDA graph: {len(self.stages)} scale(s) + decode, batch {self.batch}")
        return SampleResult(latent, image, scales, [rec] if timed else [], t2 - t0)


def time_cascade(stages: Sequence[Stage], decoder: Engine | None, batch: int = 1, plan: Plan | None = None, *,
                 use_graph: bool = True, repeats: int = 5, warmup: int = 1, class_id: int = 0) -> dict:
    """Latency of one cascade call for ``batch`` images (eager or graph replay), for benchmarks and
    scripts on a GPU box: median and min seconds over ``repeats`` after ``warmup`` untimed runs.

    Example (on a CUDA machine)::

        from runtime.engines import load_cascade
        from runtime.graphs import time_cascade
        stages, dec = load_cascade("runs/demo-msf", device="cuda")
        for b in (1, 16):
            print(b, time_cascade(stages, dec, b, use_graph=False), time_cascade(stages, dec, b, use_graph=True))
    """
    runner = CascadeRunner(stages, decoder, batch, plan, use_graph=use_graph, warn=False)
    cuda = runner.device.type == "cuda"
    y = [class_id] * batch
    for i in range(warmup):
        runner.sample(y, seeds=1000 + i, timed=False)
    times = []
    for i in range(repeats):
        if cuda:
            torch.cuda.synchronize(runner.device)
        t0 = time.perf_counter()
        runner.sample(y, seeds=i, timed=False)
        if cuda:
            torch.cuda.synchronize(runner.device)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"mode": runner.mode, "reason": runner.reason, "batch": batch, "median_s": med, "min_s": min(times),
            "per_image_s": med / batch, "capture_s": runner.capture_s, "times_s": times,
            "device": torch.cuda.get_device_name(runner.device) if cuda else "cpu"}
