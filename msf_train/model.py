"""The denoiser of every scale: a DiT with adaLN-Zero and an optional prior input.

One narrow interface for all scales and the baseline: ``v = model(x, t, y, prior=None)``.
- ``x``: z_t, (B, C, h_i, w_i); ``t``: time in [0, 1], (B,) (t = 0 noise, t = 1 data, see flow.py);
- ``y``: class ids, (B,), int64, the null class is ``num_classes``;
- ``prior``: for scale i > 0, the accumulated latent of scales < i downsampled to h_i (Algorithm 2/3),
  (B, C, h_i, w_i); the model sees ``concat(x, prior)`` on channels (DESIGN.md section 2).
- returns the rectified-flow velocity (Eq. 5-6), (B, C, h_i, w_i); a network that predicts DDPM
  noise (an imported DiT, `ModelConfig.parameterization`) is converted inside `forward`.

Architecture as in DiT (Peebles & Xie): patch embedding, fixed 2D sin-cos positions, timestep and
label embedders summed into the conditioning vector, transformer blocks whose LayerNorms are
modulated (shift, scale) and whose residual branches are gated, all by zero-initialised adaLN
projections, so a fresh model is the identity per block and outputs exactly zero.

The export contract (input names, shapes, dynamic axes, sample inputs) lives here too: both
`msf_export` and `runtime` read it, so they cannot disagree on what a stage takes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from msf_train.config import ModelConfig

TIME_SCALE = 1000.0  # the timestep embedder sees 1000 * t, as DiT's integer timesteps would
TIME_FREQ_DIM = 256


def timestep_embedding(t: torch.Tensor, dim: int = TIME_FREQ_DIM, max_period: float = 10000.0,
                       freq_shift: int = 0) -> torch.Tensor:
    """Sinusoidal features of ``TIME_SCALE * t``: (B,) -> (B, dim), computed in float32.

    Frequencies ``max_period^(-k / (half - freq_shift))``: shift 0 is DiT's (and ours), shift 1 is
    diffusers' DiT (``downscale_freq_shift=1``), kept for imported diffusers folders (`ModelConfig`).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / (half - freq_shift))
    args = (TIME_SCALE * t.float())[:, None] * freqs[None]  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, dim)


def sincos_pos_embed_2d(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2D sin-cos positions, in DiT's and diffusers' layout. -> (grid*grid, dim).

    Token n = row * grid + col. The first half of the channels encodes the column, the second half
    the row: the reference builds its grid with ``np.meshgrid(grid_w, grid_h)`` and encodes
    ``grid[0]`` (the column index) first. Released DiT/diffusers weights expect exactly this order;
    pinned against diffusers' ``get_2d_sincos_pos_embed`` in tests/test_model.py.
    """
    assert dim % 4 == 0, "position embedding needs hidden_size divisible by 4"
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)  # (dim/4,)
    coords = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")  # (grid, grid) each

    def enc(pos):  # (N,) -> (N, dim/2)
        a = pos.reshape(-1, 1) * omega[None]
        return torch.cat([torch.sin(a), torch.cos(a)], dim=1)

    return torch.cat([enc(cols), enc(rows)], dim=1).float()  # (grid*grid, dim): [column | row]


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden: int, freq_shift: int = 0):
        super().__init__()
        self.freq_shift = freq_shift
        self.mlp = nn.Sequential(nn.Linear(TIME_FREQ_DIM, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freq = timestep_embedding(t, freq_shift=self.freq_shift).to(self.mlp[0].weight.dtype)  # (B, 256)
        return self.mlp(freq)  # (B, D)


class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, D // self.heads)  # (B, N, 3, H, D/H)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, N, D/H)
        x = F.scaled_dot_product_attention(q, k, v)  # (B, H, N, D/H)
        return self.proj(x.transpose(1, 2).reshape(B, N, D))  # (B, N, D)


class DiTBlock(nn.Module):
    def __init__(self, hidden: int, heads: int, mlp_ratio: float, mlp_norm_eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden, heads)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=mlp_norm_eps)
        inner = int(hidden * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(hidden, inner), nn.GELU(approximate="tanh"), nn.Linear(inner, hidden))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        mods = self.adaLN_modulation(c).chunk(6, dim=1)  # 6 x (B, D)
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = mods
        x = x + gate_a[:, None] * self.attn(modulate(self.norm1(x), shift_a, scale_a))  # (B, N, D)
        x = x + gate_m[:, None] * self.mlp(modulate(self.norm2(x), shift_m, scale_m))  # (B, N, D)
        return x


class FinalLayer(nn.Module):
    def __init__(self, hidden: int, patch: int, out_channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden, patch * patch * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)  # 2 x (B, D)
        return self.linear(modulate(self.norm(x), shift, scale))  # (B, N, p*p*C)


class DiT(nn.Module):
    """``v = model(x, t, y, prior=None)``; see the module docstring for the convention."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        D, p = cfg.hidden_size, cfg.patch_size
        self.x_embedder = nn.Conv2d(cfg.input_channels, D, kernel_size=p, stride=p)
        self.t_embedder = TimestepEmbedder(D, cfg.time_freq_shift)
        self.y_embedder = nn.Embedding(cfg.num_classes + 1, D)  # last row: the null class
        grid = cfg.latent_size // p
        # Fixed positions are a buffer, not a parameter: derived from the config, never trained or saved.
        self.register_buffer("pos_embed", sincos_pos_embed_2d(D, grid)[None], persistent=False)  # (1, N, D)
        self.blocks = nn.ModuleList(DiTBlock(D, cfg.num_heads, cfg.mlp_ratio, cfg.mlp_norm_eps) for _ in range(cfg.depth))
        self.final_layer = FinalLayer(D, p, cfg.out_channels)
        # A network that predicts something else (an imported DiT's DDPM noise) is converted to a
        # velocity here, inside the forward, so every backend and export sees v (parameterization.py).
        self.to_velocity = None
        if cfg.parameterization == "eps-ddpm":
            from msf_train.parameterization import EpsDDPMToVelocity

            self.to_velocity = EpsDDPMToVelocity()
        if self.pos_embed.device.type != "meta":  # a meta model has no values to initialise
            self.initialize_weights()

    def initialize_weights(self):
        def _basic(m):
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

        self.apply(_basic)
        w = self.x_embedder.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.bias)
        nn.init.normal_(self.y_embedder.weight, std=0.02)
        for lin in (self.t_embedder.mlp[0], self.t_embedder.mlp[2]):
            nn.init.normal_(lin.weight, std=0.02)
        # adaLN-Zero: every modulation and the output projection start at zero.
        for mod in [b.adaLN_modulation[-1] for b in self.blocks] + [self.final_layer.adaLN_modulation[-1]]:
            nn.init.zeros_(mod.weight)
            nn.init.zeros_(mod.bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, p*p*C) -> (B, C, h, w)."""
        p, C = self.cfg.patch_size, self.cfg.out_channels
        g = self.cfg.latent_size // p
        x = x.reshape(x.shape[0], g, g, p, p, C)  # (B, g, g, p, p, C)
        x = torch.einsum("bhwpqc->bchpwq", x)  # (B, C, g, p, g, p)
        return x.reshape(x.shape[0], C, g * p, g * p)  # (B, C, h, w)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, prior: torch.Tensor | None = None):
        """The velocity at (x, t) whatever the network predicts (see `predict`)."""
        if self.to_velocity is None:
            return self.predict(x, t, y, prior)
        return self.to_velocity(self.predict, x, t, y, prior)  # (B, C, h, w)

    def predict(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, prior: torch.Tensor | None = None):
        """The network's own output: the velocity, or for an "eps-ddpm" stage DDPM noise at step 1000 * t."""
        if self.cfg.has_prior:
            if prior is None:
                raise ValueError(f"{self.cfg.name} is a residual scale: it needs a prior")
            x = torch.cat([x, prior], dim=1)  # (B, 2C, h, w)
        elif prior is not None:
            raise ValueError(f"{self.cfg.name} is a base scale: it takes no prior")
        x = self.x_embedder(x).flatten(2).transpose(1, 2) + self.pos_embed  # (B, N, D)
        c = self.t_embedder(t) + self.y_embedder(y)  # (B, D)
        for block in self.blocks:
            x = block(x, c)  # (B, N, D)
        x = self.final_layer(x, c)  # (B, N, p*p*C)
        return self.unpatchify(x)  # (B, C, h, w)


