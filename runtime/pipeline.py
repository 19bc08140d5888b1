"""A loaded cascade that makes images: what `msf-run` and the Python API (`msf.load`) share.

    pipe = Pipeline.load("runs/msf")                 # a cascade folder or an msf-export artifact folder
    result = pipe.generate([330, 207], seed=0, steps=(100, 50), cfg=(1.4, 1.0))
    images = pipe([330, 207], steps=(100, 50), cfg=(1.4, 1.0), seed=0)   # -> PIL images

Seeding is `runtime.sampler`'s: image j of a request uses seed + j (or seeds[j]) and its own CPU
generator, so an image depends on its class and seed only. That is what lets a request larger than
an exported artifact's batch range run in chunks: each chunk samples its images with their own seeds,
and the result is the same as one big batch. A chunk holds at most the artifact's max batch, halved
when classifier-free guidance doubles it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from msf_train.errors import MsfError
from runtime import engines, sampler
from runtime.engines import Engine
from runtime.sampler import Plan, SampleResult, StageTiming


class CountingEngine(Engine):
    """An engine that reports every call to ``tick`` (a progress bar's update): eager runs only."""

    def __init__(self, inner: Engine, tick: Callable[[], None]):
        self.inner, self.tick = inner, tick
        self.kind, self.backend, self.device = inner.kind, inner.backend, inner.device
        self.inputs, self.outputs = inner.inputs, inner.outputs
        self.capturable = False  # a Python callback per call cannot live in a CUDA graph

    def run(self, feeds):
        out = self.inner.run(feeds)
        self.tick()
        return out


@dataclass
class Generation:
    """Images of one request, its chunks merged (timings summed per stage)."""

    image: torch.Tensor  # (B, 3, H, W) in [-1, 1]
    scales: list[torch.Tensor] | None
    class_ids: list[int]
    seeds: list[int]
    timings: list[StageTiming] = field(default_factory=list)
    total_s: float = 0.0
    chunks: int = 1
    mode: str = "eager"
    capture_s: float = 0.0
    reason: str | None = None  # why eager when a CUDA graph was asked for

    @property
    def images_per_s(self) -> float:
        return len(self.class_ids) / self.total_s if self.total_s > 0 else float("nan")

    def as_result(self) -> SampleResult:
        return SampleResult(None, self.image, self.scales, self.timings, self.total_s)


def to_pil(images: torch.Tensor) -> list:
    """(B, 3, H, W) in [-1, 1] -> PIL images, rounded to uint8 as msf-run writes them."""
    from PIL import Image

    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # (B, 3, H, W)
    return [Image.fromarray(a.permute(1, 2, 0).numpy()) for a in x]


def _merge(results: Sequence[SampleResult]) -> tuple[list[StageTiming], float]:
    merged: dict[str, StageTiming] = {}
    for r in results:
        for t in r.timings:
            m = merged.setdefault(t.name, StageTiming(t.name, detail=t.detail))
            m.wall_s += t.wall_s
            m.engine_s += t.engine_s
            m.calls += t.calls
    return list(merged.values()), sum(r.total_s for r in results)


class Pipeline:
    """Stages and a decoder (`runtime.engines.load_cascade`) plus how to sample them."""

    def __init__(self, stages, decoder: Engine, backend: str = "torch", model_dir: Path | None = None,
                 sampling: dict | None = None):
        self.stages, self.decoder, self.backend, self.model_dir = list(stages), decoder, backend, model_dir
        self.cfgs = [c for c, _ in self.stages]
        self.device = self.stages[0][1].device
        self.sampling = dict(sampling or {})  # the folder's own plan: what plan() falls back to

    @classmethod
    def load(cls, model_dir, backend: str | None = None, device="auto", dtype="fp32", compile: bool = False):
        model_dir = Path(model_dir)
        backend = engines.resolve_backend(model_dir, backend)
        sampling = engines.sampling_defaults(model_dir)  # a bad entry fails before the weights load
        stages, decoder = engines.load_cascade(model_dir, backend, engines.resolve_device(device), dtype, compile)
        return cls(stages, decoder, backend, model_dir, sampling)

    @property
    def num_classes(self) -> int:
        return self.cfgs[0].num_classes

    def plan(self, steps=None, cfg=None, solver: str = "euler", shift: float = 1.0) -> Plan:
        return sampler.make_plan(self.cfgs, None if steps is None else list(steps), None if cfg is None else list(cfg),
                                 solver, shift, self.sampling)

    def chunk_size(self, plan: Plan) -> int | None:
        """Most images per sampling call: the artifacts' max batch (halved under CFG), None = no limit."""
        limits = [getattr(e, "max_batch", None) for _, e in self.stages]
        limits = [m // (2 if w != 1.0 else 1) for m, w in zip(limits, plan.cfg) if m is not None]
        return max(1, min(limits)) if limits else None

    def generate(self, class_ids: Sequence[int], seed: int | Sequence[int] = 0, plan: Plan | None = None, *,
                 save_scales: bool = False, use_graph: bool = False, progress: bool = False,
                 max_chunk: int | None = None, **plan_kw) -> Generation:
        """Images for ``class_ids`` (image j: seed + j, or seeds[j]); chunks as `chunk_size` requires."""
        from runtime.graphs import CascadeRunner

        plan = plan or self.plan(**plan_kw)
        ids = [int(c) for c in class_ids]
        sampler.check_classes(self.cfgs, ids)
        seeds = list(range(seed, seed + len(ids))) if isinstance(seed, int) else [int(s) for s in seed]
        if len(seeds) != len(ids):
            raise MsfError(f"{len(seeds)} seeds for {len(ids)} images: give one seed per image")
        limit = min(x for x in (self.chunk_size(plan), max_chunk, len(ids)) if x)
        bar = None
        stages = self.stages
        if progress and not (use_graph and self.device.type == "cuda"):
            from tqdm import tqdm

            total = len(range(0, len(ids), limit)) * sum(plan.forwards(i) for i in range(len(stages)))
            bar = tqdm(total=total, unit="fwd", desc="sampling", leave=False, dynamic_ncols=True)
            stages = [(c, CountingEngine(e, bar.update)) for c, e in stages]
        runners: dict[int, CascadeRunner] = {}
        results = []
        try:
            for lo in range(0, len(ids), limit):
                y, s = ids[lo:lo + limit], seeds[lo:lo + limit]
                if len(y) not in runners:
                    runners[len(y)] = CascadeRunner(stages, self.decoder, len(y), plan, save_scales,
                                                    use_graph=use_graph, warn=False)
                results.append(runners[len(y)].sample(y, seeds=s))
        finally:
            if bar is not None:
                bar.close()
        timings, total = _merge(results)
        scales = None
        if save_scales:
            scales = [torch.cat([r.scales[i] for r in results]) for i in range(len(results[0].scales))]
        first = next(iter(runners.values()))
        return Generation(torch.cat([r.image for r in results]), scales, ids, seeds, timings, total, len(results),
                          first.mode, sum(r.capture_s for r in runners.values()), first.reason)

    def __call__(self, class_labels: Sequence[int] | int, steps=None, cfg=None, seed: int | Sequence[int] = 0,
                 solver: str = "euler", shift: float = 1.0, progress: bool = False, output_type: str = "pil"):
        """Images for ``class_labels`` as PIL images (``output_type="pt"``: a (B, 3, H, W) tensor in [-1, 1])."""
        labels = [class_labels] if isinstance(class_labels, int) else list(class_labels)
        gen = self.generate(labels, seed, self.plan(steps, cfg, solver, shift), progress=progress,
                            use_graph=self.device.type == "cuda")
        if output_type == "pt":
            return gen.image
        if output_type != "pil":
            raise MsfError(f"output_type {output_type!r}: use 'pil' or 'pt'")
        return to_pil(gen.image)


def load(path=None, backend: str | None = None, device="auto", dtype="fp32", compile: bool = False) -> Pipeline:
    """A cascade folder (msf-train) or artifact folder (msf-export) -> `Pipeline`; None = the embedded demo."""
    from runtime.cli import DEMO_MODEL

    path = Path(path) if path is not None else DEMO_MODEL
    if not path.is_dir():
        raise MsfError(f"model folder not found: {path}")
    return Pipeline.load(path, backend, device, dtype, compile)
