"""The Python API (`msf.load`, runtime/pipeline.py) and msf-run's user-facing options: per-image files,
chunks above an artifact's batch range, progress on a terminal only, --version, and what an exported
artifact imports (neither diffusers nor the training code)."""
from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios

import numpy as np
import pytest

from export_helpers import exported, msf_run, png, run_cli, tiny_cascade

FAST = ["--class", "3", "--steps", "3,2", "--cfg", "1.4,1.0", "--device", "cpu"]


def test_pipeline_gives_msf_run_images_per_class_and_seed(tmp_path_factory, tmp_path):
    import msf

    model = tiny_cascade(tmp_path_factory)
    r = msf_run("--model", model, *FAST, "--class", "3,7", "--batch", "2", "--seed", "10", "--out-dir", tmp_path,
                "--quiet")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert names == ["class3-seed10.png", "class3-seed11.png", "class7-seed12.png", "class7-seed13.png"]
    pipe = msf.load(model, device="cpu")
    images = pipe(class_labels=[7, 3], steps=(3, 2), cfg=(1.4, 1.0), seed=12)  # image j uses seed 12 + j
    assert [im.size for im in images] == [(64, 64)] * 2
    # same noise and class; batch 2 here, 4 there: matmul rounding may move a pixel by one level
    assert np.abs(np.asarray(images[0]) - png(tmp_path / "class7-seed12.png")).max() <= 1
    assert np.abs(np.asarray(images[0]) - png(tmp_path / "class7-seed13.png")).max() > 8  # another seed


def test_more_images_than_the_artifacts_batch_run_in_chunks_with_the_same_images(tmp_path_factory):
    from runtime.pipeline import load

    pipe = load(exported(tmp_path_factory), device="cpu")  # denoisers take batches 1..16; CFG doubles
    plan = pipe.plan((2, 1), (1.4, 1.0))
    assert pipe.chunk_size(plan) == 8
    big = pipe.generate([1] * 9 + [2] * 2, seed=0, plan=plan)  # 11 images: chunks of 8 + 3
    assert big.chunks == 2 and big.image.shape[0] == 11
    alone = pipe.generate([2], seed=10, plan=plan)  # image 10 on its own
    assert (big.image[10] - alone.image[0]).abs().max() < 1e-5


def test_exported_artifact_runs_without_diffusers_or_training_code(tmp_path_factory, tmp_path):
    art = exported(tmp_path_factory)
    code = ("import sys, msf; msf.load(sys.argv[1], device='cpu')([1], steps=(2, 1), cfg=(1.4, 1.0)); "
            "import json; print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('diffusers', 'msf_train', 'msf_eval'))))")
    r = subprocess.run([sys.executable, "-c", code, str(art)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    loaded = json.loads(r.stdout.strip().splitlines()[-1])
    assert not [m for m in loaded if m.startswith(("diffusers", "msf_eval", "msf_train.train", "msf_train.data",
                                                   "msf_train.cache", "msf_train.vae"))], loaded


def test_progress_bar_on_a_terminal_only(tmp_path_factory, tmp_path):
    model = tiny_cascade(tmp_path_factory)
    piped = msf_run("--model", model, *FAST, "--out", tmp_path / "a.png")
    assert "fwd" not in piped.stderr and "images/s" in piped.stderr  # not a TTY: timing lines, no bar
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a fresh pty is 0 columns wide
    p = subprocess.Popen([sys.executable, "-m", "runtime.cli", "--model", str(model), *FAST, "--out",
                          str(tmp_path / "b.png")], stdout=subprocess.PIPE, stderr=slave, text=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    p.wait(timeout=300)
    os.close(master)
    tty = b"".join(chunks).decode(errors="replace")
    assert p.returncode == 0 and "sampling" in tty and "fwd" in tty, tty  # 3 * 1 (+CFG) + 2 forwards: a bar


@pytest.mark.parametrize("module,prog", [("msf_train.cli", "msf-train"), ("msf_export.cli", "msf-export"),
                                         ("runtime.cli", "msf-run"), ("msf_eval.cli", "msf-eval")])
def test_every_cli_has_version(module, prog):
    r = run_cli(module, "--version")
    assert r.returncode == 0 and r.stdout.startswith(f"{prog} ") and r.stdout.split()[1][0].isdigit(), r.stdout


def test_vae_given_as_a_hub_id_gets_a_download_hint(tmp_path):
    r = run_cli("msf_train.cli", "cache", "--vae", "stabilityai/sd-vae-ft-ema", "--data", "shapes", "--out", tmp_path / "c")
    err = r.stderr.strip()
    assert r.returncode != 0 and "\n" not in err and "hub id" in err and "--local-dir" in err, err
