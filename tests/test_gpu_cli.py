"""Issue #11: no msf command may exit non-zero without saying why, in one line, --quiet or not.

Runs on the CPU: every CLI with bad input, a real AOTInductor export failure (no C++ compiler), and
the ends Python cannot report itself (a segfault in native code, os._exit, an unexpected
exception) through the supervisor in `msf_train.cliutil`. Also the AOTInductor torch-version check
(issue #14 item 8)."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from export_helpers import assert_one_line_error, run_cli, tiny_cascade


@pytest.mark.parametrize("module,args,needle", [
    ("msf_export.cli", ["--engine", "aoti", "--quiet", "--model", "/nonexistent/model", "--out", "{tmp}/o"],
     "/nonexistent/model"),
    ("msf_export.cli", ["--engine", "nope", "--quiet"], "--engine"),
    ("msf_export.cli", ["info", "{tmp}"], "manifest.json"),
    ("runtime.cli", ["--model", "{tmp}", "--out", "{tmp}/x.png", "--steps", "2,0"], "--steps"),
    ("runtime.cli", ["--compile", "--compile-mode", "bogus"], "--compile-mode"),
    ("msf_train.cli", ["scale0", "--preset", "no/such", "--cache", "{tmp}", "--out", "{tmp}/s"], "no/such"),
    ("msf_eval.cli", ["run", "--model", "/nonexistent/model"], ""),  # one line whatever fails first
])
def test_every_cli_fails_in_one_line(tmp_path, module, args, needle):
    r = run_cli(module, *[a.replace("{tmp}", str(tmp_path)) for a in args], timeout=120)
    assert_one_line_error(r, needle)
    assert "Usage:" not in r.stderr


def _command(tmp_path, body: str) -> subprocess.CompletedProcess:
    """A real msf-style click command (our plumbing) whose body fails in the given way."""
    script = tmp_path / "cmd.py"
    script.write_text(textwrap.dedent(f"""
        import click
        from msf_train.cliutil import MsfCommand

        @click.command(cls=MsfCommand)
        @click.option("--quiet", is_flag=True)
        def main(quiet):
            {body}

        main()
    """))
    env = {k: v for k, v in os.environ.items() if k not in ("MSF_NO_SUPERVISOR", "MSF_REPORT_FD")}
    return subprocess.run([sys.executable, str(script), "--quiet"], capture_output=True, text=True, timeout=60, env=env)


def test_a_native_crash_is_reported_in_one_line(tmp_path):
    r = _command(tmp_path, "import ctypes; ctypes.string_at(0)")  # a real SIGSEGV in native code
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: ") and "SIGSEGV" in last, r.stderr
    assert "Fatal Python error" in r.stderr  # faulthandler's stack sits above it: where it crashed


@pytest.mark.parametrize("body,needle", [
    ("import os; os._exit(3)", "status 3 without a message"),
    ("import sys; sys.exit(4)", "status 4"),
    ("raise RuntimeError('')", "RuntimeError"),
    ("raise ValueError('first\\nsecond')", "ValueError: first"),
])
def test_silent_or_unexpected_ends_print_one_line(tmp_path, body, needle):
    assert_one_line_error(_command(tmp_path, body), needle)


def test_aoti_export_failure_is_one_line_with_quiet(tmp_path_factory, tmp_path):
    """A real inductor failure (no working C++ compiler) on the --quiet path the GPU test takes."""
    env = {**os.environ, "CXX": str(tmp_path / "no-such-c++"), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "msf_export.cli", "--engine", "aoti", "--device", "cpu",
                        "--model", str(tiny_cascade(tmp_path_factory)), "--out", str(tmp_path / "art"),
                        "--max-batch", "4", "--quiet"], capture_output=True, text=True, timeout=600, env=env)
    assert_one_line_error(r, "AOTInductor export of scale0 for cpu failed", "C++ compiler")
    assert not (tmp_path / "art" / "manifest.json").exists()


EMPTY_SHA = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"  # sha256 of b""


def _fake_aoti_folder(tmp_path, torch_version: str):
    """A manifest-only aoti folder (no packages): enough to reach the checks that come before loading."""
    spec = lambda n, s: {"name": n, "shape": s, "dtype": "float32"}  # noqa: E731
    from msf_train.config import get_preset

    cfg = get_preset("tiny/scale0").to_dict()
    entry = {"name": "scale0", "kind": "denoiser", "config": cfg, "artifact": "scale0.pt2", "files": {"scale0.pt2": EMPTY_SHA},
             "parity": {"max_abs": 0.0, "mean_abs": 0.0},
             "inputs": [spec("x", ["batch", 4, 4, 4])], "outputs": [spec("v", ["batch", 4, 4, 4])], "precision": "fp32"}
    dec = {**entry, "name": "decoder", "kind": "decoder", "artifact": "decoder.pt2", "files": {"decoder.pt2": EMPTY_SHA}}
    m = {"format": 1, "kind": "msf-export", "engine": "aoti", "precision": "fp32", "device": "cpu",
         "batch": {"min": 1, "opt": 2, "max": 4}, "stages": [entry], "decoder": dec, "tools": {"torch": torch_version}}
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    for name in ("scale0.pt2", "decoder.pt2"):  # empty stand-ins, hash-checked like real packages
        (tmp_path / name).write_bytes(b"")
    return tmp_path


def test_aoti_package_from_another_torch_is_refused_in_one_line(tmp_path):
    folder = _fake_aoti_folder(tmp_path, "2.11.0+cu130")
    r = run_cli("runtime.cli", "--model", folder, "--device", "cpu", "--out", tmp_path / "x.png", timeout=120)
    line = assert_one_line_error(r, "compiled by torch 2.11.0+cu130", "re-export")
    assert "scale0.pt2" in line

