"""Rectified flow: time direction, Eq. 5 loss, Euler/Heun, CFG (Eq. 7)."""
import pytest
import torch

from msf_train import flow
from msf_train.config import get_preset
from msf_train.model import build_model


def test_time_direction_zero_is_noise_one_is_data(gen):
    x, z0 = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
    assert torch.equal(flow.interpolate(x, z0, torch.zeros(2)), z0)
    assert torch.equal(flow.interpolate(x, z0, torch.ones(2)), x)
    ts = flow.time_grid(10)
    assert ts[0] == 0 and ts[-1] == 1 and torch.all(ts[1:] > ts[:-1])


def test_timestep_shift_keeps_ends_and_moves_steps_toward_noise():
    plain, shifted = flow.time_grid(10), flow.time_grid(10, shift=3.0)
    assert shifted[0] == 0 and shifted[-1] == 1
    assert torch.all(shifted[1:-1] < plain[1:-1])


def _exact_velocity(target, z0):
    """The straight-line field toward `target` from `z0`: v(z, t) = (target - z) / (1 - t)."""
    def v(x, t, **_):
        t = t.view(-1, 1, 1, 1)
        return (target - x) / (1 - t).clamp_min(1e-8)
    return v


@pytest.mark.parametrize("sampler", ["euler", "heun"])
@pytest.mark.parametrize("steps", [1, 7, 50])
def test_samplers_land_on_target_with_exact_field(sampler, steps, gen):
    target, z0 = torch.randn(3, 4, 8, 8, generator=gen), torch.randn(3, 4, 8, 8, generator=gen)
    if sampler == "heun" and steps >= 1:
        # Heun evaluates at t=1 where (target - x)/(1-t) is singular; use the constant field x - z0 instead.
        field = lambda x, t: target - z0
    else:
        field = _exact_velocity(target, z0)
    out = flow.SAMPLERS[sampler](field, z0.clone(), flow.time_grid(steps))
    torch.testing.assert_close(out, target, atol=1e-5, rtol=1e-5)


def test_heun_is_second_order_where_euler_is_first(gen):
    # dz/dt = t  from z(0)=0 gives z(1) = 1/2; Euler with n steps errs by 1/(2n), Heun is exact.
    z = torch.zeros(1, 1, 1, 1)
    field = lambda x, t: t.view(-1, 1, 1, 1).expand_as(x)
    e = flow.sample_euler(field, z, flow.time_grid(4))
    h = flow.sample_heun(field, z, flow.time_grid(4))
    assert abs(e.item() - 0.5) == pytest.approx(1 / 8, abs=1e-6)
    assert abs(h.item() - 0.5) < 1e-6


def test_flow_loss_is_zero_for_the_true_velocity_and_positive_otherwise(gen):
    x = torch.randn(4, 4, 8, 8, generator=gen)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    z0 = torch.randn(x.shape, generator=g1)

    def oracle(z_t, t, y, prior=None):  # knows z0: the target velocity is x - z0
        return x - z0

    assert flow.flow_loss(oracle, x, torch.zeros(4, dtype=torch.long), generator=g2).item() < 1e-10
    zero = lambda z_t, t, y, prior=None: torch.zeros_like(z_t)
    assert flow.flow_loss(zero, x, torch.zeros(4, dtype=torch.long), generator=gen).item() > 0.5


def test_logit_normal_times_are_in_open_interval(gen):
    t = flow.sample_time(10000, "logit_normal", generator=gen)
    assert t.min() > 0 and t.max() < 1 and abs(t.mean().item() - 0.5) < 0.02
    with pytest.raises(ValueError):
        flow.sample_time(3, "cosine")


def test_label_dropout_uses_null_class(gen):
    y = torch.zeros(10000, dtype=torch.long)
    d = flow.drop_labels(y, 0.1, null_class=1000, generator=gen)
    assert set(d.unique().tolist()) == {0, 1000}
    assert abs((d == 1000).float().mean().item() - 0.1) < 0.01


class Counting(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls, self.batches = inner, 0, []

    def forward(self, x, t, y, prior=None):
        self.calls += 1
        self.batches.append(x.shape[0])
        return self.inner(x, t, y, prior)


def _model(name):
    torch.manual_seed(0)
    m = build_model(get_preset(name))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.eval()


def test_cfg_at_one_is_one_plain_forward(gen):
    cfg = get_preset("tiny/scale1")
    m = Counting(_model("tiny/scale1"))
    x, p = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
    flow.guided(m, 1.0, cfg.null_class)(x, torch.rand(2), torch.tensor([1, 2]), p)
    assert m.calls == 1 and m.batches == [2]


def test_cfg_matches_eq7_on_all_channels(gen):
    cfg = get_preset("tiny/scale1")
    inner = _model("tiny/scale1")
    m = Counting(inner)
    x, p, t = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen), torch.rand(2)
    y = torch.tensor([3, 5])
    w = 1.4
    with torch.no_grad():
        out = flow.guided(m, w, cfg.null_class)(x, t, y, p)
        vc = inner(x, t, y, p)
        vu = inner(x, t, torch.full_like(y, cfg.null_class), p)
    assert m.calls == 1 and m.batches == [4]  # one doubled batch
    torch.testing.assert_close(out, vu + w * (vc - vu), atol=1e-5, rtol=1e-5)
    assert (vc - vu).abs().amax(dim=(0, 2, 3)).min() > 0  # every channel is guided
