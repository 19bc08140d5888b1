"""The latent cache: what it holds, how it is read, and what it refuses."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from _msf_tiny import tiny_assets
from msf_train import data
from msf_train.cache import LatentCache, _noise, build_cache, mmap_safetensors, parse_scales
from msf_train.errors import MsfError
from msf_train.vae import encode, load_vae, vae_identity

quiet = lambda *a, **k: None  # noqa: E731


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return tiny_assets(tmp_path_factory)


def test_index_records_sizes_labels_and_vae(assets):
    c = LatentCache(assets["cache"])
    m = c.meta
    assert c.count == 80 and m["skipped"] == 0
    assert (c.base_size, c.full_size, c.channels) == (4, 8, 4)
    assert (m["base_image_size"], m["full_image_size"]) == (32, 64)
    assert c.labels.tolist() == [k for k in range(20) for _ in range(4)]
    assert c.vae == vae_identity(assets["vae"])
    assert m["data"] == {"kind": "shapes", "classes": list(range(20)), "per_class": 4, "seed": 0}
    sh = c.shards[0]
    assert sh["full"].shape == (80, 4, 8, 8) and sh["base"].shape == (80, 4, 4, 4) and sh["full"].dtype == np.float16


def test_latents_are_the_vae_encodings_of_full_and_resized_images(assets, tmp_path):
    """full = E(image at full size), base = E(the image resized to the base size): Algorithm 1's inputs,
    with the VAE convention (sample * scaling_factor), each image's noise seeded by its position."""
    out = tmp_path / "c"
    build_cache(assets["vae"], "shapes", out, scales=(4, 8), classes="3", per_class=2, batch=64, workers=0,
                device="cpu", dtype="float32", show_progress=False, log=quiet)
    c = LatentCache(out)
    ds = data.ShapesDataset([0, 1, 2], 2, 0, 64, 32)
    full_u8 = torch.stack([ds[i][0] for i in range(6)])
    base_u8 = torch.stack([ds[i][1] for i in range(6)])
    vae = load_vae(assets["vae"])
    noise = [_noise(0, range(6), which, 4, side) for which, side in ((0, 8), (1, 4))]
    zf = encode(vae, data.to_unit(full_u8), noise=noise[0])
    zb = encode(vae, data.to_unit(base_u8), noise=noise[1])
    torch.testing.assert_close(c.load("full"), zf, rtol=0, atol=1e-5)
    torch.testing.assert_close(c.load("base"), zb, rtol=0, atol=1e-5)


def test_rebuild_with_same_inputs_is_a_noop(assets):
    index = assets["cache"] / "index.json"
    before = index.stat().st_mtime_ns
    msgs = []
    build_cache(assets["vae"], "shapes", assets["cache"], scales=(4, 8), classes="20", per_class=4, workers=0,
                device="cpu", show_progress=False, log=msgs.append)
    assert index.stat().st_mtime_ns == before and "up to date" in msgs[0]


def test_shards_and_gather(assets, tmp_path):
    out = tmp_path / "sharded"
    build_cache(assets["vae"], "shapes", out, scales=(4, 8), classes="20", per_class=4, batch=16, shard_size=30,
                workers=0, device="cpu", show_progress=False, log=quiet)
    c = LatentCache(out)
    assert [s["count"] for s in c.meta["shards"]] == [32, 32, 16]
    whole = LatentCache(assets["cache"])
    torch.testing.assert_close(c.load("full"), whole.load("full"), rtol=0, atol=0)
    idx = np.array([79, 0, 31, 32, 64, 5, 79])
    assert torch.equal(c.gather(idx, "base"), c.load("base")[torch.from_numpy(idx)])
    assert not any(p.name == "shard-00003.safetensors" for p in out.iterdir())


def test_refuses_another_vae_and_foreign_classes(assets):
    c = LatentCache(assets["cache"])
    c.check_vae(assets["vae"])
    with pytest.raises(MsfError, match="made with another VAE"):
        c.check_vae(assets["vae_other"])
    c.check_classes(20, "tiny/scale0")
    with pytest.raises(MsfError, match="class id 30, outside preset tiny/scale0's 20 classes"):
        LatentCache(assets["cache_wide"]).check_classes(20, "tiny/scale0")


def test_image_folder_cache_skips_and_counts_unreadable_files(assets, tmp_path):
    root = tmp_path / "imgs"
    for k, name in enumerate(["cat", "dog"]):
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(data.render(k, i, 0, 80)).save(root / name / f"{i}.png")
    (root / "dog" / "bad.jpg").write_bytes(b"not an image at all")
    (root / "dog" / "truncated.png").write_bytes((root / "dog" / "0.png").read_bytes()[:60])
    idx = build_cache(assets["vae"], str(root), tmp_path / "c", scales=(4, 8), batch=4, workers=0, device="cpu",
                      show_progress=False, log=quiet)
    assert idx["count"] == 6 and idx["skipped"] == 2
    assert idx["labels"] == [0, 0, 0, 1, 1, 1] and idx["data"]["class_names"] == ["cat", "dog"]
    assert sorted(p.split("/")[-1] for p in idx["skipped_examples"]) == ["bad.jpg", "truncated.png"]


def test_bad_inputs(assets, tmp_path):
    with pytest.raises(MsfError, match="data folder not found"):
        build_cache(assets["vae"], str(tmp_path / "none"), tmp_path / "c", scales=(4, 8), device="cpu", log=quiet)
    with pytest.raises(MsfError, match="not a latent cache"):
        (tmp_path / "x").mkdir()
        (tmp_path / "x" / "index.json").write_text(json.dumps({"kind": "other"}))
        LatentCache(tmp_path / "x")
    with pytest.raises(MsfError, match="latent cache not found"):
        LatentCache(tmp_path / "nothing")
    for bad in ("16,12", "a,b", ""):
        with pytest.raises(MsfError):
            parse_scales(bad)
    assert parse_scales("24,32") == (24, 32) and parse_scales("12, 14, 16") == (12, 16)


def test_damaged_shard_is_an_error_not_a_crash(assets, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(assets["cache"], copy)
    shard = copy / "shard-00000.safetensors"
    shard.write_bytes(shard.read_bytes()[:500])
    with pytest.raises(MsfError, match="cannot read cache shard"):
        LatentCache(copy).shards
    with pytest.raises(MsfError):
        mmap_safetensors(tmp_path / "missing.safetensors")
