"""VAE folders: the demo VAE's build, training and scaling factor; loading; wrong kinds of folder."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from _msf_tiny import TINY_WIDTHS, tiny_assets, wait_for_first_log_line
from msf_train import data
from msf_train.checkpoint import save_stage, sha256_file
from msf_train.config import get_preset
from msf_train.errors import MsfError
from msf_train.model import build_model
from msf_train.vae import complete_record, encode, load_vae, same_vae, vae_class_name, vae_identity, weights_file
from msf_train.vae_train import DEMO_WIDTHS, build_vae, measure_latent_stats, train_vae


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return tiny_assets(tmp_path_factory)


def test_demo_vae_is_small_and_f8():
    vae = build_vae(DEMO_WIDTHS, sample_size=128)
    n = sum(p.numel() for p in vae.parameters())
    assert n < 2_000_000, n
    with torch.no_grad():
        z = vae.encode(torch.zeros(1, 3, 128, 128)).latent_dist.mode()
    assert z.shape == (1, 4, 16, 16)


def test_bad_widths():
    with pytest.raises(MsfError, match="4 levels"):
        build_vae((32, 64, 64))
    with pytest.raises(MsfError, match="multiples of 8"):
        build_vae((6, 6, 6, 6))


def test_trained_vae_folder_loads_and_records_its_identity(assets):
    folder = assets["vae"]
    assert vae_class_name(folder) == "AutoencoderKL"
    ident = vae_identity(folder)
    assert ident["sha256"] == sha256_file(weights_file(folder))
    cfg = json.loads((folder / "config.json").read_text())
    assert ident["scaling_factor"] == cfg["scaling_factor"] != 1.0
    summary = json.loads((folder / "training.json").read_text())
    assert summary["scaling_factor"] == pytest.approx(1 / summary["latent_std"], rel=1e-5)
    assert (folder / "reconstructions.png").is_file()
    vae = load_vae(folder)
    assert not vae.training and vae.config.block_out_channels == list(TINY_WIDTHS)


def test_scaling_factor_gives_unit_std_latents(assets):
    """latent = sample * scaling_factor has std ~1 on shapes images (measured on other images than
    the ones the factor came from)."""
    vae = load_vae(assets["vae"])
    imgs = torch.stack([torch.from_numpy(data.render(c, 50 + c, 9, 64)).permute(2, 0, 1) for c in range(20)])
    z = encode(vae, data.to_unit(imgs), torch.Generator().manual_seed(0))
    assert z.shape == (20, 4, 8, 8)
    assert 0.7 < z.std().item() < 1.4


def test_measure_latent_stats_matches_direct_computation():
    torch.manual_seed(0)
    vae = build_vae(TINY_WIDTHS, sample_size=32).eval()
    x = torch.rand(6, 3, 32, 32) * 2 - 1
    stats = measure_latent_stats(vae, [x[:4], x[4:]], torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        z = torch.cat([vae.encode(x[:4]).latent_dist.sample(g), vae.encode(x[4:]).latent_dist.sample(g)]).double()
    assert stats["mean"] == pytest.approx(z.mean().item(), rel=1e-6, abs=1e-9)
    assert stats["std"] == pytest.approx(z.std(unbiased=False).item(), rel=1e-6)
    assert 0 < stats["psnr"] < 60


def test_wrong_kind_of_folder_is_one_clear_error(tmp_path):
    unet = tmp_path / "unet"
    unet.mkdir()
    (unet / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel", "in_channels": 4}))
    with pytest.raises(MsfError, match="UNet2DConditionModel, not a VAE"):
        load_vae(unet)
    stage = save_stage(tmp_path / "stage", build_model(get_preset("tiny/dit")).state_dict(), get_preset("tiny/dit"))
    with pytest.raises(MsfError, match="msf stage folder"):
        vae_identity(stage)
    with pytest.raises(MsfError, match="not found"):
        load_vae(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MsfError, match="no config.json"):
        load_vae(tmp_path / "empty")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "config.json").write_text("{not json")
    with pytest.raises(MsfError, match="not valid JSON"):
        vae_class_name(tmp_path / "junk")


def test_decoder_fine_tune_keeps_the_latents_and_the_caches_valid(assets, tmp_path):
    """--freeze-encoder: the decoder learns, the encoder side and the scaling factor stay bit-identical,
    so the identity (encoder_sha256 + factors) matches and a cache made with the old VAE accepts it."""
    from safetensors.torch import load_file

    from msf_train.cache import LatentCache

    new = tmp_path / "vae-dec"
    s = train_vae(new, steps=3, batch=4, size=64, init=assets["vae"], freeze_encoder=True, mse_weight=1.0,
                  classes=list(range(20)), seed=5, device="cpu", workers=0, scale_images=8, show_progress=False)
    a = load_file(str(weights_file(assets["vae"])))
    b = load_file(str(weights_file(new)))
    enc = [k for k in a if k.startswith(("encoder.", "quant_conv."))]
    assert enc and all(torch.equal(a[k], b[k]) for k in enc)
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("decoder."))  # the decoder did learn
    assert 0 < s["trainable_params"] < s["params"] and s["freeze_encoder"]
    old_id, new_id = vae_identity(assets["vae"]), vae_identity(new)
    assert new_id["sha256"] != old_id["sha256"] and new_id["encoder_sha256"] == old_id["encoder_sha256"]
    assert new_id["scaling_factor"] == old_id["scaling_factor"] and same_vae(old_id, new_id)
    x = data.to_unit(torch.stack([torch.from_numpy(data.render(c, c, 3, 64)).permute(2, 0, 1) for c in range(4)]))
    assert torch.equal(encode(load_vae(assets["vae"]), x, sample=False), encode(load_vae(new), x, sample=False))
    LatentCache(assets["cache"]).check_vae(new)  # no error: same latents
    with pytest.raises(MsfError, match="made with another VAE"):
        LatentCache(assets["cache"]).check_vae(assets["vae_other"])
    # A stage trained on the old VAE's latents assembles with the new decoder, not with another VAE.
    from msf_train.assemble import check_assembly

    cfg = get_preset("tiny/dit")
    stage = save_stage(tmp_path / "dit", build_model(cfg).state_dict(), cfg, vae=old_id)
    check_assembly([stage], new)
    with pytest.raises(MsfError, match="latents of another VAE"):
        check_assembly([stage], assets["vae_other"])


def test_identity_records_old_and_new():
    """Records with encoder_sha256 compare by encoder and factors; older records (whole-file sha256
    only) by the file; factors always count."""
    enc, f1, f2 = "a" * 64, "b" * 64, "c" * 64
    new1 = {"sha256": f1, "encoder_sha256": enc, "scaling_factor": 0.5, "shift_factor": 0.0}
    new2 = {**new1, "sha256": f2}
    assert same_vae(new1, new2)  # decoder fine-tune
    assert not same_vae(new1, {**new2, "encoder_sha256": "d" * 64})
    assert not same_vae(new1, {**new2, "scaling_factor": 0.25})
    old1 = {"sha256": f1, "scaling_factor": 0.5}
    assert same_vae(old1, new1) and not same_vae(old1, new2)  # an old record knows the file only


def test_complete_record_needs_the_very_vae(assets):
    ident = vae_identity(assets["vae"])
    old = {k: v for k, v in ident.items() if k != "encoder_sha256"}
    assert complete_record(old, assets["vae"]) == ident
    with pytest.raises(MsfError, match="is not the VAE this record names"):
        complete_record(old, assets["vae_other"])


def _vae_cmd(out, steps, *extra):
    return [sys.executable, "-m", "msf_train.cli", "vae", "--out", str(out), "--steps", str(steps), "--batch", "2",
            "--size", "32", "--widths", "8,8,8,8", "--no-mid-attention", "--classes", "10", "--workers", "0",
            "--scale-images", "4", "--log-every", "1", "--device", "cpu", *extra]


def test_vae_training_resumes_after_a_kill_signal(tmp_path):
    """SIGTERM to the run's process group (as `timeout`, Slurm or Ctrl-C send it: the trainer and its
    image-rendering worker alike) mid-run saves a checkpoint and exits 143 with one line; without
    --resume the folder is refused; --resume with more steps continues from the saved step, keeps the
    log up to it and finishes a loadable VAE."""
    out = tmp_path / "vae"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(_vae_cmd(out, 100000, "--save-every", "100000", "--workers", "1"), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        wait_for_first_log_line(out)
        os.killpg(p.pid, signal.SIGTERM)
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 143, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("Error: interrupted by SIGTERM") and "--resume" in last and "Traceback" not in err, err
    step = torch.load(out / "state" / "vae-state.pt", weights_only=True)["step"]
    assert step >= 1 and not (out / "config.json").exists()  # interrupted: no VAE folder yet
    r = subprocess.run(_vae_cmd(out, step + 3), capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode != 0 and "pass --resume" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    r = subprocess.run(_vae_cmd(out, step + 3, "--resume"), capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "training.json").read_text())
    assert summary["steps"] == step + 3 and summary["resumed_from_step"] == step
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, step + 4))  # nothing lost, nothing twice
    assert torch.load(out / "state" / "vae-state.pt", weights_only=True)["step"] == step + 3
    load_vae(out)


def test_resume_refuses_other_options_and_fewer_steps(tmp_path):
    out = tmp_path / "vae"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    assert subprocess.run(_vae_cmd(out, 3), capture_output=True, text=True, env=env, timeout=300).returncode == 0
    r = subprocess.run(_vae_cmd(out, 5, "--resume", "--lr", "1e-3"), capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    r = subprocess.run(_vae_cmd(out, 2, "--resume"), capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode != 0 and "past --steps 2" in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_cosine_schedule_cools_down_to_zero_and_fixes_the_steps(tmp_path):
    """--lr-schedule cosine: the logged rate starts at --lr and falls monotonically to (nearly) 0 at
    --steps; a resume asking for another --steps is refused in one line, since it would bend the curve."""
    out = tmp_path / "vae"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(_vae_cmd(out, 6, "--lr", "1e-3", "--lr-schedule", "cosine"), capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    rates = [json.loads(line)["lr"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(rates) == 6 and rates[0] == pytest.approx(1e-3)
    assert all(a > b for a, b in zip(rates, rates[1:])) and rates[-1] < 0.1 * rates[0]
    assert json.loads((out / "training.json").read_text())["lr_schedule"] == "cosine"
    r = subprocess.run(_vae_cmd(out, 8, "--lr", "1e-3", "--lr-schedule", "cosine", "--resume"), capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
