"""Training throughput on this machine's CPU: one optimizer step of each demo preset at batch 64
(the training loop's own Stepper: flow loss, backward, clipping, AdamW, EMA), and how fast the shapes
dataset renders. Run: pytest benchmarks/test_bench_train.py --benchmark-only

steps/s = 1 / median round time; extra_info carries it and images/s. Few rounds, so the file runs in
about two minutes on 2 cores.
"""
import itertools

import numpy as np
import pytest
import torch

from msf_train.config import get_preset
from msf_train.data import render
from msf_train.train import Stepper, TrainOptions, targets

BATCH = 64


def _stage(cfg) -> str:
    return "dit" if len(cfg.scale_sizes) == 1 else f"scale{cfg.scale_index}"


@pytest.mark.parametrize("preset", ["demo/scale0", "demo/scale1", "demo/dit"])
def test_train_step_throughput(benchmark, preset):
    cfg = get_preset(preset)
    st = Stepper(cfg, TrainOptions(stage=_stage(cfg), cache="", out="", seed=0), torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    full = torch.randn(BATCH, cfg.in_channels, cfg.scale_sizes[-1], cfg.scale_sizes[-1], generator=g)
    base = torch.randn(BATCH, cfg.in_channels, cfg.scale_sizes[0], cfg.scale_sizes[0], generator=g)
    x, prior = targets(cfg, full, base)
    y = torch.randint(0, cfg.num_classes, (BATCH,), generator=g)
    steps = itertools.count()

    def one_step():
        loss, _ = st.step(next(steps), x, prior, y)
        return loss.item()

    loss = benchmark.pedantic(one_step, rounds=4, iterations=1, warmup_rounds=1)
    assert np.isfinite(loss)
    med = benchmark.stats.stats.median
    benchmark.extra_info.update(preset=preset, batch=BATCH, steps_per_s=round(1 / med, 3),
                                images_per_s=round(BATCH / med, 1), threads=torch.get_num_threads())


@pytest.mark.parametrize("size", [96, 128])
def test_shapes_render_throughput(benchmark, size):
    ids = itertools.count()

    def render_batch():
        return [render((i * 37) % 1000, i, 0, size) for i in itertools.islice(ids, BATCH)]

    out = benchmark.pedantic(render_batch, rounds=5, iterations=1, warmup_rounds=1)
    assert len(out) == BATCH
    benchmark.extra_info.update(size=size, images_per_s_one_core=round(BATCH / benchmark.stats.stats.median, 1))
