"""The latent cache: every training image encoded once, at the full and at the base resolution (the
two inputs of Algorithm 1), so training never touches pixels or the VAE.

Layout of a cache folder (docs/DATA.md):
    index.json              written last: a cache with an index is complete
    shard-00000.safetensors "full" (n, C, H, W) and "base" (n, C, h, w), float16 by default
    shard-00001.safetensors ...
The index holds the count, the shards and their counts, the labels (one per image, shard order),
the latent and image sizes, the dtype, the dataset description, the number of unreadable images
skipped, and the VAE's identity (sha256 of its weights file, scaling and shift factors): training
refuses a cache made with another VAE.

Latents follow the project's convention (msf_train.vae): ``(E(x).latent_dist.sample() - shift) *
scaling_factor``, sampled once with a seeded generator.

Reading memory-maps the shards (no copy, and the page cache is shared by the processes of a
torchrun job), so a cache larger than memory still trains.
"""
from __future__ import annotations

import json
import struct
import sys
import time
from pathlib import Path

import numpy as np
import torch

from msf_train import schema
from msf_train.checkpoint import atomic_save_safetensors, atomic_write_json, read_json
from msf_train.errors import MsfError

FORMAT = 1
KIND = "msf-latent-cache"
INDEX_FILE = "index.json"
DEMO_SCALES = (12, 16)  # 96 px base, 128 px full (DESIGN.md section 4)
PAPER_SCALES = (24, 32)
DTYPES = {"float16": torch.float16, "float32": torch.float32}
_NP_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "I64": np.int64}


def parse_scales(spec) -> tuple[int, int]:
    """'12,16' -> (12, 16): base and full latent sides (only the smallest and largest scale matter)."""
    try:
        sizes = [int(s) for s in str(spec).replace(" ", "").split(",") if s]
    except ValueError:
        raise MsfError(f"--scales {spec!r}: give latent sides, e.g. 12,16") from None
    if not sizes or any(s < 1 for s in sizes) or sizes != sorted(sizes):
        raise MsfError(f"--scales {spec!r}: give increasing latent sides, e.g. 12,16")
    return sizes[0], sizes[-1]


