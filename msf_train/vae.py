"""VAEs: load a diffusers AutoencoderKL / AutoencoderTiny folder (the `save_pretrained` layout, how a
user brings sd-vae-ft-ema), and the latent-scale convention.

Convention (DESIGN.md section 2): images are in [-1, 1];
    latent = (vae.encode(x).latent_dist.sample() - shift_factor) * scaling_factor
    image  = vae.decode(latent / scaling_factor + shift_factor)
with shift_factor = 0 where the VAE's config has none (SD-VAE).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from msf_train.errors import MsfError

VAE_CLASSES = ("AutoencoderKL", "AutoencoderTiny")


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # e.g. stabilityai/sd-vae-ft-ema


def vae_class_name(folder) -> str:
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not folder.is_dir():
        if HUB_ID.fullmatch(str(folder)) and not folder.exists():
            raise MsfError(f"VAE folder not found: {folder} looks like a Hugging Face hub id, and msf reads local folders "
                           f"only; where there is network, run huggingface-cli download {folder} --local-dir "
                           f"{folder.name} (or AutoencoderKL.from_pretrained('{folder}').save_pretrained('{folder.name}')) "
                           f"and pass --vae {folder.name}")
        raise MsfError(f"VAE folder not found: {folder}")
    if not cfg_path.is_file():
        raise MsfError(f"{folder} is not a diffusers VAE folder (no config.json); save one with save_pretrained()")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise MsfError(f"{cfg_path} is not valid JSON") from None
    cls = cfg.get("_class_name") if isinstance(cfg, dict) else None
    if cls not in VAE_CLASSES:
        if isinstance(cfg, dict) and "model" in cfg and "format" in cfg:
            raise MsfError(f"{folder} is an msf stage folder (a denoiser), not a VAE; pass a diffusers VAE folder")
        raise MsfError(f"{folder} holds a {cls or 'unknown model'}, not a VAE; expected one of {', '.join(VAE_CLASSES)}")
    return cls


def load_vae(folder, device="cpu", dtype=torch.float32):
    """Load a VAE folder offline (no hub access), in eval mode."""
    name = vae_class_name(folder)
    # The module, not the `diffusers` package namespace: nothing else of diffusers is needed to decode.
    if name == "AutoencoderKL":
        from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL as cls
    else:
        from diffusers.models.autoencoders.autoencoder_tiny import AutoencoderTiny as cls
    from diffusers.utils import logging as dlogging

    dlogging.set_verbosity_error()  # loader chatter (accelerate hints) is not for msf's users
    try:
        vae = cls.from_pretrained(str(folder), local_files_only=True, torch_dtype=dtype, low_cpu_mem_usage=False)
    except Exception as e:  # diffusers/safetensors raise many types for damaged or mismatched files
        raise MsfError(f"cannot load the VAE in {folder}: {(str(e).splitlines() or [type(e).__name__])[0]}") from None
    from msf_train.checkpoint import check_finite

    check_finite(dict(vae.state_dict()), folder)
    return vae.to(device).eval()


def _factors(vae) -> tuple[float, float]:
    scale = float(getattr(vae.config, "scaling_factor", 1.0) or 1.0)
    shift = float(getattr(vae.config, "shift_factor", 0.0) or 0.0)
    return scale, shift


@torch.no_grad()
def encode(vae, images: torch.Tensor, generator: torch.Generator | None = None, sample: bool = True,
           noise: torch.Tensor | None = None) -> torch.Tensor:
    """Images in [-1, 1], (B, 3, H, W) -> scaled latents (B, C, H/8, W/8).

    `noise` (standard normal, the latent's shape) replaces the generator's draw: the sample is then
    ``mean + std * noise``, which lets a caller fix each image's noise whatever the batching."""
    scale, shift = _factors(vae)
    out = vae.encode(images)
    if hasattr(out, "latent_dist"):
        dist = out.latent_dist
        if not sample:
            z = dist.mode()
        elif noise is not None:
            z = dist.mean + dist.std * noise.to(dist.mean)
        else:
            z = dist.sample(generator)
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


# ---- identity: which VAE made a set of latents -------------------------------------------------
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def weights_file(folder) -> Path:
    folder = Path(folder)
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise MsfError(f"{folder} has no VAE weights ({' or '.join(WEIGHT_FILES)})")


_SHA_MEMO: dict[tuple, tuple[str, str]] = {}
ENCODER_SIDE = ("encoder.", "quant_conv.")  # the tensors that map an image to its latent distribution


def _encoder_sha256(w: Path) -> str:
    """sha256 over the encoder side's tensors (name, dtype, shape, bytes, in name order): what fixes
    the latents. A decoder fine-tuned on a frozen encoder (msf-train vae --freeze-encoder) keeps it."""
    import hashlib

    if w.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(w), framework="pt") as f:
            sd = {k: f.get_tensor(k) for k in f.keys() if k.startswith(ENCODER_SIDE)}
    else:
        sd = {k: v for k, v in torch.load(w, map_location="cpu", weights_only=True).items() if k.startswith(ENCODER_SIDE)}
    if not sd:
        raise MsfError(f"{w} has no encoder tensors ({' or '.join(p + '*' for p in ENCODER_SIDE)}): not a VAE's weights")
    h = hashlib.sha256()
    for k in sorted(sd):
        t = sd[k].detach().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def vae_identity(folder) -> dict:
    """What a latent cache and a stage folder record about their VAE: the sha256 of its weights file
    and of its encoder side, its latent factors and class. Two VAEs whose records agree on the encoder
    and the factors encode identically (same_vae). The hashes are remembered per (file, size, mtime)
    for the life of the process (msf-run checks them at load)."""
    from msf_train.checkpoint import sha256_file

    cls = vae_class_name(folder)
    cfg = json.loads((Path(folder) / "config.json").read_text())
    w = weights_file(folder)
    st = w.stat()
    key = (str(w.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_MEMO:
        _SHA_MEMO[key] = sha256_file(w), _encoder_sha256(w)
    try:
        factors = float(cfg.get("scaling_factor") or 1.0), float(cfg.get("shift_factor") or 0.0)
    except (TypeError, ValueError):
        raise MsfError(f"{Path(folder) / 'config.json'}: scaling_factor and shift_factor must be numbers") from None
    return {"class": cls, "sha256": _SHA_MEMO[key][0], "encoder_sha256": _SHA_MEMO[key][1],
            "scaling_factor": factors[0], "shift_factor": factors[1]}


def same_vae(a: dict, b: dict) -> bool:
    """Do two identity records describe interchangeable latents? Same factors, and the same encoder
    (records written before encoder_sha256 existed are compared by their whole weights file)."""
    if a.get("scaling_factor") != b.get("scaling_factor") or a.get("shift_factor", 0.0) != b.get("shift_factor", 0.0):
        return False
    if a.get("encoder_sha256") and b.get("encoder_sha256"):
        return a["encoder_sha256"] == b["encoder_sha256"]
    return a.get("sha256") == b.get("sha256")


def complete_record(record: dict, folder) -> dict:
    """An identity record written before encoder_sha256 existed, completed from the VAE folder it
    names (which must be that very VAE: same weights file): lets stages trained on an older record
    be used with a decoder fine-tuned on the same encoder."""
    mine = vae_identity(folder)
    if record.get("sha256") != mine["sha256"] or not same_vae(record, mine):
        raise MsfError(f"{folder} is not the VAE this record names (sha256 {str(record.get('sha256', '?'))[:12]}, "
                       f"scaling {record.get('scaling_factor')}); pass the VAE the stage was trained with")
    return mine


def save_vae(vae, folder) -> Path:
    """save_pretrained into a temp folder, then move weights then config into place (a config implies
    complete weights; a killed save leaves the previous VAE, if any, loadable)."""
    import os
    import shutil
    import tempfile

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=".save-"))
    try:
        vae.save_pretrained(str(tmp), safe_serialization=True)
        names = sorted(p.name for p in tmp.iterdir())
        for name in [n for n in names if n != "config.json"] + ["config.json"]:
            os.replace(tmp / name, folder / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
