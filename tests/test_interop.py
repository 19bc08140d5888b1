"""Released DiTs in, diffusers folders out (msf_train/interop.py), and the eps -> velocity conversion
(msf_train/parameterization.py), against diffusers' own DiTTransformer2DModel and DDPM schedule and
against the closed-form eps and velocity of Gaussian data."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from msf_train import interop
from msf_train.checkpoint import load_stage, read_cascade, save_stage
from msf_train.config import get_preset
from msf_train.model import build_model
from msf_train.parameterization import EpsDDPMToVelocity, ddpm_alphas_cumprod
from msf_train.vae import vae_identity
from runtime.cascade import random_model_state, write_random_vae

TINY = dict(num_attention_heads=2, attention_head_dim=16, num_layers=2, sample_size=8, patch_size=2,
            num_embeds_ada_norm=10)


def msf_train(*args):
    return subprocess.run([sys.executable, "-m", "msf_train.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def diffusers_dit(seed=0, equal=True, **kw):
    """A random diffusers DiT (learned sigma: 8 outputs) whose per-block embedders are copies of block 0's."""
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(seed)
    m = DiTTransformer2DModel(**{**TINY, "in_channels": 4, "out_channels": 8, **kw}).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.05)
        if equal:
            for b in m.transformer_blocks[1:]:
                b.norm1.emb.load_state_dict(m.transformer_blocks[0].norm1.emb.state_dict())
    return m


def use_reference_time_features(m):
    """diffusers' DiT embeds timesteps with downscale_freq_shift = 1; the reference DiT (and ours) with 0."""
    for b in m.transformer_blocks:
        b.norm1.emb.time_proj.downscale_freq_shift = 0
    return m


def inputs(channels=4, size=8, batch=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, size, size, generator=g), torch.tensor([0.0, 411.7, 999.0]), torch.tensor([1, 5, 10])


# ---- the conversion: schedule and Gaussian oracle ----------------------------------------------
def test_ddpm_schedule_is_diffusers_linear_schedule():
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear").alphas_cumprod
    assert np.allclose(ddpm_alphas_cumprod(), ref.double().numpy(), rtol=1e-6, atol=0)


def test_gaussian_oracle_eps_model_converts_to_the_exact_velocity():
    """Data x ~ N(mu, s^2). The exact DDPM eps-predictor, wrapped, must give the exact flow velocity
    E[x - eps | z_t] of our linear path; outside the schedule's range, the velocity at its nearest end."""
    from diffusers import DDPMScheduler

    mu, s = 0.7, 0.4
    abar = DDPMScheduler(beta_schedule="linear").alphas_cumprod.double().numpy()  # an independent schedule source
    lam_table = np.log(abar) - np.log1p(-abar)

    def eps_oracle(x_tau, t_in, y, prior=None):  # E[eps | x_tau] at continuous DDPM step tau = 1000 t_in
        lam = torch.from_numpy(np.interp(t_in.double().numpy() * 1000, np.arange(1000), lam_table))[:, None, None, None]
        a2, s2 = torch.sigmoid(lam), torch.sigmoid(-lam)
        return s2.sqrt() * (x_tau.double() - a2.sqrt() * mu) / (a2 * s * s + s2)

    def velocity(z, t):  # closed form on z_t = t x + (1 - t) eps
        t = t.double()[:, None, None, None]
        return mu + (t * s * s - (1 - t)) * (z.double() - t * mu) / (t * t * s * s + (1 - t) ** 2)

    conv = EpsDDPMToVelocity().double()
    t = torch.tensor([0.01, 0.1, 0.3, 0.5, 0.77, 0.9, 0.985])
    z = torch.randn(len(t), 4, 3, 3, generator=torch.Generator().manual_seed(0))
    got, want = conv(eps_oracle, z, t, None), velocity(z, t)
    assert torch.allclose(got.double(), want, rtol=1e-4, atol=2e-4), (got.double() - want).abs().max()
    ends = torch.tensor([0.0, 1.0])
    got = conv(eps_oracle, z[:2], ends, None)
    want = velocity(z[:2], torch.tensor([conv.t_min, conv.t_max]))
    assert torch.allclose(got.double(), want, rtol=1e-4, atol=2e-3)
    assert conv.log_snr.dtype == torch.float32 and conv.half().log_snr.dtype == torch.float32  # casts keep the table


