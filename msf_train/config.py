"""Model configs: a frozen dataclass plus a registry of named presets.

A config travels inside every checkpoint and artifact manifest (`to_dict` / `from_dict`), so later
stages (export, runtime) need no flags to rebuild the model.

Paper facts (MSF_PAPER.md section 4.1): scale 0 is a DiT of depth 18 / width 1152 (435.9M) on a
192 px image (24x24 SD-VAE latent); scale 1 is depth 10 / width 1280 on 256 px (32x32) and takes the
upsampled accumulated prior; DiT-XL/2 is depth 28 / width 1152 on 32x32.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass

from msf_train.errors import MsfError

VAE_FACTOR = 8  # SD-VAE and the demo VAE both downsample by 8 (f8)
PARAMETERIZATIONS = ("velocity", "eps-ddpm")  # see msf_train/parameterization.py


@dataclass(frozen=True)
class ModelConfig:
    """One denoiser of one scale. `has_prior` doubles the input channels (concat(z_t, prior))."""

    name: str
    depth: int
    hidden_size: int
    num_heads: int
    patch_size: int = 2
    latent_size: int = 32  # this scale's latent side, h_i = w_i
    in_channels: int = 4  # latent channels C; the model outputs C channels (velocity)
    has_prior: bool = False
    num_classes: int = 1000  # the null class is `num_classes` (DESIGN.md section 2)
    mlp_ratio: float = 4.0
    # The cascade this model belongs to: scale index i, and the latent sides of all scales.
    scale_index: int = 0
    scale_sizes: tuple[int, ...] = (32,)
    # Residual targets are small; the model learns target / residual_scale (1.0 = none).
    residual_scale: float = 1.0
    # What the network predicts (msf_train/parameterization.py): "velocity" (ours, Eq. 5) or
    # "eps-ddpm" (an imported DiT: DDPM noise, linear betas 1e-4..0.02 over 1000 steps), converted to
    # a velocity inside the model's forward so samplers, exports and CUDA graphs see one contract.
    parameterization: str = "velocity"
    # Imported architectures that differ from ours in two numerical details: diffusers' DiT computes
    # its timestep frequencies as 10000^(-k / (128 - 1)) (downscale_freq_shift = 1; ours and the
    # reference DiT's: shift 0), and its MLP LayerNorm uses the folder's norm_eps (1e-5 by default).
    time_freq_shift: int = 0
    mlp_norm_eps: float = 1e-6

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise MsfError(f"{self.name}: hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.latent_size % self.patch_size:
            raise MsfError(f"{self.name}: latent_size {self.latent_size} is not divisible by patch_size {self.patch_size}")
        if self.scale_sizes[self.scale_index] != self.latent_size:
            raise MsfError(f"{self.name}: scale_sizes[{self.scale_index}] must equal latent_size {self.latent_size}")
        if self.parameterization not in PARAMETERIZATIONS:
            raise MsfError(f"{self.name}: unknown parameterization {self.parameterization!r}; use one of {', '.join(PARAMETERIZATIONS)}")
        if self.time_freq_shift not in (0, 1):
            raise MsfError(f"{self.name}: time_freq_shift must be 0 (DiT) or 1 (diffusers), got {self.time_freq_shift}")
        if self.has_prior != (self.scale_index > 0):
            raise MsfError(f"{self.name}: scale {self.scale_index} must {'' if self.scale_index else 'not '}take a prior")

    # ---- derived facts -------------------------------------------------------------------
    @property
    def null_class(self) -> int:
        return self.num_classes

    @property
    def input_channels(self) -> int:
        return self.in_channels * (2 if self.has_prior else 1)

    @property
    def out_channels(self) -> int:
        return self.in_channels

    @property
    def num_tokens(self) -> int:
        return (self.latent_size // self.patch_size) ** 2

    @property
    def image_size(self) -> int:
        """Pixel side of this scale's image (what the VAE encodes for scale 0)."""
        return self.latent_size * VAE_FACTOR

    @property
    def full_size(self) -> int:
        return self.scale_sizes[-1]

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.latent_size, self.latent_size)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["scale_sizes"] = list(self.scale_sizes)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise MsfError(f"config has unknown fields {unknown}; it was written by a newer msf: upgrade msf")
        d = dict(d)
        d["scale_sizes"] = tuple(d.get("scale_sizes", (d.get("latent_size", 32),)))
        return cls(**d)

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


def _preset(name, depth, width, heads, latent, scale_index=0, scale_sizes=None, **kw) -> ModelConfig:
    sizes = tuple(scale_sizes or (latent,))
    return ModelConfig(name=name, depth=depth, hidden_size=width, num_heads=heads, latent_size=latent,
                       scale_index=scale_index, scale_sizes=sizes, has_prior=scale_index > 0, **kw)


_PAPER = (24, 32)  # 192 px and 256 px with an f8 VAE
_DEMO = (12, 16)  # 96 px and 128 px (DESIGN.md section 4)

PRESETS: dict[str, ModelConfig] = {
    c.name: c
    for c in [
        # MSF_PAPER.md section 4.1
        _preset("msf-xl/scale0", 18, 1152, 16, 24, 0, _PAPER),
        _preset("msf-xl/scale1", 10, 1280, 16, 32, 1, _PAPER),
        # DiT (Peebles & Xie), one-scale cascades
        _preset("dit-xl/2", 28, 1152, 16, 32),
        _preset("dit-l/2", 24, 1024, 16, 32),
        _preset("dit-b/2", 12, 768, 12, 32),
        _preset("dit-s/2", 12, 384, 6, 32),
        # The embedded demo at 128 px: width 192 keeps all shipped weights near 25 MB in fp16.
        _preset("demo/scale0", 6, 192, 3, 12, 0, _DEMO),
        _preset("demo/scale1", 4, 192, 3, 16, 1, _DEMO),
        _preset("demo/dit", 10, 192, 3, 16),  # depth 6 + 4, as DiT-XL/2 (28) is 18 + 10 deep
        # Tiny presets for tests: seconds to train on a CPU.
        _preset("tiny/scale0", 2, 64, 2, 4, 0, (4, 8), num_classes=20),
        _preset("tiny/scale1", 2, 64, 2, 8, 1, (4, 8), num_classes=20),
        _preset("tiny/dit", 2, 64, 2, 8, num_classes=20),
    ]
}


def get_preset(name: str) -> ModelConfig:
    """Look up a preset by name; a typo raises an MsfError naming the closest presets."""
    try:
        return PRESETS[name]
    except KeyError:
        close = difflib.get_close_matches(name, PRESETS, n=3, cutoff=0.5)
        hint = f"closest: {', '.join(close)}" if close else f"known: {', '.join(PRESETS)}"
        raise MsfError(f"unknown preset {name!r}; {hint} (msf-train presets lists them all)") from None


def cascade(name: str) -> list[ModelConfig]:
    """The presets of a cascade in scale order: 'msf-xl' -> [scale0, scale1]; 'dit-xl/2' -> [itself]."""
    if name in PRESETS:
        return [PRESETS[name]]
    stages = sorted((c for n, c in PRESETS.items() if n.startswith(name + "/scale")), key=lambda c: c.scale_index)
    if not stages:
        get_preset(name)  # raises with suggestions
    return stages
