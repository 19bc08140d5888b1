"""The Python API of msf: load a cascade and make images, as diffusers pipelines do.

    import msf
    pipe = msf.load("runs/msf")          # a cascade folder, an msf-export artifact folder, or None: the demo
    images = pipe(class_labels=[330, 207], steps=(100, 50), cfg=(1.4, 1.0), seed=0)   # PIL images
    images[0].save("330.png")

Image j uses seed + j with its own generator, exactly as `msf-run --seed`, so
`pipe([330], seed=5)[0]` is the image msf-run writes for `--class 330 --seed 5`. `msf.load` takes
`backend` (torch, onnx, aoti, trt; default from the folder), `device` (auto, cpu, cuda) and `dtype`
(fp32, bf16, fp16) as msf-run does; `pipe.generate(...)` returns tensors and timings. Everything here
lives on top of `runtime` (runtime/pipeline.py).
"""
from __future__ import annotations

from msf_train.errors import MsfError

__all__ = ["load", "Pipeline", "MsfError"]


def load(path=None, backend: str | None = None, device: str = "auto", dtype: str = "fp32", compile: bool = False):
    """-> `runtime.pipeline.Pipeline` for ``path`` (None: the embedded demo cascade)."""
    from runtime.pipeline import load as _load

    return _load(path, backend, device, dtype, compile)


def __getattr__(name):  # `msf.Pipeline` without importing torch at `import msf`
    if name == "Pipeline":
        from runtime.pipeline import Pipeline

        return Pipeline
    raise AttributeError(name)
