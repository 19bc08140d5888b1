"""Shared by test_export*.py and test_backends.py: a tiny random cascade and its exports, made once
per test session (exporting takes tens of seconds), and the CLIs run as real subprocesses."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

_CACHE: dict[str, Path] = {}
TINY = ["tiny/scale0", "tiny/scale1"]


def run_cli(module: str, *args, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def msf_export(*args, **kw):
    return run_cli("msf_export.cli", *args, **kw)


def msf_run(*args, **kw):
    return run_cli("runtime.cli", *args, **kw)


def assert_one_line_error(r: subprocess.CompletedProcess, *needles: str) -> str:
    """Non-zero exit, exactly one line on stderr, no traceback, and the line names the problem."""
    assert r.returncode != 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def tiny_cascade(factory) -> Path:
    """tiny/scale0 + tiny/scale1 with perturbed random weights and a tiny random AutoencoderKL."""
    if "cascade" not in _CACHE:
        from runtime.cascade import write_random_cascade

        _CACHE["cascade"] = write_random_cascade(factory.mktemp("tiny-cascade"), TINY, seed=3,
                                                 vae={"block_out_channels": (8, 8, 8, 8), "norm_num_groups": 2})
    return _CACHE["cascade"]


def exported(factory, engine: str = "onnx", *extra: str) -> Path:
    """`msf-export --engine ENGINE` of the tiny cascade (batch 1..16), made once per session; ONNX
    with --external-data so that path (two files per artifact) is what the tests exercise."""
    if engine == "onnx" and not extra:
        extra = ("--external-data",)
    key = " ".join([engine, *extra])
    if key not in _CACHE:
        out = factory.mktemp(f"export-{engine}") / "art"
        r = msf_export("--engine", engine, "--model", tiny_cascade(factory), "--out", out, "--max-batch", 16,
                       "--quiet", *extra)
        assert r.returncode == 0, r.stderr
        _CACHE[key] = out
    return _CACHE[key]


def png(path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path)).astype(np.float64)
