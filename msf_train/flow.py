"""Rectified flow (MSF_PAPER.md Eq. 5-7), samplers, and classifier-free guidance.

Time convention (DESIGN.md section 2, pinned by tests): t in [0, 1], t = 0 is noise and t = 1 is
data; ``z_t = t * x + (1 - t) * z_0``; the target velocity is ``x - z_0``; samplers integrate
dz/dt = v from t = 0 to t = 1. The model's timestep embedder sees ``1000 * t`` (model.TIME_SCALE).

Samplers are pure functions in the manner of k-diffusion: ``velocity(x, t, **extra) -> v`` with
``t`` of shape (B,), a starting noise ``x`` and a time grid ``ts``; they return the final state.
"""
from __future__ import annotations

from typing import Callable

import torch

Velocity = Callable[..., torch.Tensor]


# ---- training ----------------------------------------------------------------------------------
def sample_time(batch: int, mode: str = "uniform", *, mean: float = 0.0, std: float = 1.0,
                generator: torch.Generator | None = None, device="cpu") -> torch.Tensor:
    """Training times, (B,): 'uniform' on [0, 1] or 'logit_normal' (sigmoid of N(mean, std))."""
    if mode == "uniform":
        return torch.rand(batch, generator=generator, device=device)
    if mode == "logit_normal":
        return torch.sigmoid(mean + std * torch.randn(batch, generator=generator, device=device))
    raise ValueError(f"unknown time sampling {mode!r}; use 'uniform' or 'logit_normal'")


def interpolate(x: torch.Tensor, z0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """z_t = t * x + (1 - t) * z_0, with t of shape (B,)."""
    t = t.view(-1, *([1] * (x.dim() - 1)))
    return t * x + (1 - t) * z0


def drop_labels(y: torch.Tensor, p: float, null_class: int, generator: torch.Generator | None = None):
    """Replace each label by the null class with probability p (label dropout for CFG training)."""
    if p <= 0:
        return y
    drop = torch.rand(y.shape, generator=generator, device=y.device) < p
    return torch.where(drop, torch.full_like(y, null_class), y)


def flow_loss(model, x: torch.Tensor, y: torch.Tensor, prior: torch.Tensor | None = None, *,
              time_mode: str = "uniform", generator: torch.Generator | None = None) -> torch.Tensor:
    """Eq. 5 for one scale: E || (x - z_0) - v(z_t, t | y, prior) ||^2, averaged over elements."""
    z0 = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    t = sample_time(x.shape[0], time_mode, generator=generator, device=x.device)
    v = model(interpolate(x, z0, t), t, y, prior)
    return torch.mean(((x - z0) - v.float()) ** 2)


# ---- sampling ----------------------------------------------------------------------------------
def time_grid(steps: int, shift: float = 1.0, device="cpu") -> torch.Tensor:
    """steps + 1 times from 0 (noise) to 1 (data).

    ``shift`` > 1 spends more steps near the noise end: with s = 1 - t the noise level, the grid maps
    s -> shift * s / (1 + (shift - 1) * s) (the SD3 timestep shift, written in this time direction).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    t = torch.linspace(0.0, 1.0, steps + 1, device=device, dtype=torch.float64)
    s = 1 - t
    s = shift * s / (1 + (shift - 1) * s)
    return (1 - s).float()


def _tvec(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return t.to(x.device, torch.float32).expand(x.shape[0])


@torch.no_grad()
def sample_euler(velocity: Velocity, x: torch.Tensor, ts: torch.Tensor, **extra) -> torch.Tensor:
    """Euler: x <- x + (t_{k+1} - t_k) v(x, t_k). One velocity call per step (Eq. 6)."""
    for k in range(len(ts) - 1):
        x = x + (ts[k + 1] - ts[k]) * velocity(x, _tvec(x, ts[k]), **extra)
    return x


@torch.no_grad()
def sample_heun(velocity: Velocity, x: torch.Tensor, ts: torch.Tensor, **extra) -> torch.Tensor:
    """Heun (2nd order): Euler predictor, trapezoidal corrector; two velocity calls per step."""
    for k in range(len(ts) - 1):
        dt = ts[k + 1] - ts[k]
        v0 = velocity(x, _tvec(x, ts[k]), **extra)
        x_pred = x + dt * v0
        v1 = velocity(x_pred, _tvec(x, ts[k + 1]), **extra)
        x = x + dt * 0.5 * (v0 + v1)
    return x


SAMPLERS = {"euler": sample_euler, "heun": sample_heun}


def calls_per_step(solver: str) -> int:
    return {"euler": 1, "heun": 2}[solver]


# ---- classifier-free guidance ------------------------------------------------------------------
def guided(model, w: float, null_class: int) -> Velocity:
    """Eq. 7 as a wrapper: v = v(.|null) + w * (v(.|y) - v(.|null)) on all channels.

    ``w == 1`` returns the model itself: one forward, no doubled batch. Otherwise the conditional and
    unconditional halves run as one doubled batch. The returned function has the model's signature
    ``(x, t, y, prior=None)``.
    """
    if w == 1.0:
        return model

    def velocity(x, t, y, prior=None):
        B = x.shape[0]
        y2 = torch.cat([y, torch.full_like(y, null_class)])
        p2 = None if prior is None else torch.cat([prior, prior])
        v = model(torch.cat([x, x]), torch.cat([t, t]), y2, p2)  # (2B, C, h, w)
        v_cond, v_uncond = v[:B], v[B:]
        return v_uncond + w * (v_cond - v_uncond)

    return velocity
