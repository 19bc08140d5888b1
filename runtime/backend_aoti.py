"""AOTInductor backend: runs an `msf-export --engine aoti` folder (`.pt2` packages) behind the Engine
interface. A package holds compiled kernels for one device type (the manifest's "device"); loading
it elsewhere is refused with one line, and so is a package built by another torch version (the
manifest's tools.torch; issue #14 item 8): re-export it with this torch."""
from __future__ import annotations

from pathlib import Path

import torch

from msf_export.aoti import check_torch, load_aoti
from msf_train.errors import MsfError
from runtime.backend_common import ArtifactEngine, load_artifacts


class AotiEngine(ArtifactEngine):
    def __init__(self, path: Path, entry: dict, manifest: dict, device: torch.device):
        super().__init__(entry, manifest, device, "aoti")
        built_for = manifest.get("device", "cpu")
        if built_for != device.type:
            raise MsfError(f"{path} was compiled for {built_for}, not {device.type}: run it with --device {built_for} "
                           f"or re-export with msf-export --engine aoti --device {device.type}")
        check_torch((manifest.get("tools") or {}).get("torch"), path)
        self.runner = load_aoti(path, device)
        # The compiled kernels launch on the current stream and allocate through torch's allocator.
        self.capturable = device.type == "cuda"

    def _run(self, feeds):
        # contiguous: the compiled kernels assume dense inputs; flow._tvec hands over an expanded (B,) t
        feeds = {k: v.to(self.device).contiguous() for k, v in feeds.items()}
        out = self.runner(**feeds)
        if isinstance(out, (list, tuple)):
            out = out[0]
        return {self.outputs[0].name: out}


def load_cascade(artifact_dir: Path, device: torch.device):
    """-> ([(ModelConfig, AotiEngine)] in scale order, decoder AotiEngine)."""
    device = torch.device(device)
    return load_artifacts(artifact_dir, "aoti", device, lambda p, e, m: AotiEngine(p, e, m, device))
