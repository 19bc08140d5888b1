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
import os
import re
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from msf_train import schema
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
    """Strict JSON (no NaN/Infinity: `schema.dumps`), written atomically."""
    atomic_write_bytes(path, schema.dumps(obj, path).encode())


def atomic_save_safetensors(path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        try:
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        except Exception as e:  # safetensors reports I/O failures as its own error: give back the OSError
            code = re.search(r"os error (\d+)", str(e))
            if code is None:
                raise
            raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from None
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


def read_json(path, what: str = "file"):
    """A JSON file, parsed strictly (`schema.load`); MsfError in one line if missing or invalid."""
    return schema.load(path, what)


# ---- stage folders -----------------------------------------------------------------------------
def save_stage(folder, state_dict: dict[str, torch.Tensor], cfg: ModelConfig, **extra) -> Path:
    """Write a stage folder (weights first, config last, so a config implies complete weights)."""
    folder = Path(folder)
    atomic_save_safetensors(folder / WEIGHTS_FILE, state_dict, metadata={"preset": cfg.name})
    atomic_write_json(folder / CONFIG_FILE, {"format": FORMAT, "model": cfg.to_dict(), **extra})
    return folder


def load_stage_config(folder) -> tuple[ModelConfig, dict]:
    """The stage's config.json, every field checked (`schema.stage_config`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MsfError(f"model folder not found: {folder}")
    return schema.stage_config(read_json(folder / CONFIG_FILE, "stage config"), folder / CONFIG_FILE)


def _read_weights(wpath: Path, device) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(wpath), device=str(device))
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
        raise MsfError(f"cannot read {wpath}: {str(e).splitlines()[0] if str(e) else type(e).__name__}; "
                       f"the file is damaged, re-create it") from None


def check_finite(tensors: dict[str, torch.Tensor], where) -> None:
    """Every tensor finite, or one line naming the first bad one (a diverged run or damaged file)."""
    for k, v in tensors.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            bad = int((~torch.isfinite(v)).sum())
            raise MsfError(f"{where}: tensor {k} holds {bad} NaN/infinite value(s); the weights are unusable "
                           f"(a diverged training run or a damaged file): retrain or restore them")


def load_stage(folder, device="cpu"):
    """-> (cfg, model in eval mode). Weights must match the config exactly and be finite."""
    from msf_train.model import build_model

    folder = Path(folder)
    cfg, _ = load_stage_config(folder)
    wpath = folder / WEIGHTS_FILE
    if not wpath.is_file():
        raise MsfError(f"weights not found: {wpath}")
    sd = _read_weights(wpath, device)
    model = build_model(cfg, device)
    want = model.state_dict()
    missing = [k for k in want if k not in sd]
    unexpected = [k for k in sd if k not in want]
    if missing or unexpected:
        raise MsfError(f"{wpath} does not match preset {cfg.name} in {folder / CONFIG_FILE}: missing {missing[:3]}, "
                       f"unexpected {unexpected[:3]}; pair the weights with the config.json they were saved with")
    for k, v in want.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            raise MsfError(f"{wpath}: tensor {k} has shape {tuple(sd[k].shape)} but {folder / CONFIG_FILE} "
                           f"(hidden_size {cfg.hidden_size}, depth {cfg.depth}, patch_size {cfg.patch_size}, ...) "
                           f"needs {tuple(v.shape)}; pair the weights with the config.json they were saved with")
    check_finite(sd, wpath)
    model.load_state_dict(sd)
    return cfg, model.eval()


# ---- cascade folders ---------------------------------------------------------------------------
def write_cascade(folder, stages: list[str], vae: str, sampling: dict | None = None) -> Path:
    """cascade.json; ``sampling`` ({"steps", "cfg"}, one value per stage) is the folder's own plan,
    used when a sampler is not told one (`schema.sampling`)."""
    folder = Path(folder)
    meta = {"format": FORMAT, "stages": list(stages), "vae": vae}
    if sampling:
        meta["sampling"] = schema.sampling(sampling, folder / CASCADE_FILE, len(stages), "pass one value per stage")
    atomic_write_json(folder / CASCADE_FILE, meta)
    return folder


def cascade_sampling(folder) -> dict:
    """cascade.json's own sampling plan, checked: {"steps": [...], "cfg": [...]}, either absent ({} = none)."""
    path = Path(folder) / CASCADE_FILE
    return schema.cascade(read_json(path, "cascade description"), path).get("sampling", {})


def read_cascade(folder, check_vae: bool = True) -> tuple[list[Path], Path]:
    """-> (stage folders in scale order, vae folder), checked for existence and consistency; with
    `check_vae`, each stage's recorded VAE (sha256, factors) must be the cascade's VAE."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MsfError(f"model folder not found: {folder}")
    path = folder / CASCADE_FILE
    meta = schema.cascade(read_json(path, "cascade description"), path)
    stages = [folder / s for s in meta["stages"]]
    vae = folder / meta["vae"]
    for p in stages + [vae]:
        if not p.is_dir():
            raise MsfError(f"{path} names {p}, which does not exist")
    metas = [load_stage_config(s) for s in stages]
    check_cascade([c for c, _ in metas])
    if check_vae and any("vae" in m for _, m in metas):
        from msf_train.vae import same_vae, vae_identity

        mine = vae_identity(vae)
        for s, (_, m) in zip(stages, metas):
            if "vae" in m and not same_vae(m["vae"], mine):
                raise MsfError(f"{s / CONFIG_FILE} records VAE sha256 {m['vae']['sha256'][:12]} (scaling "
                               f"{m['vae']['scaling_factor']:g}) but {vae} is sha256 {mine['sha256'][:12]} (scaling "
                               f"{mine['scaling_factor']:g}): put back the VAE the stage was trained with")
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
