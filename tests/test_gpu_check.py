"""benchmarks/gpu_check.py proven on the CPU (issue #11): every section runs or says why not, rows
carry peak memory, DiT-250 is derived and marked so, and the cost model predicts the H100 run."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _dry(tmp_path, *extra):
    out = tmp_path / "dry.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--device", "cpu",
                        "--out", str(out), *extra], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return json.loads(out.read_text())


def test_dry_run_runs_every_section_and_predicts_the_gpu_run(tmp_path):
    data = _dry(tmp_path, "--no-compile")
    sections = data["sections"]
    ran = {k for k, v in sections.items() if v["status"] == "ran"}
    assert ran == {"fast_b64", "eager_b64", "forward", "graph_b16", "eager_b16"}, sections
    for name in ("fp8", "compile_modes"):
        assert sections[name]["status"] == "skipped" and sections[name]["reason"]
    assert all(v["seconds"] >= 0 for k, v in sections.items() if k in ran)
    rows = data["results"]
    cascades = [r for r in rows if r["kind"] == "cascade"]
    assert {r["run"] for r in cascades} == {"msf", "dit-6", "dit-15"}
    assert all(r["cpu_peak_rss_mib"] > 0 for r in rows if r["kind"] != "ratio")
    derived = [r for r in cascades if r.get("derived")]
    assert len(derived) == 4 and all("per-step time" in r["how"] for r in derived)
    ratios = [r for r in rows if r["kind"] == "ratio" and r["section"] == "eager_b64"]
    assert {r["what"] for r in ratios} == {"dit-6 / msf time", "dit-15 / msf time"}
    pred = data["prediction"]
    assert set(pred["sections_s"]) == set(sections)
    assert 0 < pred["within_budget_s"] <= 360, pred  # the H100 run fits the 6 minutes by the model


@pytest.mark.slow
def test_dry_run_with_torch_compile(tmp_path):
    data = _dry(tmp_path)
    assert data["sections"]["fast_b64"]["status"] == "ran", data["sections"]
    rows = [r for r in data["results"] if r["kind"] == "forward" and r["compile"] == "default"]
    assert len(rows) == 3