# ---- diffusers folders in ----------------------------------------------------------------------
def test_diffusers_folder_imports_with_diffusers_own_output(tmp_path):
    dit = diffusers_dit()
    dit.save_pretrained(tmp_path / "dit")
    r = msf_train("import-dit", tmp_path / "dit", "--out", tmp_path / "stage")
    assert r.returncode == 0, r.stderr
    cfg, ours = load_stage(tmp_path / "stage")
    assert (cfg.parameterization, cfg.time_freq_shift, cfg.mlp_norm_eps) == ("eps-ddpm", 1, 1e-5)
    x, tau, y = inputs()
    with torch.no_grad():
        eps = dit(x, timestep=tau, class_labels=y).sample[:, :4]  # the noise half; the rest is the variance
        assert torch.allclose(ours.predict(x, tau / 1000, y), eps, atol=1e-6)
        t = torch.tensor([0.2, 0.5, 0.8])  # the velocity is diffusers' eps at the mapped step and scale
        conv = ours.to_velocity
        scale = torch.rsqrt(t * t + (1 - t) ** 2)[:, None, None, None]
        eps_t = dit(x * scale, timestep=conv.ddpm_step(t), class_labels=y).sample[:, :4]
        assert torch.allclose(ours(x, t, y), (x - eps_t) / t[:, None, None, None], atol=1e-5)


def test_embedder_copies_that_differ_are_refused_in_one_line(tmp_path):
    diffusers_dit(equal=False).save_pretrained(tmp_path / "dit")
    r = msf_train("import-dit", tmp_path / "dit", "--out", tmp_path / "stage")
    err = r.stderr.strip()
    assert r.returncode != 0 and "\n" not in err and "Traceback" not in err, err
    assert "differs from block 0's" in err and not (tmp_path / "stage").exists()


# ---- our stages out as diffusers folders, and back ---------------------------------------------
def test_our_cascade_written_as_diffusers_loads_in_diffusers_and_reads_back(tmp_path):
    from diffusers import DiTTransformer2DModel

    vae = write_random_vae(tmp_path / "vae")
    stages = []
    for name in ("tiny/scale0", "tiny/scale1"):
        cfg = get_preset(name)
        stages.append(save_stage(tmp_path / name.split("/")[1], random_model_state(cfg, std=0.05), cfg,
                                 vae=vae_identity(vae)))
    r = msf_train("assemble", "--format", "diffusers", "--out", tmp_path / "hf", "--vae", vae, *stages)
    assert r.returncode == 0, r.stderr
    for i, stage in enumerate(stages):
        cfg, ours = load_stage(stage)
        dit = use_reference_time_features(DiTTransformer2DModel.from_pretrained(tmp_path / "hf" / f"scale{i}").eval())
        assert dit.config.in_channels == cfg.input_channels  # scale 1: concat(z_t, prior), 8 channels
        cond = dit.transformer_blocks[1].norm1.emb.class_embedder.embedding_table.weight
        assert torch.equal(cond, ours.y_embedder.weight)  # identical copies in every block
        x, tau, y = inputs(cfg.input_channels, cfg.latent_size)
        t = tau.clamp(1, 999) / 1000
        with torch.no_grad():
            prior = {"prior": x[:, 4:]} if cfg.has_prior else {}
            assert torch.allclose(dit(x, timestep=1000 * t, class_labels=y).sample, ours(x[:, :4], t, y, **prior),
                                  atol=1e-5)
        # ... and the import reads it back to the same stage: config, VAE record and weights
        interop.import_dit(tmp_path / "hf" / f"scale{i}", tmp_path / f"back{i}")
        cfg2, back = load_stage(tmp_path / f"back{i}")
        assert cfg2 == cfg
        assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), ours.state_dict().values()))
        meta = json.loads((tmp_path / f"back{i}" / "config.json").read_text())
        assert meta["vae"] == vae_identity(vae)


