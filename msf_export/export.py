"""Export a whole cascade folder (every stage's denoiser and the VAE decoder) into one artifact folder.

This is what `msf-export` runs; the per-engine steps live in onnx.py, aoti.py and tensorrt.py.

Safety rules (docs/EXPORT.md):
- the inputs (weights hashes, configs, engine, precision, batch range, device, tool versions) are
  fingerprinted; re-running with the same fingerprint and intact artifacts does nothing;
- a non-empty --out is only written to when it already holds an msf export of the same model;
  anything else (a user's files, an export of another model) needs --force;
- artifacts are written into a staging folder inside --out and moved into place, the manifest last,
  so a folder with a manifest always has complete, hash-checked artifacts.
"""
from __future__ import annotations

import math
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from msf_train.checkpoint import (WEIGHTS_FILE, cascade_sampling, load_stage, load_stage_config, read_cascade,
                                  sha256_file)
from msf_train import outdir
from msf_train.errors import MsfError
from msf_export import manifest as mf

PRECISIONS = ("fp32", "fp16")
DEFAULT_BATCH = (1, 8, 64)
# The VAE decoder is exported for at most this many latents per call and the runtime decodes larger
# batches in chunks: diffusers' Upsample2D branches on `batch >= 64`, a guard torch.export cannot keep
# dynamic (the export fails with "Constraints violated (batch)" for a range reaching 64). The decoder
# sees the image batch, never CFG's doubled one, so chunking costs nothing in practice.
DECODER_MAX_BATCH = 32


def decoder_batch(batch: tuple[int, int, int]) -> tuple[int, int, int]:
    """The decoder's range: from 1 (the last chunk of a large batch can be any size) to <= DECODER_MAX_BATCH."""
    _, opt, hi = batch
    hi = max(min(hi, DECODER_MAX_BATCH), 2)
    return 1, min(opt, hi), hi


@dataclass(frozen=True)
class ExportOptions:
    engine: str
    precision: str
    batch: tuple[int, int, int] = DEFAULT_BATCH  # min, opt, max
    device: str = "cpu"  # where AOTInductor compiles for; TensorRT is always cuda, ONNX is "any"
    external_data: bool | None = None  # None: by size
    timing_cache: str | None = None  # TensorRT only
    extra: dict = field(default_factory=dict)

    def describe(self) -> dict:
        return {"engine": self.engine, "precision": self.precision, "batch": list(self.batch),
                "device": self.device, "external_data": self.external_data}


def resolve_options(engine: str, precision: str | None = None, batch=(None, None, None), device: str | None = None,
                    external_data: bool | None = None, timing_cache: str | None = None) -> ExportOptions:
    """Fill defaults and validate: fp16 for TensorRT, fp32 otherwise; batch 1 <= min <= opt <= max, max >= 2."""
    if engine not in mf.ENGINES:
        raise MsfError(f"unknown engine {engine!r}; use one of {', '.join(mf.ENGINES)}")
    precision = precision or ("fp16" if engine == "trt" else "fp32")
    if precision not in PRECISIONS:
        raise MsfError(f"unknown precision {precision!r}; use fp32 or fp16")
    lo, opt, hi = (b if b is not None else d for b, d in zip(batch, DEFAULT_BATCH))
    if hi < lo:
        raise MsfError(f"--max-batch {hi} is below --min-batch {lo}")
    opt = min(max(opt, lo), hi)
    if lo < 1 or hi < 2:
        raise MsfError(f"batch range {lo}..{hi} is invalid: need --min-batch >= 1 and --max-batch >= 2 "
                       "(exporters trace at batch 2 to keep the batch axis dynamic)")
    if engine == "onnx":
        device = "any"
    elif engine == "trt":
        from msf_export.tensorrt import unavailable_reason

        why = unavailable_reason()
        if why:
            raise MsfError(f"cannot build TensorRT engines here: {why}; export --engine onnx and build on the GPU machine")
        device = "cuda"
    else:
        device = device or "cpu"
        if device not in ("cpu", "cuda"):
            raise MsfError(f"unknown device {device!r} for AOTInductor; use cpu or cuda")
        if device == "cuda" and not torch.cuda.is_available():
            raise MsfError("--device cuda but torch sees no CUDA device here; compile on the GPU machine or use --device cpu")
    return ExportOptions(engine, precision, (lo, opt, hi), device, external_data, timing_cache)


# ---- the model being exported ------------------------------------------------------------------
def describe_sources(model_dir) -> dict:
    """Hashes and configs of the cascade's stages and VAE: what the export depends on."""
    stage_dirs, vae_dir = read_cascade(model_dir)
    stages = []
    for i, folder in enumerate(stage_dirs):
        cfg, _ = load_stage_config(folder)
        weights = folder / WEIGHTS_FILE
        if not weights.is_file():
            raise MsfError(f"weights not found: {weights}")
        stages.append({"name": artifact_name(folder.name, i), "folder": str(folder.resolve()), "config": cfg.to_dict(),
                       "sha256": sha256_file(weights)})
    vae_files = {p.name: sha256_file(p) for p in sorted(vae_dir.iterdir()) if p.is_file() and not p.name.startswith(".")}
    from msf_train.vae import vae_class_name

    vae = {"folder": str(vae_dir.resolve()), "class": vae_class_name(vae_dir),
           "sha256": mf.fingerprint(vae_files), "files": vae_files}
    plan = cascade_sampling(model_dir)  # the plan travels with the model; absent, the manifest stays as before
    return {"stages": stages, "vae": vae, "plan": {"sampling": plan} if plan else {}}


