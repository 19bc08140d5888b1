"""What the artifact backends (backend_onnx, backend_aoti, backend_trt) share: opening an export
folder through its manifest and wrapping each artifact in the runtime's Engine interface."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from msf_export import manifest as mf
from runtime.engines import Engine


class ArtifactEngine(Engine):
    """An Engine backed by one exported artifact; subclasses implement `_run` on checked feeds."""

    def __init__(self, entry: dict, manifest: dict, device: torch.device, backend: str):
        self.kind = entry["kind"]
        self.backend = backend
        self.name = entry["name"]
        self.inputs, self.outputs = mf.entry_specs(entry)
        self.device = device
        self.precision = entry.get("precision", manifest["precision"])
        self._entry, self._manifest = entry, manifest
        self.capturable = False  # may runtime.graphs capture it in a CUDA graph? (subclasses say)

    @property
    def max_batch(self) -> int | None:
        """The largest batch a denoiser artifact takes (callers chunk above it); a decoder chunks itself."""
        return None if self.kind == "decoder" else int(self._entry.get("batch", self._manifest["batch"])["max"])

    def run(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise ValueError(f"{self.name}: missing inputs {missing}; it takes {self.input_names}")
        feeds = {n: feeds[n] for n in self.input_names}
        batch = int(feeds[self.input_names[0]].shape[0])
        hi = self._entry.get("batch", self._manifest["batch"])["max"]
        if self.kind == "decoder" and batch > hi:  # decoding is per image: go in chunks (export.DECODER_MAX_BATCH)
            parts = [self._run({n: t[i:i + hi] for n, t in feeds.items()}) for i in range(0, batch, hi)]
            return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        mf.check_batch(self._entry, self._manifest, batch)
        return self._run(feeds)

    def _run(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def __repr__(self):
        return f"<{type(self).__name__} {self.name} {self.backend} {self.precision} on {self.device}>"


def load_artifacts(artifact_dir, engine: str, device: torch.device,
                   make: Callable[[Path, dict, dict], Engine]):
    """-> ([(ModelConfig, Engine)] in scale order, decoder Engine), after checking every file's sha256."""
    artifact_dir = Path(artifact_dir)
    m = mf.open_export(artifact_dir, engine)
    stages = [(mf.stage_config(e), make(artifact_dir / e["artifact"], e, m)) for e in m["stages"]]
    return stages, make(artifact_dir / m["decoder"]["artifact"], m["decoder"], m)
