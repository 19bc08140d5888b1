"""`msf-train`: presets, vae, cache, scale0, scale1, dit, assemble.

The demo recipe end to end (scripts/train_demo.sh runs it):
    msf-train vae --out runs/vae
    msf-train cache --vae runs/vae --data shapes --out runs/cache
    msf-train scale0 --cache runs/cache --out runs/scale0
    msf-train scale1 --cache runs/cache --out runs/scale1
    msf-train dit    --cache runs/cache --out runs/dit
    msf-train assemble --out runs/msf --vae runs/vae runs/scale0 runs/scale1
    msf-train import-dit DiT-XL-2-256x256.pt --vae sd-vae-ft-ema --out runs/dit-xl2   # a released DiT
Multi-process: torchrun --nproc_per_node N -m msf_train.cli scale0 ... (gloo on CPU, NCCL on GPU).
"""
from __future__ import annotations

import math
from pathlib import Path

import click

from msf_train.cliutil import MsfGroup, parse_list, version_option
from msf_train.errors import MsfError

# Option types with ranges: a bad value is one line at parse time, before torch loads.
POS_INT = click.IntRange(min=1)
NONNEG_INT = click.IntRange(min=0)
SEED = click.IntRange(0, 2 ** 63 - 1)
POS_FLOAT = click.FloatRange(min=0.0, min_open=True, max=1e6)
NONNEG_FLOAT = click.FloatRange(min=0.0, max=1e6)
FORCE = click.option("--force", is_flag=True, help="write into a non-empty --out that is not an earlier output of "
                     "this command for the same inputs (replacing what it holds)")
from msf_train.config import PRESETS, get_preset
from msf_train.train_options import LR_SCHEDULES


@click.group(cls=MsfGroup, context_settings={"help_option_names": ["-h", "--help"]})
@version_option("msf-train")
def main():
    """Train MSF models: one DiT per scale (Algorithm 1 targets, Algorithm 2 priors, Eq. 5 loss).

    Start with `msf-train presets` to see the model sizes; `msf-train vae`, `msf-train cache`, then
    `msf-train scale0`, `scale1` (and `dit` for the baseline), then `msf-train assemble`.
    """


def preset_rows(names=None):
    from msf_train.model import count_macs, count_params

    rows = []
    for name in names or PRESETS:
        c = get_preset(name)
        rows.append(dict(name=c.name, params=count_params(c), macs=count_macs(c), tokens=c.num_tokens,
                         latent="x".join(map(str, c.latent_shape)), prior=c.has_prior))
    return rows


@main.command()
@click.argument("names", nargs=-1)
def presets(names):
    """Table of presets: parameters, multiply-adds per forward (one image), tokens, latent shape.

    Give preset NAMES to show only those; `msf-xl/scale0` is the paper's scale 0 (435.9M),
    `dit-xl/2` the DiT baseline (675M, 118.6 "Gflops" in the DiT paper).
    """
    rows = preset_rows(names)
    click.echo(f"{'name':<16} {'params':>10} {'MACs/fwd':>11} {'tokens':>7} {'latent':>9}  prior")
    for r in rows:
        p = f"{r['params'] / 1e6:.1f}M"
        m = f"{r['macs'] / 1e9:.2f}G"
        click.echo(f"{r['name']:<16} {p:>10} {m:>11} {r['tokens']:>7} {r['latent']:>9}  {'yes' if r['prior'] else 'no'}")


def _device_option(f):
    return click.option("--device", default="auto", show_default=True,
                        help="auto (CUDA when available), cpu, cuda or cuda:N")(f)


def _int_list(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r}: give comma-separated integers") from None


@main.command()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="VAE folder to write (save_pretrained layout)")
@click.option("--steps", default=5000, show_default=True, type=POS_INT)
@click.option("--batch", default=32, show_default=True, type=POS_INT)
@click.option("--lr", default=4e-4, show_default=True, type=POS_FLOAT)
@click.option("--lr-schedule", default="constant", show_default=True, type=click.Choice(LR_SCHEDULES),
              help="constant, or a cosine decay to 0 at --steps (a cool-down at the end of a run; "
                   "--steps is then fixed for --resume)")
