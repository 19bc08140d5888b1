"""`manifest.json`: what an export folder holds, where it came from, and how to check it.

Every artifact folder written by `msf-export` carries one (DESIGN.md section 3). The runtime reads it
instead of flags: the stage configs, tensor names and shapes, batch range and precision all come from
here. Layout (format 1):

    {"format": 1, "kind": "msf-export", "engine": "onnx" | "trt" | "aoti",
     "precision": "fp32" | "fp16", "device": "cpu" | "cuda",
     "batch": {"min": 1, "opt": 8, "max": 64},
     "fingerprint": sha256 of the inputs and options (re-running with the same one is a no-op),
     "stages": [{"name": "scale0", "kind": "denoiser", "config": ModelConfig.to_dict(),
                 "source": {"path": ..., "sha256": ...}, "files": {file name: sha256},
                 "artifact": main file name, "precision": ..., "inputs": [...], "outputs": [...],
                 "parity": {"max_abs": ..., "mean_abs": ..., "batch": ..., "against": ...}}, ...],
     "decoder": {same keys, "kind": "decoder", "vae": {"class": ..., "config": {...}}},
     "tools": {"msf", "torch", "onnx", "onnxruntime", "tensorrt", "python"},
     "target": {TensorRT version, GPU name, ... (trt plans only)},
     "command": [argv], "created": ISO time,
     "sampling": {"steps": [...], "cfg": [...]} (optional: the cascade.json plan, msf_train.schema.sampling)}

The manifest is written last and atomically, so a folder with a manifest has complete artifacts.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
from pathlib import Path

from msf_train import schema
from msf_train.checkpoint import atomic_write_json, read_json, sha256_file
from msf_train.errors import MsfError
from msf_train.model import TensorSpec

FORMAT = 1
MANIFEST_FILE = "manifest.json"
KIND = "msf-export"
ENGINES = ("onnx", "trt", "aoti")


# ---- tensor specs <-> JSON ---------------------------------------------------------------------
def spec_to_json(spec: TensorSpec) -> dict:
    return {"name": spec.name, "shape": list(spec.shape), "dtype": spec.dtype}


def spec_from_json(d: dict) -> TensorSpec:
    return TensorSpec(d["name"], tuple(d["shape"]), d["dtype"])


def concrete_shape(spec: TensorSpec, batch: int) -> tuple[int, ...]:
    return tuple(batch if s == "batch" else int(s) for s in spec.shape)


# ---- provenance --------------------------------------------------------------------------------
def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:  # not installed
        return None


def tool_versions() -> dict[str, str | None]:
    import torch

    return {"msf": _version("msf"), "torch": torch.__version__, "onnx": _version("onnx"),
            "onnxscript": _version("onnxscript"), "onnxruntime": _version("onnxruntime") or _version("onnxruntime-gpu"),
            "tensorrt": _version("tensorrt") or _version("tensorrt-cu12"), "python": platform.python_version()}


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def fingerprint(obj) -> str:
    """sha256 of a JSON-able description of the inputs (weights hashes, configs, options)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


# ---- reading and checking ----------------------------------------------------------------------
def has_manifest(folder) -> bool:
    return (Path(folder) / MANIFEST_FILE).is_file()


def read_manifest(folder, engine: str | None = None) -> dict:
    """Read and validate `folder/manifest.json` (format, kind, engine); raises MsfError in one line."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MsfError(f"artifact folder not found: {folder}")
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise MsfError(f"{folder} has no {MANIFEST_FILE}: not an msf-export folder (make one with msf-export)")
    m = read_json(path, "export manifest")
    if not isinstance(m, dict) or m.get("kind") != KIND:
        raise MsfError(f"{path} is not an msf-export manifest")
    fmt = m.get("format")
    if not isinstance(fmt, int):
        raise MsfError(f"{path} has no valid format number; re-export with msf-export --force")
    if fmt > FORMAT:
        raise MsfError(f"{path} has format {fmt}, newer than this msf reads ({FORMAT}): upgrade msf")
    if m.get("engine") not in ENGINES:
        raise MsfError(f"{path} names unknown engine {m.get('engine')!r}; known: {', '.join(ENGINES)}")
    if engine is not None and m["engine"] != engine:
        raise MsfError(f"{folder} holds a {m['engine']} export, not {engine}: use --backend {m['engine']} or re-export")
    schema.manifest(m, path)  # every field typed and in range, one line naming the field
    return m


def stale_staging(folder) -> list[Path]:
    """Staging folders left by an export that was killed (a running export holds the folder's lock)."""
    return sorted(p for p in Path(folder).glob(".msf-staging-*") if p.is_dir())


def entries(manifest: dict) -> list[dict]:
    """Stage entries in scale order, then the decoder."""
    return list(manifest["stages"]) + [manifest["decoder"]]


def verify_files(folder, manifest: dict) -> None:
    """Every artifact file exists and matches its recorded sha256 (one-line MsfError otherwise)."""
    folder = Path(folder)
    for entry in entries(manifest):
        for name, digest in entry["files"].items():
            p = folder / name
            if not p.is_file():
                raise MsfError(f"{p} is missing (listed in {folder / MANIFEST_FILE}); re-export with msf-export --force")
            got = sha256_file(p)
            if got != digest:
                raise MsfError(f"{p} does not match its manifest (sha256 {got[:12]}... != {digest[:12]}...): "
                               f"the file changed or is damaged; re-export with msf-export --force")


def check_batch(entry: dict, manifest: dict, batch: int) -> None:
    """The batch must lie in the entry's exported range (a decoder's range may be narrower: it chunks)."""
    rng = entry.get("batch", manifest["batch"])
    lo, hi = rng["min"], rng["max"]
    if not lo <= batch <= hi:
        raise MsfError(f"batch {batch} is outside the exported range {lo}..{hi} of {entry['name']} "
                       f"(classifier-free guidance doubles the batch): re-export with --max-batch {max(batch, hi)}")


def write_manifest(folder, manifest: dict) -> Path:
    import os

    path = Path(folder) / MANIFEST_FILE
    atomic_write_json(path, manifest)
    mask = os.umask(0)  # the temp file behind the atomic write is 0600; give the usual permissions
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)
    return path


def open_export(folder, engine: str) -> dict:
    """What every runtime backend does first: read the manifest (format, engine) and hash-check the files."""
    m = read_manifest(folder, engine)
    verify_files(folder, m)
    return m


def entry_specs(entry: dict) -> tuple[list[TensorSpec], list[TensorSpec]]:
    return [spec_from_json(s) for s in entry["inputs"]], [spec_from_json(s) for s in entry["outputs"]]


def stage_config(entry: dict):
    from msf_train.config import ModelConfig

    return ModelConfig.from_dict(entry["config"])
