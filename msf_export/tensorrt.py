"""TensorRT: a strongly typed engine built from the FP16 ONNX, and the plan runner the runtime uses.

DESIGN.md section 5 and what it rests on:
- The network is created STRONGLY_TYPED: TensorRT takes every tensor's type from the ONNX graph
  (FP16 body, FP32 islands with explicit Casts, see msf_export/fp16.py) instead of choosing its own.
  `BuilderFlag.FP16` is never used: TensorRT 11 removed it, and with a strongly typed network it
  would be wrong anyway. EXPLICIT_BATCH is the default since TensorRT 10 (and gone in 11).
- One optimisation profile covers the batch range (min / opt / max) on every input.
- A timing cache file persists across builds (the tactic timings are the slow part of a build).
- A plan only runs on the TensorRT version and GPU model that built it; the manifest records both
  (`target_info`) and `check_target` refuses a mismatch with one line before deserialising.

The runner (`TrtPlan`) uses the name-based tensor API: `set_input_shape`, `set_tensor_address`,
`execute_async_v3` on a non-default CUDA stream, with buffers allocated by torch. It allocates its
outputs from torch's caching allocator and only forks/joins streams with events, so a whole
sampling loop that calls it can be captured in a CUDA graph (runtime/graphs.py).

First-contact rules (issue #11 item 7, read against TensorRT's headers and samples):
- which wheel: `tensorrt` >= 10 resolves to the newest TensorRT, built for the newest CUDA (TRT 11
  for CUDA 13, which needs an r580+ driver). Pick the wheel matching torch's CUDA major version
  (`wheel_for_torch`): `tensorrt-cu12` for torch built with CUDA 12, `tensorrt-cu13` for CUDA 13.
  On a too-old driver `import tensorrt` works and `trt.Runtime` then fails with a raw TypeError, so
  `unavailable_reason` creates a Runtime and reports a failure in one line;
- the timing cache is one file per TensorRT version and GPU (`timing_cache_path`), loaded strictly
  (`ignore_mismatch=False`): a cache from elsewhere, or a damaged one, starts an empty cache;
- `set_input_shape` / `set_tensor_address` return False on failure: checked, and inputs whose
  address is not 256-byte aligned (a slice of a larger batch) are copied to an aligned buffer;
- one execution context per input shape, so a CUDA graph capture of several decoder chunks never
  re-shapes a context inside the capture (NVIDIA captures only after an enqueue at that shape);
- one process-wide `trt.Logger` (`logger()`).

Nothing here can run without `tensorrt` and a GPU; the import is lazy so the rest of msf_export
works without them.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from msf_train.errors import MsfError
from msf_train.model import TensorSpec

DEFAULT_WORKSPACE = 4 << 30
ALIGNMENT = 256  # bytes: TensorRT's requirement for every I/O tensor address
_LOGGER = None


def wheel_for_torch(cuda_version: str | None) -> str:
    """The TensorRT pip package that matches a torch built with ``cuda_version`` (torch.version.cuda)."""
    if not cuda_version:
        raise MsfError("this torch is a CPU build: TensorRT needs a CUDA build of torch and an NVIDIA GPU")
    major = cuda_version.split(".")[0]
    return f"tensorrt-cu{major}"


def logger():
    """The one TensorRT logger of the process (TensorRT expects a single logger object)."""
    global _LOGGER
    if _LOGGER is None:
        trt = import_tensorrt()
        _LOGGER = trt.Logger(trt.Logger.WARNING)
    return _LOGGER


def is_aligned(t: torch.Tensor) -> bool:
    return t.data_ptr() % ALIGNMENT == 0


def aligned(t: torch.Tensor) -> torch.Tensor:
    """``t`` contiguous at a 256-byte aligned address: itself when it is, else a copy placed at an
    aligned offset of a slightly larger buffer (a slice of a batch may start anywhere; CUDA's
    allocator hands out 512-byte aligned blocks, the CPU's only 64-byte aligned ones)."""
    t = t.contiguous()
    if is_aligned(t):
        return t
    nbytes = t.numel() * t.element_size()
    raw = torch.empty(nbytes + ALIGNMENT, dtype=torch.uint8, device=t.device)
    off = -raw.data_ptr() % ALIGNMENT
    out = raw[off:off + nbytes].view(t.dtype).view(t.shape)
    return out.copy_(t)


def timing_cache_path(folder: Path, trt_version: str, gpu: str, capability: str) -> Path:
    """One timing cache per TensorRT version and GPU model: tactics timed on one never leak to another."""
    key = re.sub(r"[^A-Za-z0-9.]+", "-", f"trt{trt_version}-{gpu}-sm{capability}").strip("-")
    return Path(folder) / f"tensorrt-timing-{key}.cache"


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise MsfError("TensorRT is not installed: pip install 'msf[tensorrt]' (needs an NVIDIA GPU and driver)") from None
    return trt


def unavailable_reason() -> str | None:
    """Why a TensorRT build/run cannot happen here (None when it can). Creates a `trt.Runtime`:
    with a wheel for a newer CUDA than the driver supports, the import works and this fails."""
    try:
        import tensorrt as trt
    except ImportError:
        if not torch.version.cuda:
            return "tensorrt is not installed, and this torch is a CPU build (TensorRT needs CUDA torch and a GPU)"
        return (f"tensorrt is not installed (pip install {wheel_for_torch(torch.version.cuda)}, "
                f"matching torch's CUDA {torch.version.cuda})")
    if not torch.cuda.is_available():
        return "no CUDA device"
    try:
        runtime = trt.Runtime(logger())
        if runtime is None:
            raise RuntimeError("trt.Runtime returned None")
    except Exception as e:  # noqa: BLE001 - a raw pybind TypeError on a driver/CUDA mismatch
        return (f"TensorRT {getattr(trt, '__version__', '?')} cannot start ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                f"its CUDA may be newer than this driver: install {wheel_for_torch(torch.version.cuda)} to match "
                f"torch's CUDA {torch.version.cuda}")
    return None


def default_timing_cache() -> Path:
    """~/.cache/msf/tensorrt-timing-<TensorRT version>-<GPU>.cache (needs tensorrt and CUDA)."""
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    t = target_info()
    return timing_cache_path(base / "msf", t["tensorrt"], t["gpu"], t["compute_capability"])


def target_info() -> dict:
    """What a plan is bound to: the TensorRT version and the GPU (name and compute capability)."""
    trt = import_tensorrt()
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return {"tensorrt": trt.__version__, "gpu": props.name, "compute_capability": f"{props.major}.{props.minor}"}


def check_target(recorded: dict, current: dict, plan: str = "plan") -> None:
    """Refuse a plan built with another TensorRT version or on another GPU model (one line)."""
    for key, what in (("tensorrt", "TensorRT"), ("gpu", "GPU"), ("compute_capability", "compute capability")):
        if key in recorded and recorded.get(key) != current.get(key):
            raise MsfError(f"{plan} was built for {what} {recorded.get(key)}, this machine has {current.get(key)}: "
                           f"rebuild it here with msf-export --engine trt")


def _network_flags(trt) -> int:
    flags = 0
    if not hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        raise MsfError(f"TensorRT {trt.__version__} has no strongly typed networks: install TensorRT >= 10")
    flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return flags


def build_plan(onnx_path: Path, plan_path: Path, inputs: list[TensorSpec], batch_range: tuple[int, int, int],
               timing_cache: Path | None = None, workspace: int = DEFAULT_WORKSPACE) -> list[Path]:
    """Build a serialized engine from an ONNX file (weights may be external, next to it)."""
    trt = import_tensorrt()
    builder = trt.Builder(logger())
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger())
    if not parser.parse_from_file(str(onnx_path)):  # reads <name>.data next to it
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise MsfError(f"TensorRT cannot parse {onnx_path}: {errs[:300]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    _use_timing_cache(config, timing_cache)
    lo, opt, hi = batch_range
    profile = builder.create_optimization_profile()
    for spec in inputs:
        dims = [tuple(b if s == "batch" else int(s) for s in spec.shape) for b in (lo, opt, hi)]
        profile.set_shape(spec.name, *dims)
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise MsfError(f"TensorRT failed to build {plan_path.name} (see the TensorRT log above)")
    from msf_train.checkpoint import atomic_write_bytes

    atomic_write_bytes(plan_path, bytes(plan))
    if timing_cache:
        atomic_write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    return [plan_path]


def _use_timing_cache(config, path: Path | None) -> None:
    """Load the cache strictly; anything wrong with it (another GPU or TensorRT, damage) -> empty cache."""
    data = path.read_bytes() if path and path.is_file() else b""
    cache = config.create_timing_cache(data) if data else None
    ok = False
    if cache is not None:
        try:
            ok = bool(config.set_timing_cache(cache, ignore_mismatch=False))  # False: not from this device
        except Exception:  # noqa: BLE001 - a damaged file may raise instead
            ok = False
    if not ok:
        if data:
            import warnings

            warnings.warn(f"TensorRT timing cache {path} does not match this GPU/TensorRT or is damaged: "
                          "starting an empty one", RuntimeWarning, stacklevel=2)
        if not config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False):
            raise MsfError("TensorRT refused an empty timing cache (see the TensorRT log above)")