@click.option("--size", default=128, show_default=True, type=click.IntRange(8, 4096), help="training image side in pixels")
@click.option("--crop", default=None, type=click.IntRange(8, 4096), help="train on random crops of this side (cheaper; default: whole images)")
@click.option("--widths", default="32,64,64,64", show_default=True, help="channels of the 4 levels (f8)")
@click.option("--latent-channels", default=4, show_default=True, type=click.IntRange(1, 256),
              help="latent channels C (SD's VAE: 4, SD3's: 16); the denoisers trained on its cache take C")
@click.option("--mid-attention/--no-mid-attention", default=True, show_default=True,
              help="self-attention in the encoder's and decoder's mid blocks")
@click.option("--kl", "kl_weight", default=1e-6, show_default=True, type=NONNEG_FLOAT, help="KL weight (SD's per-image weighting)")
@click.option("--mse", "mse_weight", default=0.0, show_default=True, type=NONNEG_FLOAT,
              help="weight of a squared-error term added to the L1 loss (PSNR is a squared error)")
@click.option("--init", "init_dir", default=None, type=click.Path(exists=True, file_okay=False),
              help="start from this VAE folder (fine-tune; --widths, --latent-channels and --mid-attention are then its own)")
@click.option("--freeze-encoder", is_flag=True, help="with --init: train only the decoder; the latents stay "
              "identical, so caches and stages made with the --init VAE keep working with the new one")
@click.option("--classes", default=None, help="shapes classes: a count (20) or ids/ranges (0,5,10-19); default all 1000")
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("--workers", default=None, type=click.IntRange(0, 256),
              help="DataLoader workers rendering images (default: cores - 1, <= 12)")
@click.option("--scale-images", default=1024, show_default=True, type=POS_INT, help="images to measure the latent std on")
@click.option("--max-minutes", default=None, type=POS_FLOAT, help="stop training after this many minutes (then save)")
@click.option("--log-every", default=50, show_default=True, type=POS_INT)
@click.option("--save-every", default=500, show_default=True, type=POS_INT, help="checkpoint interval in steps")
@click.option("--resume", is_flag=True, help="continue from OUT's checkpoint (or start if it has none); --steps may grow")
@_device_option
@FORCE
def vae(out, steps, batch, lr, lr_schedule, size, crop, widths, latent_channels, mid_attention, kl_weight, mse_weight, init_dir, freeze_encoder, classes, seed,
        workers, scale_images, max_minutes, log_every, save_every, resume, device, force):
    """Train the small demo VAE (diffusers AutoencoderKL, f8, 4 latent channels unless told) on shapes images.

    Saves it in the save_pretrained layout with scaling_factor = 1 / std of its latents on the data;
    OUT/training.json records the measured std and the reconstruction PSNR. A checkpoint
    (OUT/state/) is written every --save-every steps, on Ctrl-C and at the end: a killed run goes on
    with the same command and --resume.

    \b
    msf-train vae --out runs/vae --crop 64 --max-minutes 60          # a new VAE, resumable
    msf-train vae --out runs/vae-dec --init runs/vae --freeze-encoder --mse 1
                                        # a better decoder; caches and stages of runs/vae stay valid
    """
    from msf_train.data import parse_classes
    from msf_train.vae_train import train_vae

    s = train_vae(out, steps=steps, batch=batch, lr=lr, lr_schedule=lr_schedule, size=size, crop=crop, widths=_int_list(widths),
                  latent_channels=latent_channels,
                  mid_attention=mid_attention, kl_weight=kl_weight, mse_weight=mse_weight, init=init_dir,
                  freeze_encoder=freeze_encoder, classes=parse_classes(classes), seed=seed, device=device, workers=workers,
                  scale_images=scale_images, log_every=log_every, save_every=save_every, resume=resume,
                  max_minutes=max_minutes, force=force)
    loss = "n/a" if s["final_loss"] is None else f"{s['final_loss']:.4f}"
    click.echo(f"saved {out}: {s['params'] / 1e6:.2f}M parameters, {s['steps']} steps, loss {loss}, "
               f"PSNR {s['psnr_db']:.1f} dB (border/interior error {s['border_to_interior_mse']:.2f}), "
               f"scaling_factor {s['scaling_factor']:.5g}, {s['train_wall_s']:.0f} s")


