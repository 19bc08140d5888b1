"""Tiny training assets shared by the training tests, built once per test session.

A tiny VAE (8-16 channels, trained two steps on 64 px shapes), a second VAE with other weights, a
latent cache of shapes classes 0..19 at 4/8 latents (32/64 px) and one with class ids beyond the tiny
presets' 20 classes. `tiny_assets(tmp_path_factory)` returns their paths; every test module that
needs them calls it from its own fixture, and the first call builds them.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

TINY_WIDTHS = (8, 16, 16, 16)
TINY_SCALES = (4, 8)
_ASSETS: dict[str, Path] = {}


def tiny_assets(tmp_path_factory) -> dict[str, Path]:
    if _ASSETS:
        return _ASSETS
    from msf_train.cache import build_cache
    from msf_train.vae import save_vae
    from msf_train.vae_train import build_vae, train_vae

    root = tmp_path_factory.mktemp("tiny-assets")
    vae = root / "vae"
    train_vae(vae, steps=2, batch=4, size=64, widths=TINY_WIDTHS, classes=list(range(20)), seed=0, device="cpu",
              workers=0, scale_images=16, log_every=1, show_progress=False)
    import torch

    torch.manual_seed(123)
    other = build_vae(TINY_WIDTHS, sample_size=64)
    save_vae(other, root / "vae-other")
    quiet = lambda *a, **k: None  # noqa: E731
    build_cache(vae, "shapes", root / "cache", scales=TINY_SCALES, classes="20", per_class=4, workers=0,
                device="cpu", show_progress=False, log=quiet)
    build_cache(vae, "shapes", root / "cache-wide", scales=TINY_SCALES, classes="0,30", per_class=2, workers=0,
                device="cpu", show_progress=False, log=quiet)
    _ASSETS.update(root=root, vae=vae, vae_other=root / "vae-other", cache=root / "cache",
                   cache_wide=root / "cache-wide")
    return _ASSETS


def run_cli(*args, timeout=300, env_extra=None, module="msf_train.cli") -> subprocess.CompletedProcess:
    """`msf-train ARGS` as a user runs it: a real subprocess, one intra-op thread (robust on a busy box)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def wait_for_first_log_line(out: Path, timeout: float = 120) -> None:
    """Until a training run started in the background has written a line to OUT/log.jsonl."""
    log = Path(out) / "log.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline and not (log.is_file() and log.read_text()):
        time.sleep(0.2)
    assert log.is_file() and log.read_text(), "training did not start"


def assert_one_line_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode != 0, r.stdout + r.stderr
    err = r.stderr.strip()
    assert "Traceback" not in err, err
    assert err.count("\n") == 0, err
    for n in needles:
        assert n in err, err
