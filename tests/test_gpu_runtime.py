"""CUDA paths of the runtime: one CUDA graph of the whole cascade must replay to what eager sampling
gives, for new seeds and classes written into its static buffers. Skipped without CUDA."""
import subprocess
import sys

import pytest
import torch

from runtime.cascade import build_random_cascade, write_random_cascade
from runtime.graphs import CascadeRunner, time_cascade
from runtime.sampler import make_plan, sample

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (graph capture and replay)")]

MSF, DIT = ("tiny/scale0", "tiny/scale1"), ("tiny/dit",)


def _close(a, b, tol=1e-4):
    torch.testing.assert_close(a, b, atol=tol, rtol=tol)


@pytest.mark.parametrize("presets,steps,cfg,solver", [
    (MSF, [6, 4], [1.4, 1.0], "euler"),
    (MSF, [3, 2], [2.0, 1.5], "heun"),
    (DIT, [5], [1.5], "euler"),
])
@pytest.mark.parametrize("batch", [1, 4])
def test_graph_replay_equals_eager(presets, steps, cfg, solver, batch):
    stages, decoder = build_random_cascade(presets, device="cuda")
    plan = make_plan([c for c, _ in stages], steps, cfg, solver, shift=1.5)
    runner = CascadeRunner(stages, decoder, batch, plan, save_scales=True, warn=False)
    assert runner.mode == "graph", runner.reason
    images = []
    for seed, first_class in [(0, 3), (11, 7)]:  # two replays: new noise and classes through the static buffers
        classes = [(first_class + j) % 20 for j in range(batch)]
        g = runner.sample(classes, seeds=seed)
        e = sample(stages, decoder, classes, seeds=seed, plan=plan, save_scales=True)
        _close(g.latent, e.latent)
        _close(g.image, e.image)
        for gs, es in zip(g.scales, e.scales):
            _close(gs, es)
        images.append(g.image)
    assert (images[0] - images[1]).abs().max() > 1e-3  # the replay really read the new inputs


def test_graph_replay_in_bf16_matches_eager_bf16():
    stages, decoder = build_random_cascade(MSF, device="cuda", dtype="bf16")
    plan = make_plan([c for c, _ in stages], [4, 3], [1.4, 1.0])
    runner = CascadeRunner(stages, decoder, 2, plan, warn=False)
    assert runner.mode == "graph", runner.reason
    _close(runner.sample([1, 2], seeds=5).image, sample(stages, decoder, [1, 2], seeds=5, plan=plan).image, 1e-2)


def test_cuda_and_cpu_sample_the_same_image():
    """Noise is drawn on the CPU per image, so the device changes rounding, not the image."""
    cpu_stages, cpu_dec = build_random_cascade(MSF, device="cpu")
    gpu_stages, gpu_dec = build_random_cascade(MSF, device="cuda")
    plan = make_plan([c for c, _ in cpu_stages], [4, 3], [1.4, 1.0])
    a = sample(cpu_stages, cpu_dec, [3], seeds=2, plan=plan).latent
    b = sample(gpu_stages, gpu_dec, [3], seeds=2, plan=plan).latent.cpu()
    _close(a, b, 1e-2)


def test_time_cascade_runs_both_modes():
    stages, decoder = build_random_cascade(MSF, device="cuda")
    plan = make_plan([c for c, _ in stages], [4, 2], [1.4, 1.0])
    eager = time_cascade(stages, decoder, 2, plan, use_graph=False, repeats=2)
    graph = time_cascade(stages, decoder, 2, plan, use_graph=True, repeats=2)
    assert (eager["mode"], graph["mode"]) == ("eager", "graph"), graph["reason"]
    assert graph["capture_s"] > 0 and len(graph["times_s"]) == 2


def test_msf_run_on_cuda_uses_the_graph(tmp_path):
    model = write_random_cascade(tmp_path / "tiny", MSF)
    r = subprocess.run([sys.executable, "-m", "runtime.cli", "--model", str(model), "--device", "cuda", "--class", "1,2",
                        "--steps", "4,2", "--out", str(tmp_path / "g.png")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "[torch cuda graph]" in r.stderr and (tmp_path / "g.png").is_file()
