"""Multi-scale latent factorization: the one Up/Down pair, Algorithms 1 and 2, and the Algorithm 3
accumulation step (shared by training, the runtime, the exporter and the benchmarks).

Convention (DESIGN.md section 2, pinned by tests): both Up and Down are bilinear interpolation with
``align_corners=False`` and ``antialias=False``. No antialiasing because ONNX/TensorRT resize ops
export it unevenly and the ratios used here (24 -> 32, 32 -> 24, 12 <-> 16) are mild. Resizing to
the same size is the identity, so the last Down of Algorithm 1 (to full size) is exact.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

RESIZE_MODE = "bilinear"
ALIGN_CORNERS = False
ANTIALIAS = False


def _size(size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)


def resize(x: torch.Tensor, size) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, *size) with the project's single resampling convention."""
    size = _size(size)
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode=RESIZE_MODE, align_corners=ALIGN_CORNERS, antialias=ANTIALIAS)


def up(x: torch.Tensor, size) -> torch.Tensor:
    """Up(f, h, w): to a larger (or equal) size."""
    assert x.shape[-1] <= _size(size)[-1], "up() must not shrink"
    return resize(x, size)


def down(x: torch.Tensor, size) -> torch.Tensor:
    """Down(f, h, w): to a smaller (or equal) size."""
    assert x.shape[-1] >= _size(size)[-1], "down() must not grow"
    return resize(x, size)


def residual_targets(full: torch.Tensor, base: torch.Tensor, sizes) -> list[torch.Tensor]:
    """Algorithm 1: the per-scale targets R = [f_0, f_1, ..., f_N].

    ``full`` = E(I_h) at h_N, ``base`` = E(I_l) at h_0, ``sizes`` = [h_0, ..., h_N]. Because the last
    Down is to full size, ``sum_i Up(R_i, h_N) == full`` exactly (up to float rounding).
    """
    sizes = list(sizes)
    assert base.shape[-1] == _size(sizes[0])[-1] and full.shape[-1] == _size(sizes[-1])[-1]
    R = [base]
    f = full
    for i in range(len(sizes) - 1):
        f = f - up(R[i], sizes[-1])
        R.append(down(f, sizes[i + 1]))
    return R


def accumulate(acc: torch.Tensor | None, f_i: torch.Tensor, full_size) -> torch.Tensor:
    """Algorithm 2 line 5 / Algorithm 3 line 9: acc <- acc + Up(f_i, h_N) (acc = None means 0)."""
    u = up(f_i, full_size)
    return u if acc is None else acc + u


def priors(R, sizes) -> list[torch.Tensor]:
    """Algorithm 2 (teacher forcing): P = [prior_1, ..., prior_N], prior_i = Down(sum_{j<i} Up(R_j), h_i)."""
    sizes = list(sizes)
    acc, P = None, []
    for i in range(len(sizes) - 1):
        acc = accumulate(acc, R[i], sizes[-1])
        P.append(down(acc, sizes[i + 1]))
    return P