def build_model(cfg: ModelConfig, device: torch.device | str | None = None) -> DiT:
    """Build a model; ``device='meta'`` builds it without allocating weights (for shapes and counts)."""
    with torch.device(device or "cpu"):
        return DiT(cfg)


# ---- analytic cost -----------------------------------------------------------------------------
def count_params(cfg: ModelConfig) -> int:
    """Trainable parameters, counted on a meta-device model (no allocation)."""
    return sum(p.numel() for p in build_model(cfg, "meta").parameters())


def mac_breakdown(cfg: ModelConfig) -> dict[str, int]:
    """Multiply-adds of one forward pass for one image: dense layers (matmuls and the patch
    convolution) and attention (scores and weighted values).

    Per block with N tokens and width D: qkv + proj + MLP = (4 + 2 * mlp_ratio) * N * D^2, attention
    = 2 * N^2 * D, adaLN = 6 * D^2 (once per image, not per token). Elementwise work (norms, softmax,
    GELU) is left out, as DiT's own count does.
    """
    D, N, p = cfg.hidden_size, cfg.num_tokens, cfg.patch_size
    inner = int(D * cfg.mlp_ratio)
    block = N * (4 * D * D + 2 * D * inner) + 6 * D * D
    embed = N * cfg.input_channels * p * p * D + TIME_FREQ_DIM * D + D * D
    final = 2 * D * D + N * D * p * p * cfg.out_channels
    return {"dense": cfg.depth * block + embed + final, "attention": cfg.depth * 2 * N * N * D}


def count_macs(cfg: ModelConfig) -> int:
    """Total multiply-adds of one forward pass for one image (see `mac_breakdown`)."""
    return sum(mac_breakdown(cfg).values())


# ---- export contract ---------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple  # "batch" marks the dynamic axis
    dtype: str  # "float32" | "int64"


def export_contract(cfg: ModelConfig) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Input and output specs of a denoiser, in call order: x, t, y[, prior] -> v."""
    lat = ("batch", *cfg.latent_shape)
    inputs = [TensorSpec("x", lat, "float32"), TensorSpec("t", ("batch",), "float32"),
              TensorSpec("y", ("batch",), "int64")]
    if cfg.has_prior:
        inputs.append(TensorSpec("prior", lat, "float32"))
    return inputs, [TensorSpec("v", lat, "float32")]


def sample_inputs(cfg: ModelConfig, batch: int = 2, device="cpu", seed: int = 0) -> dict[str, torch.Tensor]:
    """Random inputs that follow the contract (batch >= 2 so exporters keep the batch axis dynamic)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for spec in export_contract(cfg)[0]:
        shape = tuple(batch if s == "batch" else s for s in spec.shape)
        if spec.name == "t":
            out[spec.name] = torch.rand(shape, generator=g)
        elif spec.name == "y":
            out[spec.name] = torch.randint(0, cfg.num_classes + 1, shape, generator=g)
        else:
            out[spec.name] = torch.randn(shape, generator=g)
    return {k: v.to(device) for k, v in out.items()}
