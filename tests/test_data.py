"""The shapes dataset (DESIGN.md section 4) and ImageNet-style folders."""
import numpy as np
import pytest
import torch
from PIL import Image

from msf_train import data
from msf_train.data import PALETTES, SHAPES, TEXTURES, ImageFolder, ShapesDataset, attributes, parse_classes, render
from msf_train.errors import MsfError


def test_tables_and_attribute_mapping():
    assert len(SHAPES) == len(PALETTES) == len(TEXTURES) == 10
    assert attributes(0) == (0, 0, 0)
    assert attributes(330) == (0, 3, 3)
    assert attributes(999) == (9, 9, 9)
    assert attributes(417) == (7, 1, 4)
    assert {attributes(c) for c in range(1000)} == {(s, p, t) for s in range(10) for p in range(10) for t in range(10)}
    with pytest.raises(MsfError):
        attributes(1000)


def test_palettes_are_well_separated():
    bg = np.array([p[2] for p in PALETTES], float)
    fg = np.array([p[1] for p in PALETTES], float)
    d = np.sqrt(((bg[:, None] - bg[None]) ** 2).sum(-1)) + np.eye(10) * 1e9
    assert d.min() > 50  # every background differs from every other
    assert np.sqrt(((fg - bg) ** 2).sum(-1)).min() > 150  # each shape stands out on its background


def test_same_inputs_render_same_bytes_and_others_differ():
    a = render(417, 3, seed=7, size=64)
    assert a.dtype == np.uint8 and a.shape == (64, 64, 3)
    assert a.tobytes() == render(417, 3, seed=7, size=64).tobytes()
    assert a.tobytes() != render(417, 4, seed=7, size=64).tobytes()
    assert a.tobytes() != render(417, 3, seed=8, size=64).tobytes()


@pytest.mark.parametrize("size", [32, 128])
def test_all_classes_render_with_their_palette_background(size):
    for c in range(1000):
        img = render(c, c % 7, seed=0, size=size)
        assert img.shape == (size, size, 3) and img.dtype == np.uint8
        bg = np.array(PALETTES[attributes(c)[1]][2], np.uint8)
        corners = img[[0, 0, -1, -1], [0, -1, 0, -1]]  # the shape never reaches a corner
        assert (corners == bg).all(), (c, corners, bg)
        assert (img != bg).any(axis=-1).mean() > 0.01, c  # and a shape is drawn


def test_flat_classes_use_the_palette_foreground():
    for c in range(0, 100, 3):  # texture 0 = flat
        img = render(c, 1, 0, 128).reshape(-1, 3)
        fg = np.array(PALETTES[attributes(c)[1]][1], np.uint8)
        assert (img == fg).all(axis=1).sum() > 20, c


def test_geometry_does_not_depend_on_size():
    """One (class, index, seed) is the same picture at every size: the 128 px render downsampled
    to 64 px is close to the 64 px render."""
    big = np.asarray(Image.fromarray(render(5, 2, 0, 128)).resize((64, 64), Image.BOX)).astype(float)
    small = render(5, 2, 0, 64).astype(float)
    assert np.abs(big - small).mean() < 6


def test_textures_live_in_high_frequencies():
    """Averaged over an 8 x 8 pixel cell (one latent cell of an f8 VAE at 128 px), every texture
    keeps under a fifth of its variance: textures are detail, not layout."""
    p = (np.arange(128, dtype=np.float32) + 0.5) / 128
    for t in range(1, len(TEXTURES)):
        T = np.broadcast_to(data._texture(t, p[None, :], p[:, None], np.random.default_rng(0)), (128, 128))
        cells = T.reshape(16, 8, 16, 8).mean(axis=(1, 3))
        assert T.var() > 0.02, TEXTURES[t]
        assert cells.var() < 0.2 * T.var(), TEXTURES[t]


def test_parse_classes():
    assert parse_classes("3") == [0, 1, 2]
    assert parse_classes("0,5,10-12") == [0, 5, 10, 11, 12]
    assert parse_classes(None) == list(range(1000))
    for bad in ("0,1000", "x", "0"):
        with pytest.raises(MsfError):
            parse_classes(bad)


def test_shapes_dataset_pairs():
    ds = ShapesDataset([3, 17], per_class=2, seed=1, full_size=64, base_size=32)
    assert len(ds) == 4 and ds.labels == [3, 3, 17, 17]
    full, base, y, ok = ds[3]
    assert ok and y == 17 and full.shape == (3, 64, 64) and base.shape == (3, 32, 32) and full.dtype == torch.uint8
    assert torch.equal(full, torch.from_numpy(render(17, 1, 1, 64)).permute(2, 0, 1))
    expect = data.resize_uint8(render(17, 1, 1, 64), 32)  # base = the full image resized
    assert torch.equal(base, torch.from_numpy(expect).permute(2, 0, 1))


def test_shapes_stream_crops_and_labels():
    stream = iter(data.ShapesStream([5, 6], size=64, seed=0, batch=3, crop=32))
    x, y = next(stream)
    assert x.shape == (3, 3, 32, 32) and x.dtype == torch.uint8 and set(y.tolist()) <= {5, 6}
    x2, _ = next(stream)
    assert not torch.equal(x, x2)


def _folder(tmp_path, bad=False):
    root = tmp_path / "imgs"
    for name, colour in (("b_class", (200, 10, 10)), ("a_class", (10, 200, 10))):
        (root / name).mkdir(parents=True)
        Image.new("RGB", (90, 60), colour).save(root / name / "one.png")
        Image.new("L", (40, 70), 128).save(root / name / "two.jpg")
    (root / "a_class" / "notes.txt").write_text("not an image")
    if bad:
        (root / "b_class" / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    return root


def test_image_folder_layout_resize_and_crop(tmp_path):
    ds = ImageFolder(_folder(tmp_path), full_size=32, base_size=16)
    assert ds.class_names == ["a_class", "b_class"]  # sorted names -> ids
    assert ds.labels == [0, 0, 1, 1] and len(ds) == 4
    full, base, y, ok = ds[0]
    assert ok and full.shape == (3, 32, 32) and base.shape == (3, 16, 16)
    assert full[:, 16, 16].tolist() == [10, 200, 10]
    assert ds[1][0].shape == (3, 32, 32)  # greyscale, portrait: converted and centre-cropped


def test_image_folder_unreadable_files_are_marked_not_raised(tmp_path):
    ds = ImageFolder(_folder(tmp_path, bad=True), full_size=32)
    flags = [ds[i][3] for i in range(len(ds))]
    assert flags.count(False) == 1 and len(flags) == 5


def test_image_folder_missing_or_empty(tmp_path):
    with pytest.raises(MsfError, match="not found"):
        ImageFolder(tmp_path / "nope", 32)
    with pytest.raises(MsfError, match="no class sub-folders"):
        ImageFolder(tmp_path, 32)
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "readme.txt").write_text("x")
    with pytest.raises(MsfError, match="no image files"):
        ImageFolder(tmp_path, 32)
