"""What a stage's network predicts, and the one conversion to the velocity every sampler expects.

Our stages predict the rectified-flow velocity (MSF_PAPER.md Eq. 5-6; flow.py): with t = 0 noise and
t = 1 data, ``z_t = t x + (1 - t) eps`` and ``v(z, t) = E[x - eps | z_t = z]``.

A released DiT (Peebles & Xie; facebookresearch/DiT, diffusers' DiTTransformer2DModel) predicts DDPM
noise instead (``parameterization = "eps-ddpm"`` in its stage config): at integer step tau in
0..999, ``x_tau = a x + s eps`` with ``a = sqrt(abar_tau)``, ``s = sqrt(1 - abar_tau)``,
``abar_tau = prod_{k <= tau} (1 - beta_k)`` and betas linear from 1e-4 to 0.02 (DDPM), and the
network returns ``eps_hat(x_tau, tau) = E[eps | x_tau]``.

The variance-preserving path is our linear path up to a change of scale and of time. Both states
are ``signal * x + noise * eps``; they carry the same information when the signal-to-noise ratios
agree, ``a / s = t / (1 - t)``, i.e. log-SNR ``lambda = log(abar / (1 - abar)) = 2 logit(t)``; then
``x_tau = (a + s) z_t`` with ``a + s = 1 / sqrt(t^2 + (1 - t)^2)``. So, for a state z at our time t:

    time:      tau(t) = the DDPM step whose log-SNR is 2 logit(t)
               (log-SNR interpolated linearly between the integer steps; tau runs 0..999)
    scale:     x_tau  = z / sqrt(t^2 + (1 - t)^2)
    velocity:  eps_hat = network(x_tau, tau, y);  E[x | z_t] = (z - (1 - t) eps_hat) / t,
               so v = E[x | z_t] - E[eps | z_t] = (z - eps_hat) / t.

The conversion is exact wherever the network's eps is (tests/test_interop.py checks it against the
closed-form eps and velocity of Gaussian data). The DDPM schedule only covers log-SNR in
[lambda_999, lambda_0] = [-10.1, 9.2], i.e. t in [0.0064, 0.990]: outside it the network is evaluated
at the nearest end t_c (z is treated as the state at t_c, and v = (z - eps_hat) / t_c). An Euler
sampler's first call at t = 0 is thus DDPM's own first step at tau = 999, whose state is noise up to
a = 0.0064. Classifier-free guidance is linear in eps_hat, so guiding v (flow.guided) is guiding eps.

The conversion runs inside the model's forward (`msf_train.model.DiT`), so the torch backend, the
ONNX/AOTInductor/TensorRT exports and the CUDA graph all see the same ``x, t, y -> v`` contract.
"""
from __future__ import annotations

import math

import torch
from torch import nn

DDPM_STEPS = 1000
BETA_START, BETA_END = 1e-4, 0.02


def ddpm_alphas_cumprod(steps: int = DDPM_STEPS, beta_start: float = BETA_START, beta_end: float = BETA_END) -> list[float]:
    """abar_tau for tau = 0..steps-1 with linear betas (DDPM; DiT's training schedule), in float64."""
    out, acc = [], 1.0
    for k in range(steps):
        acc *= 1.0 - (beta_start + (beta_end - beta_start) * k / (steps - 1))
        out.append(acc)
    return out


def ddpm_log_snr() -> list[float]:
    """log(abar / (1 - abar)) per DDPM step, decreasing from 9.2 (tau = 0) to -10.1 (tau = 999)."""
    return [math.log(ab) - math.log1p(-ab) for ab in ddpm_alphas_cumprod()]


class EpsDDPMToVelocity(nn.Module):
    """``v = self(predict, x, t, y, prior)``: calls ``predict`` (the network, which takes its own time
    input tau / 1000) at the VP point of (x, t) and returns our velocity; maths in the module docstring.

    The log-SNR table is a float32 buffer (so it follows the model onto a device and into exports)
    that dtype casts leave alone: a `.half()` model (the FP16 export) keeps an exact time map.
    """

    def __init__(self):
        super().__init__()
        self._table = ddpm_log_snr()
        self.register_buffer("log_snr", torch.tensor(self._table, dtype=torch.float32), persistent=False)
        sigmoid = lambda u: 1.0 / (1.0 + math.exp(-u))  # noqa: E731
        self.t_min, self.t_max = sigmoid(self._table[-1] / 2), sigmoid(self._table[0] / 2)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        if self.log_snr.dtype != torch.float32:  # .half() / .to(dtype): rebuild the table in float32
            self.log_snr = torch.tensor(self._table, dtype=torch.float32, device=self.log_snr.device)
        return self

    def ddpm_step(self, t: torch.Tensor) -> torch.Tensor:
        """Our time t (B,), within [t_min, t_max] -> continuous DDPM step tau (B,) in [0, 999].

        Branch-free (a count, two gathers and a lerp) so that every exporter keeps it."""
        lam = 2 * (torch.log(t) - torch.log1p(-t))  # (B,) log-SNR of t
        table = self.log_snr  # (1000,), decreasing
        n = (table[None, :] > lam[:, None]).sum(1)  # (B,) steps with a higher SNR than lam
        hi = n.clamp(1, table.numel() - 1)
        lo = hi - 1
        frac = ((table[lo] - lam) / (table[lo] - table[hi])).clamp(0, 1)
        return lo.to(t.dtype) + frac  # (B,)

    def forward(self, predict, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, prior=None) -> torch.Tensor:
        from msf_train.model import TIME_SCALE

        t_c = t.float().clamp(self.t_min, self.t_max)  # (B,) nearest time the schedule covers
        scale = torch.rsqrt(t_c * t_c + (1 - t_c) * (1 - t_c))[:, None, None, None]  # (B, 1, 1, 1) = a + s
        tau = self.ddpm_step(t_c)  # (B,)
        eps = predict(x * scale, tau / TIME_SCALE, y, prior)  # (B, C, h, w); the embedder sees tau
        return (x - eps.float()) / t_c[:, None, None, None]  # (B, C, h, w) velocity