@main.command()
@click.option("--vae", "vae_dir", required=True, help="diffusers VAE folder (AutoencoderKL or AutoencoderTiny)")
@click.option("--data", required=True, help="'shapes' or an ImageNet-style folder (one sub-folder per class)")
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--scales", default="12,16", show_default=True,
              help="base,full latent sides (12,16 = the demo's 96/128 px; the paper's is 24,32)")
@click.option("--classes", default=None, help="shapes only: a count (20) or ids/ranges (0,5,10-19); default all 1000")
@click.option("--per-class", default=100, show_default=True, type=POS_INT, help="shapes only: images per class")
@click.option("--seed", default=0, show_default=True, type=SEED, help="shapes render seed and latent sampling seed")
@click.option("--batch", default=64, show_default=True, type=POS_INT)
@click.option("--workers", default=None, type=click.IntRange(0, 256), help="DataLoader workers (default: cores - 1, <= 12)")
@click.option("--shard-size", default=8192, show_default=True, type=POS_INT, help="images per shard")
@click.option("--dtype", default="float16", show_default=True, type=click.Choice(["float16", "float32"]))
@_device_option
@FORCE
def cache(vae_dir, data, out, scales, classes, per_class, seed, batch, workers, shard_size, dtype, device, force):
    """Encode every image once at the full and the base resolution (the inputs of Algorithm 1)."""
    from msf_train.cache import build_cache, parse_scales

    idx = build_cache(vae_dir, data, out, scales=parse_scales(scales), classes=classes, per_class=per_class,
                      seed=seed, batch=batch, device=device, workers=workers, shard_size=shard_size, dtype=dtype,
                      log=click.echo, force=force)
    click.echo(f"cache {out}: {idx['count']} images, latents {idx['base_size']}/{idx['full_size']}, "
               f"{len(idx['shards'])} shard(s), {idx['skipped']} skipped")


