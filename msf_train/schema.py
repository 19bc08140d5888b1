"""One way to read (and write) every JSON file msf writes: cascade.json, a stage's config.json,
an export's manifest.json, a checkpoint's state/latest.json and a latent cache's index.json.

Each reader checks types, ranges and cross-field rules and raises `MsfError` with one line that names
the file, the field and the fix, so a hand-edited or damaged file never reaches code that would
fail with a traceback (or worse, run with a wrong value). Writing is strict JSON: `dumps` refuses
NaN and infinities (`allow_nan=False`), which Python's json would otherwise write as bare `NaN`.

Unknown top-level fields are ignored (a file may carry provenance); unknown fields of a model
config are refused, because they mean a newer msf wrote a model this one cannot build.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

from msf_train.errors import MsfError

FORMAT = 1  # the one format number every file above carries today
SHA256 = re.compile(r"[0-9a-f]{64}")


# ---- strict JSON -------------------------------------------------------------------------------
def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def load(path, what: str = "file"):
    """Parse a JSON file (bare NaN/Infinity refused); a missing or unreadable file is one line."""
    path = Path(path)
    if not path.is_file():
        raise MsfError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(), parse_constant=_no_constant)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, RecursionError) as e:
        msg = e.msg if isinstance(e, json.JSONDecodeError) else str(e) or type(e).__name__
        raise MsfError(f"{what} {path} is not valid JSON ({msg}); re-create it") from None


def dumps(obj, path=None) -> str:
    """Strict JSON text (sorted keys, indent 2); NaN or infinity anywhere is an MsfError naming `path`."""
    try:
        return json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n"
    except ValueError as e:
        raise MsfError(f"refusing to write {path or 'a JSON file'}: {e} (a value is NaN or infinite; "
                       f"the computation that produced it diverged)") from None


# ---- field checks ------------------------------------------------------------------------------
class Fields:
    """Typed access to one JSON object of file `path`; every failure names file, field and fix."""

    def __init__(self, obj, path, fix: str, prefix: str = ""):
        self.path, self.fix, self.prefix = Path(path), fix, prefix
        if not isinstance(obj, dict):
            where = f"'{prefix.rstrip('.')}'" if prefix else "its top level"
            raise MsfError(f"{self.path}: {where} must be a JSON object, not {_kind(obj)}; {fix}")
        self.obj = obj

    def fail(self, key: str, problem: str, fix: str | None = None):
        raise MsfError(f"{self.path}: field '{self.prefix}{key}' {problem}; {fix or self.fix}")

    def get(self, key, kind, *, default=dataclasses.MISSING, lo=None, hi=None, choices=None, fix=None):
        if key not in self.obj:
            if default is dataclasses.MISSING:
                self.fail(key, "is missing", fix)
            return default
        v = self.obj[key]
        if kind is int and (isinstance(v, bool) or not isinstance(v, int)):
            self.fail(key, f"must be a whole number, not {_kind(v)}", fix)
        if kind is float:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                self.fail(key, f"must be a number, not {_kind(v)}", fix)
            if not math.isfinite(v):
                self.fail(key, f"must be finite, not {v}", fix)
            v = float(v)
        if kind in (str, bool, list, dict) and not isinstance(v, kind):
            self.fail(key, f"must be {_KINDS[kind]}, not {_kind(v)}", fix)
        if lo is not None and v < lo:
            self.fail(key, f"is {v}, below the smallest allowed {lo}", fix)
        if hi is not None and v > hi:
            self.fail(key, f"is {v}, above the largest allowed {hi}", fix)
        if choices is not None and v not in choices:
            self.fail(key, f"is {v!r}; use one of {', '.join(map(str, choices))}", fix)
        return v

    def sub(self, key, fix=None) -> "Fields":
        v = self.get(key, dict, fix=fix)
        return Fields(v, self.path, fix or self.fix, f"{self.prefix}{key}.")

    def int_list(self, key, lo=1, *, nonempty=True, increasing=False, fix=None) -> list[int]:
        v = self.get(key, list, fix=fix)
        if nonempty and not v:
            self.fail(key, "is empty", fix)
        for x in v:
            if isinstance(x, bool) or not isinstance(x, int) or x < lo:
                self.fail(key, f"must hold whole numbers >= {lo}, found {x!r}", fix)
        if increasing and any(b <= a for a, b in zip(v, v[1:])):
            self.fail(key, f"must be increasing, got {v}", fix)
        return v

    def name(self, key, *, fix=None, default=dataclasses.MISSING) -> str:
        """A plain file or folder name inside the file's folder (no separators, not '.' or '..')."""
        v = self.get(key, str, fix=fix, default=default)
        if not safe_name(v):
            self.fail(key, f"is {v!r}, not a plain file or folder name", fix)
        return v

    def format(self, newest: int = FORMAT, fix=None) -> int:
        v = self.get("format", int, fix=fix)
        if v > newest:
            raise MsfError(f"{self.path} has format {v}, newer than this msf reads ({newest}): upgrade msf")
        if v < 1:
            self.fail("format", f"is {v}; formats start at 1", fix)
        return v


