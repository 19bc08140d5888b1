"""Shared pieces of the hardening tests (docs/RELIABILITY.md): the in-process CLI runner, the
one-line refusal check, file snapshots, the msf-run arguments of the cases and one tiny trained cascade
built once per test session.

`test_hardening.py` runs the bad-input cases in-process; `test_hardening_faults.py` the faults that
need real processes, signals or file systems. Both take the cascade from `hardening_cascade`.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from click.testing import CliRunner

from _msf_tiny import tiny_assets

ROOT = Path(__file__).resolve().parent.parent
_CASCADE: dict = {}


def tree(*paths) -> dict[str, str]:
    """sha256 of every file under `paths` (a snapshot: 'nothing changed' is snapshot equality)."""
    out = {}
    for p in map(Path, paths):
        files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file()) if p.exists() else []
        for f in files:
            if f.name != ".msf-lock":
                out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def cli(name: str):
    from msf_eval.cli import main as msf_eval
    from msf_export.cli import main as msf_export
    from msf_train.cli import main as msf_train
    from runtime.cli import main as msf_run

    return {"train": msf_train, "run": msf_run, "eval": msf_eval, "export": msf_export}[name]


def invoke(name: str, *args, env=None):
    return CliRunner().invoke(cli(name), [str(a) for a in args], env=env, catch_exceptions=True)


def assert_refused(r, *needles: str) -> str:
    """exit != 0, exactly one stderr line, no traceback, no internal error (every fault is understood)."""
    err = r.stderr.strip()
    assert r.exit_code != 0, (r.stdout, err)
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert err.count("\n") == 0 and err.startswith("Error: "), err
    assert "Traceback" not in err and "unexpected;" not in err, err
    for n in needles:
        assert n in err, err
    return err


def hardening_cascade(tmp_path_factory) -> dict:
    """A tiny trained cascade (scale0 + scale1, 3 steps each), its stage folders, a 1-step classifier and
    the tiny assets; built on the first call. Tests copy what they change: the folders are shared."""
    if _CASCADE:
        return dict(_CASCADE)
    from msf_train.assemble import assemble_cascade
    from msf_train.train import TrainOptions, train

    a = tiny_assets(tmp_path_factory)
    root = tmp_path_factory.mktemp("hardening")
    quiet = lambda *x, **k: None  # noqa: E731
    for stage in ("scale0", "scale1"):
        train(TrainOptions(stage=stage, preset=f"tiny/{stage}", cache=str(a["cache"]), out=str(root / stage),
                           steps=3, batch=8, save_every=3, log_every=1, device="cpu", progress=False), log=quiet)
    assemble_cascade(root / "msf", [root / "scale0", root / "scale1"], a["vae"], log=quiet)
    from msf_eval.classifier import train_classifier

    train_classifier(root / "clf", size=64, steps=1, batch=4, holdout=10, log=quiet)
    _CASCADE.update({**a, "root": root, "msf": root / "msf", "s0": root / "scale0", "s1": root / "scale1",
                     "clf": root / "clf"})
    return dict(_CASCADE)


RUN = ("--class", "1", "--steps", "2,2", "--device", "cpu")