def _torch_dtype(trt, dt) -> torch.dtype:
    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16, trt.DataType.INT32: torch.int32,
             trt.DataType.INT8: torch.int8, trt.DataType.BOOL: torch.bool}
    for name, td in (("INT64", torch.int64), ("BF16", torch.bfloat16)):
        if hasattr(trt.DataType, name):
            table[getattr(trt.DataType, name)] = td
    return table[dt]


class TrtPlan:
    """Run a deserialized plan with torch tensors: ``plan(feeds) -> {output name: tensor}``."""

    def __init__(self, path: Path, device: torch.device):
        trt = import_tensorrt()
        if device.type != "cuda":
            raise MsfError("TensorRT plans run on CUDA only: pass a CUDA device")
        self.trt, self.device = trt, device
        self.runtime = trt.Runtime(logger())
        with torch.cuda.device(device):
            self.engine = self.runtime.deserialize_cuda_engine(Path(path).read_bytes())
            if self.engine is None:
                raise MsfError(f"TensorRT cannot deserialize {path}: damaged, or built by another TensorRT; rebuild it")
            # One execution context per input shape (see the module docstring): created on first use,
            # outside any capture, because creating one allocates device memory.
            self.contexts: dict[tuple, object] = {}
            self.stream = torch.cuda.Stream(device)  # non-default: the legacy default stream serialises everything
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == mode]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) != mode]
        self.dtypes = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}

    def _context(self, shapes: tuple):
        """The execution context for these input shapes; a new shape outside a capture only."""
        ctx = self.contexts.get(shapes)
        if ctx is None:
            if torch.cuda.is_current_stream_capturing():
                raise MsfError(f"TensorRT context for input shapes {shapes} first seen inside a CUDA graph capture; "
                               "warm up at every shape before capturing (runtime.graphs does)")
            ctx = self.engine.create_execution_context()
            for name, shape in zip(self.input_names, shapes):
                if not ctx.set_input_shape(name, shape):
                    raise MsfError(f"TensorRT rejected shape {shape} for input {name!r}: outside the plan's "
                                   "optimisation profile; re-export with a wider --min-batch/--max-batch")
            self.contexts[shapes] = ctx
        return ctx

    def __call__(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        keep = [aligned(feeds[n].to(self.device, self.dtypes[n])) for n in self.input_names]  # outlive the launch
        ctx = self._context(tuple(tuple(t.shape) for t in keep))
        for name, t in zip(self.input_names, keep):
            if not ctx.set_tensor_address(name, t.data_ptr()):
                raise MsfError(f"TensorRT rejected the address of input {name!r} (alignment {t.data_ptr() % ALIGNMENT})")
        outs = {}
        for name in self.output_names:
            shape = tuple(ctx.get_tensor_shape(name))
            outs[name] = torch.empty(shape, dtype=self.dtypes[name], device=self.device)  # allocator: 512-byte aligned
            if not ctx.set_tensor_address(name, outs[name].data_ptr()):
                raise MsfError(f"TensorRT rejected the address of output {name!r}")
        caller = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(caller)  # inputs written on the caller's stream are ready
        if not ctx.execute_async_v3(self.stream.cuda_stream):
            raise MsfError("TensorRT execute_async_v3 failed (see the TensorRT log above)")
        caller.wait_stream(self.stream)  # the caller sees finished outputs
        if not torch.cuda.is_current_stream_capturing():  # a graph's pool is not reused until replay ends
            for t in keep + list(outs.values()):
                t.record_stream(self.stream)  # the allocator must not reuse them before the plan is done
        return outs
