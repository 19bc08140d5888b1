"""msf-run-native (runtime/native/, docs/NATIVE.md): the C++ runner of AOTInductor exports, as a user
runs it (a real subprocess of the real binary over a real `msf-export --engine aoti` folder).

- Same image as `msf-run --backend aoti` for the same flags: the tiny cascade exported once per
  session (shared with test_backends through export_helpers; minutes of C++ compiling) in the
  default run, the embedded demo (exported once more, several minutes) under -m slow.
- Every bad input is one line on stderr, exit != 0 and no PNG (nor a temporary file) left behind;
  where msf-run refuses the same thing its line must be the same.

The binary comes from `build/` (`.ci/run` builds it); a checkout without one gets it built here
(`runtime.native.build.ensure_binary`), and a machine without cmake or a compiler skips with the reason.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from export_helpers import assert_one_line_error, exported, msf_export, msf_run, png

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "runtime" / "weights" / "demo-msf"


@pytest.fixture(scope="session")
def native() -> Path:
    from runtime.native.build import binary_or_reason

    path, why = binary_or_reason()
    return path if why is None else pytest.skip(why)


@pytest.fixture(scope="session")
def art(tmp_path_factory) -> Path:
    """The tiny cascade as an AOTInductor CPU export, batch 1..16 (one per session, shared)."""
    return exported(tmp_path_factory, "aoti", "--device", "cpu")


def run_native(binary: Path, *args, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True, timeout=timeout)


def same_png(tmp_path, native, model, *flags) -> tuple[np.ndarray, np.ndarray, subprocess.CompletedProcess]:
    """Both runners with the same flags -> (native image, Python image, native's process)."""
    a, b = tmp_path / "native.png", tmp_path / "python.png"
    rn = run_native(native, "--model", model, *flags, "--out", a)
    assert rn.returncode == 0, rn.stderr
    rp = msf_run("--model", model, *flags, "--out", b)
    assert rp.returncode == 0, rp.stderr
    return png(a), png(b), rn


# ---- same image as Python ------------------------------------------------------------------------
def test_same_png_as_msf_run_on_the_tiny_cascade(tmp_path, native, art):
    """CFG on scale 0 (doubled batch), none on scale 1, a 2x2 grid: the two runners drive the same
    compiled kernels with the same noise, so the images agree to the last level."""
    flags = ("--class", "3,7", "--batch", 2, "--steps", "4,3", "--seed", 11, "--device", "cpu")
    got, ref, r = same_png(tmp_path, native, art, *flags)
    assert got.shape == ref.shape == (2 * 64 + 2, 2 * 64 + 2, 3)
    assert ref.std() > 10  # a non-trivial image
    assert np.abs(got - ref).mean() <= 1.0  # the acceptance bound: 1/255 of the range
    assert np.array_equal(got, ref), f"max diff {np.abs(got - ref).max()}"
    lines = r.stderr.splitlines()
    assert lines[0].startswith("[aoti cpu] scale 0 (tiny/scale0 4x4: 4 euler steps, cfg 1.4): ")
    assert lines[1].startswith("[aoti cpu] scale 1 (tiny/scale1 8x8: 3 euler steps, cfg 1): ")
    assert lines[2].startswith("[aoti cpu] decode (VAE): ") and "1 engine calls" in lines[2]
    assert lines[3].startswith("[aoti cpu] total: ") and "s for 4 image(s), " in lines[3] and "images/s" in lines[3]
    assert "overhead x" in lines[3] and lines[3].endswith(" MiB") and "; peak memory: CPU RSS " in lines[3]
    assert len(lines) == 4
    assert r.stdout.strip() == f"wrote {tmp_path / 'native.png'} (4 image(s) of 64x64, seed 11)"


def test_same_pngs_with_heun_shift_cfg_everywhere_and_save_scales(tmp_path, native, art):
    flags = ("--class", 5, "--batch", 3, "--steps", "3,2", "--cfg", "1.5,1.2", "--solver", "heun", "--shift", 2.5,
             "--seed", 4, "--save-scales")
    got, ref, r = same_png(tmp_path, native, art, *flags)
    assert np.array_equal(got, ref)
    for i in range(2):  # the decoded accumulation after each scale (paper Fig. 2c)
        a, b = png(tmp_path / f"native.scale{i}.png"), png(tmp_path / f"python.scale{i}.png")
        assert np.array_equal(a, b)
    assert np.array_equal(png(tmp_path / "native.scale1.png"), got)  # the last scale is the image
    assert "3 heun steps, cfg 1.5" in r.stderr and "2 heun steps, cfg 1.2" in r.stderr
    assert "6 engine calls" in r.stderr  # scale 0: 3 Heun steps x 2 calls; CFG is one call on a doubled batch


def test_more_images_than_the_export_takes_run_in_chunks_with_the_same_images(tmp_path, native, art):
    """9 images with CFG need batch 18 > the export's 16: both runners sample in chunks of 8 (msf-run's
    runtime.pipeline), each image with its own seed, so the grid is the same as one big batch would give."""
    got, ref, r = same_png(tmp_path, native, art, "--class", 2, "--batch", 9, "--steps", "2,2", "--seed", 1)
    assert np.array_equal(got, ref)
    assert "[aoti cpu] 9 images in 2 chunks (the artifacts' batch range)" in r.stderr
    assert "4 engine calls" in r.stderr  # scale 0: 2 steps x 2 chunks


def test_the_models_own_plan_is_the_default_in_both_runners(tmp_path, native, art):
    """An export of a cascade with a plan (cascade.json "sampling", copied into manifest.json) samples at
    it when not told --steps/--cfg: the same image in both runners, and the one the flags would give."""
    planned = _copy(art, tmp_path)
    _edit_manifest(planned, lambda m: m.update(sampling={"steps": [3, 2], "cfg": [2.0, 1.0]}))
    got, ref, r = same_png(tmp_path, native, planned, "--class", 6, "--seed", 2)
    assert np.array_equal(got, ref)
    assert "3 euler steps, cfg 2" in r.stderr and "2 euler steps, cfg 1" in r.stderr
    flags = run_native(native, "--model", art, "--class", 6, "--seed", 2, "--steps", "3,2", "--cfg", "2,1",
                       "--out", tmp_path / "flags.png")
    assert flags.returncode == 0, flags.stderr
    assert np.array_equal(png(tmp_path / "flags.png"), got)


def test_an_image_depends_only_on_its_seed_and_class(tmp_path, native, art):
    """Image j of a batch uses seed + j (runtime.sampler.make_noise): the third image of a batch at seed 5
    is the single image at seed 7."""
    r = run_native(native, "--model", art, "--class", 9, "--batch", 3, "--steps", "3,2", "--seed", 5,
                   "--out", tmp_path / "b.png")
    assert r.returncode == 0, r.stderr
    r = run_native(native, "--model", art, "--class", 9, "--steps", "3,2", "--seed", 7, "--out", tmp_path / "one.png")
    assert r.returncode == 0, r.stderr
    grid, one = png(tmp_path / "b.png"), png(tmp_path / "one.png")  # 3 images: a 2x2 grid, third at row 1, col 0
    assert np.abs(grid[66:130, 0:64] - one).max() <= 1


@pytest.mark.slow
def test_same_png_as_msf_run_on_the_embedded_demo(tmp_path_factory, tmp_path, native):
    """Done-when of issue 10: the demo exported to AOTInductor, class 330, default flags. Exporting the
    demo compiles three packages (several minutes on 2 cores), hence -m slow."""
    out = tmp_path_factory.mktemp("demo-aoti") / "art"
    r = msf_export("--engine", "aoti", "--model", DEMO, "--out", out, "--max-batch", 16, "--quiet")
    assert r.returncode == 0, r.stderr
    got, ref, _ = same_png(tmp_path, native, out, "--class", 330)
    assert got.shape == (128, 128, 3) and ref.std() > 10
    assert np.abs(got - ref).mean() <= 1.0


# ---- bad input: one line, exit != 0, no PNG ---------------------------------------------------------
def assert_refused(r, out: Path, *needles: str) -> str:
    line = assert_one_line_error(r, *needles)
    assert line.startswith("Error: ")
    assert not out.exists(), "a refused run must not write the PNG"
    leftovers = [p.name for p in out.parent.glob(f".{out.name}*")] if out.parent.is_dir() else []
    assert not leftovers, f"temporary files left behind: {leftovers}"
    return line


@pytest.mark.parametrize("args, needle", [
    (["--bogus"], "No such option: --bogus"),
    (["--seed", "-1"], "Invalid value for '--seed': -1 is not in the range x>=0."),
    (["--batch", "0"], "Invalid value for '--batch': 0 is not in the range x>=1."),
    (["--solver", "rk4"], "Invalid value for '--solver': 'rk4' is not one of 'euler', 'heun'."),
    (["--shift", "fast"], "Invalid value for '--shift': 'fast' is not a valid float."),
    (["--class", "1,x"], "--class takes comma-separated whole numbers, got '1,x'"),
    (["--steps", "0,5"], "--steps must be >= 1 for every stage, got 0,5"),
    (["--class", "-2"], "class id -2 is negative: class ids start at 0"),
    (["--shift", "0"], "--shift must be > 0 (1 = none), got 0.0"),
    (["--seed"], "Option '--seed' requires an argument."),
    (["extra"], "Got unexpected extra argument (extra)"),
])
def test_bad_flags_are_one_line(tmp_path, native, args, needle):
    out = tmp_path / "img.png"
    r = run_native(native, "--model", tmp_path, "--out", out, *args)  # a bare option last: it lacks its value
    assert_refused(r, out, needle)


def test_help_and_missing_model(tmp_path, native):
    r = run_native(native, "--help")
    assert r.returncode == 0 and "--model PATH" in r.stdout and "--save-scales" in r.stdout
    r = run_native(native, "--version")
    assert r.returncode == 0 and r.stdout.startswith("msf-run-native 0.") and "(libtorch 2." in r.stdout
    out = tmp_path / "img.png"
    assert_refused(run_native(native, "--out", out), out, "--model is required")
    assert_refused(run_native(native, "--model", tmp_path / "nope", "--out", out), out, "model folder not found")
    assert_refused(run_native(native, "--model", tmp_path, "--out", tmp_path / "img.jpg"), tmp_path / "img.jpg",
                   "--out must be a .png path")
    assert_refused(run_native(native, "--model", tmp_path, "--out", out), out, "has no manifest.json")


def _copy(art: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "art"
    shutil.copytree(art, dst)
    return dst


def _edit_manifest(folder: Path, change) -> None:
    m = json.loads((folder / "manifest.json").read_text())
    change(m)
    (folder / "manifest.json").write_text(json.dumps(m))


def _flip_byte(path: Path, at: int = 1000) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


# Each case: how to break a copy of the export, the flags to run, and what the line must say.
# same=True: msf-run refuses the same thing, and its line must be the very same.
def _format2(m):
    m["format"] = 2


def _device_cuda(m):
    m["device"] = "cuda"


def _engine_onnx(m):
    m["engine"] = "onnx"


def _kind(m):
    m["kind"] = "something-else"


def _no_stages(m):
    del m["stages"]


def _config_field(m):
    m["stages"][1]["config"]["wings"] = 2


def _min_batch_4(m):  # as an export with --min-batch 4 (the manifest is not hashed, its artifacts are)
    m["stages"][0]["batch"]["min"] = 4


def _other_torch(m):
    m["tools"]["torch"] = "2.99.0+cpu"


def _plan_too_long(m):
    m["sampling"] = {"steps": [3, 2, 1]}


CASES = {
    "missing artifact": (lambda a: (a / "scale1.pt2").unlink(), [], ["scale1.pt2 is missing (listed in"], True),
    "damaged artifact": (lambda a: _flip_byte(a / "decoder.pt2"), [], ["decoder.pt2 does not match its manifest"], True),
    "manifest not json": (lambda a: (a / "manifest.json").write_text("{not json"), [], ["is not valid JSON"], False),
    "newer format": (lambda a: _edit_manifest(a, _format2), [], ["has format 2, newer than this msf reads (1)"], True),
    "not an msf manifest": (lambda a: _edit_manifest(a, _kind), [], ["is not an msf-export manifest"], True),
    "damaged manifest": (lambda a: _edit_manifest(a, _no_stages), [], ["field 'stages' is missing; re-export with msf-export --force"], True),
    "config of a newer msf": (lambda a: _edit_manifest(a, _config_field), [],
                              ["'stages[1].config' has unknown fields ['wings']; it was written by a newer msf"], True),
    "another engine": (lambda a: _edit_manifest(a, _engine_onnx), [], ["holds a onnx export, not aoti"], False),
    "artifact for another device": (lambda a: _edit_manifest(a, _device_cuda), ["--device", "cpu"],
                                    ["scale0.pt2 was compiled for cuda, not cpu: run it with --device cuda"], True),
    "batch outside range": (lambda a: _edit_manifest(a, _min_batch_4), ["--class", 1],
                            ["batch 2 is outside the exported range 4..16 of scale0 (classifier-free guidance "
                             "doubles the batch): re-export with --max-batch 16"], True),
    "package of another torch": (lambda a: _edit_manifest(a, _other_torch), [],
                                 ["scale0.pt2 was compiled by torch 2.99.0+cpu, this is torch 2."], False),
    "plan of three stages": (lambda a: _edit_manifest(a, _plan_too_long), [],
                             ["field 'sampling.steps' has 3 value(s) but there are 2 stage(s); re-export"], True),
    "class out of range": (None, ["--class", "3,20"],
                           ["class id 20 is out of range: this model has 20 classes (0-19)"], True),
    "steps per stage": (None, ["--steps", 5], ["--steps has 1 value(s) but the cascade has 2 stage(s) "
                                                "(tiny/scale0, tiny/scale1): give one per stage, e.g. --steps 100,50"], False),
    "cfg per stage": (None, ["--cfg", "1.4,1,1"], ["--cfg has 3 value(s)", "e.g. --cfg 1.4,1.0"], False),
    "no cuda here": (None, ["--device", "cuda"], ["--device cuda but this"], False),
    "torch-only flags": (None, ["--dtype", "bf16"], ["--dtype and --compile apply to the torch backend"], True),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_artifacts_and_requests_are_one_line(tmp_path, native, art, case):
    breaker, flags, needles, same = CASES[case]
    model = art
    if breaker is not None:
        model = _copy(art, tmp_path)
        breaker(model)
    out = tmp_path / "out" / "img.png"
    args = ["--model", model, "--steps", "2,2", *flags, "--out", out]
    line = assert_refused(run_native(native, *args), out, *needles)
    if same:
        assert assert_one_line_error(msf_run(*args)) == line


def test_a_package_that_cannot_be_loaded_is_one_line(tmp_path, native, art):
    """A damaged package whose manifest hash was updated gets past the sha check and fails in torch's
    loader: still one line naming the file, and no PNG."""
    model = _copy(art, tmp_path)
    (model / "scale1.pt2").write_bytes(b"not a zip archive")

    def rehash(m):
        from msf_train.checkpoint import sha256_file

        m["stages"][1]["files"]["scale1.pt2"] = sha256_file(model / "scale1.pt2")

    _edit_manifest(model, rehash)
    out = tmp_path / "img.png"
    assert_refused(run_native(native, "--model", model, "--class", 1, "--steps", "2,2", "--out", out), out,
                   "cannot load", "scale1.pt2", "re-export it")


# ---- the prepared GPU script, on the CPU ---------------------------------------------------------------
def test_gpu_native_script_dry_run(tmp_path, native, art):
    """benchmarks/gpu_native.sh --dry-run: every code path of the GPU check on the CPU (tiny cascade,
    Python vs native eager vs native --cuda-graph, which falls back with a note), plus the compile-only
    check of the CUDA code where the CUDA toolkit's headers exist."""
    script = ROOT / "benchmarks" / "gpu_native.sh"
    r = subprocess.run(["bash", script], capture_output=True, text=True)
    assert r.returncode == 2 and "usage:" in r.stderr
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable}
    r = subprocess.run(["bash", script, out, "--dry-run", "--tiny-art", art, "--work", tmp_path / "work"],
                       capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    data = json.loads((out / "gpu_native.json").read_text())
    assert (out / "gpu_native.log").is_file() and data["mode"] == "dry-run"
    check = data["steps"][0]
    assert check["step"] == "compile-only check of the CUDA code" and check["status"] in ("ok", "skipped"), check
    runs = data["runs"]
    assert len(runs) == 3 and all(r["ok"] for r in runs), runs  # python, native, native --cuda-graph
    assert all(r["mean_pixel_diff_vs_python"] <= 1.0 for r in runs if "native" in r["runner"])
    assert all("needs --device cuda" in r["note"] for r in runs if r["runner"].endswith("--cuda-graph"))
    assert data["summary"]["failed_or_over_1_level"] == 0
