"""A lower bound on the memory one sampling call needs, checked before sampling.

`msf-run --batch 100000` would otherwise allocate for a while and then die in the allocator (or
the OOM killer). The bound counts only tensors that must exist at the same time, in float32:
the decoded images (plus one per scale with --save-scales) and the larger of a denoiser's MLP
activation (batch doubled by CFG x tokens x mlp_ratio x width) and the VAE decoder's last
full-resolution feature map (in and out of one convolution). Real use is higher, so a request
refused here would certainly fail, and a request that fits may still be refused by the allocator
(which the CLI then reports in one line).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from msf_train.errors import MsfError

F32 = 4


def decoder_width(decoder) -> int:
    """Channels of the decoder's full-resolution feature map, when the engine says (torch); else 3."""
    vae = getattr(getattr(decoder, "module", None), "vae", None)
    widths = getattr(getattr(vae, "config", None), "block_out_channels", None)
    return int(widths[0]) if widths else 3


def decoder_chunk(decoder, images: int) -> int:
    """Images the decoder sees per call: exported decoders go in chunks of their batch range."""
    entry = getattr(decoder, "_entry", None)
    if isinstance(entry, dict) and isinstance(entry.get("batch"), dict):
        return min(images, int(entry["batch"].get("max", images)))
    return images


def sampling_bytes(cfgs, cfg_scales, images: int, width: int = 3, chunk: int | None = None,
                   save_scales: bool = False, per_call: int | None = None) -> int:
    """Lower bound in bytes for sampling `images` images, `per_call` of them per sampling call
    (default all), the decoder taking `chunk` latents at a time (see the module docstring)."""
    per_call = per_call or images
    full = cfgs[0].full_size * 8  # pixels (f8 VAE)
    image = images * 3 * full * full * F32
    outputs = image * (1 + (len(cfgs) if save_scales else 0)) + image // F32  # + the uint8 grid
    denoise = max((per_call * (1 if w == 1.0 else 2)) * c.num_tokens * int(c.mlp_ratio * c.hidden_size) * F32
                  for c, w in zip(cfgs, cfg_scales))
    decode = 2 * min(chunk or per_call, per_call) * width * full * full * F32
    return outputs + max(denoise, decode)


def available_bytes(device: torch.device) -> int | None:
    """Free memory on `device` now (CUDA: mem_get_info; CPU: MemAvailable), None if unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(stages, decoder, images: int, plan, save_scales: bool, device: torch.device,
                 per_call: int | None = None) -> None:
    """Refuse in one line, with the figure, a request that cannot fit in free memory."""
    cfgs = [c for c, _ in stages]
    need = sampling_bytes(cfgs, plan.cfg, images, decoder_width(decoder), decoder_chunk(decoder, images),
                          save_scales, per_call)
    have = available_bytes(device)
    if have is None or need <= have:
        return
    fits = max(1, math.floor(images * have / need))
    raise MsfError(f"{images} image(s) need at least {need / 2 ** 30:.1f} GiB but {device.type} has "
                   f"{have / 2 ** 30:.1f} GiB free: ask for at most about {fits} image(s) (lower --batch)")
