"""Hardening faults that need real processes (docs/RELIABILITY.md): Ctrl-C saves and a second
writer is refused naming the first; a full disk, a read-only file system and a folder without write
permission are one line each with partial outputs removed; a stop signal delivered twice is one stop.
The bad-input cases that run in-process are in test_hardening.py.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from _hardening import ROOT, RUN, assert_refused, hardening_cascade, invoke
from _msf_tiny import wait_for_first_log_line


@pytest.fixture(scope="module")
def w(tmp_path_factory):
    return hardening_cascade(tmp_path_factory)


def _env(**extra):
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **extra}


def _train_cmd(w, out, steps, *extra):
    return [sys.executable, "-m", "msf_train.cli", "scale0", "--preset", "tiny/scale0", "--cache", str(w["cache"]),
            "--out", str(out), "--steps", str(steps), "--batch", "4", "--save-every", "100000", "--log-every", "1",
            "--device", "cpu", *extra]


def test_sigint_saves_and_second_writer_is_refused(w, tmp_path):
    """Ctrl-C during training saves a checkpoint and exits 130; meanwhile a second training on the
    same --out is refused naming the first one's PID; assemble refuses the unfinished stage; --resume
    finishes it."""
    out = tmp_path / "s0"
    # its own process group, as a shell job: Ctrl-C reaches the group (the supervisor and the worker)
    p = subprocess.Popen(_train_cmd(w, out, 100000), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=_env(), start_new_session=True)
    try:
        wait_for_first_log_line(out)
        second = subprocess.run(_train_cmd(w, out, 10, "--resume"), capture_output=True, text=True, env=_env(),
                                timeout=300)
        holder = re.search(r"PID (\d+)", second.stderr)
        assert second.returncode != 0 and holder and second.stderr.count("\n") == 1, second.stderr
        os.kill(int(holder.group(1)), 0)  # the named process is the running training (alive)
        os.killpg(p.pid, signal.SIGINT)
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("Error: interrupted by SIGINT") and "Traceback" not in err, err
    step = json.loads((out / "state" / "latest.json").read_text())["step"]
    assert step >= 1 and json.loads((out / "config.json").read_text())["step"] == step
    r = invoke("train", "assemble", "--out", tmp_path / "c", "--vae", w["vae"], out, w["s1"])
    assert_refused(r, "stopped at step", "--allow-unfinished")
    assert not (tmp_path / "c").exists()
    r = subprocess.run(_train_cmd(w, out, step + 2, "--resume"), capture_output=True, text=True, env=_env(),
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "state" / "latest.json").read_text())["step"] == step + 2


def _mount_tmpfs(path: Path, *opts: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(opts), "tmpfs", str(path)], capture_output=True)
    return r.returncode == 0


@pytest.fixture
def small_fs(tmp_path):
    """A 256 KiB tmpfs (disk full) and a read-only tmpfs; skipped where mounting is not allowed."""
    full, ro = tmp_path / "full", tmp_path / "ro"
    if not _mount_tmpfs(full, "size=256k"):
        pytest.skip("cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN)")
    _mount_tmpfs(ro, "size=64k", "ro")
    yield full, ro
    for p in (full, ro):
        subprocess.run(["umount", str(p)], capture_output=True)


def _one_line(r, *needles):
    """exit != 0 and one error line, the last on stderr (a progress bar may precede it), no traceback."""
    lines = r.stderr.strip().splitlines()
    err = lines[-1] if lines else ""
    assert r.returncode != 0 and "Traceback" not in r.stderr and "unexpected;" not in err, r.stderr
    assert err.startswith("Error: ") and sum(l.startswith("Error:") for l in lines) == 1, r.stderr
    for n in needles:
        assert n in err, err


def test_disk_full_and_read_only_are_one_line_and_leave_nothing(w, small_fs):
    full, ro = small_fs
    py = [sys.executable, "-m"]
    # assemble copies ~1.5 MB into 256 KiB: ENOSPC mid-way; the half-written cascade is removed
    r = subprocess.run(py + ["msf_train.cli", "assemble", "--out", str(full / "c"), "--vae", str(w["vae"]),
                             str(w["s0"]), str(w["s1"])], capture_output=True, text=True, env=_env(), timeout=300)
    _one_line(r, "no space left")
    assert not (full / "c").exists()
    r = subprocess.run(py + ["msf_export.cli", "--engine", "onnx", "--model", str(w["msf"]), "--out",
                             str(full / "x"), "--quiet"], capture_output=True, text=True, env=_env(), timeout=600)
    _one_line(r, "no space left")
    assert not (full / "x").exists()
    # training checkpoints onto a full disk
    r = subprocess.run(_train_cmd(w, full / "t", 2), capture_output=True, text=True, env=_env(), timeout=300)
    _one_line(r, "no space left")
    # read-only file system: run, train, export
    r = subprocess.run(py + ["runtime.cli", "--model", str(w["msf"]), "--out", str(ro / "x.png"), *RUN],
                       capture_output=True, text=True, env=_env(), timeout=300)
    _one_line(r, "Read-only")
    r = subprocess.run(_train_cmd(w, ro / "t", 2), capture_output=True, text=True, env=_env(), timeout=300)
    _one_line(r, "read-only")
    r = subprocess.run(py + ["msf_export.cli", "--engine", "onnx", "--model", str(w["msf"]), "--out",
                             str(ro / "x"), "--quiet"], capture_output=True, text=True, env=_env(), timeout=300)
    _one_line(r, "read-only")


def test_permission_denied_is_one_line(tmp_path):
    """A folder the user may not write: msf-run and msf-eval classifier say so in one line."""
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="msf-eacces-", dir="/tmp"))
    try:
        os.chmod(base, 0o555)
        prefix = []
        if os.geteuid() == 0:  # root ignores permissions: run the CLIs as nobody
            if not shutil.which("setpriv"):
                pytest.skip("running as root without setpriv")
            prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        env = _env(HOME="/tmp")
        r = subprocess.run(prefix + [sys.executable, "-m", "runtime.cli", "--out", str(base / "x.png"), "--steps",
                                     "1,1", "--device", "cpu"], capture_output=True, text=True, env=env, timeout=300)
        if "Error:" not in r.stderr:
            pytest.skip(f"this interpreter cannot run as nobody here: {r.stderr[-200:]}")
        _one_line(r, "Permission denied")
        r = subprocess.run(prefix + [sys.executable, "-m", "msf_eval.cli", "classifier", "--out", str(base / "c"),
                                     "--steps", "1"], capture_output=True, text=True, env=env, timeout=300)
        _one_line(r, "ermission denied")
        assert list(base.iterdir()) == []
    finally:
        os.chmod(base, 0o755)
        shutil.rmtree(base, ignore_errors=True)


def test_a_stop_signal_twice_is_one_stop_and_a_later_one_stops_at_once():
    """A process-group SIGTERM reaches the trainer directly and again through its supervisor: the
    second copy, close after the first, must not kill the run before it saves; a signal sent well
    after the first still acts as usual (the default action: death by SIGTERM)."""
    code = (
        "import os, signal, time\n"
        "from msf_train.util import StopSignals\n"
        "StopSignals.DUPLICATE_S = 0.5\n"
        "with StopSignals() as stop:\n"
        "    os.kill(os.getpid(), signal.SIGTERM); time.sleep(0.05)\n"
        "    os.kill(os.getpid(), signal.SIGTERM); time.sleep(0.05)\n"
        "    print('alive', stop.signum, flush=True)\n"
        "    time.sleep(0.6)\n"
        "    os.kill(os.getpid(), signal.SIGTERM); time.sleep(1)\n"
        "    print('not stopped', flush=True)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.split() == ["alive", str(int(signal.SIGTERM))], r.stdout + r.stderr
    assert r.returncode == -signal.SIGTERM, r.stdout + r.stderr
