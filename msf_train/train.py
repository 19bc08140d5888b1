"""The training loop of one scale (or of a one-scale DiT baseline), on one process or many (torchrun).

Per step, on each process: a batch of cached latents (msf_train.cache), the scale's target and prior
from Algorithm 1 and Algorithm 2 (msf_train.factorize), label dropout to the null class, and the
rectified-flow loss of Eq. 5 (msf_train.flow); AdamW, gradient clipping, an EMA of the weights, bf16
autocast on CUDA. DDP through torchrun: gloo on CPU, NCCL on GPU; every process draws its own data
shard and noise, and all end with the same weights.

Reproducibility: the model's initial weights come from `seed`; each step's batch and noise come from
generators seeded by (seed, rank, step), so `--resume` from a checkpoint at step S replays exactly
the steps an uninterrupted run would have taken after S.

The output folder is a stage folder (msf_train.checkpoint: model.safetensors = EMA weights,
config.json with the preset config, the step and the cache's VAE identity) plus the trainer's
checkpoints in state/ (msf_train.train_state), log.jsonl (one line per log interval: step, loss,
lr, it/s, wall, grad norm) and train.json, a summary written at the end (incl. each rank's weight
sha256). The options and their checks live in msf_train.train_options.
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from msf_train import factorize, flow, outdir
from msf_train.checkpoint import CONFIG_FILE, atomic_write_json, load_stage_config, read_json
from msf_train.config import ModelConfig, get_preset
from msf_train.errors import MsfError
from msf_train.labels import share_label_gradients
from msf_train.train_options import TrainOptions, check_resume_options, lr_at, validate_options
from msf_train.train_state import (STATE_DIR, has_checkpoint, latest_checkpoint, load_checkpoint, load_init,
                                   save_checkpoint, weights_sha256)
from msf_train.util import Interrupted, JsonlLog, StopSignals, autocast, progress, resolve_device, step_seed
from msf_train.vae import same_vae

LOG_FILE = "log.jsonl"
SUMMARY_FILE = "train.json"
STAGES = ("scale0", "scale1", "dit")
DEFAULT_PRESETS = {s: f"demo/{s}" for s in STAGES}  # what `msf-train STAGE` trains without --preset
GPU_CACHE_FRACTION = 0.25  # a cache smaller than this share of free GPU memory lives on the GPU


# ---- distributed -------------------------------------------------------------------------------
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device_name: str) -> tuple["Dist", torch.device]:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls(), resolve_device(device_name)
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        dev = resolve_device(device_name, local)
        import torch.distributed as dist

        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo",
                                device_id=dev if dev.type == "cuda" else None)
        return cls(rank, world, local), dev

    def barrier(self):
        if self.world > 1:
            torch.distributed.barrier()

    def all_gather(self, obj) -> list:
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def close(self):
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def stage_config(stage: str, preset: str | None) -> ModelConfig:
    """The preset for a training command, checked against it (`msf-train scale1` needs a scale-1 preset)."""
    if stage not in STAGES:
        raise MsfError(f"unknown stage {stage!r}; use one of {', '.join(STAGES)}")
    cfg = get_preset(preset or DEFAULT_PRESETS[stage])
    if stage == "dit":
        if len(cfg.scale_sizes) != 1:
            raise MsfError(f"preset {cfg.name} is scale {cfg.scale_index} of a {len(cfg.scale_sizes)}-scale cascade; "
                           f"train it with msf-train scale{cfg.scale_index}")
    else:
        k = int(stage[len("scale"):])
        if len(cfg.scale_sizes) == 1:
            raise MsfError(f"preset {cfg.name} is a one-scale model; train it with msf-train dit")
        if cfg.scale_index != k:
            raise MsfError(f"preset {cfg.name} is scale {cfg.scale_index}, not scale {k}; "
                           f"train it with msf-train scale{cfg.scale_index}")
    return cfg


def check_cache_fits(cfg: ModelConfig, cache) -> ModelConfig:
    """`cfg` sized for the cache: its latent channels are the cache's (the VAE fixes C; a preset names
    the transformer), its latent sides must match (they fix the cascade's resolutions)."""
    want_full, want_base = cfg.scale_sizes[-1], cfg.scale_sizes[0]
    if cache.full_size != want_full or (len(cfg.scale_sizes) > 1 and cache.base_size != want_base):
        want = f"{want_base},{want_full}" if len(cfg.scale_sizes) > 1 else f"{want_full}"
        raise MsfError(f"cache {cache.folder} holds {cache.base_size}/{cache.full_size} latents (base/full); preset "
                       f"{cfg.name} needs {want_base}/{want_full}: rebuild it with msf-train cache --scales {want}")
    return cfg if cache.channels == cfg.in_channels else cfg.replace(in_channels=cache.channels)


def targets(cfg: ModelConfig, full: torch.Tensor, base: torch.Tensor | None):
    """(x, prior) for the scale of `cfg` from full- and base-resolution latents (float32, on device)."""
    if len(cfg.scale_sizes) == 1:
        return full, None
    R = factorize.residual_targets(full, base, cfg.scale_sizes)
    k = cfg.scale_index
    x = R[k] if cfg.residual_scale == 1.0 or k == 0 else R[k] / cfg.residual_scale
    return x, (factorize.priors(R, cfg.scale_sizes)[k - 1] if k > 0 else None)


# ---- data --------------------------------------------------------------------------------------
class Batches:
    """Per-process batches of the cache: epoch e is a permutation of all images seeded by (seed, e);
    process r of W reads its W-th share of it. Batch b of a process is a pure function of b, so a
    resumed run reads exactly what an uninterrupted one would have."""

    def __init__(self, cache, cfg: ModelConfig, batch: int, seed: int, dist: Dist, device: torch.device):
        self.cache, self.cfg, self.batch, self.seed = cache, cfg, batch, seed
        self.rank, self.world = dist.rank, dist.world
        self.per_rank = cache.count // dist.world
        if self.per_rank < 1:
            raise MsfError(f"cache {cache.folder} has {cache.count} images, fewer than the {dist.world} processes")
        self.device = device
        self.needs_base = len(cfg.scale_sizes) > 1
        self.labels = torch.from_numpy(cache.labels)
        self.resident = None
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if cache.nbytes < GPU_CACHE_FRACTION * free:  # the whole cache on the GPU: no loading at all
                self.resident = {n: cache.load(n).to(device) for n in (["full", "base"] if self.needs_base else ["full"])}
                self.labels = self.labels.to(device)
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.pop(min(self._perms))
            rng = np.random.default_rng(step_seed(self.seed, epoch, 0xDA7A))
            self._perms[epoch] = rng.permutation(self.cache.count)
        return self._perms[epoch]

    def indices(self, step: int) -> np.ndarray:
        pos = np.arange(step * self.batch, (step + 1) * self.batch, dtype=np.int64)
        epoch, off = np.divmod(pos, self.per_rank)
        out = np.empty_like(pos)
        for e in np.unique(epoch):
            sel = epoch == e
            out[sel] = self._perm(int(e))[self.rank * self.per_rank + off[sel]]
        return out

    def get(self, step: int):
        idx = self.indices(step)
        names = ["full", "base"] if self.needs_base else ["full"]
        if self.resident is not None:
            t = torch.from_numpy(idx).to(self.device, non_blocking=True)
            lat = [self.resident[n].index_select(0, t).float() for n in names]
            y = self.labels.index_select(0, t)
        else:
            lat = [self.cache.gather(idx, n).to(self.device, non_blocking=True).float() for n in names]
            y = self.labels[torch.from_numpy(idx)].to(self.device, non_blocking=True)
        full, base = lat[0], (lat[1] if self.needs_base else None)
        x, prior = targets(self.cfg, full, base)
        return x, prior, y


def measure_target_std(cache, cfg: ModelConfig, chunk: int = 4096) -> float:
    """Std of this scale's unnormalised target over the whole cache."""
    raw = cfg.replace(residual_scale=1.0)
    n, s, s2 = 0, 0.0, 0.0
    for i in range(0, cache.count, chunk):
        idx = np.arange(i, min(i + chunk, cache.count))
        full = cache.gather(idx, "full").float()
        base = cache.gather(idx, "base").float() if len(cfg.scale_sizes) > 1 else None
        x, _ = targets(raw, full, base)
        x = x.double()
        n += x.numel()
        s += x.sum().item()
        s2 += (x * x).sum().item()
    mean = s / n
    return math.sqrt(max(s2 / n - mean * mean, 1e-24))


# ---- one optimizer step -------------------------------------------------------------------------
class Stepper:
    """The model, optimizer and EMA of one stage, and one training step on a batch of (x, prior, y)."""

    def __init__(self, cfg: ModelConfig, opts: TrainOptions, device: torch.device, dist: Dist | None = None):
        from msf_train.model import build_model

        self.cfg, self.opts, self.device, self.dist = cfg, opts, device, dist or Dist()
        torch.manual_seed(opts.seed)
        self.raw = build_model(cfg, device).train()
        share_label_gradients(self.raw.y_embedder.weight, opts.label_sharing)
        self.ema = {k: v.detach().clone().float() for k, v in self.raw.state_dict().items()}
        self.opt = torch.optim.AdamW(self.raw.parameters(), lr=opts.lr, weight_decay=opts.weight_decay,
                                     betas=(0.9, 0.999))
        self.params = list(self.raw.parameters())
        self.ema_params = [self.ema[k] for k, _ in self.raw.named_parameters()]
        self.ema_buffers = [(self.ema[k], b) for k, b in self.raw.named_buffers() if k in self.ema]
        self.fwd = self.raw

    def wrap(self) -> None:
        """DDP across processes, then torch.compile if asked (after any checkpoint is loaded)."""
        model = self.raw
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            model = DDP(self.raw, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.fwd = torch.compile(model) if self.opts.compile else model

    def lr_at(self, step: int) -> float:
        return lr_at(self.opts, step)

    def step(self, step: int, x: torch.Tensor, prior: torch.Tensor | None, y: torch.Tensor):
        """Optimizer step number `step` (0-based) -> (loss, grad norm), device tensors (no sync)."""
        o, cfg = self.opts, self.cfg
        for g in self.opt.param_groups:
            g["lr"] = self.lr_at(step)
        gen = torch.Generator(self.device).manual_seed(step_seed(o.seed, self.dist.rank, step, 0x5EED))
        y = flow.drop_labels(y, o.label_dropout, cfg.null_class, gen)
        with autocast(self.device):
            loss = flow.flow_loss(self.fwd, x, y, prior, time_mode=o.time_sampling, generator=gen)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(self.params, o.grad_clip)
        self.opt.step()
        with torch.no_grad():
            decay = min(o.ema, (1 + step) / (10 + step))  # EMA warm-up
            torch._foreach_lerp_(self.ema_params, self.params, 1.0 - decay)
            for e, b in self.ema_buffers:
                e.copy_(b)
        return loss.detach(), gnorm.detach()


# ---- the loop ----------------------------------------------------------------------------------
def train(opts: TrainOptions, log=print) -> dict:
    """Train one stage; returns the summary (also written to OUT/train.json by rank 0)."""
    from msf_train.cache import LatentCache

    validate_options(opts)
    cfg = stage_config(opts.stage, opts.preset)
    cache = LatentCache(opts.cache)
    cfg = check_cache_fits(cfg, cache)
    cache.check_classes(cfg.num_classes, cfg.name)
    if opts.vae:
        cache.check_vae(opts.vae)
    out = Path(opts.out)
    command = f"msf-train {opts.stage}"
    outdir.check_claim(out, command, force=opts.force, recognise=_is_stage_output)
    found = latest_checkpoint(out)
    if found and not opts.resume:
        raise MsfError(f"{out} already holds a checkpoint at step {found[0]}: pass --resume to continue it, "
                       f"or choose another --out")
    if not found and (out / CONFIG_FILE).exists() and not opts.resume:
        raise MsfError(f"{out} already holds a model; choose another --out")
    if found:
        check_resume_options(read_json(found[1] / "trainer.json", "trainer state"), opts, out)
    if opts.init:
        cfg = check_init(opts, cfg, cache, resuming=bool(found))

    # Rank 0 owns the output folder: it holds the lock (a second training on OUT is refused).
    main = int(os.environ.get("RANK", "0")) == 0
    guard = outdir.claim(out, command, force=opts.force, recognise=_is_stage_output,
                         keep=has_checkpoint) if main else contextlib.nullcontext()
    with guard, StopSignals() as stop:
        dist, dev = Dist.from_env(opts.device)
        try:
            return _train(opts, cfg, cache, out, found, dist, dev, log, stop)
        finally:
            dist.close()


def check_init(opts: TrainOptions, cfg: ModelConfig, cache, resuming: bool) -> ModelConfig:
    """--init before anything is written: the folder holds this preset, trained on latents of the
    cache's VAE. Returns `cfg` with the folder's residual scale (its weights were trained for it).
    With --init-body the folder may come from another VAE (another channel count too): only its
    transformer is taken, so only the transformer must match, and the residual scale is this run's."""
    init_cfg, init_meta = load_stage_config(opts.init)
    if opts.init_body:
        if init_cfg.replace(in_channels=cfg.in_channels, residual_scale=cfg.residual_scale) != cfg:
            raise MsfError(f"--init {opts.init} holds {init_cfg.name}, not {cfg.name}: --init-body takes the "
                           f"transformer of a folder of the same preset")
        return cfg
    if init_cfg.in_channels != cfg.in_channels:
        raise MsfError(f"--init {opts.init} takes {init_cfg.in_channels}-channel latents, cache {cache.folder} holds "
                       f"{cfg.in_channels}-channel ones: its weights are for another VAE's latent space")
    if init_cfg != cfg.replace(residual_scale=init_cfg.residual_scale):
        raise MsfError(f"--init {opts.init} holds {init_cfg.name}, not {cfg.name}: initialise from a folder of "
                       f"the same preset")
    theirs = init_meta.get("vae")
    if theirs and not same_vae(theirs, cache.vae):
        raise MsfError(f"--init {opts.init} was trained on latents of another VAE than cache {cache.folder}: "
                       f"its weights are for another latent space")
    if opts.residual_scale is not None and not resuming:
        raise MsfError(f"--residual-scale and --init: the scale is --init {opts.init}'s "
                       f"({init_cfg.residual_scale}); drop --residual-scale")
    return cfg.replace(residual_scale=init_cfg.residual_scale)


def _is_stage_output(folder: Path) -> bool:
    """A training output folder written before output markers existed."""
    return (folder / STATE_DIR).is_dir() or (folder / CONFIG_FILE).is_file()


def _train(opts, cfg, cache, out, found, dist: Dist, dev, log, stop: StopSignals | None = None) -> dict:
    stop = stop or StopSignals()
    if opts.batch % dist.world:
        raise MsfError(f"--batch {opts.batch} is not divisible by the {dist.world} processes")
    local_batch = opts.batch // dist.world
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    saved = read_json(found[1] / "trainer.json", "trainer state") if found else None
    # The residual normalisation: the preset's (or the --init folder's: check_init set it and refused
    # --residual-scale), a given number, or measured (1/std of the targets); a resumed run keeps the
    # factor it started with.
    if cfg.scale_index > 0:
        rs = cfg.residual_scale
        if saved:
            rs = saved["config"]["residual_scale"]
            if opts.residual_scale not in (None, "auto") and float(opts.residual_scale) != rs:
                raise MsfError(f"the checkpoint in {out} was trained with --residual-scale {rs}, "
                               f"not {opts.residual_scale}")
        elif opts.residual_scale == "auto":
            rs = float(f"{measure_target_std(cache, cfg):.6g}")
        elif opts.residual_scale is not None:
            rs = float(opts.residual_scale)
        cfg = cfg.replace(residual_scale=rs)

    st = Stepper(cfg, opts, dev, dist)
    start = 0
    if saved:
        load_checkpoint(found[1], st.raw, st.ema, st.opt, dev)
        if ModelConfig.from_dict(saved["config"]) != cfg:
            raise MsfError(f"the checkpoint in {out} was trained as {saved['config']}, not {cfg.to_dict()}; "
                           f"choose another --out")
        if not same_vae(saved.get("vae", {}), cache.vae):
            raise MsfError(f"the checkpoint in {out} was trained on latents of another VAE than cache {cache.folder}")
        check_resume_options(saved, opts, out)
        start = int(saved["step"])
        if dist.main:
            log(f"resuming {out} from step {start}")
    elif opts.resume and dist.main:
        log(f"no checkpoint in {out}; starting from step 0")
    init = saved.get("init") if saved else None  # what the run started from, kept across resumes
    if opts.init and saved and dist.main:
        log(f"--init {opts.init} ignored: resuming {out}'s own checkpoint")
    elif opts.init and not saved:  # every process loads the same weights: they start equal, as from a seed
        init = load_init(opts.init, st.raw, st.ema, body_only=opts.init_body)
        if dist.main:
            what = "the transformer body of " if opts.init_body else ""
            log(f"initialised from {what}{opts.init} (step {init['step']}), fresh optimizer")
    if start >= opts.steps:
        if dist.main:
            log(f"{out} is already at step {start} >= --steps {opts.steps}; nothing to do")
        return read_json(out / SUMMARY_FILE, "training summary") if (out / SUMMARY_FILE).is_file() else {"step": start}

    st.wrap()
    batches = Batches(cache, cfg, local_batch, opts.seed, dist, dev)
    trainer_meta = {"options": opts.to_dict(), "vae": cache.vae, "cache": str(cache.folder.resolve()),
                    "world_size": dist.world, "local_batch": local_batch, "init": init}
    stage_extra = {"vae": cache.vae, "cache": {"path": str(cache.folder.resolve()), "count": cache.count,
                                               "data": cache.meta.get("data", {}).get("kind")},
                   "training": {"stage": opts.stage, "batch": opts.batch, "lr": opts.lr, "ema": opts.ema,
                                "time_sampling": opts.time_sampling, "label_sharing": opts.label_sharing,
                                "seed": opts.seed, "world_size": dist.world, "init": init}}
    logf = None
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        logf = JsonlLog(out / LOG_FILE, truncate_after=start if found else -1)
        log(f"training {cfg.name} ({opts.stage}) on {cache.count} cached images, {dist.world} process(es) on "
            f"{dev.type}, global batch {opts.batch}, steps {start}..{opts.steps}")
    bar = progress(opts.steps, start, opts.progress and dist.main, desc=opts.stage)
    t0 = time.time()
    t_last, s_last = t0, start
    acc = torch.zeros(2, device=dev)  # loss and grad-norm sums since the last log line
    summary: dict = {}
    done = start
    for step in range(start, opts.steps):
        loss, gnorm = st.step(step, *batches.get(step))
        acc += torch.stack([loss.float(), gnorm.float()])
        bar.update(1)
        done = step + 1
        last = done == opts.steps
        if stop.requested(dist, done % opts.log_every == 0, dev):
            last = True  # save a checkpoint below, then stop
        if opts.max_minutes is not None and done % opts.log_every == 0:
            # Every process must stop at the same step: rank 0's clock decides for all.
            flag = torch.tensor([float(time.time() - t0 > 60 * opts.max_minutes)], device=dev)
            if dist.world > 1:
                torch.distributed.broadcast(flag, 0)
            last = last or bool(flag.item())
        if done % opts.log_every == 0 or done % opts.save_every == 0 or last:
            if dist.world > 1:  # the mean over processes, so that every process sees the same numbers
                torch.distributed.all_reduce(acc)
                acc /= dist.world
            vals = (acc / (done - s_last)).tolist()  # one device sync per log line
            if not all(math.isfinite(v) for v in vals):
                raise MsfError(f"the loss is not finite at step {done} ({vals[0]}); lower --lr or check the cache")
            if dist.main:
                now = time.time()
                logf.write({"step": done, "loss": vals[0], "grad_norm": vals[1], "lr": st.lr_at(step),
                            "it_s": (done - s_last) / max(now - t_last, 1e-9), "wall": now - t0})
                bar.set_postfix(loss=f"{vals[0]:.4f}", refresh=False)
                t_last = now
            acc.zero_()
            s_last = done
        if done % opts.save_every == 0 or last:
            if dist.main:
                save_checkpoint(out, done, st.raw, st.ema, st.opt, cfg, trainer_meta,
                                {**stage_extra, "loss": logf.last.get("loss")})
            dist.barrier()
        if last:
            break
    bar.close()
    if stop.signum is not None and done < opts.steps:
        raise Interrupted(f"interrupted by {signal.Signals(stop.signum).name} at step {done}: checkpoint saved in "
                          f"{out}; continue with the same command and --resume", stop.signum)

    shas = dist.all_gather(weights_sha256(st.raw.state_dict()))
    if dist.main:
        summary = {"preset": cfg.name, "stage": opts.stage, "steps": done, "started_at_step": start,
                   "stopped_by_time": done < opts.steps,
                   "batch": opts.batch, "world_size": dist.world, "device": dev.type,
                   "final_loss": logf.last.get("loss"), "wall_s": time.time() - t0,
                   "steps_per_s": (done - start) / max(time.time() - t0, 1e-9),
                   "residual_scale": cfg.residual_scale, "init": init, "rank_weights_sha256": shas,
                   "ranks_agree": len(set(shas)) == 1}
        atomic_write_json(out / SUMMARY_FILE, summary)
        if not summary["ranks_agree"]:
            log(f"warning: the {dist.world} processes ended with different weights: {shas}")
    dist.barrier()
    return summary
