"""VAEs: load a diffusers AutoencoderKL / AutoencoderTiny folder (the `save_pretrained` layout, how a
user brings sd-vae-ft-ema), and the latent-scale convention.

Convention (DESIGN.md section 2): images are in [-1, 1];
    latent = (vae.encode(x).latent_dist.sample() - shift_factor) * scaling_factor
    image  = vae.decode(latent / scaling_factor + shift_factor)
with shift_factor = 0 where the VAE's config has none (SD-VAE).
"""
from __future__ import annotations

import json
import math
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


# ---- the demo VAE ------------------------------------------------------------------------------
DEMO_WIDTHS = (32, 64, 64, 64)  # 1.25M parameters; four levels = three downsamples = f8


def build_vae(widths=DEMO_WIDTHS, latent_channels: int = 4, sample_size: int = 128, scaling_factor: float = 1.0,
              mid_attention: bool = True):
    """A small diffusers AutoencoderKL: f8 (len(widths) == 4), one ResNet layer per block, and
    self-attention in the mid blocks unless `mid_attention` is False."""
    import diffusers

    widths = tuple(int(w) for w in widths)
    if len(widths) != 4:
        raise MsfError(f"--widths needs 4 levels (three downsamples = f8), got {len(widths)}: {widths}")
    if any(w < 8 or w % 8 for w in widths):
        raise MsfError(f"--widths {widths}: use multiples of 8 (GroupNorm needs groups)")
    groups = min(32, math.gcd(*widths))
    return diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=widths, layers_per_block=1,
        latent_channels=latent_channels, norm_num_groups=groups, sample_size=sample_size,
        scaling_factor=scaling_factor, mid_block_add_attention=mid_attention)


@torch.no_grad()
def measure_latent_stats(vae, batches, generator: torch.Generator | None = None, border: int = 4) -> dict:
    """Encode image batches (in [-1, 1]) with the raw VAE (no scaling) and return the latents' mean
    and std over all elements, the reconstruction PSNR (dB, from the posterior mode) and the ratio of
    the squared error on a `border`-pixel frame to that of the interior (halos and corner artifacts
    show as a ratio well above 1)."""
    n, s, s2 = 0, 0.0, 0.0
    se_edge, se_in, n_edge, n_in = 0.0, 0.0, 0, 0
    for x in batches:
        dist = vae.encode(x).latent_dist
        z = dist.sample(generator).double()
        n += z.numel()
        s += z.sum().item()
        s2 += (z * z).sum().item()
        rec = vae.decode(dist.mode()).sample.clamp(-1, 1)
        se = (rec.double() - x.double()) ** 2  # (B, 3, H, W)
        frame = torch.ones(se.shape[-2:], dtype=torch.bool, device=se.device)
        frame[border:-border, border:-border] = False
        se_edge += se[..., frame].sum().item()
        se_in += se[..., ~frame].sum().item()
        n_edge += se[..., frame].numel()
        n_in += se[..., ~frame].numel()
    mean = s / n
    std = math.sqrt(max(s2 / n - mean * mean, 1e-24))
    mse = (se_edge + se_in) / (n_edge + n_in) * 0.25  # images in [-1, 1]: a range of 2
    return {"mean": mean, "std": std, "psnr": 10 * math.log10(1.0 / max(mse, 1e-12)),
            "border_to_interior": (se_edge / n_edge) / max(se_in / n_in, 1e-24)}


