"""The FP16 export variant of a denoiser: a `.half()` copy with FP32 islands (DESIGN.md section 5).

Half precision is fine for the big matmuls (patch embedding, attention, MLP) but not for the parts
whose dynamic range or cancellation matters:
- LayerNorm: the variance of a 1000-wide token in FP16 loses most of its digits;
- the timestep embedding: ``cos/sin(1000 t * freq)`` at t near 1 needs FP32 arguments (DiT's
  embedder sees 1000 * t, model.TIME_SCALE), and its MLP feeds every block;
- the adaLN modulation: shift/scale/gate multiply every token, so their error is amplified.

The transformation wraps those modules in `Fp32Island` (explicit casts in and out) and halves the
rest. It works on a deep copy, so `msf_train.model` keeps its FP32 behaviour. The wrapper's inputs
and outputs stay FP32 / int64 as in the export contract, so every runtime sees the same interface;
the casts are explicit nodes in the exported graph, which is what a strongly typed TensorRT network
needs (it takes the types from the graph, there is no FP16 builder flag any more).
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class Fp32Island(nn.Module):
    """Run ``inner`` in FP32 whatever the surrounding dtype; cast the result to ``out_dtype``."""

    def __init__(self, inner: nn.Module, out_dtype: torch.dtype):
        super().__init__()
        self.inner = inner.float()
        self.out_dtype = out_dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() if x.is_floating_point() else x  # timestep t is already float32
        return self.inner(x).to(self.out_dtype)


class CastIn(nn.Module):
    """Cast the input to ``dtype`` before ``inner`` (the FP32 contract input entering the FP16 body)."""

    def __init__(self, inner: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.inner = inner
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.to(self.dtype))


class Fp16Denoiser(nn.Module):
    """``v = model(x, t, y, prior=None)`` with an FP16 body and FP32 islands; FP32 in and out.

    Data types through the DiT forward (model.DiT.forward):
    x_embedder: FP16 (cast in) -> tokens FP16; t_embedder: FP32 island, returns FP32, so the
    conditioning c = t_emb + y_emb is FP32 (type promotion); each adaLN_modulation: FP32 island
    returning FP16 shift/scale/gate; each LayerNorm: FP32 island returning FP16; the residual stream,
    attention and MLP are FP16; the velocity is cast back to FP32.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        m = copy.deepcopy(model).eval().half()
        half = torch.float16
        m.x_embedder = CastIn(m.x_embedder, half)
        m.t_embedder = Fp32Island(m.t_embedder, torch.float32)
        for owner in list(m.blocks) + [m.final_layer]:
            owner.adaLN_modulation = Fp32Island(owner.adaLN_modulation, half)
            for name in ("norm1", "norm2", "norm"):
                if isinstance(getattr(owner, name, None), nn.LayerNorm):
                    setattr(owner, name, Fp32Island(getattr(owner, name), half))
        self.model = m
        self.cfg = model.cfg

    def forward(self, x, t, y, prior=None):
        return self.model(x, t, y, prior).float()  # (B, C, h, w) FP16 -> FP32


def island_dtypes(wrapper: Fp16Denoiser) -> dict[str, torch.dtype]:
    """Parameter dtype of every module kind (for tests and docs): which parts run in FP32."""
    out = {}
    for name, p in wrapper.named_parameters():
        out[name] = p.dtype
    return out