def _train_command(stage: str, summary: str):
    @click.option("--preset", default=f"demo/{stage}", show_default=True)  # = train.DEFAULT_PRESETS
    @click.option("--cache", "cache_dir", required=True, help="latent cache folder (msf-train cache)")
    @click.option("--out", required=True, type=click.Path(file_okay=False), help="stage folder to write")
    @click.option("--steps", default=10000, show_default=True, type=POS_INT, help="total optimizer steps")
    @click.option("--batch", default=64, show_default=True, type=POS_INT, help="global batch (split across processes)")
    @click.option("--lr", default=1e-4, show_default=True, type=POS_FLOAT,
                  help="AdamW learning rate (the paper: 3e-4 at batch 2560)")
    @click.option("--warmup", default=0, show_default=True, type=NONNEG_INT, help="linear LR warm-up steps")
    @click.option("--lr-schedule", default="constant", show_default=True, type=click.Choice(LR_SCHEDULES),
                  help="after warm-up: constant, or cosine decay to 0 at --steps (set --steps to what the "
                       "budget fits)")
    @click.option("--ema", default=0.9999, show_default=True, type=click.FloatRange(0.0, 1.0, max_open=True),
                  help="EMA decay in [0, 1) (warmed up as (1+s)/(10+s))")
    @click.option("--save-every", default=1000, show_default=True, type=POS_INT, help="checkpoint interval in steps")
    @click.option("--log-every", default=50, show_default=True, type=POS_INT)
    @click.option("--resume", is_flag=True, help="continue from OUT's last checkpoint (or start if it has none)")
    @click.option("--seed", default=0, show_default=True, type=SEED)
    @click.option("--time-sampling", default="uniform", show_default=True, type=click.Choice(["uniform", "logit_normal"]))
    @click.option("--label-sharing", default="none", show_default=True, type=click.Choice(["none", "shapes"]),
                  help="shapes: each class row of the label table also learns from every class with the same "
                       "shape, palette or texture (the table stays a plain DiT table; msf_train/labels.py)")
    @click.option("--vae", "vae_dir", default=None, help="check that the cache was made with this VAE")
    @click.option("--residual-scale", default=None,
                  help="residual scales: 'auto' (1/std of the targets, measured on the cache) or a number; "
                       "default the preset's")
    @click.option("--compile", "compile_", is_flag=True, help="torch.compile the model")
    @click.option("--init", "init_dir", default=None, type=click.Path(exists=True, file_okay=False),
                  help="start from this stage folder's weights (same preset and VAE; e.g. the shipped "
                       "runtime/weights/demo/scale0) with a fresh optimizer; --resume of OUT's own checkpoint wins")
    @click.option("--init-body", is_flag=True,
                  help="with --init trained on another VAE's latents (another channel count too): take only its "
                       "transformer (blocks, time and class embeddings); the patch embedding and the output layer "
                       "start afresh and the residual scale is this run's")
    @click.option("--max-minutes", default=None, type=POS_FLOAT,
                  help="wall-clock budget: stop at the first log interval past it and save (e.g. on a lent GPU)")
    @_device_option
    @FORCE
    def command(preset, cache_dir, out, steps, batch, lr, warmup, lr_schedule, ema, save_every, log_every, resume,
                seed, time_sampling, label_sharing, vae_dir, residual_scale, compile_, init_dir, init_body, max_minutes,
                device, force):
        get_preset(preset)  # a typo fails here, before torch loads
        from msf_train.train import TrainOptions, train

        if residual_scale not in (None, "auto"):
            try:
                ok = math.isfinite(float(residual_scale)) and float(residual_scale) > 0
            except ValueError:
                ok = False
            if not ok:
                raise click.BadParameter(f"{residual_scale!r}: use 'auto' or a positive number",
                                         param_hint="--residual-scale")
        s = train(TrainOptions(stage=stage, preset=preset, cache=cache_dir, out=out, steps=steps, batch=batch, lr=lr,
                               warmup=warmup, lr_schedule=lr_schedule, ema=ema, save_every=save_every, log_every=log_every, resume=resume,
                               seed=seed, time_sampling=time_sampling, label_sharing=label_sharing,
                               device=device, vae=vae_dir,
                               residual_scale=residual_scale, compile=compile_, init=init_dir, init_body=init_body,
                               max_minutes=max_minutes, force=force),
                  log=click.echo)
        if s.get("final_loss") is not None:
            click.echo(f"saved {out} at step {s['steps']}: loss {s['final_loss']:.4f}, {s['steps_per_s']:.2f} steps/s")

    command.__doc__ = summary
    return main.command(name=stage)(command)


_train_command("scale0", """Train scale 0 of an MSF cascade: the base latent (Algorithm 1's f_0), no prior.""")
_train_command("scale1", """Train scale 1: the residual f_1, conditioned on the upsampled prior (Algorithm 2).""")
_train_command("dit", """Train a one-scale DiT baseline on the full latent (no prior).""")


@main.command()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="cascade folder to write")
@click.option("--vae", "vae_dir", required=True, help="the VAE the stages' latents came from")
@click.option("--format", "fmt", type=click.Choice(["msf", "diffusers"]), default="msf", show_default=True,
              help="msf: a cascade folder for msf-run/msf-export; diffusers: each stage as a DiTTransformer2DModel "
                   "folder (OUT/scale<i>) and the VAE in OUT/vae (msf-train import-dit reads them back)")
