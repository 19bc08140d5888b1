"""Training the demo VAE: a small diffusers AutoencoderKL (f8, 4 latent channels) on shapes images,
the latent-scale convention's scaling factor measured on the data (DESIGN.md section 2), and a
decoder-only fine-tune (--freeze-encoder) that improves the images without moving the latents.

The MSF paper trains its denoisers in a fixed VAE's latent space (Section 3, SD-VAE for ImageNet);
the demo needs its own VAE because shapes images are not SD's domain. Training checkpoints the VAE
and its optimizer every `save_every` steps, on Ctrl-C/SIGTERM and when a --max-minutes budget ends,
so a killed run continues with --resume (its images then come from a fresh stream seeded by the
step: the same distribution, not the same draws).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from msf_train.errors import MsfError
from msf_train.train_options import LR_SCHEDULES, scheduled_lr
from msf_train.vae import load_vae, save_vae, vae_class_name

STATE_FILE = "state/vae-state.pt"  # inside the output folder; small (weights + Adam moments)


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
    err = ReconstructionError(border)
    for x in batches:
        dist = vae.encode(x).latent_dist
        z = dist.sample(generator).double()
        n += z.numel()
        s += z.sum().item()
        s2 += (z * z).sum().item()
        err.add(x, vae.decode(dist.mode()).sample.clamp(-1, 1))
    mean = s / n
    std = math.sqrt(max(s2 / n - mean * mean, 1e-24))
    return {"mean": mean, "std": std, **err.result()}


class ReconstructionError:
    """Accumulates the squared error of reconstructions (images in [-1, 1]) on a `border`-pixel frame
    and on the interior: PSNR over all pixels, and the frame's mean error over the interior's."""

    def __init__(self, border: int = 4):
        self.border, self.se_edge, self.se_in, self.n_edge, self.n_in = border, 0.0, 0.0, 0, 0

    def add(self, x: torch.Tensor, rec: torch.Tensor) -> None:
        se = (rec.double() - x.double()) ** 2  # (B, 3, H, W)
        frame = torch.ones(se.shape[-2:], dtype=torch.bool, device=se.device)
        frame[self.border:-self.border, self.border:-self.border] = False
        self.se_edge += se[..., frame].sum().item()
        self.se_in += se[..., ~frame].sum().item()
        self.n_edge += se[..., frame].numel()
        self.n_in += se[..., ~frame].numel()

    def result(self) -> dict:
        mse = (self.se_edge + self.se_in) / (self.n_edge + self.n_in) * 0.25  # images in [-1, 1]: a range of 2
        return {"psnr": 10 * math.log10(1.0 / max(mse, 1e-12)),
                "border_to_interior": (self.se_edge / self.n_edge) / max(self.se_in / self.n_in, 1e-24)}


def train_vae(out, *, steps: int = 5000, batch: int = 32, lr: float = 4e-4, lr_schedule: str = "constant", size: int = 128, crop: int | None = None,
              widths=DEMO_WIDTHS, latent_channels: int = 4, mid_attention: bool = True, kl_weight: float = 1e-6, mse_weight: float = 0.0,
              init=None, freeze_encoder: bool = False, classes=None, seed: int = 0,
              device: str = "auto", workers: int | None = None, scale_images: int = 1024, log_every: int = 50,
              save_every: int = 500, resume: bool = False, show_progress: bool = True,
              max_minutes: float | None = None, force: bool = False) -> dict:
    """Train the demo VAE on shapes images and save it (save_pretrained layout) with its scaling factor
    measured on the data: scaling_factor = 1 / std of the raw latents.

    Loss: L1 reconstruction (+ mse_weight * squared error) + kl_weight * KL, with the KL summed over
    latent elements and the L1 over pixels, both per image (SD's VAE weighting, kl_weight 1e-6).
    ``init`` (a VAE folder) fine-tunes that VAE instead of building a fresh one; with ``freeze_encoder``
    only its decoder side (post_quant_conv + decoder) learns and the scaling factor is kept, so the
    latents stay bit-identical and every cache and stage made with ``init`` stays valid (vae_identity's
    encoder_sha256 is unchanged). AdamW, gradient clipping at 1, bf16 autocast on CUDA. The training
    images are rendered on the fly by DataLoader workers, at `size` (the textures' period is a
    fraction of the side), optionally cropped to `crop` pixels. ``lr_schedule`` "cosine" decays the
    learning rate to 0 at `steps` (so `steps` is then fixed for --resume). ``resume`` continues OUT's checkpoint
    (same options; --steps may grow); without it a folder holding one is refused unless ``force``."""
    from msf_train import outdir

    opts = dict(steps=steps, batch=batch, lr=lr, lr_schedule=lr_schedule, size=size, crop=crop, widths=widths, latent_channels=latent_channels,
                mid_attention=mid_attention,
                kl_weight=kl_weight, mse_weight=mse_weight, init=init, freeze_encoder=freeze_encoder, classes=classes,
                seed=seed, device=device, workers=workers, scale_images=scale_images, log_every=log_every,
                save_every=save_every, resume=resume, show_progress=show_progress, max_minutes=max_minutes)
    for name, v in (("steps", steps), ("batch", batch), ("scale_images", scale_images), ("log_every", log_every),
                    ("save_every", save_every)):
        if v < 1:
            raise MsfError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    if not (math.isfinite(lr) and lr > 0) or kl_weight < 0 or mse_weight < 0:
        raise MsfError("--lr must be > 0, --kl and --mse >= 0")
    if lr_schedule not in LR_SCHEDULES:
        raise MsfError(f"--lr-schedule {lr_schedule!r}: use one of {', '.join(LR_SCHEDULES)}")
    if not 1 <= latent_channels <= 256:
        raise MsfError(f"--latent-channels must be in 1..256, got {latent_channels}")
    for name, v in (("size", size), ("crop", crop or size)):
        if v % 8:
            raise MsfError(f"--{name} {v} must be a multiple of 8 (the VAE downsamples by 8)")
    if freeze_encoder and init is None:
        raise MsfError("--freeze-encoder fine-tunes the decoder of an existing VAE: add --init VAE_FOLDER")
    if init is not None and vae_class_name(init) != "AutoencoderKL":
        raise MsfError(f"--init {init}: only an AutoencoderKL can be fine-tuned here (it has a posterior to train on)")
    if init is not None and Path(init).resolve() == Path(out).resolve():
        raise MsfError(f"--init and --out are the same folder ({out}): write the fine-tuned VAE to a new folder")
    state = Path(out) / STATE_FILE
    if state.is_file() and not (resume or force):
        raise MsfError(f"{out} holds a VAE training checkpoint ({STATE_FILE}): pass --resume to continue it "
                       f"(or --force to start over)")
    # What a step computes: a resumed run must match it. Steps may grow under a constant rate, so they
    # are not part of the key then; a cosine's steps are (another --steps would bend the rest of it).
    # A constant schedule stays out of the key, so runs made before schedules existed still resume.
    constant = lr_schedule == "constant"
    key = {k: (list(v) if isinstance(v, tuple) else v) for k, v in opts.items()
           if k not in ("device", "workers", "show_progress", "log_every", "max_minutes", "save_every", "resume")
           and not (constant and k in ("steps", "lr_schedule"))}
    key["init"] = str(Path(init).resolve()) if init is not None else None
    key["classes"] = None if classes is None else list(classes)
    with outdir.claim(out, "msf-train vae", key, force, keep=lambda o: (o / STATE_FILE).is_file()):
        return _train_vae(out, **opts)


def _save_state(path: Path, step: int, wall: float, vae, opt, gen) -> None:
    """Weights, optimizer and noise generator at `step`, via a temp file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"step": step, "wall": wall, "vae": vae.state_dict(), "opt": opt.state_dict(),
                "gen": gen.get_state()}, tmp)
    os.replace(tmp, path)


