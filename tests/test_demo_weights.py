"""The shipped demo weights (runtime/weights, msf_eval/weights) load and sample deterministically."""
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
MSF, DIT = ROOT / "runtime" / "weights" / "demo-msf", ROOT / "runtime" / "weights" / "demo-dit"
CLASSIFIER = ROOT / "msf_eval" / "weights" / "shapes-classifier"
# Of 20 classes asked for, how many palettes, shapes and textures the shipped MSF demo must draw at its
# own plan (cascade.json "sampling": 50 + 15 steps, CFG 3 / 2, msf-run's default since 2026-12-07). The
# shipped weights draw 20, 15 and 14 there on the development CPU (run 19's denoisers decoded by the
# 16-channel VAE's third decoder fine-tune; 20 / 14 / 14 through the second; run 18 drew 20 / 15 / 14,
# run 17 20 / 17 / 14 there, and 20 / 16 / 12 at 50 + 25 steps and CFG 1.4 / 1, the plan pinned before;
# earlier counts are in docs/RESULTS.md, "Reading", and this file's history). Each floor is about 80% of
# what the runs draw:
# 20 images move a count by +-2 from run to run, and the margin covers other CPUs' float rounding.
# Chance is 2 of 20 for shape and texture.
PALETTE_HITS_MIN = 16  # of 20; the 1000-class figure is 100.0%
SHAPE_HITS_MIN = 13  # of 20; the 1000-class figure is 87.0% (the run-3 weights drew 1 here)
TEXTURE_HITS_MIN = 11  # of 20; the 1000-class figure is 69.1% (the 4-channel VAE's run 8: 16.5%)


@pytest.mark.parametrize("folder, presets", [(MSF, ["demo/scale0", "demo/scale1"]), (DIT, ["demo/dit"])])
def test_shipped_cascade_loads_and_samples_deterministically(folder, presets):
    from runtime.engines import load_cascade
    from runtime.sampler import make_plan, sample

    stages, decoder = load_cascade(folder, "torch", "cpu")
    assert [c.name for c, _ in stages] == presets
    plan = make_plan([c for c, _ in stages], [4] * len(stages))
    a = sample(stages, decoder, [330, 7], 0, plan, timed=False).image
    b = sample(stages, decoder, [330, 7], 0, plan, timed=False).image
    assert a.shape == (2, 3, 128, 128)
    assert torch.equal(a, b)
    c = sample(stages, decoder, [330, 7], 1, plan, timed=False).image
    assert not torch.equal(a, c)


def test_default_msf_run_model_is_the_shipped_demo():
    from runtime.cli import DEMO_MODEL

    assert DEMO_MODEL.resolve() == MSF.resolve() and (MSF / "cascade.json").is_file()


def test_shipped_classifier_is_an_instrument_to_trust():
    """Its record meets the goals of the demo issue (palette 99%, shape 97%, texture 95%), and it
    really classifies renders it never saw (render seed 5; training used 0, the record's set 1)."""
    from msf_eval.classifier import _render_batch, accuracy, load_classifier

    model, meta = load_classifier(CLASSIFIER)
    rec = meta["holdout_accuracy"]
    assert rec["palette"] >= 0.99 and rec["shape"] >= 0.97 and rec["texture"] >= 0.95, rec
    y = torch.arange(0, 1000, 7)  # 143 classes: every shape, palette and texture
    acc = accuracy(model.predict(_render_batch(y, torch.arange(len(y)), 5, meta["size"])), y)
    assert acc["class"] >= 0.95, acc


def test_shipped_demo_draws_the_palette_and_some_shapes_and_textures_it_is_asked_for():
    """The demo issue's promise, measured with its instrument: for twenty classes (class 111 k: shape,
    palette and texture k; then shape k with palette k + 3 and texture k + 5), the shapes classifier
    reads the asked palette, shape and texture in the shipped MSF demo's samples (msf-run's seeds and
    plan: the cascade's own, 50 + 15 steps at CFG 3 / 2). docs/RESULTS.md has the 1000-class figures; this pins that the shipped weights
    keep drawing the class's colours and far more shapes and textures than chance (2 of 20 expected
    for each; what each run drew is noted at the thresholds above)."""
    from msf_eval.classifier import attributes_of, load_classifier
    from msf_eval.evaluate import to_uint8
    from runtime.pipeline import Pipeline

    classes = [111 * k for k in range(10)] + [k + 10 * ((k + 3) % 10) + 100 * ((k + 5) % 10) for k in range(10)]
    pipe = Pipeline.load(MSF, device="cpu")
    images = to_uint8(pipe.generate(classes, seed=0, plan=pipe.plan()).image)
    clf, _ = load_classifier(CLASSIFIER)
    hits = (clf.predict(images) == attributes_of(torch.tensor(classes))).sum(0)  # shape, palette, texture
    assert hits[1].item() >= PALETTE_HITS_MIN, f"{hits[1].item()}/20 palettes drawn"
    assert hits[0].item() >= SHAPE_HITS_MIN, f"{hits[0].item()}/20 shapes drawn"
    assert hits[2].item() >= TEXTURE_HITS_MIN, f"{hits[2].item()}/20 textures drawn"
