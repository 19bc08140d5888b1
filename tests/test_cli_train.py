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


# ---- vae, cache, scale0|scale1|dit: bad input is one line and a non-zero exit --------------------
import pytest  # noqa: E402

from _msf_tiny import assert_one_line_error, run_cli, tiny_assets  # noqa: E402


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return tiny_assets(tmp_path_factory)


def test_cache_from_missing_or_empty_data_folder(assets, tmp_path):
    r = run_cli("cache", "--vae", assets["vae"], "--data", tmp_path / "nope", "--out", tmp_path / "c", "--scales", "4,8")
    assert_one_line_error(r, "data folder not found", "nope")
    (tmp_path / "empty").mkdir()
    r = run_cli("cache", "--vae", assets["vae"], "--data", tmp_path / "empty", "--out", tmp_path / "c", "--scales", "4,8")
    assert_one_line_error(r, "has no class sub-folders", "ImageNet train layout")
    assert not (tmp_path / "c").exists()


def test_cache_with_a_vae_folder_of_the_wrong_kind(assets, tmp_path):
    from msf_train.checkpoint import save_stage
    from msf_train.config import get_preset
    from msf_train.model import build_model

    cfg = get_preset("tiny/dit")
    stage = save_stage(tmp_path / "stage", build_model(cfg).state_dict(), cfg)
    r = run_cli("cache", "--vae", stage, "--data", "shapes", "--out", tmp_path / "c", "--scales", "4,8")
    assert_one_line_error(r, "is an msf stage folder (a denoiser), not a VAE")


def test_vae_freeze_encoder_needs_a_vae_to_start_from(assets, tmp_path):
    r = run_cli("vae", "--out", tmp_path / "v", "--freeze-encoder", "--steps", "1")
    assert_one_line_error(r, "--freeze-encoder", "add --init VAE_FOLDER")
    r = run_cli("vae", "--out", assets["vae"], "--init", assets["vae"], "--freeze-encoder", "--steps", "1")
    assert_one_line_error(r, "same folder")
    assert not (tmp_path / "v").exists()


def test_training_refuses_a_cache_made_with_another_vae(assets, tmp_path):
    r = run_cli("scale0", "--preset", "tiny/scale0", "--cache", assets["cache"], "--vae", assets["vae_other"],
                "--out", tmp_path / "s0", "--steps", "1", "--device", "cpu")
    assert_one_line_error(r, "was made with another VAE", "rebuild it")


def test_training_refuses_class_ids_outside_the_preset(assets, tmp_path):
    r = run_cli("scale0", "--preset", "tiny/scale0", "--cache", assets["cache_wide"], "--out", tmp_path / "s0",
                "--steps", "1", "--device", "cpu")
    assert_one_line_error(r, "class id 30, outside preset tiny/scale0's 20 classes")


def test_training_with_a_typo_in_the_preset(assets, tmp_path):
    r = run_cli("scale1", "--preset", "tiny/scale11", "--cache", assets["cache"], "--out", tmp_path / "s1")
    assert_one_line_error(r, "unknown preset 'tiny/scale11'", "tiny/scale1")
