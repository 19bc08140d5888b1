"""What one training run of a stage is asked to do (`msf-train scale0|scale1|dit`), and the checks on it.

The options that decide what a step computes (RESUME_FIXED) are stored with every checkpoint: a
resumed run must use the values it started with, so that `--resume` replays exactly the steps an
uninterrupted run would have taken (msf_train/train.py).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from msf_train.errors import MsfError

LR_SCHEDULES = ("constant", "cosine")


@dataclass
class TrainOptions:
    stage: str  # scale0 | scale1 | dit
    cache: str
    out: str
    preset: str | None = None
    steps: int = 10000
    batch: int = 64  # global batch (split across processes)
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup: int = 0  # linear LR warm-up steps
    lr_schedule: str = "constant"  # after warm-up: constant, or cosine decay to 0 at `steps`
    ema: float = 0.9999
    grad_clip: float = 1.0
    label_dropout: float = 0.1
    label_sharing: str = "none"  # "shapes": class rows share attribute gradients (msf_train/labels.py)
    save_every: int = 1000
    log_every: int = 50
    resume: bool = False
    seed: int = 0
    time_sampling: str = "uniform"
    device: str = "auto"
    vae: str | None = None
    residual_scale: str | None = None  # None: the preset's; "auto": 1/std of the targets; or a number
    compile: bool = False
    progress: bool = True
    max_minutes: float | None = None  # wall-clock budget: stop at the next log interval past it, then save
    force: bool = False  # write into a non-empty --out that holds no training output
    init: str | None = None  # start from this stage folder's weights (fresh optimizer); ignored on --resume
    init_body: bool = False  # with init: only its transformer body (the folder was trained on another VAE's latents)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Options that decide what a step computes: a resumed run must use the values it started with.
RESUME_FIXED = ("batch", "lr", "warmup", "lr_schedule", "ema", "seed", "time_sampling", "label_sharing", "weight_decay",
                "grad_clip", "label_dropout")


def validate_options(opts: TrainOptions) -> None:
    """Ranges of every option (the CLI checks them too; this guards the Python API)."""
    if opts.lr_schedule not in LR_SCHEDULES:
        raise MsfError(f"--lr-schedule {opts.lr_schedule!r}: use one of {', '.join(LR_SCHEDULES)}")
    if opts.time_sampling not in ("uniform", "logit_normal"):
        raise MsfError(f"--time-sampling {opts.time_sampling!r}: use uniform or logit_normal")
    for name in ("steps", "batch", "save_every", "log_every"):
        if getattr(opts, name) < 1:
            raise MsfError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(opts, name)}")
    if opts.max_minutes is not None and not (opts.max_minutes > 0 and math.isfinite(opts.max_minutes)):
        raise MsfError(f"--max-minutes must be > 0, got {opts.max_minutes}")
    if not (math.isfinite(opts.lr) and opts.lr > 0):
        raise MsfError(f"--lr must be a positive number, got {opts.lr}")
    if not (0.0 <= opts.ema < 1.0):
        raise MsfError(f"--ema must be in [0, 1) (a decay; 0.9999 is usual), got {opts.ema}")
    if opts.warmup < 0:
        raise MsfError(f"--warmup must be >= 0, got {opts.warmup}")
    if not 0 <= opts.seed < 2 ** 63:
        raise MsfError(f"--seed must be in 0..2^63-1, got {opts.seed}")
    if not (math.isfinite(opts.grad_clip) and opts.grad_clip > 0) or not 0.0 <= opts.label_dropout < 1.0 \
            or not (math.isfinite(opts.weight_decay) and opts.weight_decay >= 0):
        raise MsfError("grad_clip must be > 0, label_dropout in [0, 1) and weight_decay >= 0")
    if opts.init_body and not opts.init:
        raise MsfError("--init-body takes the transformer body of an --init folder: add --init STAGE")
    if opts.residual_scale not in (None, "auto"):
        try:
            rs = float(opts.residual_scale)
        except ValueError:
            rs = float("nan")
        if not (math.isfinite(rs) and rs > 0):
            raise MsfError(f"--residual-scale {opts.residual_scale!r}: use 'auto' or a positive number")


def check_resume_options(saved: dict, opts: TrainOptions, out: Path) -> None:
    """A resumed run replays the interrupted one exactly only with the same step-defining options."""
    old = saved.get("options", {})
    # A cosine decays to 0 at --steps: another --steps would bend the rest of the schedule.
    fixed = RESUME_FIXED + (("steps",) if opts.lr_schedule == "cosine" else ())
    for k in fixed:
        if k in old and old[k] != getattr(opts, k):
            flag = "--" + k.replace("_", "-")
            raise MsfError(f"the checkpoint in {out} was trained with {flag} {old[k]}, not {getattr(opts, k)}: "
                           f"resume with {flag} {old[k]} (or train into another --out)")



def lr_at(opts: TrainOptions, step: int) -> float:
    """The learning rate of optimizer step `step` (0-based) under the options' schedule."""
    return scheduled_lr(opts.lr, step, opts.steps, opts.warmup, opts.lr_schedule)


def scheduled_lr(lr: float, step: int, steps: int, warmup: int = 0, schedule: str = "constant") -> float:
    """The learning rate of optimizer step `step` (0-based) of a `steps`-step run: linear warm-up, then
    constant or a cosine decay to 0 at `steps` (cooling down at the end of a budget is worth a good
    part of a longer run; an EMA alone does less of it)."""
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "cosine":
        span = max(steps - warmup, 1)
        return lr * 0.5 * (1 + math.cos(math.pi * min(step - warmup, span) / span))
    return lr
