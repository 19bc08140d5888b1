"""Hardening (docs/RELIABILITY.md): every bad input or fault a user can cause ends in exit != 0 with
one line on stderr, no traceback, and nothing the user wrote changed; NaN never passes; Ctrl-C
saves; a second writer is refused naming the first; full and read-only disks are one line with
partial outputs removed.

The cases run the real CLIs in-process (click's CliRunner: same code as the console scripts, one
torch import for all of them); the faults that need real processes, signals or file systems are in
test_hardening_faults.py. `CASES` is what docs/RELIABILITY.md counts.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from _hardening import ROOT, RUN, assert_refused, hardening_cascade, invoke, tree
from export_helpers import exported


@pytest.fixture(scope="module")
def w(tmp_path_factory):
    return hardening_cascade(tmp_path_factory)


def copy(src, dst) -> Path:
    shutil.copytree(src, dst)
    return Path(dst)


def edit_json(path, fn):
    d = json.loads(Path(path).read_text())
    d = fn(d) or d
    Path(path).write_text(json.dumps(d))


def nan_weight(folder):
    p = Path(folder) / "model.safetensors"
    sd = load_file(str(p))
    k = sorted(sd)[0]
    sd[k].view(-1)[0] = float("nan")
    save_file(sd, str(p))


# ---- the cases: (kind, id, setup(w, tmp) -> (cli, args, needles, watched paths)) ----------------
def c_vae_existing(w, t):
    v = copy(w["vae"], t / "v")
    return "train", ["vae", "--out", v, "--steps", 1, "--size", 64, "--widths", "8,16,16,16"], ["--force"], [v]


def c_cache_existing(w, t):
    c = copy(w["cache"], t / "c")
    return ("train", ["cache", "--vae", w["vae"], "--data", "shapes", "--out", c, "--scales", "4,8", "--classes", 3,
                      "--per-class", 2, "--workers", 0, "--device", "cpu"], ["--force"], [c])


def c_assemble_user_cascade(w, t):
    (t / "u").mkdir()
    (t / "u" / "cascade.json").write_text('{"mine": 1}')
    return "train", ["assemble", "--out", t / "u", "--vae", w["vae"], w["s0"], w["s1"]], ["--force"], [t / "u"]


def c_assemble_into_stage(w, t):
    s0 = copy(w["s0"], t / "s0")
    return "train", ["assemble", "--out", s0, "--vae", w["vae"], s0, w["s1"]], ["overlaps"], [s0]


def c_train_into_user_folder(w, t):
    (t / "mine").mkdir()
    (t / "mine" / "notes.txt").write_text("mine")
    return ("train", ["scale0", "--preset", "tiny/scale0", "--cache", w["cache"], "--out", t / "mine", "--steps", 1,
                      "--batch", 4, "--device", "cpu"], ["--force"], [t / "mine"])


def c_classifier_no_out(w, t):
    return "eval", ["classifier", "--steps", 1], ["--out"], [ROOT / "msf_eval" / "weights"]


def c_classifier_into_package(w, t):
    d = ROOT / "msf_eval" / "weights" / "shapes-classifier"
    return "eval", ["classifier", "--out", d, "--steps", 1], ["installed msf package"], [d]


def c_nan_run(w, t):
    m = copy(w["msf"], t / "m")
    nan_weight(m / "scale0")
    return "run", ["--model", m, "--out", t / "x.png", *RUN], ["NaN"], [m, t / "x.png"]


def c_nan_export(w, t):
    m = copy(w["msf"], t / "m")
    nan_weight(m / "scale1")
    return "export", ["--engine", "onnx", "--model", m, "--out", t / "x", "--quiet"], ["NaN"], [m, t / "x"]


def c_nan_eval(w, t):
    m = copy(w["msf"], t / "m")
    nan_weight(m / "scale0")
    return ("eval", ["run", "--model", m, "--classes", "0-1", "--per-class", 1, "--steps", "2,2", "--classifier",
                     w["clf"]], ["NaN"], [m])


def c_nan_vae(w, t):
    m = copy(w["msf"], t / "m")
    p = m / "vae" / "diffusion_pytorch_model.safetensors"
    sd = load_file(str(p))
    sd[sorted(sd)[0]].view(-1)[0] = float("inf")
    save_file(sd, str(p))
    for stage in ("scale0", "scale1"):  # stages that do not record their VAE: the load check must catch it
        edit_json(m / stage / "config.json", lambda d: {k: v for k, v in d.items() if k != "vae"})
    return "run", ["--model", m, "--out", t / "x.png", *RUN], ["NaN"], [m, t / "x.png"]


def _scale0(w, out, *extra):
    return ["scale0", "--preset", "tiny/scale0", "--cache", w["cache"], "--out", out, "--steps", 1, "--batch", 4,
            "--device", "cpu", *extra]


def c_ema_neg(w, t):
    return "train", _scale0(w, t / "o", "--ema", "-1"), ["--ema"], [t / "o"]


def c_ema_two(w, t):
    return "train", _scale0(w, t / "o", "--ema", "2"), ["--ema"], [t / "o"]


def c_lr_neg(w, t):
    return "train", _scale0(w, t / "o", "--lr", "-1"), ["--lr"], [t / "o"]


def c_resume_other_batch(w, t):
    s = copy(w["s0"], t / "s")
    return ("train", ["scale0", "--preset", "tiny/scale0", "--cache", w["cache"], "--out", s, "--steps", 6, "--batch",
                      4, "--device", "cpu", "--resume"], ["--batch 8"], [s])


def c_resume_other_lr(w, t):
    s = copy(w["s0"], t / "s")
    return ("train", ["scale0", "--preset", "tiny/scale0", "--cache", w["cache"], "--out", s, "--steps", 6, "--batch",
                      8, "--lr", "3e-4", "--device", "cpu", "--resume"], ["--lr"], [s])


def c_resume_truncated(w, t):
    s = copy(w["s0"], t / "s")
    f = sorted((s / "state").glob("step-*"))[-1] / "model.safetensors"
    f.write_bytes(f.read_bytes()[:1000])
    return ("train", ["scale0", "--preset", "tiny/scale0", "--cache", w["cache"], "--out", s, "--steps", 6, "--batch",
                      8, "--device", "cpu", "--resume"], ["damaged"], [s])


def c_vae_swapped(w, t):
    m = copy(w["msf"], t / "m")
    shutil.rmtree(m / "vae")
    shutil.copytree(w["vae_other"], m / "vae")
    return "run", ["--model", m, "--out", t / "x.png", *RUN], ["sha256"], [m, t / "x.png"]


def _cascade_edit(fn, needle):
    def case(w, t):
        m = copy(w["msf"], t / "m")
        edit_json(m / "cascade.json", fn)
        return "run", ["--model", m, "--out", t / "x.png", *RUN], [needle], [m, t / "x.png"]
    return case


def _config_edit(fn, needle, stage="scale0"):
    def case(w, t):
        m = copy(w["msf"], t / "m")
        edit_json(m / stage / "config.json", fn)
        return "run", ["--model", m, "--out", t / "x.png", *RUN], [needle], [m, t / "x.png"]
    return case


def _pop(key):
    def fn(d):
        d["model"].pop(key)
    return fn


def _set_model(key, value):
    def fn(d):
        d["model"][key] = value
    return fn


def _manifest_case(command, fn, needle):
    def case(w, t):
        a = copy(exported(w["factory"], "onnx"), t / "a")
        edit_json(a / "manifest.json", fn)
        args = {"run": ["--model", a, "--out", t / "x.png", "--class", "1", "--steps", "2,2"],
                "verify": ["verify", a], "info": ["info", a]}[command]
        return ("run" if command == "run" else "export"), args, [needle], [a]
    return case


def _stages_str(m):
    m["stages"] = "scale0"


def _nan_parity(m):
    m["stages"][0]["parity"]["max_abs"] = float("nan")


def c_seed_huge(w, t):
    return "run", ["--model", w["msf"], "--out", t / "x.png", *RUN, "--seed", "99999999999999999999"], ["--seed"], [t]


def c_batch_huge(w, t):
    return "run", ["--model", w["msf"], "--out", t / "x.png", *RUN, "--batch", "100000000"], ["GiB"], [t]


def c_eval_batch0(w, t):
    return "eval", ["run", "--model", w["msf"], "--batch", 0], ["--batch"], [t]


def c_eval_classes_abc(w, t):
    return "eval", ["run", "--model", w["msf"], "--classes", "abc"], ["--classes"], [t]


def c_eval_classes_step0(w, t):
    return "eval", ["run", "--model", w["msf"], "--classes", "0-9:0"], ["--classes"], [t]


def c_eval_cuda(w, t):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here: --device cuda is legitimate")
    return "eval", ["run", "--model", w["msf"], "--classes", "0-1", "--device", "cuda"], ["CUDA"], [t]


def c_eval_json_unwritable(w, t):
    return ("eval", ["run", "--model", w["msf"], "--classes", "0-1", "--per-class", 1, "--json", "/proc/msf/e.json"],
            ["--json"], [t])


def c_eval_missing_classifier(w, t):
    return ("eval", ["run", "--model", w["msf"], "--classes", "0-1", "--classifier", t / "none"],
            ["msf-eval classifier --out"], [t])


def c_run_unwritable_out(w, t):
    return "run", ["--model", w["msf"], "--out", "/proc/msf/x.png", *RUN], ["--out"], [t]


def c_run_out_dir_is_a_file(w, t):
    f = t / "taken"
    f.write_text("a user's file")
    return "run", ["--model", w["msf"], "--out-dir", f, *RUN], ["--out-dir", "is a file"], [t]


def c_run_out_dir_unwritable(w, t):
    return "run", ["--model", w["msf"], "--out-dir", "/proc/msf/imgs", *RUN], ["--out-dir"], [t]


def c_train_init_other_preset(w, t):
    return ("train", ["scale1", "--preset", "tiny/scale1", "--cache", w["cache"], "--out", t / "s1", "--steps", 1,
                      "--init", w["s0"]], ["--init", "same preset"], [t])


CASES = [
    ("lost work", "vae --out existing VAE", c_vae_existing),
    ("lost work", "cache --out existing cache, other inputs", c_cache_existing),
    ("lost work", "assemble --out folder with a user's cascade.json", c_assemble_user_cascade),
    ("lost work", "assemble --out one of its own stage folders", c_assemble_into_stage),
    ("lost work", "scale0 --out a folder of a user's files", c_train_into_user_folder),
    ("lost work", "msf-eval classifier without --out", c_classifier_no_out),
    ("lost work", "msf-eval classifier --out the shipped classifier", c_classifier_into_package),
    ("NaN", "msf-run, one NaN weight", c_nan_run),
    ("NaN", "msf-export, one NaN weight", c_nan_export),
    ("NaN", "msf-eval run, one NaN weight", c_nan_eval),
    ("NaN", "msf-run, an infinite VAE weight", c_nan_vae),
    ("NaN", "msf-export verify, NaN parity in manifest", _manifest_case("verify", _nan_parity, "not valid JSON")),
    ("silent acceptance", "--ema -1", c_ema_neg),
    ("silent acceptance", "--ema 2", c_ema_two),
    ("silent acceptance", "--resume with another --batch", c_resume_other_batch),
    ("silent acceptance", "--resume with another --lr", c_resume_other_lr),
    ("silent acceptance", "stage VAE sha256 differs from the cascade's VAE", c_vae_swapped),
    ("traceback", "cascade.json is a list", _cascade_edit(lambda d: [1, 2], "JSON object")),
    ("traceback", "cascade.json format \"1\"", _cascade_edit(lambda d: {**d, "format": "1"}, "'format'")),
    ("traceback", "cascade.json stages a string", _cascade_edit(lambda d: {**d, "stages": "scale0"}, "'stages'")),
    ("traceback", "stage config missing depth", _config_edit(_pop("depth"), "'model.depth'")),
    ("traceback", "stage config patch_size 0", _config_edit(_set_model("patch_size", 0), "'model.patch_size'")),
    ("traceback", "stage config width does not match the weights", _config_edit(_set_model("hidden_size", 128), "shape")),
    ("traceback", "manifest stages a string (run)", _manifest_case("run", _stages_str, "'stages'")),
    ("traceback", "manifest stages a string (verify)", _manifest_case("verify", _stages_str, "'stages'")),
    ("traceback", "manifest stages a string (info)", _manifest_case("info", _stages_str, "'stages'")),
    ("traceback", "msf-run --seed 99999999999999999999", c_seed_huge),
    ("traceback", "msf-run --batch 100000000 (memory estimate)", c_batch_huge),
    ("traceback", "msf-eval run --batch 0", c_eval_batch0),
    ("traceback", "msf-eval run --classes abc", c_eval_classes_abc),
    ("traceback", "msf-eval run --classes 0-9:0", c_eval_classes_step0),
    ("traceback", "msf-eval run --device cuda without CUDA", c_eval_cuda),
    ("traceback", "msf-train scale0 --lr -1", c_lr_neg),
    ("traceback", "--resume from a truncated model.safetensors", c_resume_truncated),
    ("late failure", "msf-eval run --json unwritable", c_eval_json_unwritable),
    ("late failure", "msf-run --out unwritable", c_run_unwritable_out),
    ("late failure", "msf-run --out-dir is a file", c_run_out_dir_is_a_file),
    ("late failure", "msf-run --out-dir unwritable", c_run_out_dir_unwritable),
    ("silent acceptance", "msf-train scale1 --init a scale-0 folder", c_train_init_other_preset),
    ("small lie", "missing classifier names the real command", c_eval_missing_classifier),
]


@pytest.mark.parametrize("kind,name,case", CASES, ids=[c[1] for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(w, tmp_path, tmp_path_factory, kind, name, case):
    w["factory"] = tmp_path_factory
    which, args, needles, watched = case(w, tmp_path)
    before = tree(*watched)
    t0 = time.perf_counter()
    r = invoke(which, *args)
    assert_refused(r, *needles)
    assert tree(*watched) == before, "a refused command changed files"
    if kind == "late failure":
        assert time.perf_counter() - t0 < 20, "checked only after the work"


# ---- legitimate inputs still work --------------------------------------------------------------
def test_rerun_of_the_same_command_may_replace_its_own_output(w, tmp_path):
    from msf_train.outdir import read_marker

    out = tmp_path / "msf"
    for _ in range(2):  # the same inputs: the second run replaces the first
        r = invoke("train", "assemble", "--out", out, "--vae", w["vae"], w["s0"], w["s1"])
        assert r.exit_code == 0, r.stderr
    assert read_marker(out)["command"] == "msf-train assemble" and read_marker(out)["complete"]
    s0 = copy(w["s0"], tmp_path / "s0")  # other inputs (another stage folder)
    r = invoke("train", "assemble", "--out", out, "--vae", w["vae"], s0, w["s1"])
    assert_refused(r, "--force")
    r = invoke("train", "assemble", "--out", out, "--vae", w["vae"], s0, w["s1"], "--force")
    assert r.exit_code == 0, r.stderr


def test_json_is_written_strictly(tmp_path):
    from msf_train.checkpoint import atomic_write_json
    from msf_train.errors import MsfError

    with pytest.raises(MsfError, match="NaN"):
        atomic_write_json(tmp_path / "x.json", {"parity": float("nan")})
    assert not list(tmp_path.iterdir())


def test_stage_outputs_are_checked_when_sampling(w):
    """A stage that produces NaN (not only one with NaN weights) is refused when sampling."""
    from msf_train.errors import MsfError
    from runtime.engines import load_cascade
    from runtime.sampler import make_plan, sample

    stages, decoder = load_cascade(w["msf"], "torch", "cpu")
    cfg, eng = stages[1]
    with torch.no_grad():
        eng.module.final_layer.linear.bias.fill_(float("inf"))
    plan = make_plan([c for c, _ in stages], [2, 2], [1.0, 1.0])
    with pytest.raises(MsfError, match=r"stage 1 \(tiny/scale1\) produced NaN"):
        sample(stages, decoder, [1], plan=plan)


def test_debug_env_shows_the_traceback(w, tmp_path):
    m = copy(w["msf"], tmp_path / "m")
    (m / "cascade.json").write_text("[1]")
    r = invoke("run", "--model", m, "--out", tmp_path / "x.png", *RUN, env={"MSF_DEBUG": "1"})
    assert r.exit_code != 0 and "Traceback" in r.stderr and r.stderr.strip().splitlines()[-1].startswith("Error:")
    assert_refused(invoke("run", "--model", m, "--out", tmp_path / "x.png", *RUN), "cascade.json")


def test_quiet_never_hides_the_error_line(w, tmp_path):
    m = copy(w["msf"], tmp_path / "m")
    nan_weight(m / "scale0")
    assert_refused(invoke("export", "--engine", "onnx", "--model", m, "--out", tmp_path / "x", "--quiet"), "NaN")


def test_verify_mentions_leftover_staging_and_export_cleans_it(w, tmp_path, tmp_path_factory):
    a = copy(exported(tmp_path_factory, "onnx"), tmp_path / "a")
    (a / ".msf-staging-dead").mkdir()
    r = invoke("export", "verify", a)
    assert r.exit_code == 0 and "staging" in r.stderr