def _leave_stop_signals_to_the_trainer(worker_id: int) -> None:
    """In each DataLoader worker: let the first SIGINT or SIGTERM pass. Ctrl-C, `timeout`, Slurm and
    systemd signal the whole process group; a worker killed by it made the trainer die with "DataLoader
    worker killed" before it could save. Now the trainer alone acts on it (checkpoint, one line, exit
    128 + n); the handler then reverts to the default, so the terminate() with which multiprocessing
    ends its workers at exit still ends this one."""
    import signal

    def swallow_once(signum, frame):
        signal.signal(signum, signal.SIG_DFL)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, swallow_once)


def _last_record(path: Path) -> dict:
    """The last complete record of a JSON-lines log ({} if none): a resumed run that took no step."""
    import json

    for line in reversed(path.read_text().splitlines() if path.is_file() else []):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
    return {}


def _train_vae(out, *, steps, batch, lr, lr_schedule, size, crop, widths, latent_channels, mid_attention, kl_weight, mse_weight, init, freeze_encoder,
               classes, seed, device, workers, scale_images, log_every, save_every, resume, show_progress,
               max_minutes) -> dict:
    import signal
    import time

    from msf_train import data
    from msf_train.checkpoint import atomic_write_json
    from msf_train.util import (Interrupted, JsonlLog, StopSignals, autocast, default_workers, progress,
                                resolve_device, step_seed)

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
        vae = build_vae(widths, latent_channels, sample_size=size, mid_attention=mid_attention).to(dev).train()
    if freeze_encoder:  # the encoder side fixes the latents; GroupNorm only, so train() changes nothing there
        vae.encoder.requires_grad_(False)
        vae.quant_conv.requires_grad_(False)
    params = [p for p in vae.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in vae.parameters())
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    gen = torch.Generator(dev).manual_seed(seed)
    start, wall0, state_path = 0, 0.0, out / STATE_FILE
    if resume and state_path.is_file():
        try:
            st = torch.load(state_path, map_location=dev, weights_only=True)
            vae.load_state_dict(st["vae"])
            opt.load_state_dict(st["opt"])
            gen.set_state(st["gen"].cpu())  # generator states are CPU byte tensors, whatever the device
            start, wall0 = int(st["step"]), float(st["wall"])
        except Exception as e:  # a damaged file or another architecture: say which, do not guess
            raise MsfError(f"cannot resume from {state_path}: {(str(e).splitlines() or [type(e).__name__])[0]}; "
                           f"delete it (or pass --force without --resume) to start over") from None
        if start > steps:
            raise MsfError(f"{state_path} is at step {start}, past --steps {steps}: give --steps >= {start}")
    workers = default_workers() if workers is None else workers
    # A resumed run draws fresh images (a stream seeded by the step) rather than replaying the first ones.
    stream_seed = seed if start == 0 else step_seed(seed, start) % 2**31
    loader = torch.utils.data.DataLoader(
        data.ShapesStream(classes, size, stream_seed, batch, crop), batch_size=None, num_workers=workers,
        pin_memory=dev.type == "cuda", prefetch_factor=4 if workers else None, persistent_workers=False,
        worker_init_fn=_leave_stop_signals_to_the_trainer if workers else None)
    out.mkdir(parents=True, exist_ok=True)
    log = JsonlLog(out / "log.jsonl", truncate_after=start if start else -1)
    bar = progress(steps, start, show_progress, desc="vae")
    t0 = time.time()
    t_last, s_last = t0, start
    acc = torch.zeros(3, device=dev)
    it = iter(loader)
    done, stopped_by_time = start, False
    with StopSignals() as stop:
        for step in range(start, steps):
            if max_minutes is not None and time.time() - t0 > 60 * max_minutes:
                stopped_by_time = True  # a wall-clock budget (e.g. a lent GPU) ends training here; the record says so
                break
            rate = scheduled_lr(lr, step, steps, schedule=lr_schedule)
            for g in opt.param_groups:
                g["lr"] = rate
            imgs, _ = next(it)
            x = data.to_unit(imgs.to(dev, non_blocking=True))
            with autocast(dev), torch.set_grad_enabled(not freeze_encoder):
                dist = vae.encode(x).latent_dist
                z = dist.sample(gen)  # (B, C, H/8, W/8) raw latents
            with autocast(dev):
                rec = vae.decode(z).sample  # (B, 3, H, W)
            err = rec.float() - x
            l1 = err.abs().mean()
            kl = dist.kl().float().mean() / x[0].numel()  # KL summed over the latent, per pixel (constant when frozen)
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
                log.write({"step": done, "loss": vals[0], "l1": vals[1], "kl": vals[2], "lr": rate,
                           "it_s": (done - s_last) / max(now - t_last, 1e-9), "wall": wall0 + now - t0})
                bar.set_postfix(loss=f"{vals[0]:.4f}", refresh=False)
                acc.zero_()
                t_last, s_last = now, done
            if stop.signum is not None or done % save_every == 0:
                _save_state(state_path, done, wall0 + time.time() - t0, vae, opt, gen)
            if stop.signum is not None:
                bar.close()
                raise Interrupted(f"interrupted by {signal.Signals(stop.signum).name} at step {done}: checkpoint "
                                  f"saved in {state_path}; continue with the same command and --resume", stop.signum)
    bar.close()
    train_wall = wall0 + time.time() - t0
    _save_state(state_path, done, train_wall, vae, opt, gen)  # --resume --steps MORE continues from here

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
    summary = {"steps": done, "stopped_by_time": stopped_by_time, "resumed_from_step": start or None,
               "batch": batch, "lr": lr, "lr_schedule": lr_schedule, "size": size, "crop": crop, "widths": list(widths),
               "mid_attention": mid_attention, "init": str(init) if init is not None else None,
               "freeze_encoder": freeze_encoder, "trainable_params": sum(p.numel() for p in params),
               "kl_weight": kl_weight, "mse_weight": mse_weight, "classes": len(classes), "seed": seed, "device": str(dev),
               "params": n_params, "train_wall_s": train_wall, "final_loss": (log.last or _last_record(log.path)).get("loss"),
               "latent_mean": stats["mean"], "latent_std": stats["std"], "psnr_db": stats["psnr"],
               "border_to_interior_mse": stats["border_to_interior"],
               "scaling_factor": vae.config.scaling_factor, "scale_images": len(pick)}
    atomic_write_json(out / "training.json", summary)
    return summary


@torch.no_grad()
def save_reconstructions(vae, x: torch.Tensor, path, *others) -> None:
    """A figure: images (top row) and their reconstructions from the posterior mode by `vae` (second
    row), then by each of `others` (one row each: decoders compared on the same images)."""
    import numpy as np
    from PIL import Image

    recs = [v.decode(v.encode(x).latent_dist.mode()).sample.clamp(-1, 1) for v in (vae, *others)]
    rows = [torch.cat(list(t), dim=2) for t in (x, *recs)]  # (3, H, B*W) each
    grid = ((torch.cat(rows, dim=1) + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 0).cpu().numpy()
    Image.fromarray(np.ascontiguousarray(grid)).save(path)
