"""`msf-run` as a user runs it: a real subprocess on a real (tiny, random-weight) cascade folder."""
import subprocess
import sys

import pytest

from msf_train import checkpoint
from msf_train.config import get_preset
from runtime.cascade import random_model_state, write_random_cascade

FAST = ["--steps", "3,2", "--cfg", "1.4,1.0", "--device", "cpu"]


def start(*args):
    return subprocess.Popen([sys.executable, "-m", "runtime.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(p):
    out, err = p.communicate(timeout=300)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def run(*args):
    return finish(start(*args))


def one_line_error(r, *needles):
    assert r.returncode != 0, r.stdout
    err = r.stderr.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_random_cascade(tmp_path_factory.mktemp("cli") / "tiny", ["tiny/scale0", "tiny/scale1"])


def test_same_seed_same_png_bytes_other_seed_other_image(model, tmp_path):
    a, b, c = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "sub" / "c.png"
    common = ("--model", model, "--class", "1,2", "--batch", "2", *FAST)
    procs = [start(*common, "--seed", "5", "--out", a),  # three processes side by side: imports dominate
             start(*common, "--seed", "5", "--out", b, "--save-scales"),
             start(*common, "--seed", "6", "--out", c)]
    ra, rb, rc = map(finish, procs)
    for r in (ra, rb, rc):
        assert r.returncode == 0, r.stderr
    assert a.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    # --save-scales: one image per accumulated scale; the last accumulation is the image itself
    s0, s1 = tmp_path / "b.scale0.png", tmp_path / "b.scale1.png"
    assert s1.read_bytes() == b.read_bytes() and s0.read_bytes() != b.read_bytes()
    # a 2x2 grid of 64 px images with 2 px gaps; one timing line per stage, then the total
    from PIL import Image

    assert Image.open(a).size == (130, 130)
    lines = ra.stderr.strip().splitlines()
    assert [l.split(")")[0].split("] ")[1].split(" (")[0] for l in lines[:3]] == ["scale 0", "scale 1", "decode"]
    assert "overhead x" in lines[-1] and "4 image(s)" in lines[-1]
    assert "wrote" in ra.stdout and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("args,needles", [
    (["--class", "20"], ["class id 20 is out of range", "20 classes"]),
    (["--class", "3,-1"], ["class id -1 is negative"]),
    (["--class", "3,x"], ["--class takes comma-separated whole numbers"]),
    (["--steps", "0,2"], ["--steps must be >= 1"]),
    (["--steps", "3"], ["--steps has 1 value(s) but the cascade has 2 stage(s)"]),
    (["--cfg", "1.4,1.0,1.0"], ["--cfg has 3 value(s) but the cascade has 2 stage(s)"]),
    (["--shift", "0"], ["--shift must be > 0"]),
])
def test_bad_input_is_one_line_and_nonzero_exit(model, tmp_path, args, needles):
    r = run("--model", model, "--steps", "3,2", "--out", tmp_path / "x.png", *args)
    one_line_error(r, *needles)
    assert not (tmp_path / "x.png").exists()


def test_missing_model_folder_is_named(tmp_path):
    one_line_error(run("--model", tmp_path / "no-such-model", "--out", tmp_path / "x.png"),
                   "model folder not found", "no-such-model")


def test_unwritable_output_path(model, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    one_line_error(run("--model", model, *FAST, "--out", blocker / "x.png"), "cannot write --out", "a-file")
    one_line_error(run("--model", model, *FAST, "--out", tmp_path / "x.jpg"), "--out must be a .png path")


def test_stages_that_disagree_on_classes(model, tmp_path):
    """(Stages that disagree on the latent shape: test_runtime.py, in process, same code path.)"""
    s0, s1 = get_preset("tiny/scale0"), get_preset("tiny/scale1").replace(num_classes=10)
    bad = tmp_path / "bad"
    checkpoint.save_stage(bad / "scale0", random_model_state(s0), s0)
    checkpoint.save_stage(bad / "scale1", random_model_state(s1), s1)
    checkpoint.write_cascade(bad, ["scale0", "scale1"], str(model / "vae"))
    one_line_error(run("--model", bad, *FAST, "--out", tmp_path / "x.png"), "stages disagree on classes")


def test_help_teaches_the_options():
    r = run("--help")
    assert r.returncode == 0
    for opt in ["--class", "--seed", "--batch", "--steps", "--cfg", "--solver", "--shift", "--model", "--backend",
                "--device", "--cuda-graph", "--out", "--save-scales", "Images PER CLASS"]:
        assert opt in r.stdout, opt
