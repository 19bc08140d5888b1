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

Nothing here can run without `tensorrt` and a GPU; the import is lazy so the rest of msf_export
works without them.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from msf_train.errors import MsfError
from msf_train.model import TensorSpec

DEFAULT_WORKSPACE = 4 << 30


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise MsfError("TensorRT is not installed: pip install 'msf[tensorrt]' (needs an NVIDIA GPU and driver)") from None
    return trt


def unavailable_reason() -> str | None:
    """Why a TensorRT build/run cannot happen here (None when it can)."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "tensorrt is not installed (pip install 'msf[tensorrt]')"
    if not torch.cuda.is_available():
        return "no CUDA device"
    return None


def default_timing_cache() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "msf" / "tensorrt-timing.cache"


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
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # reads <name>.data next to it
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise MsfError(f"TensorRT cannot parse {onnx_path}: {errs[:300]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    cache_bytes = timing_cache.read_bytes() if timing_cache and timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=True)  # a cache from another GPU is ignored, not fatal
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
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        with torch.cuda.device(device):
            self.engine = self.runtime.deserialize_cuda_engine(Path(path).read_bytes())
            if self.engine is None:
                raise MsfError(f"TensorRT cannot deserialize {path}: damaged, or built by another TensorRT; rebuild it")
            self.context = self.engine.create_execution_context()
            self.stream = torch.cuda.Stream(device)  # non-default: the legacy default stream serialises everything
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == mode]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) != mode]
        self.dtypes = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}

    def __call__(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        ctx = self.context
        keep = []  # converted inputs must outlive the launch
        for name in self.input_names:
            t = feeds[name].to(self.device, self.dtypes[name]).contiguous()
            keep.append(t)
            ctx.set_input_shape(name, tuple(t.shape))
            ctx.set_tensor_address(name, t.data_ptr())
        outs = {}
        for name in self.output_names:
            shape = tuple(ctx.get_tensor_shape(name))
            outs[name] = torch.empty(shape, dtype=self.dtypes[name], device=self.device)
            ctx.set_tensor_address(name, outs[name].data_ptr())
        caller = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(caller)  # inputs written on the caller's stream are ready
        if not ctx.execute_async_v3(self.stream.cuda_stream):
            raise MsfError("TensorRT execute_async_v3 failed (see the TensorRT log above)")
        caller.wait_stream(self.stream)  # the caller sees finished outputs
        if not torch.cuda.is_current_stream_capturing():  # a graph's pool is not reused until replay ends
            for t in keep + list(outs.values()):
                t.record_stream(self.stream)  # the allocator must not reuse them before the plan is done
        return outs
