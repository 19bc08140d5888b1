"""One small Engine interface: named input tensors -> named output tensors.

Every backend (torch here; onnxruntime, TensorRT and AOTInductor from the export issue, in
`runtime/backend_*.py`) implements it, so the sampler never knows which one it drives. Input and
output names and shapes come from the export contract next to the model (`msf_train.model.export_contract`,
`msf_train.vae.decoder_contract`): a denoiser takes x, t, y[, prior] and returns v; the decoder takes
latent and returns image. Inputs and outputs are float32 (y int64) on the engine's device, whatever
precision the engine computes in.

`load_cascade(model_dir, backend)` is the one entry point that turns a folder into engines:
backend "torch" reads a cascade folder (`msf_train.checkpoint`), any other backend X hands an
exported artifact folder (with a `manifest.json`) to `runtime.backend_X.load_cascade`.
"""
from __future__ import annotations

import importlib
import re
from pathlib import Path

import torch

from msf_train.config import ModelConfig
from msf_train.errors import MsfError
from msf_train.model import TensorSpec

BACKENDS = ("torch", "onnx", "aoti", "trt")
_ALIASES = {"pytorch": "torch", "onnxruntime": "onnx", "ort": "onnx", "tensorrt": "trt", "aotinductor": "aoti"}
_INSTALL = {
    "onnx": "pip install 'msf[export]' (onnxruntime; onnxruntime-gpu for CUDA: 'msf[export-gpu]')",
    "trt": "pip install 'msf[tensorrt]' (TensorRT needs an NVIDIA GPU and driver)",
    "aoti": "a torch build with AOTInductor (torch >= 2.6, and a C++ compiler for CPU packages)",
}
MANIFEST_FILE = "manifest.json"
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


