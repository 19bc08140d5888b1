"""AOTInductor export of one stage: `torch.export` with a batch `Dim`, compiled into a `.pt2` package.

Measured with torch 2.13 on CPU (see docs/EXPORT.md):
- the batch `Dim` may start at 1 as long as the example batch is >= 2 (an example of 1 would be
  specialised to a constant); the package then runs at batch 1 and at any batch up to `max`;
- a package is compiled for one device (CPU C++ or CUDA kernels); the manifest records which, and
  the runtime refuses to load it on another device;
- compiling takes about a minute per tiny stage on 2 cores (the C++ compiler dominates), several
  for the demo presets;
- a package is tied to the torch that built it (its C++ calls torch's ABI-stable shim, but the
  kernels and the package format follow torch's version): the manifest records the version and
  `check_torch` refuses another one at load, in one line, before any native code is loaded.

A failure here must never be silent (issue #11): every exception becomes one `MsfError` line, and
the package loaded for the parity check is released before returning, so no AOTInductor model
container outlives the export into interpreter shutdown (a destructor of a package's model.so
running after the library was unloaded is a known crash at exit: pytorch/pytorch#123691).
"""
from __future__ import annotations

import gc
import warnings
from pathlib import Path

import torch

from msf_train.cliutil import first_line
from msf_train.errors import MsfError
from msf_train.model import TensorSpec
from msf_export.onnx import example_batch, example_feeds


def export_aoti(module: torch.nn.Module, inputs: list[TensorSpec], path: Path, batch_range: tuple[int, int, int],
                device: str = "cpu", *, num_classes: int | None = None) -> list[Path]:
    """Compile ``module`` for ``device`` into the package ``path`` (.pt2); returns the files written."""
    path = Path(path)
    module = module.eval().to(device)
    feeds = example_feeds(inputs, example_batch(batch_range), num_classes=num_classes, device=device)
    batch = torch.export.Dim("batch", min=batch_range[0], max=batch_range[2])
    dynamic = {name: {0: batch} for name in feeds}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            program = torch.export.export(module, (), kwargs=feeds, dynamic_shapes=dynamic, strict=False)
            out = torch._inductor.aoti_compile_and_package(program, package_path=str(path))
        except Exception as e:  # export/inductor raise many types; the first line names the problem
            raise MsfError(f"AOTInductor export of {path.stem} for {device} failed: {type(e).__name__}: "
                           f"{first_line(e)}; see docs/EXPORT.md (AOTInductor on CUDA)") from e
    if Path(out) != path:  # inductor may choose its own name on old versions
        Path(out).replace(path)
    return [path]


def check_torch(recorded: str | None, path, current: str | None = None) -> None:
    """Refuse a package built by another torch (one line, before loading any native code)."""
    current = current or torch.__version__
    if recorded and recorded != current:
        raise MsfError(f"{path} was compiled by torch {recorded}, this is torch {current}: AOTInductor packages run "
                       f"only on the torch that built them; re-export with msf-export --engine aoti --force")


def load_aoti(path: Path, device: torch.device):
    """Load a `.pt2` package; a damaged file becomes a one-line MsfError."""
    index = device.index if device.type == "cuda" and device.index is not None else -1
    try:
        return torch._inductor.aoti_load_package(str(path), device_index=index)
    except Exception as e:  # zip errors, missing shared objects, ABI mismatches
        msg = " ".join(str(e).split())[:300]
        raise MsfError(f"cannot load {path}: {msg}; the package is damaged or was built by another torch, re-export it") from None


def aoti_parity(path: Path, reference, inputs, outputs, batch_range, device: str, num_classes=None) -> dict:
    from msf_export.onnx import parity

    runner = load_aoti(path, torch.device(device))
    out_name = outputs[0].name

    def run(feeds):
        return {out_name: runner(**feeds)}

    try:
        result = parity(run, reference.to(device), inputs, outputs, batch_range, num_classes, device=device)
    except MsfError:
        raise
    except Exception as e:  # a package that compiled but fails to run: one line, not a traceback
        raise MsfError(f"the AOTInductor package {Path(path).name} does not run on {device}: {type(e).__name__}: "
                       f"{first_line(e)}") from e
    finally:
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()  # an asynchronous kernel fault surfaces here, not at exit
        del run, runner  # release the model container now, not during interpreter shutdown
        gc.collect()
    return {**result, "against": f"torch fp32 {device}", "runtime": f"aotinductor {device}"}
