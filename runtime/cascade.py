"""Random-weight cascade folders, for latency benchmarks and tests.

Latency does not depend on what the weights learned (DESIGN.md section 6), so a benchmark at the
paper's presets, or a test at the tiny ones, needs only the right shapes. A fresh DiT outputs
exactly zero (adaLN-Zero), which would hide bugs, so every weight is perturbed with seeded noise.
The folder is an ordinary cascade folder (`msf_train.checkpoint.write_cascade`) that `msf-run`
and `runtime.engines.load_cascade` read like a trained one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from msf_train.checkpoint import save_stage, write_cascade
from msf_train.config import ModelConfig, get_preset


def random_model_state(cfg: ModelConfig, seed: int = 0, std: float = 0.02) -> dict[str, torch.Tensor]:
    """A state dict for ``cfg``: the model's own init plus N(0, std^2) on every weight."""
    from msf_train.model import build_model

    torch.manual_seed(seed)  # build_model's init draws from the global generator
    model = build_model(cfg)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(std * torch.randn(p.shape, generator=g))
    return model.state_dict()


def small_vae_config(latent_channels: int = 4, width: int = 8, groups: int = 4) -> dict:
    """A tiny f8 AutoencoderKL: four blocks (three downsamples), ``width`` channels each."""
    return dict(in_channels=3, out_channels=3, latent_channels=latent_channels,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                block_out_channels=(width,) * 4, layers_per_block=1, norm_num_groups=groups)


def write_random_vae(folder, seed: int = 0, **config) -> Path:
    """Save a randomly initialised diffusers AutoencoderKL (`save_pretrained` layout, safetensors)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(**{**small_vae_config(), **config})
    vae.save_pretrained(str(folder), safe_serialization=True)
    return Path(folder)


def write_random_cascade(folder, presets: Sequence[str | ModelConfig], seed: int = 0, vae: dict | None = None) -> Path:
    """A cascade folder with perturbed random weights: stage folders ``scale0``, ``scale1``, ... and
    a small random VAE in ``vae/``. ``presets`` in scale order (names or configs)."""
    folder = Path(folder)
    cfgs = [get_preset(p) if isinstance(p, str) else p for p in presets]
    names = []
    for i, cfg in enumerate(cfgs):
        name = f"scale{i}"
        save_stage(folder / name, random_model_state(cfg, seed + 10 * i), cfg)
        names.append(name)
    write_random_vae(folder / "vae", seed, **{"latent_channels": cfgs[0].in_channels, **(vae or {})})
    return write_cascade(folder, names, "vae")


# The SD-VAE (sd-vae-ft-ema) layout, for decoders whose latency should match the real one.
SD_VAE_CONFIG = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32)


def build_random_cascade(presets: Sequence[str | ModelConfig], device="cpu", dtype=None, seed: int = 0,
                         vae: dict | None = None, compile: bool = False):
    """Random-weight torch engines in memory (no folder): -> ([(cfg, TorchDenoiser)], TorchDecoder).

    For latency at presets whose weights would take gigabytes on disk (``msf-xl``, ``dit-xl/2``);
    ``vae=SD_VAE_CONFIG`` gives an SD-VAE-sized decoder, the default a tiny one.
    """
    from diffusers import AutoencoderKL

    from msf_train.model import build_model
    from msf_train.vae import LatentDecoder
    from runtime.engines import TorchDecoder, TorchDenoiser

    cfgs = [get_preset(p) if isinstance(p, str) else p for p in presets]
    stages = []
    for i, cfg in enumerate(cfgs):
        model = build_model(cfg)
        model.load_state_dict(random_model_state(cfg, seed + 10 * i))
        stages.append((cfg, TorchDenoiser(model, device, dtype, compile)))
    torch.manual_seed(seed)
    ae = AutoencoderKL(**{**small_vae_config(cfgs[0].in_channels), **(vae or {})})
    return stages, TorchDecoder(LatentDecoder(ae), cfgs[0].full_size, device, None, compile)