# ---- facebookresearch/DiT .pt in ---------------------------------------------------------------
def reference_state_dict(dit, grid: int) -> dict[str, torch.Tensor]:
    """The facebookresearch/DiT layout (models.py) holding a diffusers DiT's weights."""
    from diffusers.models.embeddings import get_2d_sincos_pos_embed

    sd, D = dit.state_dict(), dit.inner_dim
    e = "transformer_blocks.0.norm1.emb."
    out = {"x_embedder.proj.weight": sd["pos_embed.proj.weight"], "x_embedder.proj.bias": sd["pos_embed.proj.bias"],
           "pos_embed": torch.as_tensor(get_2d_sincos_pos_embed(D, grid, base_size=grid, output_type="pt")).float()[None],
           "t_embedder.mlp.0.weight": sd[e + "timestep_embedder.linear_1.weight"],
           "t_embedder.mlp.0.bias": sd[e + "timestep_embedder.linear_1.bias"],
           "t_embedder.mlp.2.weight": sd[e + "timestep_embedder.linear_2.weight"],
           "t_embedder.mlp.2.bias": sd[e + "timestep_embedder.linear_2.bias"],
           "y_embedder.embedding_table.weight": sd[e + "class_embedder.embedding_table.weight"],
           "final_layer.adaLN_modulation.1.weight": sd["proj_out_1.weight"],
           "final_layer.adaLN_modulation.1.bias": sd["proj_out_1.bias"],
           "final_layer.linear.weight": sd["proj_out_2.weight"], "final_layer.linear.bias": sd["proj_out_2.bias"]}
    for i in range(len(dit.transformer_blocks)):
        b = f"transformer_blocks.{i}."
        for p in ("weight", "bias"):
            out[f"blocks.{i}.attn.qkv.{p}"] = torch.cat([sd[f"{b}attn1.to_{n}.{p}"] for n in "qkv"])
            out[f"blocks.{i}.attn.proj.{p}"] = sd[f"{b}attn1.to_out.0.{p}"]
            out[f"blocks.{i}.mlp.fc1.{p}"] = sd[f"{b}ff.net.0.proj.{p}"]
            out[f"blocks.{i}.mlp.fc2.{p}"] = sd[f"{b}ff.net.2.{p}"]
            out[f"blocks.{i}.adaLN_modulation.1.{p}"] = sd[f"{b}norm1.linear.{p}"]
    return out


def test_reference_checkpoint_imports_as_the_same_function(tmp_path):
    """A .pt in the reference layout gives diffusers' forward once diffusers uses the reference's
    timestep frequencies and LayerNorm epsilon (where the two implementations differ)."""
    dit = use_reference_time_features(diffusers_dit(norm_eps=1e-6, num_embeds_ada_norm=20))
    torch.save(reference_state_dict(dit, 4), tmp_path / "DiT-tiny.pt")
    cfg, sd = interop.from_reference(interop.read_reference(tmp_path / "DiT-tiny.pt"), heads=2)
    assert (cfg.latent_size, cfg.num_classes, cfg.out_channels, cfg.parameterization, cfg.time_freq_shift) == \
        (8, 20, 4, "eps-ddpm", 0)
    ours = build_model(cfg)
    ours.load_state_dict(sd)
    x, tau, y = inputs()
    with torch.no_grad():
        assert torch.allclose(ours.eval().predict(x, tau / 1000, y), dit(x, timestep=tau, class_labels=y).sample[:, :4],
                              atol=1e-6)
    bad = reference_state_dict(dit, 4)
    bad["pos_embed"] = bad["pos_embed"].reshape(1, 4, 4, -1).transpose(1, 2).reshape(1, 16, -1)  # rows <-> columns
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(Exception, match="pos_embed"):
        interop.from_reference(interop.read_reference(tmp_path / "bad.pt"), heads=2)


def test_dit_xl2_shaped_reference_maps_key_for_key_on_the_meta_device():
    """DiT-XL-2-256x256.pt's keys and shapes (675M parameters) map onto dit-xl/2, without allocating it."""
    from msf_train.model import sincos_pos_embed_2d

    xl = get_preset("dit-xl/2")
    ref = {}
    for k, v in build_model(xl, "meta").state_dict().items():
        for ours, theirs in (("x_embedder.", "x_embedder.proj."), ("y_embedder.", "y_embedder.embedding_table."),
                             (".mlp.0.", ".mlp.fc1."), (".mlp.2.", ".mlp.fc2.")):
            k = k.replace(ours, theirs)
        if k.startswith("final_layer.linear."):
            v = torch.empty((2 * v.shape[0], *v.shape[1:]), device="meta")  # learned sigma: 8 channels
        ref[k] = v
    ref["pos_embed"] = sincos_pos_embed_2d(1152, 16)[None]
    assert round(sum(v.numel() for v in ref.values()) / 1e6) == 675  # DiT-XL/2 as the DiT paper counts it
    cfg, sd = interop.from_reference(ref)
    assert cfg.name == "dit-xl/2" and cfg.num_heads == 16 and cfg.parameterization == "eps-ddpm"
    assert sd["final_layer.linear.weight"].shape == (2 * 2 * 4, 1152)


# ---- an imported DiT end to end: msf-run and ONNX ----------------------------------------------
XL = dict(num_attention_heads=16, attention_head_dim=72, num_layers=28, sample_size=32, num_embeds_ada_norm=1000)


