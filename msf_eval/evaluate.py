"""Sample a cascade for a set of classes and score the samples.

Scores (DESIGN.md section 6): a Fréchet distance against real shapes images with a pluggable feature
extractor (`msf_eval.features`: FID-EffNet offline, FID with a user's Inception weights), class and
per-attribute accuracy from the shapes classifier (`msf_eval.classifier`), and the sampling cost:
analytic multiply-adds per image (steps x forwards per step x MACs per forward, summed over scales)
and measured latency through the same runtime.
"""
from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import torch

from msf_train.errors import MsfError
from msf_train.model import count_macs

REFERENCE_SEED = 12345  # real images for FID come from a render seed training never sees


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float (B, 3, H, W) -> uint8 (B, 3, H, W), rounding as PNG writing does."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def real_images(class_ids, per_class: int, size: int, seed: int = REFERENCE_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """-> uint8 (N, 3, size, size) rendered shapes and their labels (N,)."""
    from msf_train.data import render

    labels = [c for c in class_ids for _ in range(per_class)]
    imgs = [render(c, i % per_class, seed, size) for i, c in enumerate(labels)]
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels)


def sampling_macs(cfgs, steps, cfg_scales, solver: str = "euler") -> int:
    """Analytic multiply-adds per image of a plan: CFG != 1 doubles the forwards of that scale."""
    from msf_train.flow import calls_per_step

    return sum(s * calls_per_step(solver) * (1 if w == 1.0 else 2) * count_macs(c)
               for c, s, w in zip(cfgs, steps, cfg_scales))


def sample_images(model_dir, class_ids, per_class: int, *, steps=None, cfg=None, solver="euler", shift=1.0,
                  seed: int = 0, batch: int = 64, backend=None, device="cpu", progress=True) -> dict:
    """Sample ``per_class`` images of each class -> dict(images uint8 NCHW, labels, plan, seconds)."""
    from tqdm import tqdm

    from runtime.engines import load_cascade, sampling_defaults
    from runtime.sampler import check_classes, make_plan, sample

    stages, decoder = load_cascade(model_dir, backend, device)
    cfgs = [c for c, _ in stages]
    plan = make_plan(cfgs, steps, cfg, solver, shift, sampling_defaults(model_dir))
    check_classes(cfgs, list(class_ids))  # before any sampling: a bad id fails in one line
    labels = torch.tensor([c for c in class_ids for _ in range(per_class)])
    out, seconds = [], 0.0
    for i in tqdm(range(0, len(labels), batch), desc="sampling", disable=not progress, unit="batch"):
        y = labels[i:i + batch]
        r = sample(stages, decoder, y, seeds=seed + i, plan=plan, timed=False)
        if not bool(torch.isfinite(r.image).all()):  # NaN would round to black pixels and score silently
            raise MsfError(f"the samples of {model_dir} are not finite (NaN/inf in batch {i // batch}): the model "
                           f"or its export is broken; nothing was scored")
        t0 = time.perf_counter()
        out.append(to_uint8(r.image).cpu())
        seconds += r.total_s + time.perf_counter() - t0
    return {"images": torch.cat(out), "labels": labels, "plan": plan, "cfgs": cfgs, "seconds": seconds}


def save_npz(path, images_u8: torch.Tensor, labels: torch.Tensor) -> Path:
    """ADM-style sample batch: ``arr_0`` uint8 NHWC, ``arr_1`` int64 labels; written atomically."""
    path = Path(path)
    buf = io.BytesIO()
    np.savez(buf, images_u8.permute(0, 2, 3, 1).numpy(), labels.numpy().astype(np.int64))
    from msf_train.checkpoint import atomic_write_bytes

    atomic_write_bytes(path, buf.getvalue())
    return path


def evaluate(model_dir, class_ids, per_class: int, *, classifier_dir, steps=None, cfg=None, solver="euler",
             shift=1.0, seed: int = 0, batch: int = 64, backend=None, device="cpu", extractor="effnet",
             inception_weights=None, npz=None, ref_per_class: int | None = None, progress=True) -> dict:
    """Sample, save (optional .npz), and score. Returns a JSON-ready dict of figures."""
    from msf_eval.classifier import accuracy, load_classifier
    from msf_eval.features import frechet_distance

    from runtime.engines import resolve_device

    if per_class < 1 or batch < 1:
        raise MsfError(f"--per-class and --batch must be >= 1, got {per_class} and {batch}")
    device = str(resolve_device(device))  # --device cuda without CUDA: one line, before any work
    if not (Path(classifier_dir) / "classifier.safetensors").is_file():
        raise MsfError(f"no shapes classifier in {classifier_dir}; train one with "
                       f"`msf-eval classifier --out {classifier_dir}`")
    try:
        clf, clf_meta = load_classifier(classifier_dir, device)
    except RuntimeError as e:  # weights of another architecture (load_state_dict)
        raise MsfError(f"the classifier in {classifier_dir} does not fit this msf's ShapesClassifier "
                       f"({str(e).splitlines()[0][:80]}): retrain it with `msf-eval classifier --out DIR`") from None
    s = sample_images(model_dir, class_ids, per_class, steps=steps, cfg=cfg, solver=solver, shift=shift, seed=seed,
                      batch=batch, backend=backend, device=device, progress=progress)
    fake, labels, plan, cfgs = s["images"], s["labels"], s["plan"], s["cfgs"]
    if npz:
        save_npz(npz, fake, labels)
    size = fake.shape[-1]
    real, _ = real_images(class_ids, ref_per_class or per_class, size)
    fd, label = frechet_distance(real, fake, extractor, inception_weights)
    acc = accuracy(clf.predict(fake.to(device)).cpu(), labels)
    macs = sampling_macs(cfgs, plan.steps, plan.cfg, plan.solver)
    return {
        "model": str(model_dir), "stages": [c.name for c in cfgs], "steps": list(plan.steps),
        "cfg": list(plan.cfg), "solver": plan.solver, "shift": plan.shift, "seed": seed,
        "classes": len(class_ids), "per_class": per_class, "images": int(len(labels)),
        label: round(fd, 4), "fid_label": label,
        "accuracy": {k: round(v, 4) for k, v in acc.items()},
        "classifier_holdout_accuracy": clf_meta.get("holdout_accuracy"),
        "sampling_gmacs_per_image": round(macs / 1e9, 3),
        "seconds_per_image": round(s["seconds"] / len(labels), 5), "device": str(device),
    }
