"""Algorithm 3 (MSF_PAPER.md section 3.4): sample a cascade of scales and decode the accumulation.

    acc = 0
    for scale i = 0..N:
        f_i   ~ ODE solve of v_theta(z_t, t | c[, Down(acc, h_i)])   from noise z_0 to t = 1
        acc  += Up(f_i * residual_scale_i, h_N)                      (Algorithm 3 line 9)
        prior = Down(acc, h_{i+1})                                   (line 11, for the next scale)
    image = D(acc)                                                   (line 14)

A DiT baseline is the one-scale case (no prior, Up to its own size is the identity). Everything here
is a pure function over a list of `(ModelConfig, Engine)` pairs and a decoder `Engine`; the engines
may be torch modules, ONNX sessions, TensorRT plans or AOTInductor packages (`runtime.engines`).
The maths is borrowed, not rewritten: `msf_train.flow` (time grid, Euler/Heun, CFG of Eq. 7) and
`msf_train.factorize` (the one Up/Down pair, the accumulation step).

Noise is drawn per image: image j of a batch uses its own `torch.Generator` seeded `seeds[j]`, and
draws scale 0's noise, then scale 1's, ..., on the CPU. So an image depends on its seed and class
only, not on which other images share its batch or on the device.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch

from msf_train import factorize, flow
from msf_train.config import ModelConfig
from msf_train.errors import MsfError
from runtime.engines import Engine

Stage = tuple[ModelConfig, Engine]
SOLVERS = tuple(flow.SAMPLERS)


# ---- the plan: steps, CFG and solver per scale -------------------------------------------------
def default_steps(num_stages: int) -> list[int]:
    """The paper recipe (section 4.1): 100 Euler steps at scale 0, 50 at every residual scale; a
    one-scale DiT baseline gets 100."""
    return [100] + [50] * (num_stages - 1)


def default_cfg(num_stages: int) -> list[float]:
    """CFG 1.4 at scale 0 and none (1.0, one forward per step) at residual scales, as the paper
    (Table 3: guidance buys nothing at scale 1); a one-scale DiT baseline gets 1.5 (DiT's choice)."""
    return [1.5] if num_stages == 1 else [1.4] + [1.0] * (num_stages - 1)


@dataclass(frozen=True)
class Plan:
    """How to sample each scale: steps and CFG scale per stage, one solver and time shift for all."""

    steps: tuple[int, ...]
    cfg: tuple[float, ...]
    solver: str = "euler"
    shift: float = 1.0

    def forwards(self, i: int) -> int:
        """Engine calls of stage i (a CFG call is one call on a doubled batch)."""
        return self.steps[i] * flow.calls_per_step(self.solver)


def make_plan(cfgs: Sequence[ModelConfig], steps: Sequence[int] | None = None, cfg: Sequence[float] | None = None,
              solver: str = "euler", shift: float = 1.0, defaults: Mapping[str, Sequence] | None = None) -> Plan:
    """Check a sampling plan against the cascade; MsfError if it is wrong. None -> the model folder's
    own plan (``defaults``: cascade.json's "sampling" entry, `engines.sampling_defaults`), else the
    paper's (above). Steps and CFG default one by one: --steps alone keeps the folder's guidance."""
    n = len(cfgs)
    defaults = defaults or {}
    steps = list(steps if steps is not None else defaults.get("steps") or default_steps(n))
    cfg = list(cfg if cfg is not None else defaults.get("cfg") or default_cfg(n))
    names = ", ".join(c.name for c in cfgs)
    if len(steps) != n:
        raise MsfError(f"--steps has {len(steps)} value(s) but the cascade has {n} stage(s) ({names}): give one per stage, e.g. --steps {','.join(map(str, default_steps(n)))}")
    if len(cfg) != n:
        raise MsfError(f"--cfg has {len(cfg)} value(s) but the cascade has {n} stage(s) ({names}): give one per stage, e.g. --cfg {','.join(map(str, default_cfg(n)))}")
    for s in steps:
        if int(s) != s or s < 1:
            raise MsfError(f"steps must be whole numbers >= 1, got {s}")
    for w in cfg:
        if not math.isfinite(w) or w < 0:
            raise MsfError(f"CFG scales must be finite and >= 0 (1 = no guidance), got {w}")
    if solver not in SOLVERS:
        raise MsfError(f"unknown solver {solver!r}; use one of {', '.join(SOLVERS)}")
    if not math.isfinite(shift) or shift <= 0:
        raise MsfError(f"the time shift must be > 0 (1 = none), got {shift}")
    return Plan(tuple(int(s) for s in steps), tuple(float(w) for w in cfg), solver, float(shift))


def check_classes(cfgs: Sequence[ModelConfig], class_ids: Sequence[int]) -> None:
    """Class ids must lie in [0, num_classes); the null class (= num_classes) is CFG's, not the user's."""
    k = cfgs[0].num_classes
    for c in class_ids:
        if c < 0:
            raise MsfError(f"class id {c} is negative: this model has classes 0-{k - 1}")
        if c >= k:
            raise MsfError(f"class id {c} is out of range: this model has {k} classes (0-{k - 1})")


# ---- noise ------------------------------------------------------------------------------------
def make_noise(cfgs: Sequence[ModelConfig], seeds: Sequence[int], device="cpu") -> list[torch.Tensor]:
    """Starting noise z_0 of every stage: a list (one per stage) of (B, C, h_i, w_i) float32 tensors.

    Image j draws from its own CPU generator seeded ``seeds[j]``: stage 0's noise first, then stage
    1's, so batch composition and device never change an image.
    """
    per_stage: list[list[torch.Tensor]] = [[] for _ in cfgs]
    for s in seeds:
        g = torch.Generator().manual_seed(int(s))
        for i, c in enumerate(cfgs):
            per_stage[i].append(torch.randn(c.latent_shape, generator=g))  # (C, h_i, w_i)
    return [torch.stack(zs).to(device) for zs in per_stage]  # [(B, C, h_i, w_i)]


# ---- timing -----------------------------------------------------------------------------------
@dataclass
class StageTiming:
    """One line of the timing summary: wall time of a stage and the part spent inside engine calls."""

    name: str
    wall_s: float = 0.0
    engine_s: float = 0.0
    calls: int = 0
    detail: str = ""


class Clock:
    """Times stages and engine calls. On CUDA it synchronises around each call so engine time is real
    (that costs a little; leave timing off for latency measurements and graph capture)."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.cuda = torch.device(device).type == "cuda"
        self.records: list[StageTiming] = []
        self._current: StageTiming | None = None

    def _sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    @contextmanager
    def stage(self, name: str, detail: str = ""):
        rec = next((r for r in self.records if r.name == name), None)
        if rec is None:
            rec = StageTiming(name, detail=detail)
            self.records.append(rec)
        outer, self._current = self._current, rec
        self._sync()
        t0 = time.perf_counter()
        try:
            yield rec
        finally:
            self._sync()
            rec.wall_s += time.perf_counter() - t0
            self._current = outer

    def call(self, engine: Engine, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self._sync()
        t0 = time.perf_counter()
        out = engine.run(feeds)
        self._sync()
        if self._current is not None:
            self._current.engine_s += time.perf_counter() - t0
            self._current.calls += 1
        return out


def _call(clock: Clock | None, engine: Engine, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return engine.run(feeds) if clock is None else clock.call(engine, feeds)


@contextmanager
def _stage(clock: Clock | None, name: str, detail: str = ""):
    if clock is None:
        yield None
    else:
        with clock.stage(name, detail) as rec:
            yield rec


# ---- Algorithm 3 ------------------------------------------------------------------------------
def engine_model(engine: Engine, clock: Clock | None = None):
    """An engine as the `model(x, t, y, prior=None) -> v` that `flow.guided` and the solvers expect."""

    def model(x, t, y, prior=None):
        feeds = {"x": x, "t": t, "y": y}
        if prior is not None:
            feeds["prior"] = prior
        return _call(clock, engine, feeds)["v"]  # (B, C, h, w)

    return model


def decode(decoder: Engine, latent: torch.Tensor, clock: Clock | None = None) -> torch.Tensor:
    """Algorithm 3 line 14: scaled latent (B, C, h_N, w_N) -> image (B, 3, H, W) in [-1, 1]."""
    return _call(clock, decoder, {"latent": latent})["image"]


def check_finite_output(x: torch.Tensor, name: str, i: int) -> None:
    """A stage's output must be finite: NaN would decode to a black image and exit 0. One host sync
    per stage; skipped while a CUDA graph is being captured (the eager warm-up run checks)."""
    if x.is_cuda and torch.cuda.is_current_stream_capturing():
        return
    if not bool(torch.isfinite(x).all()):
        raise MsfError(f"stage {i} ({name}) produced NaN/infinite values: its weights or export are broken, or the "
                       f"precision overflows (try --dtype fp32)")


@torch.no_grad()
def run_cascade(stages: Sequence[Stage], decoder: Engine | None, y: torch.Tensor, noises: Sequence[torch.Tensor],
                grids: Sequence[torch.Tensor], plan: Plan, save_scales: bool = False, clock: Clock | None = None):
    """Algorithm 3 on prepared tensors -> (latent, image or None, [image per accumulated scale] or None).

    Only tensor work on the engines' device, no host synchronisation and no allocation that depends
    on values, so `runtime.graphs` can capture this very function into one CUDA graph.
    ``grids[i]`` is stage i's time grid (`flow.time_grid`), ``noises[i]`` its z_0, ``y`` (B,) int64.
    """
    solve = flow.SAMPLERS[plan.solver]
    full = stages[0][0].full_size
    acc, prior, scales = None, None, [] if save_scales else None
    for i, (cfg, engine) in enumerate(stages):
        detail = f"{cfg.name} {cfg.latent_size}x{cfg.latent_size}: {plan.steps[i]} {plan.solver} steps, cfg {plan.cfg[i]:g}"
        with _stage(clock, f"scale {i}", detail):
            # Eq. 7 on all channels; w == 1 gives the bare model: one forward per step, no doubled batch.
            velocity = flow.guided(engine_model(engine, clock), plan.cfg[i], cfg.null_class)
            f_i = solve(velocity, noises[i], grids[i], y=y, prior=prior)  # (B, C, h_i, w_i)
            check_finite_output(f_i, cfg.name, i)
            if cfg.residual_scale != 1.0:
                f_i = f_i * cfg.residual_scale  # the model learned target / residual_scale
            acc = factorize.accumulate(acc, f_i, full)  # (B, C, h_N, w_N), line 9
            if i + 1 < len(stages):
                prior = factorize.down(acc, stages[i + 1][0].latent_size)  # line 11
        if save_scales and decoder is not None:
            with _stage(clock, "decode", "VAE"):
                scales.append(decode(decoder, acc, clock))  # Figure 2c: what scales 0..i add up to
    image = None
    if decoder is not None:
        if save_scales:
            image = scales[-1]
        else:
            with _stage(clock, "decode", "VAE"):
                image = decode(decoder, acc, clock)  # (B, 3, H, W)
    return acc, image, scales


@dataclass
class SampleResult:
    latent: torch.Tensor  # (B, C, h_N, w_N), the accumulated f-hat
    image: torch.Tensor | None  # (B, 3, H, W) in [-1, 1]
    scales: list[torch.Tensor] | None  # decoded accumulation after each scale (--save-scales)
    timings: list[StageTiming] = field(default_factory=list)
    total_s: float = 0.0

    @property
    def engine_s(self) -> float:
        return sum(r.engine_s for r in self.timings)

    @property
    def overhead(self) -> float:
        """End-to-end time / summed engine-call time (1.0 = the runtime adds nothing)."""
        return self.total_s / self.engine_s if self.engine_s > 0 else float("nan")


def time_grids(plan: Plan, device="cpu") -> list[torch.Tensor]:
    return [flow.time_grid(s, plan.shift, device=device) for s in plan.steps]


def sample(stages: Sequence[Stage], decoder: Engine | None, class_ids: Sequence[int] | torch.Tensor,
           seeds: Sequence[int] | int = 0, plan: Plan | None = None, *, save_scales: bool = False,
           noises: Sequence[torch.Tensor] | None = None, timed: bool = True) -> SampleResult:
    """Algorithm 3 end to end: one image per entry of ``class_ids``.

    ``seeds``: one per image, or an int s meaning s, s+1, ... (image j uses s + j). ``noises``
    overrides the seeded noise (a list of per-stage (B, C, h_i, w_i) tensors). ``timed`` records
    per-stage wall and engine-call time (`SampleResult.timings`, `.overhead`).
    """
    cfgs = [c for c, _ in stages]
    if not cfgs:
        raise MsfError("the cascade has no stages")
    plan = plan or make_plan(cfgs)
    make_plan(cfgs, plan.steps, plan.cfg, plan.solver, plan.shift)  # re-check a hand-made plan
    y = torch.as_tensor(class_ids, dtype=torch.int64).reshape(-1)
    check_classes(cfgs, y.tolist())
    B = y.numel()
    if B < 1:
        raise MsfError("no images to sample: give at least one class id")
    device = stages[0][1].device
    clock = Clock(device) if timed else None
    t0 = time.perf_counter()
    if noises is None:
        seeds = list(range(seeds, seeds + B)) if isinstance(seeds, int) else list(seeds)
        if len(seeds) != B:
            raise MsfError(f"{len(seeds)} seeds for {B} images: give one seed per image")
        noises = make_noise(cfgs, seeds, device)
    else:
        noises = [z.to(device) for z in noises]
    latent, image, scales = run_cascade(stages, decoder, y.to(device), noises, time_grids(plan, device), plan,
                                        save_scales, clock)
    if clock is not None:
        clock._sync()
    total = time.perf_counter() - t0
    records = sorted(clock.records, key=lambda r: r.name == "decode") if clock else []  # decode last
    return SampleResult(latent, image, scales, records, total)


def timing_lines(result: SampleResult, images: int) -> list[str]:
    """The one-line-per-stage summary msf-run prints on stderr."""
    lines = [f"{r.name} ({r.detail}): {r.wall_s:.3f} s, {r.calls} engine calls {r.engine_s:.3f} s"
             for r in result.timings]
    rate = images / result.total_s if result.total_s > 0 else float("nan")
    lines.append(f"total: {result.total_s:.3f} s for {images} image(s), {rate:.3g} images/s; engine calls "
                 f"{result.engine_s:.3f} s; overhead x{result.overhead:.3f}")
    return lines