def train_vae(out, *, steps: int = 5000, batch: int = 32, lr: float = 4e-4, size: int = 128, crop: int | None = None,
              widths=DEMO_WIDTHS, mid_attention: bool = True, kl_weight: float = 1e-6, mse_weight: float = 0.0,
              init=None, freeze_encoder: bool = False, classes=None, seed: int = 0,
              device: str = "auto", workers: int | None = None, scale_images: int = 1024, log_every: int = 50,
              show_progress: bool = True, max_minutes: float | None = None, force: bool = False) -> dict:
    """Train the demo VAE on shapes images and save it (save_pretrained layout) with its scaling factor
    measured on the data: scaling_factor = 1 / std of the raw latents.

    Loss: L1 reconstruction (+ mse_weight * squared error) + kl_weight * KL, with the KL summed over
    latent elements and the L1 over pixels, both per image (SD's VAE weighting, kl_weight 1e-6).
    ``init`` (a VAE folder) fine-tunes that VAE instead of building a fresh one; with ``freeze_encoder``
    only its decoder side (post_quant_conv + decoder) learns and the scaling factor is kept, so the
    latents stay bit-identical and every cache and stage made with ``init`` stays valid (vae_identity's
    encoder_sha256 is unchanged). AdamW, gradient clipping at 1,
    bf16 autocast on CUDA. The training images are rendered on the fly by DataLoader workers, at
    `size` (the textures' period is a fraction of the side), optionally cropped to `crop` pixels."""
    from msf_train import outdir

    opts = dict(steps=steps, batch=batch, lr=lr, size=size, crop=crop, widths=widths, mid_attention=mid_attention,
                kl_weight=kl_weight, mse_weight=mse_weight, init=init, freeze_encoder=freeze_encoder, classes=classes,
                seed=seed, device=device,
                workers=workers, scale_images=scale_images, log_every=log_every, show_progress=show_progress,
                max_minutes=max_minutes)
    for name, v in (("steps", steps), ("batch", batch), ("scale_images", scale_images), ("log_every", log_every)):
        if v < 1:
            raise MsfError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    if not (math.isfinite(lr) and lr > 0) or kl_weight < 0 or mse_weight < 0:
        raise MsfError("--lr must be > 0, --kl and --mse >= 0")
    for name, v in (("size", size), ("crop", crop or size)):
        if v % 8:
            raise MsfError(f"--{name} {v} must be a multiple of 8 (the VAE downsamples by 8)")
    if freeze_encoder and init is None:
        raise MsfError("--freeze-encoder fine-tunes the decoder of an existing VAE: add --init VAE_FOLDER")
    if init is not None and vae_class_name(init) != "AutoencoderKL":
        raise MsfError(f"--init {init}: only an AutoencoderKL can be fine-tuned here (it has a posterior to train on)")
    if init is not None and Path(init).resolve() == Path(out).resolve():
        raise MsfError(f"--init and --out are the same folder ({out}): write the fine-tuned VAE to a new folder")
    key = {k: (list(v) if isinstance(v, tuple) else v) for k, v in opts.items()
           if k not in ("device", "workers", "show_progress", "log_every", "max_minutes")}
    key["init"] = str(Path(init).resolve()) if init is not None else None
    key["classes"] = None if classes is None else list(classes)
    with outdir.claim(out, "msf-train vae", key, force):
        return _train_vae(out, **opts)