@pytest.mark.parametrize("size", ["tiny", pytest.param("xl", marks=pytest.mark.slow)])
def test_imported_reference_dit_samples_with_msf_run_and_exports_to_onnx(tmp_path, size):
    """The DiT-XL/2 shape (`-m slow`: 675M random weights, ~3 GB on disk twice) or a tiny one in CI."""
    from msf_export.export import export_cascade, resolve_options
    from runtime.engines import load_cascade
    from runtime.sampler import make_plan, sample

    kw = {"norm_eps": 1e-6, **(XL if size == "xl" else {})}
    dit = use_reference_time_features(diffusers_dit(**kw))
    grid = dit.config.sample_size // 2
    torch.save(reference_state_dict(dit, grid), tmp_path / "dit.pt")
    vae = write_random_vae(tmp_path / "sd-vae")
    heads = ["--heads", "2"] if size == "tiny" else []  # XL: from the width, as for the released file
    r = msf_train("import-dit", tmp_path / "dit.pt", *heads, "--vae", vae, "--out", tmp_path / "dit")
    assert r.returncode == 0, r.stderr
    assert "eps-ddpm" in r.stdout and read_cascade(tmp_path / "dit")[0][0].name == "scale0"
    cfg, ours = load_stage(tmp_path / "dit" / "scale0")
    assert cfg.name == ("dit-xl/2" if size == "xl" else "dit-d2-w32/2")
    x, tau, y = inputs(4, dit.config.sample_size, batch=1)
    with torch.no_grad():  # the same function as diffusers' DiT with the reference's time features
        assert torch.allclose(ours.predict(x, tau[1:2] / 1000, y[:1]),
                              dit(x, timestep=tau[1:2], class_labels=y[:1]).sample[:, :4], atol=1e-5)
    del dit, ours
    run = subprocess.run([sys.executable, "-m", "runtime.cli", "--model", tmp_path / "dit", "--class", "3,7",
                          "--steps", "4" if size == "tiny" else "2", "--out", tmp_path / "img.png", "--device", "cpu"],
                         capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "img.png").read_bytes()[:4] == b"\x89PNG"
    res = export_cascade(tmp_path / "dit", tmp_path / "onnx", resolve_options("onnx", batch=(1, 2, 4)), progress=False)
    assert res.manifest["stages"][0]["config"]["parameterization"] == "eps-ddpm"
    assert res.manifest["stages"][0]["parity"]["max_abs"] < 1e-3  # the conversion is inside the graph
    plan = make_plan([cfg], [2], [1.5])
    images = [sample(*load_cascade(tmp_path / name, backend), [3, 7], seeds=0, plan=plan).image
              for name, backend in (("dit", "torch"), ("onnx", "onnx"))]
    assert (images[0] - images[1]).abs().max() < 1e-3


# ---- output folders: the rule of msf_train.outdir ------------------------------------------------
def test_import_and_diffusers_assembly_never_replace_a_users_folder(tmp_path):
    """import-dit and assemble --format diffusers follow the output-folder rule: a folder holding a
    user's file is refused in one line and left as it was; --force writes; the same command for the
    same inputs may write its own earlier output again (no --force needed)."""
    diffusers_dit().save_pretrained(tmp_path / "dit")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    r = msf_train("import-dit", tmp_path / "dit", "--out", mine)
    err = r.stderr.strip()
    assert r.returncode != 0 and "\n" not in err and "Traceback" not in err and "--force" in err, err
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    assert msf_train("import-dit", tmp_path / "dit", "--out", mine, "--force").returncode == 0
    assert load_stage(mine)[0].parameterization == "eps-ddpm"
    r = msf_train("import-dit", tmp_path / "dit", "--out", tmp_path / "stage")
    assert r.returncode == 0 and msf_train("import-dit", tmp_path / "dit", "--out", tmp_path / "stage").returncode == 0
    r = msf_train("import-dit", tmp_path / "dit", "--out", tmp_path / "dit" / "inside")  # into its own input
    assert r.returncode != 0 and "overlaps" in r.stderr, r.stderr

    vae = write_random_vae(tmp_path / "vae")
    cfg = get_preset("tiny/dit")
    stage = save_stage(tmp_path / "s0", random_model_state(cfg, std=0.05), cfg, vae=vae_identity(vae))
    r = msf_train("assemble", "--format", "diffusers", "--out", mine, "--vae", vae, stage)
    assert r.returncode != 0 and "--force" in r.stderr and (mine / "notes.txt").read_text() == "keep me"
    hf = tmp_path / "hf"
    for _ in range(2):  # the second run replaces its own output
        r = msf_train("assemble", "--format", "diffusers", "--out", hf, "--vae", vae, stage)
        assert r.returncode == 0, r.stderr
    assert (hf / "scale0" / "config.json").is_file() and (hf / "vae" / "config.json").is_file()
