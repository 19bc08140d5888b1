"""The trainer's own checkpoints (what `--resume` continues) and `--init` (what a new run starts from).

    OUT/state/latest.json         {"step": S, "dir": "step-0000000S"}, replaced atomically last
    OUT/state/step-0000000S/      model.safetensors (raw weights), ema.safetensors,
                                  optimizer.pt (tensors and numbers only, read with weights_only=True),
                                  trainer.json (step, config, options, cache identity)

A checkpoint is the whole state of a run. `--init STAGE` is less: the weights of a finished stage
folder (its EMA weights, all a shipped folder has) as the starting point of a new run, with a fresh
optimizer, e.g. to train the shipped demo further with another learning rate (MODEL_CARD.md).
"""
from __future__ import annotations

import hashlib
import io
import shutil
from pathlib import Path

import torch

from msf_train import schema
from msf_train.checkpoint import (atomic_save_safetensors, atomic_write_bytes, atomic_write_json,
                                  load_stage, load_stage_config, read_json, save_stage)
from msf_train.config import ModelConfig
from msf_train.errors import MsfError

STATE_DIR = "state"
LATEST = "latest.json"


def _torch_save_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def latest_checkpoint(out) -> tuple[int, Path] | None:
    p = Path(out) / STATE_DIR / LATEST
    if not p.is_file():
        return None
    step, name = schema.latest(read_json(p, "checkpoint pointer"), p)
    d = Path(out) / STATE_DIR / name
    if not (d / "trainer.json").is_file():
        raise MsfError(f"{p} names {d}, which is incomplete; delete {p.parent} to start over")
    return step, d


def has_checkpoint(out) -> bool:
    try:
        return latest_checkpoint(out) is not None
    except MsfError:
        return True  # something is there: never delete it


def save_checkpoint(out: Path, step: int, raw: torch.nn.Module, ema: dict, opt, cfg: ModelConfig,
                    trainer: dict, stage_extra: dict) -> None:
    """State folder first, then the pointer, then the stage folder; each file atomic. A kill at any
    point leaves the previous pointer (and its complete state) or the new one."""
    sdir = out / STATE_DIR / f"step-{step:08d}"
    atomic_save_safetensors(sdir / "model.safetensors", raw.state_dict())
    atomic_save_safetensors(sdir / "ema.safetensors", ema)
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    atomic_write_bytes(sdir / "optimizer.pt", _torch_save_bytes({"optimizer": opt.state_dict(), "rng": rng}))
    atomic_write_json(sdir / "trainer.json", {**trainer, "step": step, "config": cfg.to_dict()})
    atomic_write_json(out / STATE_DIR / LATEST, {"step": step, "dir": sdir.name})
    save_stage(out, ema, cfg, step=step, **stage_extra)
    for old in (out / STATE_DIR).glob("step-*"):
        if old.name != sdir.name:
            shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(sdir: Path, raw: torch.nn.Module, ema: dict, opt, device) -> None:
    from safetensors.torch import load_file

    try:
        raw.load_state_dict(load_file(str(sdir / "model.safetensors"), device=str(device)))
        for k, v in load_file(str(sdir / "ema.safetensors"), device=str(device)).items():
            ema[k].copy_(v)
        st = torch.load(sdir / "optimizer.pt", map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - OSError, RuntimeError, KeyError, safetensors' own SafetensorError
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise MsfError(f"cannot resume from {sdir}: {first}; the checkpoint is damaged: delete {sdir.parent} to "
                       f"start over (or restore it)") from None
    opt.load_state_dict(st["optimizer"])
    torch.set_rng_state(st["rng"]["cpu"])
    if "cuda" in st["rng"] and device.type == "cuda" and len(st["rng"]["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(st["rng"]["cuda"])


def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# The layers that read and write latents: what --init-body leaves at their fresh initialisation.
LATENT_LAYERS = ("x_embedder.", "final_layer.linear.")


def load_init(folder, raw: torch.nn.Module, ema: dict, body_only: bool = False) -> dict:
    """Copy a stage folder's weights into a new run's model and EMA -> what to record about them.
    The folder was checked first (msf_train.train.check_init: same preset, same VAE). With
    `body_only` the patch embedding and the output layer keep the new run's initialisation (the
    folder was trained on another latent space): the blocks, the time embedding and the class table
    (what the classes look like, whatever encodes them) carry over."""
    folder = Path(folder)
    _, meta = load_stage_config(folder)
    _, model = load_stage(folder, device=next(raw.parameters()).device)
    sd = model.state_dict()
    fresh = sorted(k for k in sd if k.startswith(LATENT_LAYERS)) if body_only else []
    taken = {k: v for k, v in sd.items() if k not in fresh}
    missing, unexpected = raw.load_state_dict(taken, strict=False)
    if unexpected or sorted(missing) != fresh:  # check_init matched the presets: this is a bug, not bad input
        raise RuntimeError(f"--init {folder}: unexpected {unexpected}, missing {missing}")
    for k, v in taken.items():
        if k in ema:
            ema[k].copy_(v.float() if v.is_floating_point() else v)
    rec = {"stage": str(folder.resolve()), "step": meta.get("step"), "weights_sha256": weights_sha256(sd)}
    if body_only:
        rec["body_only"], rec["fresh"] = True, fresh
    return rec