# ---- building ----------------------------------------------------------------------------------
def build_cache(vae_folder, data, out, *, scales=DEMO_SCALES, classes=None, per_class: int = 100, seed: int = 0,
                batch: int = 64, device: str = "auto", workers: int | None = None, shard_size: int = 8192,
                dtype: str = "float16", show_progress: bool = True, log=print, force: bool = False) -> dict:
    """Encode a dataset ('shapes' or an ImageNet-style folder) into a cache folder. Returns the index.

    Re-running with the same VAE, data and sizes over a complete cache is a no-op."""
    from msf_train import data as D
    from msf_train.vae import vae_identity

    base_lat, full_lat = int(scales[0]), int(scales[-1])
    if dtype not in DTYPES:
        raise MsfError(f"--dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    # Everything that can be checked cheaply is checked before the VAE loads.
    vae_id = vae_identity(vae_folder)
    factor = _vae_factor(vae_folder)
    full_px, base_px = full_lat * factor, base_lat * factor
    if str(data) == "shapes":
        dataset = D.ShapesDataset(D.parse_classes(classes), per_class, seed, full_px, base_px)
    else:
        if classes is not None:
            raise MsfError("--classes applies to the shapes dataset only; an image folder's classes are its sub-folders")
        dataset = D.ImageFolder(data, full_px, base_px)
    out = Path(out)
    key = {"vae": vae_id, "data": dataset.describe(), "scales": [base_lat, full_lat], "dtype": dtype, "seed": seed}
    old = out / INDEX_FILE
    if old.is_file():
        try:
            prev = json.loads(old.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            prev = None
        if isinstance(prev, dict) and all(prev.get(k) == v for k, v in key.items()) and prev.get("count"):
            log(f"cache {out} is up to date ({prev['count']} images); nothing to do")
            return prev
        if isinstance(prev, dict) and prev.get("kind") == KIND and _source(prev) != _source(key) and not force:
            raise MsfError(f"--out {out} holds a cache of other inputs (VAE, data, scales, dtype or seed differ): "
                           f"choose another folder, or pass --force to rebuild it")
    if batch < 1 or shard_size < 1:
        raise MsfError("--batch and --shard-size must be >= 1")
    from msf_train import outdir

    is_cache = lambda f: (f / INDEX_FILE).is_file() or any(f.glob("shard-*.safetensors"))  # noqa: E731
    with outdir.claim(out, "msf-train cache", _source(key), force, recognise=is_cache):
        return _encode(vae_folder, data, dataset, out, key, base_lat, full_lat, full_px, base_px, factor, seed,
                       batch, device, workers, shard_size, dtype, show_progress, log)


def _source(key: dict) -> dict:
    """What makes a cache folder "the same inputs": VAE, data source, sizes, dtype, seed. An image
    folder counts by its path: after adding images, rebuilding into the same --out is a refresh."""
    data = key.get("data") or {}
    if isinstance(data, dict) and data.get("kind") == "folder":
        data = {"kind": "folder", "root": data.get("root")}
    return {k: key.get(k) for k in ("vae", "scales", "dtype", "seed")} | {"data": data}


def _encode(vae_folder, data, dataset, out, key, base_lat, full_lat, full_px, base_px, factor, seed, batch, device,
            workers, shard_size, dtype, show_progress, log) -> dict:
    from msf_train import data as D
    from msf_train.util import default_workers, progress, resolve_device
    from msf_train.vae import encode, load_vae

    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    vae = load_vae(vae_folder, dev)
    workers = default_workers() if workers is None else workers
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=False, num_workers=workers,
                                         pin_memory=dev.type == "cuda", prefetch_factor=4 if workers else None)
    channels = int(vae.config.latent_channels)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    shards, labels, skipped_examples = [], [], []
    skipped = 0
    buf_full, buf_base = [], []

    def flush():
        if not buf_full:
            return
        name = f"shard-{len(shards):05d}.safetensors"
        full, base = torch.cat(buf_full), torch.cat(buf_base)
        atomic_save_safetensors(out / name, {"full": full, "base": base})
        shards.append({"file": name, "count": int(full.shape[0])})
        buf_full.clear()
        buf_base.clear()

    bar = progress(len(dataset), 0, show_progress, desc="cache", unit="img")
    seen = 0
    for full_u8, base_u8, y, ok in loader:
        pos = torch.arange(seen, seen + len(y))  # positions in the dataset
        for i in pos[~ok].tolist():
            skipped += 1
            if len(skipped_examples) < 20 and hasattr(dataset, "files"):
                skipped_examples.append(str(dataset.files[i]))
        seen += len(y)
        bar.update(len(y))
        ids = pos[ok].tolist()
        if not ids:
            continue
        full_u8, base_u8, y = full_u8[ok], base_u8[ok], y[ok]
        zf = encode(vae, D.to_unit(full_u8.to(dev, non_blocking=True)), noise=_noise(seed, ids, 0, channels, full_lat))
        zb = encode(vae, D.to_unit(base_u8.to(dev, non_blocking=True)), noise=_noise(seed, ids, 1, channels, base_lat))
        if zf.shape[-1] != full_lat or zb.shape[-1] != base_lat:
            raise MsfError(f"the VAE maps {full_px} px to {zf.shape[-1]}, not {full_lat}: it is not f{factor}")
        buf_full.append(zf.to("cpu", DTYPES[dtype]))
        buf_base.append(zb.to("cpu", DTYPES[dtype]))
        labels.extend(int(v) for v in y)
        if sum(len(b) for b in buf_full) >= shard_size:
            flush()
    flush()
    bar.close()
    if not labels:
        raise MsfError(f"no readable images in {data}: all {skipped} files failed to decode")
    index = {"format": FORMAT, "kind": KIND, **key, "count": len(labels), "shards": shards, "labels": labels,
             "channels": int(zf.shape[1]), "full_size": full_lat,
             "base_size": base_lat, "full_image_size": full_px, "base_image_size": base_px,
             "num_labels": len(set(labels)), "max_label": max(labels), "skipped": skipped,
             "skipped_examples": skipped_examples, "vae_path": str(Path(vae_folder).resolve()),
             "encode": "(mean + std * noise - shift) * scaling_factor; noise seeded by (seed, position, full|base)",
             "command": " ".join(sys.argv), "wall_s": round(time.time() - t0, 2)}
    atomic_write_json(out / INDEX_FILE, index)
    listed = {s["file"] for s in shards}
    for stale in out.glob("shard-*.safetensors"):
        if stale.name not in listed:
            stale.unlink()
    if skipped:
        log(f"skipped {skipped} unreadable image(s), e.g. {skipped_examples[:3]}")
    return index


def _noise(seed: int, ids: list[int], which: int, channels: int, side: int) -> torch.Tensor:
    """The latent sampling noise of each image, seeded by (seed, image position, full/base): the cache
    does not depend on the batch size or the device."""
    from msf_train.util import step_seed

    return torch.stack([torch.randn(channels, side, side, generator=torch.Generator().manual_seed(
        step_seed(seed, i, which, 0xCAC4E))) for i in ids])


def _vae_factor(folder) -> int:
    """Pixel side / latent side: each level after the first downsamples by 2 (AutoencoderKL and Tiny)."""
    cfg = json.loads((Path(folder) / "config.json").read_text())
    levels = cfg.get("block_out_channels") or cfg.get("encoder_block_out_channels") or [0] * 4
    return 2 ** (len(levels) - 1)


# ---- reading -----------------------------------------------------------------------------------
def _safetensors_header(path: Path) -> tuple[dict, int]:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header, 8 + n


def mmap_safetensors(path) -> dict[str, np.ndarray]:
    """Memory-map every tensor of a safetensors file as a read-only numpy array (no copy)."""
    path = Path(path)
    try:
        header, start = _safetensors_header(path)
        out = {}
        for name, info in header.items():
            a, b = info["data_offsets"]
            dt = np.dtype(_NP_DTYPES[info["dtype"]]).newbyteorder("<")
            shape = tuple(info["shape"])
            if b - a != int(np.prod(shape)) * dt.itemsize:
                raise ValueError(f"tensor {name} has the wrong byte count")
            out[name] = np.memmap(path, dtype=dt, mode="r", offset=start + a, shape=shape)
        return out
    except (OSError, ValueError, KeyError, struct.error, json.JSONDecodeError) as e:
        raise MsfError(f"cannot read cache shard {path}: {e}; re-create the cache") from None


class LatentCache:
    """A cache folder, opened: its index, labels (numpy int64) and memory-mapped shards."""

    def __init__(self, folder):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise MsfError(f"latent cache not found: {self.folder} (make one with msf-train cache)")
        meta = read_json(self.folder / INDEX_FILE, "latent cache index")
        if not isinstance(meta, dict) or meta.get("kind") != KIND:
            raise MsfError(f"{self.folder} is not a latent cache (its {INDEX_FILE} is not msf-train cache's)")
        schema.cache_index(meta, self.folder / INDEX_FILE)
        self.meta = meta
        self.labels = np.asarray(meta["labels"], dtype=np.int64)
        self.count = int(meta["count"])
        self.full_size, self.base_size = int(meta["full_size"]), int(meta["base_size"])
        self.channels = int(meta["channels"])
        self.vae: dict = meta["vae"]
        if len(self.labels) != self.count or sum(s["count"] for s in meta["shards"]) != self.count:
            raise MsfError(f"{self.folder / INDEX_FILE} is inconsistent (labels, shards and count disagree); "
                           f"re-create the cache")
        self._shards = None

    @property
    def shards(self) -> list[dict[str, np.ndarray]]:
        if self._shards is None:
            self._shards = [mmap_safetensors(self.folder / s["file"]) for s in self.meta["shards"]]
            for s, info in zip(self._shards, self.meta["shards"]):
                if s["full"].shape[0] != info["count"] or s["base"].shape[0] != info["count"]:
                    raise MsfError(f"cache shard {info['file']} does not hold {info['count']} latents; re-create the cache")
        return self._shards

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for s in self.shards for a in s.values())

    def check_vae(self, vae_folder) -> None:
        from msf_train.vae import same_vae, vae_identity

        mine = vae_identity(vae_folder)
        if not same_vae(mine, self.vae):
            raise MsfError(f"cache {self.folder} was made with another VAE (sha256 {self.vae['sha256'][:12]}, "
                           f"scaling {self.vae['scaling_factor']:g}) than {vae_folder} (sha256 {mine['sha256'][:12]}, "
                           f"scaling {mine['scaling_factor']:g}); rebuild it: msf-train cache --vae {vae_folder} ...")

    def check_classes(self, num_classes: int, preset: str) -> None:
        if self.count and int(self.labels.max()) >= num_classes:
            raise MsfError(f"cache {self.folder} has class id {int(self.labels.max())}, outside preset {preset}'s "
                           f"{num_classes} classes (0..{num_classes - 1}); use a preset with more classes or "
                           f"rebuild the cache with fewer (--classes {num_classes})")
        if self.count and int(self.labels.min()) < 0:
            raise MsfError(f"cache {self.folder} has a negative class id; re-create the cache")

    def gather(self, idx: np.ndarray, name: str) -> torch.Tensor:
        """Rows `idx` (global, any order) of tensor `name` ('full' or 'base') -> a CPU tensor in the cache dtype."""
        bounds = np.cumsum([0] + [s["count"] for s in self.meta["shards"]])
        shard = np.searchsorted(bounds, idx, side="right") - 1
        first = self.shards[0][name]
        out = np.empty((len(idx), *first.shape[1:]), dtype=first.dtype)
        for k in np.unique(shard):
            sel = shard == k
            out[sel] = self.shards[k][name][idx[sel] - bounds[k]]
        return torch.from_numpy(out)

    def load(self, name: str) -> torch.Tensor:
        """The whole tensor `name`, concatenated over shards (a copy in memory)."""
        return torch.from_numpy(np.concatenate([np.asarray(s[name]) for s in self.shards]))
