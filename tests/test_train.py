"""Training: each stage on a tiny preset from a shapes cache, checkpoints, exact resume, a SIGKILLed
run, torchrun DDP, and cascade assembly."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from _msf_tiny import run_cli, tiny_assets
from msf_train import factorize
from msf_train.cache import LatentCache
from msf_train.checkpoint import cascade_sampling, load_stage, read_cascade
from msf_train.config import get_preset
from msf_train.errors import MsfError
from msf_train.model import build_model, sample_inputs
from msf_train.assemble import assemble_cascade
from msf_train.train import Batches, Dist, TrainOptions, latest_checkpoint, targets, train

quiet = lambda *a, **k: None  # noqa: E731


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return tiny_assets(tmp_path_factory)


@pytest.fixture(scope="module")
def vae16(tmp_path_factory):
    """A tiny 16-channel VAE (SD3's count; the demo's is 4) and a 20-class cache of its latents."""
    from _msf_tiny import TINY_SCALES, TINY_WIDTHS
    from msf_train.cache import build_cache
    from msf_train.vae_train import train_vae

    root = tmp_path_factory.mktemp("vae16")
    vae, cache = root / "vae", root / "cache"
    train_vae(vae, steps=1, batch=2, size=64, widths=TINY_WIDTHS, latent_channels=16, classes=list(range(20)),
              device="cpu", workers=0, scale_images=4, show_progress=False)
    build_cache(vae, "shapes", cache, scales=TINY_SCALES, classes="20", per_class=1, workers=0, device="cpu",
                show_progress=False, log=quiet)
    return vae, cache


def opts(assets, stage, out, **kw):
    kw = {"steps": 4, "batch": 8, "save_every": 2, "log_every": 1, "device": "cpu", "progress": False,
          "preset": f"tiny/{stage}", "cache": str(assets["cache"]), **kw}
    return TrainOptions(stage=stage, out=str(out), **kw)


def read_log(out):
    return [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("stage", ["scale0", "scale1", "dit"])
def test_each_stage_trains_and_its_checkpoint_reloads_bit_identically(assets, tmp_path, stage):
    out = tmp_path / stage
    summary = train(opts(assets, stage, out, vae=str(assets["vae"])), log=quiet)
    log = read_log(out)
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in log)
    assert summary["final_loss"] == log[-1]["loss"] and summary["ranks_agree"]

    cfg, model = load_stage(out)  # the stage folder: EMA weights + config
    assert cfg == get_preset(f"tiny/{stage}")
    meta = json.loads((out / "config.json").read_text())
    assert meta["step"] == 4 and meta["vae"] == LatentCache(assets["cache"]).vae
    step, sdir = latest_checkpoint(out)
    assert step == 4 and sorted(p.name for p in (out / "state").iterdir()) == ["latest.json", "step-00000004"]
    again = build_model(cfg)
    again.load_state_dict(load_file(str(sdir / "ema.safetensors")))
    x = sample_inputs(cfg, batch=3, seed=1)
    with torch.no_grad():
        assert torch.equal(model(**x), again.eval()(**x))
        assert model(**x).abs().sum() > 0  # trained away from the zero-initialised output
    raw = load_file(str(sdir / "model.safetensors"))
    assert any(not torch.equal(raw[k], v) for k, v in again.state_dict().items())  # EMA != raw weights


def test_resume_replays_exactly_what_an_uninterrupted_run_does(assets, tmp_path):
    train(opts(assets, "scale1", tmp_path / "straight", steps=6, save_every=3), log=quiet)
    train(opts(assets, "scale1", tmp_path / "split", steps=3, save_every=3), log=quiet)
    msgs = []
    train(opts(assets, "scale1", tmp_path / "split", steps=6, save_every=3, resume=True), log=msgs.append)
    assert any("resuming" in m and "step 3" in m for m in msgs)
    for name in ("model.safetensors", "state/step-00000006/model.safetensors", "state/step-00000006/ema.safetensors"):
        a, b = load_file(str(tmp_path / "straight" / name)), load_file(str(tmp_path / "split" / name))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert [r["step"] for r in read_log(tmp_path / "split")] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in read_log(tmp_path / "split")] == [r["loss"] for r in read_log(tmp_path / "straight")]


def test_max_minutes_stops_at_a_log_line_and_saves(assets, tmp_path):
    out = tmp_path / "budget"
    summary = train(opts(assets, "scale0", out, steps=1000, log_every=2, save_every=1000, max_minutes=1e-9), log=quiet)
    assert summary["steps"] == 2 and summary["stopped_by_time"]
    assert latest_checkpoint(out)[0] == 2 and json.loads((out / "config.json").read_text())["step"] == 2
    summary = train(opts(assets, "scale0", out, steps=3, resume=True), log=quiet)
    assert summary["started_at_step"] == 2 and summary["steps"] == 3 and not summary["stopped_by_time"]


def test_init_starts_a_new_run_from_a_stage_folder_with_a_fresh_optimizer(assets, tmp_path):
    first = tmp_path / "first"
    train(opts(assets, "scale1", first, residual_scale="0.5"), log=quiet)
    msgs = []  # lr so small that one Adam step cannot move a weight by more than ~1e-11
    summary = train(opts(assets, "scale1", tmp_path / "more", steps=1, lr=1e-12, init=str(first)), log=msgs.append)
    assert any("initialised from" in m for m in msgs)
    cfg, before = load_stage(first)
    cfg2, after = load_stage(tmp_path / "more")
    assert cfg2.residual_scale == 0.5 == cfg.residual_scale  # the init's normalisation, not the preset's
    a, b = before.state_dict(), after.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-8) for k in a)
    assert any(a[k].abs().sum() > 0 for k in a if "final" in k)  # the trained (non-zero) output layer came along
    assert summary["init"]["step"] == 4 and summary["init"]["stage"] == str(first.resolve())
    with pytest.raises(MsfError, match="same preset"):
        train(opts(assets, "scale0", tmp_path / "wrong", init=str(first)), log=quiet)
    with pytest.raises(MsfError, match="drop --residual-scale"):
        train(opts(assets, "scale1", tmp_path / "wrong", init=str(first), residual_scale="2"), log=quiet)
    other = tmp_path / "other-vae"  # the same weights, recorded as trained on another VAE's latents
    shutil.copytree(first, other)
    meta = json.loads((other / "config.json").read_text())
    meta["vae"]["sha256"] = meta["vae"]["encoder_sha256"] = "0" * 64  # another encoder, not just another decoder
    (other / "config.json").write_text(json.dumps(meta))
    with pytest.raises(MsfError, match="another VAE"):
        train(opts(assets, "scale1", tmp_path / "wrong", init=str(other)), log=quiet)
    assert not (tmp_path / "wrong").exists() or not any((tmp_path / "wrong").iterdir())
    msgs = []  # a resumed run continues its own checkpoint: --init no longer applies
    train(opts(assets, "scale1", tmp_path / "more", steps=2, lr=1e-12, init=str(first), resume=True), log=msgs.append)
    assert any("ignored" in m for m in msgs)


def test_cosine_schedule_warms_up_then_decays_to_zero_at_the_last_step():
    from msf_train.train_options import lr_at

    o = TrainOptions(stage="scale0", cache="c", out="o", lr=1.0, warmup=4, steps=104, lr_schedule="cosine")
    lrs = [lr_at(o, s) for s in range(105)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0] and lrs[4] == 1.0
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:])) and lrs[54] == pytest.approx(0.5) and lrs[104] == 0.0
    assert lr_at(TrainOptions(stage="scale0", cache="c", out="o", lr=1.0, steps=10), 9) == 1.0  # constant


def test_a_cosine_run_resumes_only_with_its_own_steps(tmp_path):
    from msf_train.train_options import check_resume_options

    saved = {"options": TrainOptions(stage="scale0", cache="c", out="o", steps=100, lr_schedule="cosine").to_dict()}
    check_resume_options(saved, TrainOptions(stage="scale0", cache="c", out="o", steps=100, lr_schedule="cosine"), tmp_path)
    with pytest.raises(MsfError, match="--steps 100"):  # another horizon would bend the rest of the decay
        check_resume_options(saved, TrainOptions(stage="scale0", cache="c", out="o", steps=200, lr_schedule="cosine"),
                             tmp_path)
    const = {"options": TrainOptions(stage="scale0", cache="c", out="o", steps=100).to_dict()}
    check_resume_options(const, TrainOptions(stage="scale0", cache="c", out="o", steps=200), tmp_path)  # constant: free


def test_targets_are_algorithm_1_and_priors_algorithm_2(assets):
    c = LatentCache(assets["cache"])
    full, base = c.load("full")[:5].float(), c.load("base")[:5].float()
    s0, s1, dit = (get_preset(f"tiny/{s}") for s in ("scale0", "scale1", "dit"))
    x0, p0 = targets(s0, full, base)
    x1, p1 = targets(s1, full, base)
    assert p0 is None and torch.equal(x0, base)
    torch.testing.assert_close(factorize.up(x0, 8) + x1, full)  # sum_i Up(f_i) == E(image)
    torch.testing.assert_close(p1, factorize.priors([x0, x1], (4, 8))[0])
    x1s, _ = targets(s1.replace(residual_scale=0.5), full, base)
    torch.testing.assert_close(x1s, x1 / 0.5)
    xd, pd = targets(dit, full, base)
    assert pd is None and torch.equal(xd, full)


def test_residual_scale_auto_is_measured_and_stored(assets, tmp_path):
    out = tmp_path / "auto"
    train(opts(assets, "scale1", out, steps=1, residual_scale="auto"), log=quiet)
    cfg, _ = load_stage(out)
    c = LatentCache(assets["cache"])
    x, _ = targets(get_preset("tiny/scale1"), c.load("full").float(), c.load("base").float())
    assert cfg.residual_scale == pytest.approx(x.double().std(unbiased=False).item(), rel=1e-4)


def test_batches_shard_the_data_between_processes():
    class FakeCache:
        count, labels = 10, np.arange(10)
        folder = "fake"

    cfg = get_preset("tiny/dit")
    per_rank = [Batches(FakeCache(), cfg, 2, 0, Dist(rank=r, world=2), torch.device("cpu")) for r in range(2)]
    epoch0 = [np.concatenate([b.indices(s) for s in range(2)]) for b in per_rank]  # 2 steps x 2 = 4 of 5 per rank
    assert not set(epoch0[0]) & set(epoch0[1])
    assert np.array_equal(per_rank[0].indices(7), per_rank[0].indices(7))  # a pure function of the step
    assert np.array_equal(np.sort(np.concatenate([per_rank[0].indices(s) for s in range(5)])[:5]),
                          np.sort(per_rank[0]._perm(0)[:5]))


def test_stage_and_cache_mismatches_are_clear_errors(assets, tmp_path):
    with pytest.raises(MsfError, match="tiny/scale0 is scale 0, not scale 1"):
        train(opts(assets, "scale1", tmp_path / "a", preset="tiny/scale0"))
    with pytest.raises(MsfError, match="one-scale model; train it with msf-train dit"):
        train(opts(assets, "scale0", tmp_path / "a", preset="tiny/dit"))
    with pytest.raises(MsfError, match="train it with msf-train scale1"):
        train(opts(assets, "dit", tmp_path / "a", preset="tiny/scale1"))
    with pytest.raises(MsfError, match="--scales 12,16"):
        train(opts(assets, "scale0", tmp_path / "a", preset="demo/scale0"))
    with pytest.raises(MsfError, match="outside preset tiny/scale0's 20 classes"):
        train(opts(assets, "scale0", tmp_path / "a", cache=str(assets["cache_wide"])))
    with pytest.raises(MsfError, match="made with another VAE"):
        train(opts(assets, "scale0", tmp_path / "a", vae=str(assets["vae_other"])))
    with pytest.raises(MsfError, match="time-sampling"):
        train(opts(assets, "scale0", tmp_path / "a", time_sampling="beta"))
    out = tmp_path / "done"
    train(opts(assets, "dit", out, steps=1), log=quiet)
    with pytest.raises(MsfError, match="pass --resume"):
        train(opts(assets, "dit", out, steps=2))
    assert not (tmp_path / "a").exists()  # nothing written before the checks


def test_assemble_msf_and_dit_cascades(assets, tmp_path):
    for s in ("scale0", "scale1", "dit"):
        train(opts(assets, s, tmp_path / s, steps=1), log=quiet)
    msf = assemble_cascade(tmp_path / "msf", [tmp_path / "scale0", tmp_path / "scale1"], assets["vae"])
    stages, vae = read_cascade(msf)
    assert [p.name for p in stages] == ["scale0", "scale1"] and vae.name == "vae"
    assert not (msf / "scale0" / "state").exists()  # weights and config only
    cfg, _ = load_stage(stages[1])
    assert cfg.name == "tiny/scale1"
    dit = assemble_cascade(tmp_path / "ditc", [tmp_path / "dit"], assets["vae"], sampling={"steps": [7], "cfg": [2.5]})
    assert len(read_cascade(dit)[0]) == 1
    assert cascade_sampling(dit) == {"steps": [7], "cfg": [2.5]} and cascade_sampling(msf) == {}
    with pytest.raises(MsfError, match="'sampling.cfg' has 2 value"):  # one value per stage
        assemble_cascade(tmp_path / "x", [tmp_path / "dit"], assets["vae"], sampling={"cfg": [2.5, 1.0]})
    assert not (tmp_path / "x").exists()
    with pytest.raises(MsfError, match="another VAE"):
        assemble_cascade(tmp_path / "x", [tmp_path / "dit"], assets["vae_other"])
    with pytest.raises(MsfError, match="scale order"):
        assemble_cascade(tmp_path / "x", [tmp_path / "scale1", tmp_path / "scale0"], assets["vae"])


def test_sigkill_mid_run_leaves_a_checkpoint_that_resumes(assets, tmp_path):
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "msf_train.cli", "scale0", "--preset", "tiny/scale0", "--cache",
                             str(assets["cache"]), "--out", str(out), "--steps", "100000", "--batch", "8",
                             "--save-every", "3", "--log-every", "1", "--device", "cpu"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            try:
                found = latest_checkpoint(out)
            except MsfError:  # the pointer was read just before the run replaced it and removed its folder
                found = None
            if found and found[0] >= 9:
                break
            assert proc.poll() is None, "training exited early"
            time.sleep(0.05)
        else:
            pytest.fail("no checkpoint in time")
        proc.send_signal(signal.SIGKILL)  # mid-run: no chance to clean up
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    step, sdir = latest_checkpoint(out)
    assert step >= 9 and step % 3 == 0
    load_stage(out)  # the stage folder loads
    r = run_cli("scale0", "--preset", "tiny/scale0", "--cache", assets["cache"], "--out", out,
                "--steps", step + 2, "--batch", 8, "--save-every", 3, "--log-every", 1, "--resume", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert f"resuming {out} from step {step}" in r.stdout
    log = read_log(out)
    assert [x["step"] for x in log] == list(range(1, step + 3))  # the killed run's extra lines are dropped
    assert latest_checkpoint(out)[0] == step + 2
    assert json.loads((out / "train.json").read_text())["started_at_step"] == step


def test_torchrun_two_cpu_processes_end_with_identical_weights(assets, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "msf_train.cli", "scale1", "--preset", "tiny/scale1", "--cache", str(assets["cache"]),
           "--out", str(out), "--steps", "4", "--batch", "8", "--save-every", "2", "--device", "cpu"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((out / "train.json").read_text())
    assert summary["world_size"] == 2 and len(summary["rank_weights_sha256"]) == 2
    assert summary["ranks_agree"], summary["rank_weights_sha256"]
    assert all(np.isfinite(x["loss"]) for x in read_log(out))
    load_stage(out)


@pytest.mark.slow
def test_train_demo_script_at_tiny_size(tmp_path):
    """scripts/train_demo.sh end to end at a tiny size (7 processes), then again: a re-run resumes."""
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "train_demo.sh"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OUT": str(tmp_path / "demo"), "DEVICE": "cpu", "PRESETS": "tiny",
           "SCALES": "4,8", "CLASSES": "20", "PER_CLASS": "2", "VAE_STEPS": "2", "VAE_BATCH": "4", "VAE_SIZE": "64",
           "VAE_WIDTHS": "8,16,16,16", "STEPS": "2", "BATCH": "8", "SAVE_EVERY": "2", "LOG_EVERY": "1",
           "WORKERS": "0", "MSF_TRAIN": f"{sys.executable} -m msf_train.cli", "PYTHON": sys.executable}
    r = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    stages, _ = read_cascade(tmp_path / "demo" / "msf")
    assert [load_stage(s)[0].name for s in stages] == ["tiny/scale0", "tiny/scale1"]
    assert load_stage(read_cascade(tmp_path / "demo" / "dit-cascade")[0][0])[0].name == "tiny/dit"
    r = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=600, env={**env, "STEPS": "3"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "vae: " in r.stdout and "exists, kept" in r.stdout and "up to date" in r.stdout
    assert latest_checkpoint(tmp_path / "demo" / "dit")[0] == 3


def test_denoisers_take_the_latent_channels_of_their_vae(assets, vae16, tmp_path):
    """A 16-channel VAE (SD3's count; the demo's is 4): the stages trained on its cache take 16
    channels whatever the preset says, the cascade samples 16-channel latents into an image, and a
    4-channel stage cannot be --init for it."""
    from runtime.pipeline import Pipeline

    vae, cache = vae16
    assert LatentCache(cache).channels == 16
    for s in ("scale0", "scale1"):
        train(opts(assets, s, tmp_path / s, steps=1, cache=str(cache), vae=str(vae)), log=quiet)
        cfg, _ = load_stage(tmp_path / s)
        assert cfg.in_channels == 16 and cfg.input_channels == (32 if s == "scale1" else 16)
    msf = assemble_cascade(tmp_path / "msf", [tmp_path / "scale0", tmp_path / "scale1"], vae)
    pipe = Pipeline.load(msf, device="cpu")
    assert [c.in_channels for c in pipe.cfgs] == [16, 16]
    g = pipe.generate([3, 7], seed=0, plan=pipe.plan((2, 2)), save_scales=True)  # each scale decoded
    assert g.image.shape == (2, 3, 64, 64) and torch.isfinite(g.image).all() and len(g.scales) == 2

    four = tmp_path / "four"
    train(opts(assets, "scale0", four, steps=1), log=quiet)
    with pytest.raises(MsfError, match="takes 4-channel latents, cache .* holds 16-channel"):
        train(opts(assets, "scale0", tmp_path / "b", cache=str(cache), init=str(four)))


def test_init_body_takes_the_transformer_of_another_latent_space(assets, vae16, tmp_path):
    """--init-body: a stage trained on 4-channel latents starts a 16-channel one. The blocks, the time
    and class embeddings come over (to within one step of a vanishing learning rate); the patch
    embedding and the output layer are the new run's own, of the new shape; the record says so."""
    vae, cache = vae16
    four = tmp_path / "four"
    train(opts(assets, "scale1", four, steps=2), log=quiet)
    with pytest.raises(MsfError, match="--init-body takes the transformer of a folder of the same preset"):
        train(opts(assets, "scale0", tmp_path / "x", cache=str(cache), init=str(four), init_body=True))
    with pytest.raises(MsfError, match="add --init STAGE"):
        train(opts(assets, "scale1", tmp_path / "y", cache=str(cache), init_body=True))

    s = train(opts(assets, "scale1", tmp_path / "new", steps=1, lr=1e-12, cache=str(cache), vae=str(vae),
                   init=str(four), init_body=True), log=quiet)
    assert s["init"]["body_only"] and s["init"]["fresh"] == ["final_layer.linear.bias", "final_layer.linear.weight",
                                                           "x_embedder.bias", "x_embedder.weight"]
    _, old = load_stage(four)
    cfg, new = load_stage(tmp_path / "new")
    assert cfg.in_channels == 16 and new.x_embedder.weight.shape[1] == 32 and old.x_embedder.weight.shape[1] == 8
    a, b = old.state_dict(), new.state_dict()
    for k in ("blocks.0.attn.qkv.weight", "y_embedder.weight", "t_embedder.mlp.0.weight",
              "final_layer.adaLN_modulation.1.weight"):
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=0, msg=k)
    assert new.final_layer.linear.weight.shape[0] == 4 * old.final_layer.linear.weight.shape[0]  # p*p*16 outputs