class Engine:
    """Base class. Subclasses set `inputs`, `outputs`, `device` and implement `run`.

    `capturable` says whether `run` may be recorded into a CUDA graph (only device work on the
    current stream, no host synchronisation); `runtime.graphs` runs eager where any engine says no.
    """

    kind: str = "engine"  # "denoiser" or "decoder"
    backend: str = "?"
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    device: torch.device = torch.device("cpu")
    capturable: bool = False

    def run(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def __call__(self, **feeds: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.run(feeds)

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]


# ---- the torch backend -------------------------------------------------------------------------
def resolve_dtype(dtype, device: torch.device) -> torch.dtype:
    """'fp32' | 'bf16' | 'fp16' (or a torch.dtype) -> torch.dtype; fp16 needs CUDA."""
    if dtype is None:
        return torch.float32
    if not isinstance(dtype, torch.dtype):
        if dtype not in DTYPES:
            raise MsfError(f"unknown dtype {dtype!r}; use fp32, bf16 or fp16")
        dtype = DTYPES[dtype]
    if dtype == torch.float16 and device.type != "cuda":
        raise MsfError("fp16 runs on CUDA only; on a CPU use bf16 or fp32")
    return dtype


# torch.compile modes that can sit inside our own whole-cascade CUDA graph (runtime.graphs): the
# modes with "cudagraphs" in them (reduce-overhead, max-autotune) record graphs of their own, which
# cannot be nested in an outer capture. "default" is the default: inductor fuses the elementwise
# work between the matmuls (LayerNorm + modulate, GELU, gating, residual adds), which is where the
# eager cascade loses its time (issue #11: 220 TFLOP/s of a 767 TFLOP/s matmul ceiling), and keeps
# cuBLAS for the matmuls, which already run near the ceiling at these shapes. Max-autotune also
# benchmarks Triton matmul templates per shape: minutes of compiling per preset for a few percent
# at most; benchmarks/gpu_check.py measures both per forward so the choice can be revisited.
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")
DEFAULT_COMPILE_MODE = "default"


def compile_mode(compile) -> str | None:
    """``compile`` as given by callers (False/None, True, or a mode name) -> a mode name or None."""
    if compile is None or compile is False:
        return None
    mode = DEFAULT_COMPILE_MODE if compile is True else str(compile)
    if mode not in COMPILE_MODES:
        raise MsfError(f"unknown torch.compile mode {mode!r}; use one of {', '.join(COMPILE_MODES)} "
                       "(modes that record their own CUDA graphs cannot run inside the cascade's graph)")
    return mode


class TorchEngine(Engine):
    """A torch module behind the Engine interface, eager or `torch.compile`d.

    Weights are cast to ``dtype`` and, for bf16/fp16, the floating inputs too: the whole forward runs
    in that dtype with no autocast. Under autocast, LayerNorm is on the float32 list, so every
    block wrote its normalised and modulated activations in float32 and cast them back for the
    next matmul: float32 islands that double the memory traffic of the elementwise work in the hot
    loop. Without them LayerNorm still accumulates its statistics in float32 inside the kernel,
    and the float32 timestep features are computed in float32 and cast once (`msf_train.model`).
    Outputs come back as float32. Eager torch needs no fixed buffers: tensors pass through without
    copies when they already sit on the device (`runtime.graphs` keeps the static buffers a CUDA
    graph needs).
    """

    backend = "torch"
    capturable = True

    def __init__(self, module: torch.nn.Module, inputs, outputs, device="cpu", dtype=None, compile=False):
        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        mode = compile_mode(compile)
        self.inputs, self.outputs = list(inputs), list(outputs)
        module = module.to(self.device).eval().requires_grad_(False)
        if self.dtype != torch.float32:
            module = module.to(self.dtype)
        self.module = module
        self.compiled = mode
        # dynamic=False: one specialised graph per batch (CFG doubles it); fullgraph: a graph break
        # in the denoiser would silently fall back to slow eager pieces, so fail loudly instead.
        self._fn = torch.compile(module, dynamic=False, mode=mode, fullgraph=True) if mode else module
        self._names = set(self.input_names)

    def _cast(self, t: torch.Tensor | None) -> torch.Tensor | None:
        """Floating inputs to the compute dtype (class ids and the float32 time stay as they are)."""
        return t.to(self.dtype) if t is not None and t.is_floating_point() else t

    def _check(self, feeds):
        if feeds.keys() != self._names:
            raise MsfError(f"{self.kind} engine takes inputs {sorted(self._names)}, got {sorted(feeds)}")


class TorchDenoiser(TorchEngine):
    """A DiT stage: {x (B,C,h,w), t (B,), y (B,)[, prior (B,C,h,w)]} -> {v (B,C,h,w)}."""

    kind = "denoiser"

    def __init__(self, model, device="cpu", dtype=None, compile=False):
        from msf_train.model import export_contract

        self.cfg: ModelConfig = model.cfg
        super().__init__(model, *export_contract(self.cfg), device=device, dtype=dtype, compile=compile)

    @torch.no_grad()
    def run(self, feeds):
        self._check(feeds)
        v = self._fn(self._cast(feeds["x"]), feeds["t"], feeds["y"], self._cast(feeds.get("prior")))  # (B, C, h, w)
        return {"v": v.float()}


class TorchDecoder(TorchEngine):
    """The VAE decoder with the latent convention folded in (`msf_train.vae.LatentDecoder`):
    {latent (B,C,h_N,w_N)} -> {image (B,3,8h_N,8w_N) in [-1, 1]}."""

    kind = "decoder"

    def __init__(self, decoder, latent_size: int, device="cpu", dtype=None, compile=False):
        from msf_train.vae import decoder_contract

        channels = int(decoder.vae.config.latent_channels)
        super().__init__(decoder, *decoder_contract(channels, latent_size), device=device, dtype=dtype, compile=compile)

    @torch.no_grad()
    def run(self, feeds):
        self._check(feeds)
        image = self._fn(self._cast(feeds["latent"]))  # (B, 3, H, W)
        return {"image": image.float()}


# ---- devices and backends ----------------------------------------------------------------------
def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cuda' without CUDA is an MsfError."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise MsfError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MsfError(f"--device {device} but this torch ({torch.__version__}) sees no CUDA GPU; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise MsfError(f"device {device!r} is not supported; use cpu, cuda or auto")
    return dev


def read_manifest(model_dir: Path) -> dict | None:
    from msf_train.checkpoint import read_json

    path = Path(model_dir) / MANIFEST_FILE
    return read_json(path, "artifact manifest") if path.is_file() else None


def resolve_backend(model_dir, backend: str | None = None) -> str:
    """The backend to run ``model_dir`` with: ``backend`` if given, else the manifest's "engine"
    field for an exported artifact folder, else torch (a cascade folder of checkpoints)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise MsfError(f"model folder not found: {model_dir}")
    manifest = read_manifest(model_dir)
    if backend is None:
        if manifest is None:
            return "torch"
        engine = manifest.get("engine")
        if not isinstance(engine, str):
            raise MsfError(f"{model_dir / MANIFEST_FILE} names no 'engine'; pass --backend ({', '.join(BACKENDS[1:])})")
        backend = engine
    backend = _ALIASES.get(backend.lower(), backend.lower())
    if not re.fullmatch(r"[a-z][a-z0-9_]*", backend):
        raise MsfError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if backend == "torch" and manifest is not None and not (model_dir / "cascade.json").is_file():
        raise MsfError(f"{model_dir} is an exported artifact folder (engine {manifest.get('engine')!r}), not checkpoints: "
                       f"drop --backend torch or pass --backend {manifest.get('engine')}")
    return backend


def import_backend(backend: str):
    """`runtime.backend_<name>`; a missing module or package becomes a one-line MsfError."""
    modname = f"runtime.backend_{backend}"
    try:
        return importlib.import_module(modname)
    except ModuleNotFoundError as e:
        if e.name == modname:
            if backend not in BACKENDS:
                raise MsfError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}") from None
            raise MsfError(f"the {backend} backend is not part of this install ({modname} is missing); "
                           f"reinstall msf or use --backend torch") from None
        hint = _INSTALL.get(backend, f"install the package {e.name}")
        raise MsfError(f"the {backend} backend needs the Python package {e.name!r}: {hint}") from None
    except ImportError as e:
        hint = _INSTALL.get(backend, "check the backend's installation")
        raise MsfError(f"cannot load the {backend} backend ({str(e).splitlines()[0]}): {hint}") from None


def sampling_defaults(model_dir) -> dict:
    """The model folder's own sampling plan, {"steps": [...], "cfg": [...]} (either may be absent; {}
    = none, the paper's plan): cascade.json's "sampling" entry, or for an exported artifact folder
    the manifest's copy of it (`msf_train.schema.sampling`)."""
    from msf_train import schema
    from msf_train.checkpoint import CASCADE_FILE, cascade_sampling

    model_dir = Path(model_dir)
    if (model_dir / CASCADE_FILE).is_file():
        return cascade_sampling(model_dir)
    manifest = read_manifest(model_dir)
    if manifest is None or "sampling" not in manifest:
        return {}
    stages = manifest.get("stages")
    return schema.sampling(manifest["sampling"], model_dir / MANIFEST_FILE, len(stages) if isinstance(stages, list) else 0,
                           "re-export with msf-export --force")


def cascade_configs(model_dir) -> list[ModelConfig]:
    """The stage configs of a cascade folder, checked (`checkpoint.check_cascade`), without loading
    any weights: lets `msf-run` reject bad class ids or step lists before the slow part."""
    from msf_train.checkpoint import load_stage_config, read_cascade

    stage_dirs, _ = read_cascade(model_dir)
    return [load_stage_config(d)[0] for d in stage_dirs]


def load_torch_cascade(model_dir, device="cpu", dtype=None, compile=False,
                       decoder_dtype=None) -> tuple[list[tuple[ModelConfig, Engine]], Engine]:
    """A cascade folder (`checkpoint.write_cascade`) -> torch engines. The decoder runs in float32
    unless ``decoder_dtype`` says otherwise (the SD-VAE overflows in fp16, and decoding is cheap
    next to the denoising steps). ``compile`` (True or a mode of COMPILE_MODES) compiles the
    denoisers, the hot loop; the decoder stays eager: it runs once per image, and compiling the
    VAE costs tens of seconds for a small share of the time."""
    from msf_train.checkpoint import load_stage, read_cascade
    from msf_train.vae import LatentDecoder, load_vae

    device = torch.device(device)
    resolve_dtype(dtype, device)  # fail before loading anything
    compile_mode(compile)
    stage_dirs, vae_dir = read_cascade(model_dir)
    stages = []
    for d in stage_dirs:
        cfg, model = load_stage(d, device)
        stages.append((cfg, TorchDenoiser(model, device, dtype, compile)))
    vae = load_vae(vae_dir, device)
    channels = int(vae.config.latent_channels)
    if channels != stages[0][0].in_channels:
        raise MsfError(f"the VAE in {vae_dir} has {channels} latent channels but the stages use "
                       f"{stages[0][0].in_channels}: pair the stages with the VAE they were trained on")
    decoder = TorchDecoder(LatentDecoder(vae), stages[0][0].full_size, device, decoder_dtype)
    return stages, decoder


def load_cascade(model_dir, backend: str | None = None, device="cpu", dtype=None, compile=False
                 ) -> tuple[list[tuple[ModelConfig, Engine]], Engine]:
    """-> ([(ModelConfig, denoiser Engine)] in scale order, decoder Engine).

    ``backend`` None picks it from the folder (`resolve_backend`). ``dtype`` and ``compile`` apply to
    the torch backend; an exported artifact's precision was fixed when it was exported.
    """
    from msf_train.checkpoint import check_cascade

    model_dir = Path(model_dir)
    backend = resolve_backend(model_dir, backend)
    device = resolve_device(device)
    if backend == "torch":
        return load_torch_cascade(model_dir, device, dtype, compile)
    if compile or resolve_dtype(dtype, device) != torch.float32:
        raise MsfError(f"--dtype and --compile apply to the torch backend; a {backend} artifact's precision is set by msf-export")
    module = import_backend(backend)
    stages, decoder = module.load_cascade(model_dir, device)
    check_cascade([c for c, _ in stages])
    return list(stages), decoder
