"""`msf-train` as a user runs it: a real subprocess, its output and exit code."""
import subprocess
import sys


def run(*args):
    return subprocess.run([sys.executable, "-m", "msf_train.cli", *args], capture_output=True, text=True, timeout=120)


def test_presets_table_shows_paper_figures():
    r = run("presets", "msf-xl/scale0", "msf-xl/scale1", "dit-xl/2")
    assert r.returncode == 0, r.stderr
    lines = {l.split()[0]: l.split() for l in r.stdout.splitlines()[1:]}
    assert lines["msf-xl/scale0"][1] == "435.8M"
    assert lines["dit-xl/2"][1] == "674.8M" and lines["dit-xl/2"][2] == "118.62G"
    assert lines["msf-xl/scale1"][3] == "256" and lines["msf-xl/scale1"][5] == "yes"


def test_typo_preset_is_one_line_and_nonzero_exit():
    r = run("presets", "dit-xl/3")
    assert r.returncode != 0
    assert r.stderr.strip().count("\n") == 0
    assert "unknown preset 'dit-xl/3'" in r.stderr and "dit-xl/2" in r.stderr
    assert "Traceback" not in r.stderr