@click.option("--allow-unfinished", is_flag=True, help="assemble stages whose training stopped before its --steps")
@click.option("--steps", "plan_steps", default=None,
              help="the cascade's own sampling steps, one per stage (e.g. 50,15), written to cascade.json: "
                   "msf-run, msf-eval and msf-export use them when not given --steps [default: none, the paper's 100,50]")
@click.option("--cfg", "plan_cfg", default=None,
              help="the cascade's own CFG scales, one per stage (e.g. 3,2), as --steps [default: none, the paper's 1.4,1]")
@FORCE
@click.argument("stages", nargs=-1, required=True)
def assemble(out, vae_dir, stages, fmt, allow_unfinished, plan_steps, plan_cfg, force):
    """Make a cascade folder (msf-run --model OUT) from stage folders in scale order and a VAE.

    Only weights and configs are copied; each stage must record this VAE as its latents' source.
    --steps/--cfg record the plan the cascade was tuned at (docs/RESULTS.md, "Sweeps", measures one).
    """
    sampling = {k: v for k, v in (("steps", parse_list(plan_steps, int, "--steps")),
                                  ("cfg", parse_list(plan_cfg, float, "--cfg"))) if v is not None}
    if fmt == "diffusers":
        if sampling:
            raise MsfError("--steps/--cfg go into cascade.json, which --format diffusers does not write: drop them")
        from msf_train.interop import write_diffusers_cascade

        written = write_diffusers_cascade(out, list(stages), vae_dir, force=force)
        click.echo(f"diffusers folders {', '.join(map(str, written))} + {out}/vae "
                   "(DiTTransformer2DModel.from_pretrained loads each)")
        return
    from msf_train.assemble import assemble_cascade

    assemble_cascade(out, list(stages), vae_dir, force=force, allow_unfinished=allow_unfinished,
                     log=lambda m: click.echo(m, err=True), sampling=sampling)
    click.echo(f"cascade {out}: {', '.join(stages)} + {vae_dir}")


@main.command("import-dit")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="stage folder to write; with a VAE, a one-stage cascade folder (OUT/scale0, OUT/vae)")
@click.option("--vae", "vae_dir", default=None, type=click.Path(path_type=Path),
              help="diffusers VAE folder the DiT's latents come from (sd-vae-ft-ema for the released DiTs); "
                   "default: SOURCE/vae for a DiTPipeline folder, else none (a bare stage folder)")
@click.option("--heads", default=None, type=click.IntRange(min=1),
              help="attention heads (.pt files do not record them; default from the width: DiT-S/B/L/XL)")
@click.option("--parameterization", default=None, type=click.Choice(["eps-ddpm", "velocity"]),
              help="what the network predicts [default: eps-ddpm, as the released DiTs; a folder written by "
                   "msf-train assemble --format diffusers records its own]")
@FORCE
def import_dit(source, out, vae_dir, heads, parameterization, force):
    """Import a released DiT: a facebookresearch/DiT .pt (DiT-XL-2-256x256.pt) or a diffusers
    DiTTransformer2DModel / DiTPipeline folder, as an msf stage that samples like ours.

    \b
    msf-train import-dit DiT-XL-2-256x256.pt --vae sd-vae-ft-ema --out runs/dit-xl2
    msf-run --model runs/dit-xl2 --class 207 --steps 100 --cfg 1.5 --out dog.png
    """
    from msf_train.interop import describe, import_dit as run_import

    stage = run_import(source, out, vae_dir, heads, parameterization, force=force)
    what = "cascade folder" if stage != out else "stage folder (add --vae for a cascade)"
    click.echo(f"imported {source} -> {out}, {what}: {describe(stage)}")


if __name__ == "__main__":
    main()
