"""ONNX Runtime backend: runs an `msf-export --engine onnx` folder behind the Engine interface.

Providers: CPU always; on a CUDA device, onnxruntime-gpu's CUDA provider (and its TensorRT provider
first when MSF_ORT_TENSORRT=1, since it builds engines on first use, which takes minutes). On CPU
the tensors go through numpy (zero-copy for contiguous CPU tensors); on CUDA they are bound in
place with IO binding, outputs allocated by torch.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from msf_export.onnx import ort_session, run_ort
from msf_train.errors import MsfError
from runtime.backend_common import ArtifactEngine, load_artifacts

_NP = {"float32": np.float32, "float16": np.float16, "int64": np.int64}


def providers_for(device: torch.device) -> list:
    import onnxruntime as ort

    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if device.type != "cuda":
        raise MsfError(f"the onnx backend runs on cpu or cuda, not {device.type}")
    have = ort.get_available_providers()
    if "CUDAExecutionProvider" not in have:
        raise MsfError("this onnxruntime has no CUDA provider: pip install 'msf[export-gpu]' "
                       "(onnxruntime-gpu), or run the onnx backend on the CPU")
    index = device.index or 0
    chosen = []
    if os.environ.get("MSF_ORT_TENSORRT") == "1" and "TensorrtExecutionProvider" in have:
        chosen.append(("TensorrtExecutionProvider", {"device_id": index, "trt_fp16_enable": True,
                                                     "trt_engine_cache_enable": True}))
    return chosen + [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]


class OnnxEngine(ArtifactEngine):
    def __init__(self, path: Path, entry: dict, manifest: dict, device: torch.device):
        super().__init__(entry, manifest, device, "onnx")
        self.session = ort_session(path, providers_for(device))
        self.providers = self.session.get_providers()
        # Not capturable: onnxruntime launches on its own CUDA stream and synchronises on the host.

    def _run(self, feeds):
        if self.device.type == "cpu":
            return {k: v.to(self.device) for k, v in run_ort(self.session, feeds).items()}
        return self._run_cuda(feeds)

    def _run_cuda(self, feeds):
        index = self.device.index or 0
        binding = self.session.io_binding()
        keep = []
        for spec in self.inputs:
            t = feeds[spec.name].to(self.device, getattr(torch, spec.dtype)).contiguous()
            keep.append(t)
            binding.bind_input(spec.name, "cuda", index, _NP[spec.dtype], tuple(t.shape), t.data_ptr())
        batch = keep[0].shape[0]
        outs = {}
        for spec in self.outputs:
            shape = tuple(batch if s == "batch" else s for s in spec.shape)
            outs[spec.name] = torch.empty(shape, dtype=getattr(torch, spec.dtype), device=self.device)
            binding.bind_output(spec.name, "cuda", index, _NP[spec.dtype], shape, outs[spec.name].data_ptr())
        torch.cuda.current_stream(self.device).synchronize()  # onnxruntime runs on its own stream
        self.session.run_with_iobinding(binding)
        return outs


def load_cascade(artifact_dir: Path, device: torch.device):
    """-> ([(ModelConfig, OnnxEngine)] in scale order, decoder OnnxEngine)."""
    device = torch.device(device)
    return load_artifacts(artifact_dir, "onnx", device, lambda p, e, m: OnnxEngine(p, e, m, device))
