"""TensorRT backend: runs an `msf-export --engine trt` folder (`.plan` files) behind the Engine interface.

A plan is bound to the TensorRT version and GPU model that built it: the manifest's "target" is
compared with this machine before anything is deserialised, and a mismatch is one line
(msf_export.tensorrt.check_target). Execution: msf_export.tensorrt.TrtPlan (name-based tensor API,
execute_async_v3 on a non-default stream, torch-allocated buffers, CUDA-graph capturable).
"""
from __future__ import annotations

from pathlib import Path

import torch

from msf_export import tensorrt as trt_export
from msf_train.errors import MsfError
from runtime.backend_common import ArtifactEngine, load_artifacts


class TrtEngine(ArtifactEngine):
    def __init__(self, path: Path, entry: dict, manifest: dict, device: torch.device):
        super().__init__(entry, manifest, device, "trt")
        self.plan = trt_export.TrtPlan(path, device)
        self.capturable = True  # stream fork/join by events, torch-allocated buffers (see TrtPlan)

    def _run(self, feeds):
        return self.plan(feeds)


def load_cascade(artifact_dir: Path, device: torch.device):
    """-> ([(ModelConfig, TrtEngine)] in scale order, decoder TrtEngine)."""
    device = torch.device(device)
    if device.type != "cuda":
        raise MsfError("TensorRT plans run on a CUDA device only: pass --device cuda, or use --backend onnx on the CPU")
    why = trt_export.unavailable_reason()
    if why:
        raise MsfError(f"cannot run TensorRT plans here: {why}")
    from msf_export.manifest import read_manifest

    recorded = read_manifest(artifact_dir, "trt").get("target") or {}
    with torch.cuda.device(device):
        trt_export.check_target(recorded, trt_export.target_info(), plan=str(artifact_dir))
    return load_artifacts(artifact_dir, "trt", device, lambda p, e, m: TrtEngine(p, e, m, device))
