"""ONNX export of one stage (denoiser or VAE decoder) and its parity check with onnxruntime.

Facts this relies on (DESIGN.md section 5, measured with torch 2.13 / onnxscript 0.7):
- the default exporter (`torch.onnx.export(..., dynamo=True)`) at opset 18; at opset 17 the DiT's
  qkv `chunk` becomes an invalid Split;
- the example batch must be >= 2, otherwise `torch.export` specialises the batch axis to 1; the
  batch `Dim` itself may start at 1 (checked: an export made at batch 2 runs at batch 1);
- weights go to an external `<file>.data` next to the graph when they pass EXTERNAL_DATA_BYTES
  (protobuf cannot hold 2 GB; well below that a single file is easier to move around).
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch

from msf_train.errors import MsfError
from msf_train.model import TensorSpec

OPSET = 18
# A single .onnx file is limited to 2 GB by protobuf; switch to external data well before that.
EXTERNAL_DATA_BYTES = 1_500_000_000


def example_batch(batch_range: tuple[int, int, int]) -> int:
    """The batch to trace with: >= 2 (so the axis stays dynamic), inside the range."""
    lo, _, hi = batch_range
    if hi < 2:
        raise MsfError("--max-batch must be >= 2: exporters specialise a batch of 1 to a constant")
    return max(2, lo)


def example_feeds(inputs: list[TensorSpec], batch: int, seed: int = 0, num_classes: int | None = None,
                  device="cpu") -> dict[str, torch.Tensor]:
    """Random feeds that follow a contract: t in [0, 1], y valid class ids (incl. the null class)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for spec in inputs:
        shape = tuple(batch if s == "batch" else s for s in spec.shape)
        if spec.name == "t":
            out[spec.name] = torch.rand(shape, generator=g)
        elif spec.dtype == "int64":
            out[spec.name] = torch.randint(0, (num_classes or 1) + 1, shape, generator=g)
        else:
            out[spec.name] = torch.randn(shape, generator=g)
    return {k: v.to(device) for k, v in out.items()}


def param_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def export_onnx(module: torch.nn.Module, inputs: list[TensorSpec], outputs: list[TensorSpec], path: Path,
                batch_range: tuple[int, int, int], *, num_classes: int | None = None,
                external_data: bool | None = None) -> list[Path]:
    """Export ``module`` (called with keyword inputs in contract order) to ``path``.

    Returns the files written (the graph, plus ``<name>.data`` when weights are external).
    ``external_data=None`` decides by size (EXTERNAL_DATA_BYTES).
    """
    path = Path(path)
    feeds = example_feeds(inputs, example_batch(batch_range), num_classes=num_classes)
    batch = torch.export.Dim("batch", min=batch_range[0], max=batch_range[2])
    dynamic = {name: {0: batch} for name in feeds}
    if external_data is None:
        external_data = param_bytes(module) > EXTERNAL_DATA_BYTES
    with _quiet(), torch.no_grad():
        try:
            program = torch.onnx.export(module.eval(), (), kwargs=feeds, dynamo=True, opset_version=OPSET,
                                        input_names=list(feeds), output_names=[s.name for s in outputs],
                                        dynamic_shapes=dynamic, external_data=external_data)
        except Exception as e:  # the exporter raises many types; keep the first line, it names the op
            raise MsfError(f"ONNX export of {path.stem} failed: {str(e).strip().splitlines()[0]}") from e
        program.save(str(path), external_data=external_data)
    files = [path] + sorted(p for p in path.parent.glob(path.name + ".*") if p.is_file())
    return files


def _quiet():
    """The exporter prints progress lines and warnings about torchvision ops; keep the CLI readable."""
    import contextlib
    import io

    @contextlib.contextmanager
    def cm():
        loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript")]
        levels = [l.level for l in loggers]
        for l in loggers:
            l.setLevel(logging.ERROR)
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                yield
        finally:
            for l, lv in zip(loggers, levels):
                l.setLevel(lv)

    return cm()


# ---- onnxruntime -------------------------------------------------------------------------------
def ort_session(path: Path, providers: list | None = None, threads: int | None = None):
    """An onnxruntime session; a damaged or truncated file becomes a one-line MsfError."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only
    if threads:
        opts.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers or ["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own Fail/InvalidProtobuf/InvalidGraph types
        msg = " ".join(str(e).split())[:300]
        raise MsfError(f"cannot load {path}: {msg}; the file is damaged or truncated, re-export it") from None


def run_ort(session, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    names = [o.name for o in session.get_outputs()]
    outs = session.run(names, {k: v.detach().cpu().numpy() for k, v in feeds.items()})
    return {n: torch.from_numpy(o) for n, o in zip(names, outs)}


def error_stats(got: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    d = (got.float().cpu() - ref.float().cpu()).abs()
    return {"max_abs": float(d.max()), "mean_abs": float(d.mean()), "ref_mean_abs": float(ref.float().abs().mean())}


@torch.no_grad()
def parity(run, reference: torch.nn.Module, inputs: list[TensorSpec], outputs: list[TensorSpec],
           batch_range: tuple[int, int, int], num_classes: int | None = None, device="cpu") -> dict:
    """Max/mean absolute error of ``run(feeds) -> {name: tensor}`` against the FP32 PyTorch module.

    Checked at a batch different from the export example (3 where the range allows), so a batch
    axis that was accidentally specialised shows up here.
    """
    lo, _, hi = batch_range
    batch = min(max(3, lo), hi)
    feeds = example_feeds(inputs, batch, seed=1234, num_classes=num_classes, device=device)
    ref = reference.eval()(**feeds)
    got = run(feeds)[outputs[0].name]
    if tuple(got.shape) != tuple(ref.shape):
        raise MsfError(f"exported graph returns shape {tuple(got.shape)}, PyTorch {tuple(ref.shape)}: export is broken")
    return {**error_stats(got, ref), "batch": batch}


def onnx_parity(path: Path, reference, inputs, outputs, batch_range, num_classes=None) -> dict:
    """Parity of an .onnx file on onnxruntime's CPU provider against FP32 PyTorch on the CPU."""
    session = ort_session(path)
    return {**parity(lambda f: run_ort(session, f), reference, inputs, outputs, batch_range, num_classes),
            "against": "torch fp32 cpu", "runtime": "onnxruntime cpu"}
