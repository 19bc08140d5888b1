"""Algorithms 1-2 and the Algorithm 3 accumulation; the Up/Down convention."""
import pytest
import torch
import torch.nn.functional as F

from msf_train import factorize as fz


@pytest.mark.parametrize("sizes", [(24, 32), (12, 16), (8, 16, 32)])
def test_algorithm1_residuals_sum_back_to_full_latent(sizes, gen):
    full = torch.randn(2, 4, sizes[-1], sizes[-1], generator=gen)
    base = torch.randn(2, 4, sizes[0], sizes[0], generator=gen)
    R = fz.residual_targets(full, base, sizes)
    assert [r.shape[-1] for r in R] == list(sizes)
    assert R[0] is base
    recon = sum(fz.up(r, sizes[-1]) for r in R)
    torch.testing.assert_close(recon, full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("sizes", [(24, 32), (8, 16, 32)])
def test_algorithm2_priors_equal_algorithm3_accumulation(sizes, gen):
    full = torch.randn(1, 4, sizes[-1], sizes[-1], generator=gen)
    base = torch.randn(1, 4, sizes[0], sizes[0], generator=gen)
    R = fz.residual_targets(full, base, sizes)
    P = fz.priors(R, sizes)
    # Algorithm 3 fed the true residuals: acc += Up(f_i); prior_{i+1} = Down(acc)
    acc = None
    for i, f_i in enumerate(R):
        acc = fz.accumulate(acc, f_i, sizes[-1])
        if i < len(sizes) - 1:
            torch.testing.assert_close(fz.down(acc, sizes[i + 1]), P[i], atol=0, rtol=0)
    torch.testing.assert_close(acc, full, atol=1e-5, rtol=0)


def test_up_down_convention_is_bilinear_no_antialias_no_align_corners(gen):
    assert (fz.RESIZE_MODE, fz.ALIGN_CORNERS, fz.ANTIALIAS) == ("bilinear", False, False)
    x = torch.randn(1, 4, 12, 12, generator=gen)
    ref = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False, antialias=False)
    assert torch.equal(fz.up(x, 16), ref)
    y = torch.randn(1, 4, 32, 32, generator=gen)
    ref = F.interpolate(y, size=(24, 24), mode="bilinear", align_corners=False, antialias=False)
    assert torch.equal(fz.down(y, 24), ref)
    assert fz.down(y, 32) is y  # same size is the identity


def test_up_of_constant_is_constant_and_down_preserves_mean():
    c = torch.full((1, 4, 12, 12), 0.7)
    torch.testing.assert_close(fz.up(c, 16), torch.full((1, 4, 16, 16), 0.7))
    ramp = torch.arange(32.0).repeat(32, 1)[None, None]
    assert abs(fz.down(ramp, 16).mean().item() - ramp.mean().item()) < 1e-4


def test_up_and_down_refuse_the_wrong_direction():
    with pytest.raises(AssertionError):
        fz.up(torch.zeros(1, 4, 16, 16), 12)
    with pytest.raises(AssertionError):
        fz.down(torch.zeros(1, 4, 12, 12), 16)
