"""msf-eval end to end on tiny models: train a few steps, sample through the runtime, score."""
import numpy as np
import pytest
import torch

from _msf_tiny import assert_one_line_error, run_cli, tiny_assets
from msf_eval.classifier import (ShapesClassifier, accuracy, attributes_of, class_of, load_classifier,
                                 train_classifier)
from msf_eval.cli import parse_class_spec
from msf_eval.evaluate import evaluate, sampling_macs, to_uint8
from msf_eval.features import EFFNET_LABEL, frechet_distance
from msf_train.config import get_preset
from msf_train.errors import MsfError


def test_attributes_round_trip_all_classes():
    y = torch.arange(1000)
    a = attributes_of(y)
    assert torch.equal(class_of(a), y)
    assert a[330].tolist() == [0, 3, 3]  # shape 330 % 10, palette (330 // 10) % 10, texture 330 // 100


def test_accuracy_counts_each_attribute_and_the_whole_class():
    y = torch.tensor([330, 331])
    pred = attributes_of(torch.tensor([330, 330]))  # second one: shape wrong, palette and texture right
    acc = accuracy(pred, y)
    assert acc == {"shape": 0.5, "palette": 1.0, "texture": 1.0, "class": 0.5}


def test_class_spec_parsing():
    assert parse_class_spec("0-9:5,330") == [0, 5, 330]
    with pytest.raises(MsfError):
        parse_class_spec(",")


def test_fid_effnet_is_zero_for_identical_sets_and_grows_with_difference():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, (12, 3, 64, 64), dtype=torch.uint8, generator=g)
    same, label = frechet_distance(a, a.clone())
    assert label == EFFNET_LABEL == "FID-EffNet"
    assert abs(same) < 1e-3
    shifted = (a.int() // 4).to(torch.uint8)  # much darker images
    assert frechet_distance(a, shifted)[0] > 1.0


def test_sampling_macs_counts_cfg_as_two_forwards():
    s0, s1 = get_preset("demo/scale0"), get_preset("demo/scale1")
    from msf_train.model import count_macs

    assert sampling_macs([s0, s1], [100, 50], [1.4, 1.0]) == 200 * count_macs(s0) + 50 * count_macs(s1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny MSF cascade trained a few steps on a shapes cache, and a tiny classifier."""
    from msf_train.assemble import assemble_cascade
    from msf_train.train import TrainOptions, train

    assets = tiny_assets(tmp_path_factory)
    root = tmp_path_factory.mktemp("eval")
    quiet = lambda *a, **k: None  # noqa: E731
    for stage in ("scale0", "scale1"):
        train(TrainOptions(stage=stage, preset=f"tiny/{stage}", cache=str(assets["cache"]), out=str(root / stage), steps=3,
                           batch=8, save_every=3, log_every=1, device="cpu", progress=False), log=quiet)
    assemble_cascade(root / "msf", [root / "scale0", root / "scale1"], assets["vae"])
    train_classifier(root / "clf", size=64, steps=2, batch=8, holdout=20, log=quiet)
    return root


def test_evaluate_tiny_cascade_end_to_end(trained, tmp_path):
    npz = tmp_path / "samples.npz"
    r = evaluate(trained / "msf", [0, 5, 11], 3, classifier_dir=trained / "clf", steps=[3, 2], cfg=[1.4, 1.0],
                 batch=4, npz=npz, progress=False)
    assert r["images"] == 9 and r["fid_label"] == "FID-EffNet" and np.isfinite(r["FID-EffNet"])
    assert set(r["accuracy"]) == {"shape", "palette", "texture", "class"}
    assert r["sampling_gmacs_per_image"] > 0
    data = np.load(npz)
    assert data["arr_0"].dtype == np.uint8 and data["arr_0"].shape == (9, 64, 64, 3)  # ADM layout: NHWC
    assert data["arr_1"].tolist() == [0, 0, 0, 5, 5, 5, 11, 11, 11]
    # the same seed gives the same samples
    again = evaluate(trained / "msf", [0, 5, 11], 3, classifier_dir=trained / "clf", steps=[3, 2], cfg=[1.4, 1.0],
                     batch=4, npz=tmp_path / "again.npz", progress=False)
    assert np.array_equal(np.load(tmp_path / "again.npz")["arr_0"], data["arr_0"])
    assert again["FID-EffNet"] == pytest.approx(r["FID-EffNet"])


def test_classifier_round_trips_through_disk(trained):
    model, meta = load_classifier(trained / "clf")
    assert isinstance(model, ShapesClassifier) and meta["steps"] == 2
    assert set(meta["holdout_accuracy"]) == {"shape", "palette", "texture", "class"}
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    assert model.predict(x).shape == (2, 3)


def test_to_uint8_rounds_like_png():
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0]).view(1, 1, 2, 2).expand(1, 3, 2, 2)
    assert to_uint8(x)[0, 0].flatten().tolist() == [0, 128, 255, 255]


def test_cli_bad_input_is_one_line(trained, tmp_path):
    r = run_cli("run", "--model", tmp_path / "nope", "--classifier", trained / "clf", module="msf_eval.cli")
    assert_one_line_error(r, "nope")
    r = run_cli("run", "--model", trained / "msf", "--classifier", tmp_path / "noclf", module="msf_eval.cli")
    assert_one_line_error(r, "no shapes classifier")
    r = run_cli("run", "--model", trained / "msf", "--classifier", trained / "clf", "--classes", "0,25",
                "--per-class", "1", module="msf_eval.cli")
    assert_one_line_error(r, "25")
