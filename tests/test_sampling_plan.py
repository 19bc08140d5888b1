"""A model folder's own sampling plan (cascade.json "sampling", msf_train/schema.py `sampling`): msf-run,
msf-eval and the Python API sample with it when not told --steps/--cfg, flags win one by one, an
export carries it in its manifest, and a bad entry is one line. The embedded demo ships one (50 + 15
steps, CFG 3 / 2: docs/RESULTS.md, "Sweeps"), so `msf-run --class 330` draws at the tuned plan."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from export_helpers import assert_one_line_error, msf_export, msf_run, png, tiny_cascade

PLAN = {"steps": [3, 2], "cfg": [2.0, 1.0]}


def with_plan(factory, tmp_path, sampling) -> Path:
    """A copy of the tiny cascade whose cascade.json carries ``sampling``."""
    folder = tmp_path / "planned"
    shutil.copytree(tiny_cascade(factory), folder)
    meta = json.loads((folder / "cascade.json").read_text())
    (folder / "cascade.json").write_text(json.dumps({**meta, "sampling": sampling}))
    return folder


def test_the_folders_plan_is_the_default_and_each_flag_overrides_its_part(tmp_path_factory, tmp_path):
    from runtime.pipeline import Pipeline

    model = with_plan(tmp_path_factory, tmp_path, PLAN)
    pipe = Pipeline.load(model, device="cpu")
    assert (pipe.plan().steps, pipe.plan().cfg) == ((3, 2), (2.0, 1.0))
    assert (pipe.plan(steps=(4, 1)).steps, pipe.plan(steps=(4, 1)).cfg) == ((4, 1), (2.0, 1.0))
    assert (pipe.plan(cfg=(1.4, 1.0)).steps, pipe.plan(cfg=(1.4, 1.0)).cfg) == ((3, 2), (1.4, 1.0))
    plain = Pipeline.load(tiny_cascade(tmp_path_factory), device="cpu").plan()  # no entry: the paper's plan
    assert (plain.steps, plain.cfg) == ((100, 50), (1.4, 1.0))

    r = msf_run("--model", model, "--class", "3", "--device", "cpu", "--out", tmp_path / "a.png")
    assert r.returncode == 0, r.stderr
    r = msf_run("--model", model, "--class", "3", "--device", "cpu", "--steps", "3,2", "--cfg", "2,1",
                "--out", tmp_path / "b.png", "--quiet")
    assert r.returncode == 0, r.stderr
    assert np.array_equal(png(tmp_path / "a.png"), png(tmp_path / "b.png"))
    r = msf_run("--model", model, "--class", "3", "--device", "cpu", "--steps", "3,2", "--out", tmp_path / "c.png",
                "--quiet")  # guidance off at scale 0 would be another image: --steps alone keeps the folder's CFG
    assert r.returncode == 0 and np.array_equal(png(tmp_path / "a.png"), png(tmp_path / "c.png"))
    r = msf_run("--model", model, "--class", "3", "--device", "cpu", "--steps", "3,2", "--cfg", "1,1",
                "--out", tmp_path / "d.png", "--quiet")
    assert r.returncode == 0 and not np.array_equal(png(tmp_path / "a.png"), png(tmp_path / "d.png"))


def test_msf_eval_samples_at_the_folders_plan(tmp_path_factory, tmp_path):
    from msf_eval.evaluate import sample_images

    s = sample_images(with_plan(tmp_path_factory, tmp_path, PLAN), [1, 2], 1, device="cpu", progress=False)
    assert (s["plan"].steps, s["plan"].cfg) == ((3, 2), (2.0, 1.0))


def test_an_export_carries_the_plan_and_runs_with_it(tmp_path_factory, tmp_path):
    from runtime.pipeline import Pipeline

    model = with_plan(tmp_path_factory, tmp_path, PLAN)
    art = tmp_path / "art"
    r = msf_export("--engine", "onnx", "--model", model, "--out", art, "--max-batch", 4, "--quiet")
    assert r.returncode == 0, r.stderr
    assert json.loads((art / "manifest.json").read_text())["sampling"] == PLAN
    plan = Pipeline.load(art, device="cpu").plan()
    assert (plan.steps, plan.cfg) == ((3, 2), (2.0, 1.0))
    r = msf_run("--model", art, "--class", "3", "--device", "cpu", "--out", tmp_path / "onnx.png", "--quiet")
    assert r.returncode == 0, r.stderr
    r = msf_run("--model", model, "--class", "3", "--device", "cpu", "--out", tmp_path / "torch.png", "--quiet")
    assert r.returncode == 0, r.stderr
    # ONNX Runtime against torch at the same plan: the backends' acceptance (test_backends), mean |diff| <= 1/255
    assert np.abs(png(tmp_path / "onnx.png").astype(float) - png(tmp_path / "torch.png")).mean() <= 1.0


@pytest.mark.parametrize("sampling, needle", [
    ({"steps": [3, 2, 1]}, "'sampling.steps' has 3 value(s) but there are 2 stage(s)"),
    ({"steps": [3, 0]}, "'sampling.steps' must hold whole numbers >= 1"),
    ({"cfg": [-1, 1]}, "'sampling.cfg' must hold finite numbers >= 0"),
    ({"cfg": "3,2"}, "'sampling.cfg' must be a list"),
    ([3, 2], "'sampling' must be a JSON object"),
])
def test_a_bad_plan_is_one_line_before_anything_runs(tmp_path_factory, tmp_path, sampling, needle):
    model = with_plan(tmp_path_factory, tmp_path, sampling)
    r = msf_run("--model", model, "--class", "3", "--device", "cpu", "--out", tmp_path / "x.png")
    assert_one_line_error(r, needle, "cascade.json")
    assert not (tmp_path / "x.png").exists()


def test_the_embedded_demo_ships_its_tuned_plan():
    from runtime.cli import DEMO_MODEL
    from runtime.engines import sampling_defaults

    assert sampling_defaults(DEMO_MODEL) == {"steps": [50, 15], "cfg": [3.0, 2.0]}
    assert sampling_defaults(DEMO_MODEL.parent / "demo-dit") == {"steps": [50], "cfg": [3.0]}
