"""VAE folders: the demo VAE's build, training and scaling factor; loading; wrong kinds of folder."""
import json

import pytest
import torch

from _msf_tiny import TINY_WIDTHS, tiny_assets
from msf_train import data
from msf_train.checkpoint import save_stage, sha256_file
from msf_train.config import get_preset
from msf_train.errors import MsfError
from msf_train.model import build_model
from msf_train.vae import (DEMO_WIDTHS, build_vae, encode, load_vae, measure_latent_stats, vae_class_name,
                           vae_identity, weights_file)


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
