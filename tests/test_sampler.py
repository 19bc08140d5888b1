"""Algorithm 3 (runtime.sampler) against the training maths: engines that know the answer must make
the sampler reproduce what Algorithms 1-2 define, call counts must follow the plan, and noise must
be per image."""
import pytest
import torch

from msf_train import factorize
from msf_train.config import get_preset
from msf_train.errors import MsfError
from msf_train.model import build_model, export_contract
from runtime.cascade import random_model_state
from runtime.engines import Engine, TorchDenoiser
from runtime.sampler import Clock, make_noise, make_plan, sample

S0, S1 = get_preset("tiny/scale0"), get_preset("tiny/scale1")
SIZES = S0.scale_sizes  # (4, 8)


def _repeat(target, batch):
    """CFG runs a doubled batch (cond, uncond): repeat the per-image target to match."""
    return target.repeat(batch // target.shape[0], 1, 1, 1)


class TargetVelocity(Engine):
    """The exact rectified-flow velocity toward a known target: v = (target - x) / (1 - t).

    On the straight path z_t = t * target + (1 - t) * z_0 this is target - z_0, so Euler lands on
    the target exactly. It ignores the class, so CFG (cond == uncond) must not change anything.
    """

    kind, backend = "denoiser", "oracle"

    def __init__(self, cfg, target):
        self.inputs, self.outputs = export_contract(cfg)
        self.target, self.calls = target, []

    def run(self, feeds):
        self.calls.append({k: v.clone() for k, v in feeds.items()})
        x, t = feeds["x"], feeds["t"]
        # Heun evaluates at t = 1, where 1 - t = 0: keep the velocity finite there (the sampler refuses
        # non-finite stage outputs); Euler never evaluates at t = 1, so its result stays exact.
        return {"v": (_repeat(self.target, x.shape[0]) - x) / (1 - t).clamp_min(1e-3).view(-1, 1, 1, 1)}


class StraightVelocity(Engine):
    """Knows the starting noise z_0 too: v = target - z_0, constant in t, so any solver (Heun
    included, which evaluates at t = 1) is exact, and only if the sampler used exactly z_0."""

    kind, backend = "denoiser", "oracle"

    def __init__(self, cfg, target, z0):
        self.inputs, self.outputs = export_contract(cfg)
        self.target, self.z0, self.calls = target, z0, 0

    def run(self, feeds):
        self.calls += 1
        return {"v": _repeat(self.target - self.z0, feeds["x"].shape[0])}


def _targets(batch=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    full = torch.randn(batch, 4, SIZES[-1], SIZES[-1], generator=g)  # E(I_h)
    base = torch.randn(batch, 4, SIZES[0], SIZES[0], generator=g)  # E(I_l)
    return full, factorize.residual_targets(full, base, SIZES)  # Algorithm 1


@pytest.mark.parametrize("cfg_scales", [(1.0, 1.0), (1.4, 1.0), (2.0, 3.0)])
def test_exact_velocity_engines_reproduce_algorithms_1_and_2(cfg_scales):
    full, R = _targets()
    s1 = S1.replace(residual_scale=0.25)  # the model learns target / residual_scale; the sampler undoes it
    e0, e1 = TargetVelocity(S0, R[0]), TargetVelocity(s1, R[1] / 0.25)
    plan = make_plan([S0, s1], [7, 5], list(cfg_scales))
    out = sample([(S0, e0), (s1, e1)], None, [1, 2, 3], seeds=11, plan=plan)
    expected = sum(factorize.up(r, SIZES[-1]) for r in R)  # Algorithm 2's accumulation of Algorithm 1's targets
    torch.testing.assert_close(out.latent, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.latent, full, atol=1e-5, rtol=1e-5)
    # scale 1 was conditioned on exactly Algorithm 2's prior, at every step, and scale 0 on none
    prior = factorize.priors(R, SIZES)[0]
    assert all("prior" not in c for c in e0.calls)
    for c in e1.calls:
        torch.testing.assert_close(c["prior"][:3], prior, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_stage_noise_is_the_seeded_per_image_noise(solver):
    full, R = _targets(batch=2)
    z = make_noise([S0, S1], [40, 41])
    stages = [(S0, StraightVelocity(S0, R[0], z[0])), (S1, StraightVelocity(S1, R[1], z[1]))]
    out = sample(stages, None, [0, 5], seeds=40, plan=make_plan([S0, S1], [3, 2], [1.0, 1.0], solver))
    torch.testing.assert_close(out.latent, full, atol=1e-5, rtol=1e-5)
    other = sample(stages, None, [0, 5], seeds=41, plan=make_plan([S0, S1], [3, 2], [1.0, 1.0], solver))
    assert (other.latent - full).abs().max() > 0.1  # another seed, another noise


def test_noise_depends_only_on_each_images_seed():
    a = make_noise([S0, S1], [5, 6, 7])
    b = make_noise([S0, S1], [6])
    for i in range(2):
        assert torch.equal(a[i][1], b[i][0])
        assert not torch.equal(a[i][0], a[i][1])
    assert not torch.equal(a[0][0].flatten()[:16], a[1][0].flatten()[:16])  # stages draw different noise


@pytest.mark.parametrize("solver,cfg_scales,calls,batch_seen", [
    ("euler", (1.0, 1.0), (6, 4), (2, 2)),  # w = 1: one forward per step, no doubled batch
    ("euler", (1.5, 1.0), (6, 4), (4, 2)),  # w != 1: one call on a doubled batch
    ("heun", (1.5, 2.0), (12, 8), (4, 4)),  # Heun: two calls per step
])
def test_engine_calls_follow_the_plan(solver, cfg_scales, calls, batch_seen):
    _, R = _targets(batch=2)
    e0, e1 = TargetVelocity(S0, R[0]), TargetVelocity(S1, R[1])
    plan = make_plan([S0, S1], [6, 4], list(cfg_scales), solver)
    out = sample([(S0, e0), (S1, e1)], None, [3, 4], plan=plan)
    assert (len(e0.calls), len(e1.calls)) == calls
    assert (e0.calls[0]["x"].shape[0], e1.calls[0]["x"].shape[0]) == batch_seen
    if cfg_scales[0] != 1.0:  # the second half of a guided call is the null class
        assert e0.calls[0]["y"].tolist() == [3, 4, S0.null_class, S0.null_class]
    assert [r.name for r in out.timings] == ["scale 0", "scale 1"]
    assert [r.calls for r in out.timings] == list(calls)
    assert all(0 <= r.engine_s <= r.wall_s for r in out.timings)
    assert out.total_s >= sum(r.wall_s for r in out.timings)


def _torch_stages(presets=("tiny/scale0", "tiny/scale1")):
    stages = []
    for i, name in enumerate(presets):
        cfg = get_preset(name)
        model = build_model(cfg)
        model.load_state_dict(random_model_state(cfg, seed=i))
        stages.append((cfg, TorchDenoiser(model)))
    return stages


def test_batch_composition_does_not_change_an_image():
    stages = _torch_stages()
    plan = make_plan([c for c, _ in stages], [4, 3], [1.4, 1.0])
    alone = sample(stages, None, [3], seeds=[7], plan=plan)
    mixed = sample(stages, None, [1, 3, 9], seeds=6, plan=plan)  # image 1 gets seed 6 + 1 = 7
    torch.testing.assert_close(mixed.latent[1:2], alone.latent, atol=1e-5, rtol=1e-5)
    assert (mixed.latent[0] - alone.latent[0]).abs().max() > 1e-3


def test_one_stage_dit_is_a_cascade_of_one():
    stages = _torch_stages(("tiny/dit",))
    out = sample(stages, None, [0, 1], seeds=0, plan=make_plan([stages[0][0]], [3], [1.5]))
    assert out.latent.shape == (2, 4, 8, 8) and torch.isfinite(out.latent).all()
    assert make_plan([stages[0][0]]).steps == (100,) and make_plan([stages[0][0]]).cfg == (1.5,)
    assert make_plan([S0, S1]).steps == (100, 50) and make_plan([S0, S1]).cfg == (1.4, 1.0)


@pytest.mark.parametrize("steps,cfg,match", [
    ([0, 5], [1.0, 1.0], "steps must be"),
    ([5], [1.0, 1.0], "--steps has 1 value"),
    ([5, 5, 5], [1.0, 1.0], "--steps has 3 value"),
    ([5, 5], [1.4], "--cfg has 1 value"),
    ([5, 5], [1.4, -1.0], "CFG scales must be"),
])
def test_bad_plans_are_msf_errors(steps, cfg, match):
    with pytest.raises(MsfError, match=match):
        make_plan([S0, S1], steps, cfg)


@pytest.mark.parametrize("classes,match", [([20], "out of range"), ([0, -1], "negative")])
def test_bad_class_ids_are_msf_errors(classes, match):
    _, R = _targets(batch=1)
    stages = [(S0, TargetVelocity(S0, R[0])), (S1, TargetVelocity(S1, R[1]))]
    with pytest.raises(MsfError, match=match):
        sample(stages, None, classes, plan=make_plan([S0, S1], [2, 2], [1.0, 1.0]))


def test_clock_attributes_engine_time_to_the_open_stage():
    _, R = _targets(batch=1)
    clock = Clock()
    e = TargetVelocity(S0, R[0])
    feeds = {"x": torch.zeros(1, 4, 4, 4), "t": torch.zeros(1), "y": torch.zeros(1, dtype=torch.long)}
    clock.call(e, feeds)  # outside a stage: not attributed
    with clock.stage("a"):
        clock.call(e, feeds)
        clock.call(e, feeds)
    with clock.stage("a"):  # re-entering a stage adds to it
        clock.call(e, feeds)
    assert [(r.name, r.calls) for r in clock.records] == [("a", 3)]