def artifact_name(folder_name: str, index: int) -> str:
    """The stage's folder name when it is a safe file stem, else scale<i>."""
    ok = folder_name and folder_name != "decoder" and all(c.isalnum() or c in "-_" for c in folder_name)
    return folder_name if ok else f"scale{index}"


def same_model(old: dict, sources: dict) -> bool:
    try:
        old_hashes = [s["source"]["sha256"] for s in old["stages"]] + [old["decoder"]["source"]["sha256"]]
    except (KeyError, TypeError):
        return False
    return old_hashes == [s["sha256"] for s in sources["stages"]] + [sources["vae"]["sha256"]]


# ---- the output folder -------------------------------------------------------------------------
@dataclass
class ExportResult:
    status: str  # "exported" or "up-to-date"
    out: Path
    manifest: dict
    seconds: float = 0.0


def check_out_dir(out: Path, sources: dict, fp: str, force: bool) -> tuple[dict | None, bool]:
    """-> (previous manifest or None, up_to_date). Refuses to write over files that are not ours."""
    if not out.exists():
        return None, False
    if not out.is_dir():
        raise MsfError(f"--out {out} exists and is not a folder")
    if not outdir.user_entries(out):
        return None, False
    if not mf.has_manifest(out):
        if force:
            return None, False
        raise MsfError(f"--out {out} is not empty and holds no msf export: choose an empty folder or pass --force")
    try:
        old = mf.read_manifest(out)
    except MsfError:
        if force:
            return None, False
        raise
    if old.get("fingerprint") == fp and not force:
        try:
            mf.verify_files(out, old)
            return old, True
        except MsfError:
            pass  # damaged artifacts of the same model: re-export them
    if not same_model(old, sources) and not force:
        raise MsfError(f"--out {out} holds an export of a different model: choose another folder or pass --force")
    return old, False


def _install(staging: Path, out: Path, old: dict | None, manifest: dict) -> None:
    """Move staged files into place, manifest last; delete files only the old manifest listed."""
    (out / mf.MANIFEST_FILE).unlink(missing_ok=True)  # the folder is 'incomplete' until the new one lands
    new_files = {n for e in mf.entries(manifest) for n in e["files"]}
    for name in new_files:
        (staging / name).replace(out / name)
    if old:
        for e in mf.entries(old):
            for name in e.get("files", {}):
                if name not in new_files and "/" not in name:
                    (out / name).unlink(missing_ok=True)
    mf.write_manifest(out, manifest)


# ---- one stage ---------------------------------------------------------------------------------
def _export_one(opts: ExportOptions, name: str, module, reference, inputs, outputs, staging: Path,
                num_classes: int | None, b: tuple[int, int, int]) -> tuple[list[Path], dict, dict]:
    """Export one module with the chosen engine for batch range ``b`` -> (files, parity, extra manifest fields)."""
    if opts.engine == "onnx":
        from msf_export.onnx import export_onnx, onnx_parity

        files = export_onnx(module, inputs, outputs, staging / f"{name}.onnx", b, num_classes=num_classes,
                            external_data=opts.external_data)
        return files, onnx_parity(files[0], reference, inputs, outputs, b, num_classes), {}
    if opts.engine == "aoti":
        from msf_export.aoti import aoti_parity, export_aoti

        files = export_aoti(module, inputs, staging / f"{name}.pt2", b, opts.device, num_classes=num_classes)
        return files, aoti_parity(files[0], reference, inputs, outputs, b, opts.device, num_classes), {}
    # TensorRT: the plan is built from the (FP16) ONNX graph, which stays out of the artifact folder.
    from msf_export.onnx import export_onnx, onnx_parity, parity
    from msf_export.tensorrt import TrtPlan, build_plan, default_timing_cache

    onnx_dir = Path(tempfile.mkdtemp(prefix="onnx-", dir=staging))
    onnx_files = export_onnx(module, inputs, outputs, onnx_dir / f"{name}.onnx", b, num_classes=num_classes,
                             external_data=opts.external_data)
    onnx_check = onnx_parity(onnx_files[0], reference, inputs, outputs, b, num_classes)
    cache = Path(opts.timing_cache) if opts.timing_cache else default_timing_cache()
    files = build_plan(onnx_files[0], staging / f"{name}.plan", inputs, b, timing_cache=cache)
    shutil.rmtree(onnx_dir, ignore_errors=True)
    dev = torch.device("cuda")
    plan = TrtPlan(files[0], dev)
    check = {**parity(plan, reference.to(dev), inputs, outputs, b, num_classes, device=dev),
             "against": "torch fp32 cuda", "runtime": "tensorrt"}
    return files, check, {"onnx_parity": onnx_check, "timing_cache": str(cache)}


