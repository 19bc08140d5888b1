"""One small Engine interface: named input tensors -> named output tensors.

Every backend (torch here; onnxruntime, TensorRT and AOTInductor from the export issue, in
`runtime/backend_*.py`) implements it, so the sampler never knows which one it drives. Input and
output names and shapes come from the export contract next to the model (`msf_train.model.export_contract`,
`msf_train.vae.decoder_contract`): a denoiser takes x, t, y[, prior] and returns v; the decoder takes
latent and returns image.
"""
from __future__ import annotations

import torch

from msf_train.model import TensorSpec


class Engine:
    """Base class. Subclasses set `inputs`, `outputs`, `device` and implement `run`."""

    kind: str = "engine"  # "denoiser" or "decoder"
    backend: str = "?"
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    device: torch.device = torch.device("cpu")

    def run(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def __call__(self, **feeds: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.run(feeds)

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]
