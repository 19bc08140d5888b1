"""Model folders on disk: weights as safetensors, the config as JSON, written atomically.

A *stage folder* holds one denoiser:
    config.json          {"format": 1, "model": ModelConfig.to_dict(), ...extra}
    model.safetensors    the weights to sample with (EMA weights after training)

A *cascade folder* (what `msf-run --model DIR` and `msf-export --model DIR` take) holds stages and a VAE:
    cascade.json         {"format": 1, "stages": ["scale0", "scale1"], "vae": "vae"}
    scale0/, scale1/     stage folders, scale order (a DiT baseline has one stage)
    vae/                 a diffusers AutoencoderKL / AutoencoderTiny folder (save_pretrained layout)
Paths in cascade.json are relative to the cascade folder (absolute paths are allowed too).

Nothing here unpickles: weights are safetensors, metadata is JSON.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from msf_train.config import ModelConfig
from msf_train.errors import MsfError

FORMAT = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CASCADE_FILE = "cascade.json"


# ---- atomic writes -----------------------------------------------------------------------------
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(tmp: str, path: Path) -> None:
    """fsync, give the file the permissions a plain open() would (mkstemp makes it 0600), rename."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        _publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def atomic_save_safetensors(path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        _publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_file(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def read_json(path, what: str = "file") -> dict:
    path = Path(path)
    if not path.is_file():
        raise MsfError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MsfError(f"{what} {path} is not valid JSON ({e.msg if hasattr(e, 'msg') else e}); re-create it") from None


# ---- stage folders -----------------------------------------------------------------------------
def save_stage(folder, state_dict: dict[str, torch.Tensor], cfg: ModelConfig, **extra) -> Path:
    """Write a stage folder (weights first, config last, so a config implies complete weights)."""
    folder = Path(folder)
    atomic_save_safetensors(folder / WEIGHTS_FILE, state_dict, metadata={"preset": cfg.name})
    atomic_write_json(folder / CONFIG_FILE, {"format": FORMAT, "model": cfg.to_dict(), **extra})
    return folder


def _read_versioned(folder: Path, name: str, what: str) -> dict:
    """JSON file `name` in model folder `folder`, refusing a format newer than this msf writes."""
    if not folder.is_dir():
        raise MsfError(f"model folder not found: {folder}")
    meta = read_json(folder / name, what)
    if meta.get("format", 0) > FORMAT:
        raise MsfError(f"{folder / name} has format {meta['format']}, newer than this msf ({FORMAT}): upgrade msf")
    return meta


def load_stage_config(folder) -> tuple[ModelConfig, dict]:
    folder = Path(folder)
    meta = _read_versioned(folder, CONFIG_FILE, "stage config")
    if "model" not in meta:
        raise MsfError(f"{folder / CONFIG_FILE} has no 'model' config: not an msf stage folder")
    return ModelConfig.from_dict(meta["model"]), meta


def load_stage(folder, device="cpu"):
    """-> (cfg, model in eval mode). Weights must match the config exactly."""
    from msf_train.model import build_model

    folder = Path(folder)
    cfg, _ = load_stage_config(folder)
    wpath = folder / WEIGHTS_FILE
    if not wpath.is_file():
        raise MsfError(f"weights not found: {wpath}")
    try:
        sd = load_file(str(wpath), device=str(device))
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
        raise MsfError(f"cannot read {wpath}: {e}; the file is damaged, re-create it") from None
    model = build_model(cfg, device)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise MsfError(f"{wpath} does not match preset {cfg.name}: missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]}")
    return cfg, model.eval()


# ---- cascade folders ---------------------------------------------------------------------------
def write_cascade(folder, stages: list[str], vae: str) -> Path:
    folder = Path(folder)
    atomic_write_json(folder / CASCADE_FILE, {"format": FORMAT, "stages": list(stages), "vae": vae})
    return folder


def read_cascade(folder) -> tuple[list[Path], Path]:
    """-> (stage folders in scale order, vae folder), checked for existence and consistency."""
    folder = Path(folder)
    meta = _read_versioned(folder, CASCADE_FILE, "cascade description")
    stages = [folder / s for s in meta.get("stages", [])]
    if not stages:
        raise MsfError(f"{folder / CASCADE_FILE} lists no stages")
    vae = folder / meta.get("vae", "vae")
    for p in stages + [vae]:
        if not p.is_dir():
            raise MsfError(f"{folder / CASCADE_FILE} names {p}, which does not exist")
    cfgs = [load_stage_config(s)[0] for s in stages]
    check_cascade(cfgs)
    return stages, vae


def check_cascade(cfgs: list[ModelConfig]) -> None:
    """Stages must agree on classes, channels and the scale ladder, and come in scale order."""
    first = cfgs[0]
    for i, c in enumerate(cfgs):
        if c.num_classes != first.num_classes:
            raise MsfError(f"stages disagree on classes: {first.name} has {first.num_classes}, {c.name} has {c.num_classes}")
        if c.in_channels != first.in_channels:
            raise MsfError(f"stages disagree on latent channels: {first.name} {first.in_channels}, {c.name} {c.in_channels}")
        if tuple(c.scale_sizes) != tuple(first.scale_sizes):
            raise MsfError(f"stages disagree on latent shape: {first.name} scales {first.scale_sizes}, {c.name} {c.scale_sizes}")
        if c.scale_index != i:
            raise MsfError(f"stage {i} ({c.name}) is scale {c.scale_index}: list the stages in scale order")
    if len(cfgs) != len(first.scale_sizes):
        raise MsfError(f"the cascade has {len(cfgs)} stages but its presets describe {len(first.scale_sizes)} scales")