def export_cascade(model_dir, out, opts: ExportOptions, *, force: bool = False, command: list[str] | None = None,
                   progress: bool = True, log=print) -> ExportResult:
    """Export every stage of the cascade in ``model_dir`` and its VAE decoder into ``out``."""
    start = time.perf_counter()
    out = Path(out)
    sources = describe_sources(model_dir)
    tools = mf.tool_versions()
    target = None
    if opts.engine == "trt" or opts.device == "cuda":
        from msf_export.tensorrt import target_info

        target = target_info() if opts.engine == "trt" else {"gpu": torch.cuda.get_device_name()}
    fp = mf.fingerprint({"format": mf.FORMAT, "options": opts.describe(), "tools": tools, "target": target,
                         "stages": [{k: s[k] for k in ("name", "config", "sha256")} for s in sources["stages"]],
                         "vae": sources["vae"]["sha256"], **sources["plan"]})
    old, up_to_date = check_out_dir(out, sources, fp, force)
    if up_to_date:
        return ExportResult("up-to-date", out, old, time.perf_counter() - start)

    created = not out.exists()
    try:
        with outdir.lock(out, "msf-export"):  # one writer at a time; a killed export's staging is stale now
            for stale in mf.stale_staging(out):
                shutil.rmtree(stale, ignore_errors=True)
            return _export_locked(model_dir, out, opts, sources, tools, target, fp, old, command, progress, start)
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)  # a failed first export leaves nothing behind
        raise


def _export_locked(model_dir, out: Path, opts: ExportOptions, sources, tools, target, fp, old, command, progress,
                   start) -> ExportResult:
    from tqdm import tqdm

    from msf_train.model import export_contract
    from msf_train.vae import LatentDecoder, decoder_contract, load_vae

    staging = Path(tempfile.mkdtemp(prefix=".msf-staging-", dir=out))
    try:
        stage_dirs, vae_dir = read_cascade(model_dir)
        jobs = [("denoiser", s, d) for s, d in zip(sources["stages"], stage_dirs)] + [("decoder", sources["vae"], vae_dir)]
        entries = []
        bar = tqdm(jobs, desc=f"msf-export {opts.engine}", unit="stage", disable=not progress, file=sys.stderr)
        for kind, src, folder in bar:
            if kind == "denoiser":
                cfg, model = load_stage(folder)
                name, num_classes, precision = src["name"], cfg.num_classes, opts.precision
                inputs, outputs = export_contract(cfg)
                if precision == "fp16":
                    from msf_export.fp16 import Fp16Denoiser

                    module = Fp16Denoiser(model)
                else:
                    module = model
                extra = {"config": cfg.to_dict()}
                batch = opts.batch
            else:
                first = sources["stages"][0]["config"]
                name, num_classes = "decoder", None
                # The decoder stays FP32 in every variant: VAE decoders overflow in FP16 and it runs once per image.
                precision = "fp32"
                vae = load_vae(folder)
                model = module = LatentDecoder(vae).eval()
                inputs, outputs = decoder_contract(first["in_channels"], first["scale_sizes"][-1])
                extra = {"vae": {"class": src["class"], "config": dict(vae.config)}}
                batch = decoder_batch(opts.batch)
            bar.set_postfix_str(name)
            t0 = time.perf_counter()
            files, check, more = _export_one(opts, name, module, model, inputs, outputs, staging, num_classes, batch)
            if not all(math.isfinite(check[k]) for k in ("max_abs", "mean_abs")):
                raise MsfError(f"the {name} artifact's parity against PyTorch is not finite (max {check['max_abs']}, "
                               f"mean {check['mean_abs']}): the export or the weights are broken; nothing was written")
            main = files[0].name
            entries.append({
                "name": name, "kind": kind, **extra, "precision": precision,
                "source": {"path": src["folder"], "sha256": src["sha256"]},
                "artifact": main, "files": {f.name: sha256_file(f) for f in files},
                "inputs": [mf.spec_to_json(s) for s in inputs], "outputs": [mf.spec_to_json(s) for s in outputs],
                "batch": dict(zip(("min", "opt", "max"), batch)), "parity": check,
                "export_seconds": round(time.perf_counter() - t0, 2), **more})
        manifest = {
            "format": mf.FORMAT, "kind": mf.KIND, "engine": opts.engine, "precision": opts.precision,
            "device": opts.device, "batch": dict(zip(("min", "opt", "max"), opts.batch)),
            "external_data": opts.external_data, "fingerprint": fp,
            "stages": entries[:-1], "decoder": entries[-1], "tools": tools, "target": target,
            "command": command or [], "created": mf.now_iso(),
            **sources["plan"],
        }
        _install(staging, out, old, manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult("exported", out, manifest, time.perf_counter() - start)