_KINDS = {str: "a string", bool: "true or false", list: "a list", dict: "an object", int: "a whole number",
          float: "a number"}


def _kind(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true/false"
    for k, name in ((str, "a string"), (int, "a whole number"), (float, "a number"), (list, "a list"),
                    (dict, "an object")):
        if isinstance(v, k):
            return f"{name} ({json.dumps(v)[:40]})" if k in (str, int, float) else name
    return type(v).__name__


def safe_name(v: str) -> bool:
    return bool(v) and v not in (".", "..") and "/" not in v and "\\" not in v and "\0" not in v


# ---- model configs (stage config.json "model", manifest stage "config") ------------------------
def model_config(obj, path, prefix: str = "model.", fix: str = "re-create the folder with msf-train"):
    """A ModelConfig from its JSON object, every field typed and in range."""
    from msf_train.config import ModelConfig

    f = Fields(obj, path, fix, prefix)
    known = {fl.name for fl in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(obj) - known)
    if unknown:
        raise MsfError(f"{path}: '{prefix.rstrip('.')}' has unknown fields {unknown}; it was written by a newer "
                       f"msf: upgrade msf")
    vals = dict(
        name=f.get("name", str),
        depth=f.get("depth", int, lo=1, hi=1000),
        hidden_size=f.get("hidden_size", int, lo=1, hi=1 << 16),
        num_heads=f.get("num_heads", int, lo=1, hi=1 << 12),
        patch_size=f.get("patch_size", int, lo=1, hi=1 << 10),
        latent_size=f.get("latent_size", int, lo=1, hi=1 << 14),
        in_channels=f.get("in_channels", int, lo=1, hi=1 << 12),
        has_prior=f.get("has_prior", bool),
        num_classes=f.get("num_classes", int, lo=1, hi=1 << 24),
        mlp_ratio=f.get("mlp_ratio", float, lo=1e-3, hi=64.0),
        scale_index=f.get("scale_index", int, lo=0, hi=64),
        residual_scale=f.get("residual_scale", float, lo=1e-12, hi=1e12),
    )
    vals["scale_sizes"] = tuple(f.int_list("scale_sizes", increasing=True))
    # Fields added after format 1 was fixed: optional (older files lack them), typed by their default;
    # ModelConfig itself checks their values (e.g. the parameterization's choices).
    for fl in dataclasses.fields(ModelConfig):
        if fl.name not in vals and fl.name in obj and fl.default is not dataclasses.MISSING:
            kind = type(fl.default)
            vals[fl.name] = f.get(fl.name, float if kind is float else kind)
    if vals["scale_index"] >= len(vals["scale_sizes"]):
        f.fail("scale_index", f"is {vals['scale_index']} but scale_sizes has {len(vals['scale_sizes'])} entries")
    try:
        return ModelConfig(**vals)
    except MsfError as e:
        raise MsfError(f"{path}: {e}; {fix}") from None


# ---- the files ---------------------------------------------------------------------------------
def cascade(obj, path) -> dict:
    """cascade.json -> {"format", "stages": [names], "vae": name}."""
    fix = "re-create it with msf-train assemble"
    f = Fields(obj, path, fix)
    fmt = f.format()
    stages = f.get("stages", list)
    if not stages:
        f.fail("stages", "lists no stages")
    for s in stages:  # folder names or paths, relative to the cascade folder or absolute
        if not isinstance(s, str) or not s.strip() or "\0" in s:
            f.fail("stages", f"must list stage folders (names or paths), found {_kind(s)}")
    if len(set(stages)) != len(stages):
        f.fail("stages", f"lists a folder twice: {stages}")
    vae = f.get("vae", str, default="vae")
    if not vae.strip() or "\0" in vae:
        f.fail("vae", f"must name the VAE folder, got {vae!r}")
    if vae in stages:
        f.fail("vae", f"names {vae!r}, which is also a stage")
    out = {**obj, "format": fmt, "stages": list(stages), "vae": vae}
    if "sampling" in obj:
        out["sampling"] = sampling(obj["sampling"], path, len(stages), "fix the entry or delete it (then msf-run "
                                   "uses the paper's plan), or re-create it with msf-train assemble --steps/--cfg")
    return out


def sampling(obj, path, num_stages: int, fix: str) -> dict:
    """A model folder's own sampling plan, the "sampling" entry of cascade.json (and of an export's
    manifest.json, copied from it): {"steps": [one whole number >= 1 per stage], "cfg": [one
    number >= 0 per stage]}, either may be absent. msf-run, msf-eval and the Python API sample with
    it when not told otherwise (runtime.sampler.make_plan): the steps and guidance the model was
    tuned at, in place of the paper's 100 + 50 steps and CFG 1.4."""
    f = Fields(obj, path, fix, "sampling.")
    plan = {}
    if "steps" in obj:
        plan["steps"] = f.int_list("steps", lo=1)
    if "cfg" in obj:
        cfg = f.get("cfg", list)
        for w in cfg:
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
                f.fail("cfg", f"must hold finite numbers >= 0 (1 = no guidance), found {w!r}")
        plan["cfg"] = [float(w) for w in cfg]
    for key, vals in plan.items():
        if len(vals) != num_stages:
            f.fail(key, f"has {len(vals)} value(s) but there are {num_stages} stage(s)")
    return plan


def stage_config(obj, path):
    """A stage's config.json -> (ModelConfig, the whole record)."""
    fix = "re-create the stage with msf-train (or copy config.json from the folder the weights came from)"
    f = Fields(obj, path, fix)
    f.format()
    if "model" not in obj:
        raise MsfError(f"{path} has no 'model' config: not an msf stage folder")
    cfg = model_config(obj["model"], path, "model.", fix)
    if "vae" in obj:
        vae_record(obj["vae"], path, "vae.")
    if "step" in obj:
        f.get("step", int, lo=0)
    return cfg, obj


def vae_record(obj, path, prefix="vae.") -> dict:
    f = Fields(obj, path, "re-create it with msf-train", prefix)
    sha = f.get("sha256", str)
    if not SHA256.fullmatch(sha):
        f.fail("sha256", "is not a sha256 hex digest")
    enc = f.get("encoder_sha256", str, default=None)  # absent in records written before it existed
    if enc is not None and not SHA256.fullmatch(enc):
        f.fail("encoder_sha256", "is not a sha256 hex digest")
    f.get("scaling_factor", float)
    f.get("shift_factor", float, default=0.0)
    return obj


def latest(obj, path) -> tuple[int, str]:
    """state/latest.json -> (step, folder name)."""
    f = Fields(obj, path, f"delete {Path(path).parent} to start over (or restore it from a backup)")
    step = f.get("step", int, lo=0)
    d = f.name("dir")
    if d != f"step-{step:08d}":
        f.fail("dir", f"is {d!r} but step is {step} (expected 'step-{step:08d}')")
    return step, d


def cache_index(obj, path) -> dict:
    """A latent cache's index.json, counts cross-checked."""
    fix = "re-create the cache with msf-train cache"
    f = Fields(obj, path, fix)
    f.format()
    count = f.get("count", int, lo=0)
    for k in ("full_size", "base_size", "channels"):
        f.get(k, int, lo=1)
    labels = f.get("labels", list)
    if any(isinstance(v, bool) or not isinstance(v, int) for v in labels):
        f.fail("labels", "must hold whole numbers (class ids)")
    shards = f.get("shards", list)
    for i, s in enumerate(shards):
        sf = Fields(s, path, fix, f"shards[{i}].")
        sf.name("file")
        sf.get("count", int, lo=0)
    if len(labels) != count or sum(s["count"] for s in shards) != count:
        raise MsfError(f"{path} is inconsistent (labels, shards and count disagree); {fix}")
    vae_record(f.get("vae", dict), path)
    return obj


def manifest(obj, path) -> dict:
    """An export's manifest.json: every field the runtime and `msf-export verify/info` read."""
    fix = "re-export with msf-export --force"
    f = Fields(obj, path, fix)
    f.format()
    f.get("engine", str)
    f.get("precision", str, choices=("fp32", "fp16"))
    b = f.sub("batch")
    lo, opt, hi = b.get("min", int, lo=1), b.get("opt", int, lo=1), b.get("max", int, lo=1)
    if not lo <= opt <= hi:
        b.fail("max", f"batch range min {lo} <= opt {opt} <= max {hi} does not hold")
    stages = f.get("stages", list)
    if not stages:
        f.fail("stages", "lists no stages")
    for i, e in enumerate(stages):
        _entry(e, path, f"stages[{i}].", fix, denoiser=True)
    _entry(f.get("decoder", dict), path, "decoder.", fix, denoiser=False)
    if "sampling" in obj:
        sampling(obj["sampling"], path, len(stages), fix)
    return obj


def _entry(e, path, prefix, fix, denoiser: bool) -> None:
    f = Fields(e, path, fix, prefix)
    f.name("name")
    files = f.get("files", dict)
    if not files:
        f.fail("files", "lists no files")
    for name, digest in files.items():
        if not safe_name(name) or not isinstance(digest, str) or not SHA256.fullmatch(digest):
            f.fail("files", f"entry {name!r} must map a file name to a sha256 hex digest")
    art = f.name("artifact")
    if art not in files:
        f.fail("artifact", f"names {art!r}, which 'files' does not list")
    for key in ("inputs", "outputs"):
        specs = f.get(key, list)
        if not specs:
            f.fail(key, "is empty")
        for j, s in enumerate(specs):
            sf = Fields(s, path, fix, f"{prefix}{key}[{j}].")
            sf.get("name", str)
            sf.get("dtype", str)
            for d in sf.get("shape", list):
                if d != "batch" and (isinstance(d, bool) or not isinstance(d, int) or d < 1):
                    sf.fail("shape", f"must hold 'batch' or sizes >= 1, found {d!r}")
    p = f.sub("parity")
    p.get("max_abs", float, lo=0.0, fix="the export's parity check was not finite: " + fix)
    p.get("mean_abs", float, lo=0.0, fix="the export's parity check was not finite: " + fix)
    if "batch" in e:
        b = f.sub("batch")
        lo, hi = b.get("min", int, lo=1), b.get("max", int, lo=1)
        if lo > hi:
            b.fail("max", f"is below min {lo}")
    if denoiser:
        model_config(f.get("config", dict), path, f"{prefix}config.", fix)