def _train_vae(out, *, steps, batch, lr, size, crop, widths, mid_attention, kl_weight, mse_weight, init, freeze_encoder,
               classes, seed, device, workers, scale_images, log_every, show_progress, max_minutes) -> dict:
    import time

    from msf_train import data
    from msf_train.checkpoint import atomic_write_json
    from msf_train.util import JsonlLog, autocast, default_workers, progress, resolve_device

    out = Path(out)
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest convolutions
    classes = list(range(data.NUM_CLASSES)) if classes is None else list(classes)
    torch.manual_seed(seed)
    if init is not None:
        vae = load_vae(init, dev).train()
        widths = tuple(vae.config.block_out_channels)
        mid_attention = bool(getattr(vae.config, "mid_block_add_attention", True))
    else:
        vae = build_vae(widths, sample_size=size, mid_attention=mid_attention).to(dev).train()
    if freeze_encoder:  # the encoder side fixes the latents; GroupNorm only, so train() changes nothing there
        vae.encoder.requires_grad_(False)
        vae.quant_conv.requires_grad_(False)
    params = [p for p in vae.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in vae.parameters())
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    workers = default_workers() if workers is None else workers
    loader = torch.utils.data.DataLoader(
        data.ShapesStream(classes, size, seed, batch, crop), batch_size=None, num_workers=workers,
        pin_memory=dev.type == "cuda", prefetch_factor=4 if workers else None, persistent_workers=False)
    gen = torch.Generator(dev).manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    log = JsonlLog(out / "log.jsonl", truncate_after=-1)
    bar = progress(steps, 0, show_progress, desc="vae")
    t0 = time.time()
    t_last, s_last = t0, 0
    acc = torch.zeros(3, device=dev)
    it = iter(loader)
    for step in range(steps):
        if max_minutes is not None and time.time() - t0 > 60 * max_minutes:
            steps = step  # a wall-clock budget (e.g. a lent GPU) ends training here; the record says so
            break
        imgs, _ = next(it)
        x = data.to_unit(imgs.to(dev, non_blocking=True))
        with autocast(dev), torch.set_grad_enabled(not freeze_encoder):
            dist = vae.encode(x).latent_dist
            z = dist.sample(gen)  # (B, C, H/8, W/8) raw latents
        with autocast(dev):
            rec = vae.decode(z).sample  # (B, 3, H, W)
        err = rec.float() - x
        l1 = err.abs().mean()
        kl = dist.kl().float().mean() / x[0].numel()  # KL summed over the latent, per pixel (a constant when frozen)
        loss = l1 + (0.0 if freeze_encoder else kl_weight * kl) + (mse_weight * err.square().mean() if mse_weight else 0.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        acc += torch.stack([loss.detach(), l1.detach(), kl.detach()])
        bar.update(1)
        done = step + 1
        if done % log_every == 0 or done == steps:
            now = time.time()
            vals = (acc / (done - s_last)).tolist()
            rec_ = {"step": done, "loss": vals[0], "l1": vals[1], "kl": vals[2], "lr": lr,
                    "it_s": (done - s_last) / max(now - t_last, 1e-9), "wall": now - t0}
            log.write(rec_)
            bar.set_postfix(loss=f"{vals[0]:.4f}", refresh=False)
            acc.zero_()
            t_last, s_last = now, done
    bar.close()
    train_wall = time.time() - t0

    # The scaling factor, measured on held-out images (another seed).
    vae.eval()
    held = data.ShapesDataset(classes, per_class=max(1, -(-scale_images // len(classes))), seed=seed + 1,
                              full_size=size)
    rng = torch.Generator().manual_seed(seed + 1)
    pick = torch.randperm(len(held), generator=rng)[:scale_images].tolist()

    def batches():
        for i in range(0, len(pick), batch):
            imgs = torch.stack([held[j][0] for j in pick[i:i + batch]])
            yield data.to_unit(imgs.to(dev))

    stats = measure_latent_stats(vae, batches(), torch.Generator(dev).manual_seed(seed + 2))
    if not freeze_encoder:  # a frozen encoder keeps init's factor: the latents (and their records) are unchanged
        vae.register_to_config(scaling_factor=round(1.0 / stats["std"], 6))
    save_vae(vae, out)
    save_reconstructions(vae, next(batches())[:8], out / "reconstructions.png")
    summary = {"steps": steps, "batch": batch, "lr": lr, "size": size, "crop": crop, "widths": list(widths),
               "mid_attention": mid_attention, "init": str(init) if init is not None else None,
               "freeze_encoder": freeze_encoder, "trainable_params": sum(p.numel() for p in params),
               "kl_weight": kl_weight, "mse_weight": mse_weight, "classes": len(classes), "seed": seed, "device": str(dev),
               "params": n_params, "train_wall_s": train_wall, "final_loss": log.last.get("loss"),
               "latent_mean": stats["mean"], "latent_std": stats["std"], "psnr_db": stats["psnr"],
               "border_to_interior_mse": stats["border_to_interior"],
               "scaling_factor": vae.config.scaling_factor, "scale_images": len(pick)}
    atomic_write_json(out / "training.json", summary)
    return summary


@torch.no_grad()
def save_reconstructions(vae, x: torch.Tensor, path) -> None:
    """A figure: images (top row) and their reconstructions from the posterior mode (bottom row)."""
    import numpy as np
    from PIL import Image

    rec = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
    rows = [torch.cat(list(t), dim=2) for t in (x, rec)]  # (3, H, B*W) each
    grid = ((torch.cat(rows, dim=1) + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 0).cpu().numpy()
    Image.fromarray(np.ascontiguousarray(grid)).save(path)


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
