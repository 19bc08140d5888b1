"""VAEs: load a diffusers AutoencoderKL / AutoencoderTiny folder (the `save_pretrained` layout, how a
user brings sd-vae-ft-ema), and the latent-scale convention.

Convention (DESIGN.md section 2): images are in [-1, 1];
    latent = (vae.encode(x).latent_dist.sample() - shift_factor) * scaling_factor
    image  = vae.decode(latent / scaling_factor + shift_factor)
with shift_factor = 0 where the VAE's config has none (SD-VAE).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from msf_train.errors import MsfError

VAE_CLASSES = ("AutoencoderKL", "AutoencoderTiny")


def vae_class_name(folder) -> str:
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not folder.is_dir():
        raise MsfError(f"VAE folder not found: {folder}")
    if not cfg_path.is_file():
        raise MsfError(f"{folder} is not a diffusers VAE folder (no config.json); save one with save_pretrained()")
    try:
        cls = json.loads(cfg_path.read_text()).get("_class_name")
    except json.JSONDecodeError:
        raise MsfError(f"{cfg_path} is not valid JSON") from None
    if cls not in VAE_CLASSES:
        raise MsfError(f"{folder} holds a {cls or 'unknown model'}, not a VAE; expected one of {', '.join(VAE_CLASSES)}")
    return cls


def load_vae(folder, device="cpu", dtype=torch.float32):
    """Load a VAE folder offline (no hub access), in eval mode."""
    import diffusers

    cls = getattr(diffusers, vae_class_name(folder))
    try:
        vae = cls.from_pretrained(str(folder), local_files_only=True, torch_dtype=dtype)
    except (OSError, ValueError, RuntimeError) as e:
        raise MsfError(f"cannot load the VAE in {folder}: {str(e).splitlines()[0]}") from None
    return vae.to(device).eval()


def _factors(vae) -> tuple[float, float]:
    scale = float(getattr(vae.config, "scaling_factor", 1.0) or 1.0)
    shift = float(getattr(vae.config, "shift_factor", 0.0) or 0.0)
    return scale, shift


@torch.no_grad()
def encode(vae, images: torch.Tensor, generator: torch.Generator | None = None, sample: bool = True) -> torch.Tensor:
    """Images in [-1, 1], (B, 3, H, W) -> scaled latents (B, C, H/8, W/8)."""
    scale, shift = _factors(vae)
    out = vae.encode(images)
    if hasattr(out, "latent_dist"):
        z = out.latent_dist.sample(generator) if sample else out.latent_dist.mode()
    else:  # AutoencoderTiny returns latents directly
        z = out.latents
    return (z - shift) * scale


class LatentDecoder(torch.nn.Module):
    """Scaled latents -> images in [-1, 1]: the VAE decoder with the convention folded in.

    This module is what the runtime calls (and what the exporter exports) as the last stage.
    """

    def __init__(self, vae):
        super().__init__()
        self.vae = vae
        self.scale, self.shift = _factors(vae)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent / self.scale + self.shift).sample.clamp(-1, 1)  # (B, 3, 8h, 8w)


def decoder_contract(latent_channels: int, latent_size: int, factor: int = 8):
    """Export contract of the decoder stage: latent -> image (same shape conventions as model.py)."""
    from msf_train.model import TensorSpec

    return ([TensorSpec("latent", ("batch", latent_channels, latent_size, latent_size), "float32")],
            [TensorSpec("image", ("batch", 3, factor * latent_size, factor * latent_size), "float32")])
