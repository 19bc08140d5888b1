"""benchmarks/compare.py flags a slower median and passes an unchanged run (real JSON files on disk)."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def write(path, medians):
    path.write_text(json.dumps({"machine_info": {"cpu": {"brand_raw": "x"}},
                                "benchmarks": [{"fullname": k, "stats": {"median": v}} for k, v in medians.items()]}))


def run(*args):
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compare.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=60)


def test_regression_fails_and_same_run_passes(tmp_path):
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    write(old, {"a": 1.0, "b": 2.0, "gone": 1.0})
    write(new, {"a": 1.25, "b": 2.0, "added": 3.0})
    r = run(old, new)
    assert r.returncode == 1
    assert "REGRESSION" in r.stdout and "only in old: gone" in r.stdout and "only in new: added" in r.stdout
    assert run(old, old).returncode == 0
    assert run(old, new, "--threshold", "0.5").returncode == 0


def test_not_a_benchmark_file_is_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    r = run(bad, bad)
    assert r.returncode != 0 and "not a pytest-benchmark JSON" in r.stderr
