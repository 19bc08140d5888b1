"""`msf-run`: sample images from a cascade (Algorithm 3) and write them as PNG.

A thin click wrapper: the work is in `runtime.engines` (loading, backends), `runtime.sampler`
(Algorithm 3) and `runtime.graphs` (CUDA graph of the whole cascade). Input that can be checked
without torch is checked before torch is imported, so a typo fails in well under a second.
"""
from __future__ import annotations

import io
import math
import os
import sys
from pathlib import Path

import click

from msf_train.cliutil import MsfCommand, check_writable, check_writable_dir, parse_list, version_option
from msf_train.errors import MsfError

DEMO_MODEL = Path(__file__).resolve().parent / "weights" / "demo-msf"


# ---- parsing (no torch) ------------------------------------------------------------------------
def check_output(out: Path) -> None:
    """Fail before sampling if ``out`` cannot be written (the PNG itself is written atomically)."""
    if out.suffix.lower() != ".png":
        raise MsfError(f"--out must be a .png path, got {out}")
    if out.is_dir():
        raise MsfError(f"--out {out} is a folder; give a file name such as {out / 'img.png'}")
    check_writable(out, "--out")


def image_name(class_id: int, seed: int) -> str:
    """--out-dir file name of one image: its class and seed, which are all it depends on."""
    return f"class{class_id}-seed{seed}.png"


def scale_path(out: Path, i: int) -> Path:
    """img.png -> img.scale0.png: where --save-scales puts the accumulation after scale i."""
    return out.with_name(f"{out.stem}.scale{i}{out.suffix}")


# ---- images ------------------------------------------------------------------------------------
def to_grid(images, ncol: int, pad: int = 2):
    """(B, 3, H, W) in [-1, 1] -> (rows*H + gaps, ncol*W + gaps, 3) uint8, white gaps between images."""
    import torch

    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # (B, 3, H, W)
    B, _, H, W = x.shape
    if B == 1:
        return x[0].permute(1, 2, 0).numpy()
    ncol = max(1, min(ncol, B))
    nrow = math.ceil(B / ncol)
    grid = torch.full((3, nrow * H + (nrow - 1) * pad, ncol * W + (ncol - 1) * pad), 255, dtype=torch.uint8)
    for k in range(B):
        r, c = divmod(k, ncol)
        grid[:, r * (H + pad):r * (H + pad) + H, c * (W + pad):c * (W + pad) + W] = x[k]
    return grid.permute(1, 2, 0).numpy()  # (H', W', 3)


def write_png(path: Path, array) -> None:
    """Encode in memory, then `atomic_write_bytes` (temp file + rename): never a half-written PNG."""
    from PIL import Image

    from msf_train.checkpoint import atomic_write_bytes

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    mask = os.umask(0)  # the temp file was created 0600; give the image the usual permissions
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def peak_memory_line(dev) -> str:
    """Peak memory of this process so far: GPU bytes allocated by torch (weights, activations, graph
    pools) and the CPU's peak resident set. Edge users choose engines by these (issue #11)."""
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    rss_mib = rss / (1 << 20) if sys.platform == "darwin" else rss / 1024
    line = f"peak memory: CPU RSS {rss_mib:.0f} MiB"
    if dev.type == "cuda":
        import torch

        line += f", GPU {torch.cuda.max_memory_allocated(dev) / (1 << 20):.0f} MiB allocated by torch"
    return line


# ---- the command -------------------------------------------------------------------------------
@click.command(cls=MsfCommand, context_settings={"help_option_names": ["-h", "--help"]})
@version_option("msf-run")
@click.option("--class", "class_ids", default="330", show_default=True,
              help="Class id(s), comma separated, e.g. 330 or 1,2,3; each in [0, num_classes).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2 ** 63 - 2 ** 32),
              help="Image j of the output uses seed+j, so an image depends only on its seed and class.")
@click.option("--batch", default=1, show_default=True, type=click.IntRange(min=1),
              help="Images PER CLASS: --class 1,2 --batch 4 makes 8 images (a 2x4 grid, one row per class).")
@click.option("--steps", default=None, help="Steps per stage, comma separated, e.g. 100,50 [default: the model "
              "folder's own plan (cascade.json \"sampling\"; the embedded demo's is 50,15), else 100,50 for two "
              "stages (the paper), 100 for one; 50 for each further stage].")
@click.option("--cfg", "cfg_scales", default=None, help="CFG scale per stage (Eq. 7; 1 = off, one forward per step), "
              "e.g. 1.4,1.0 [default: the model folder's own (the embedded demo's is 3,2), else 1.4 then 1.0 per "
              "residual stage (the paper); 1.5 for a one-stage DiT].")
@click.option("--solver", type=click.Choice(["euler", "heun"]), default="euler", show_default=True,
              help="ODE solver: Euler (one forward per step, the paper's) or Heun (two, second order).")
@click.option("--shift", default=1.0, show_default=True, type=float,
              help="Timestep shift (> 1 spends more steps near the noise end; 1 = uniform grid).")
@click.option("--model", "model_dir", default=None, type=click.Path(path_type=Path),
              help="A cascade folder (msf-train) or an exported artifact folder (msf-export) "
                   "[default: the embedded demo, runtime/weights/demo-msf].")
@click.option("--backend", type=click.Choice(["torch", "onnx", "aoti", "trt"]), default=None,
              help="Engine backend [default: the artifact manifest's engine, or torch for checkpoints].")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]),
              help="auto = cuda when available.")
@click.option("--dtype", default="fp32", show_default=True, type=click.Choice(["fp32", "bf16", "fp16"]),
              help="Denoiser precision (torch backend; fp16 on CUDA only). The VAE decodes in fp32.")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the denoisers (torch backend; the first "
              "call compiles, tens of seconds per stage). With CUDA it runs inside the cascade's CUDA graph.")
@click.option("--compile-mode", type=click.Choice(["default", "max-autotune-no-cudagraphs"]), default=None,
              help="torch.compile mode (implies --compile) [default: default; see docs/RUNTIME.md].")
@click.option("--cuda-graph/--no-cuda-graph", "cuda_graph", default=None,
              help="Capture the whole cascade in one CUDA graph and replay it [default: on with CUDA].")
@click.option("--out", default=None, type=click.Path(path_type=Path),
              help="Output PNG (a grid when there are several images), written atomically [default: img.png, "
                   "unless --out-dir is given].")
@click.option("--out-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Also (or only) write one PNG per image into this folder, named class<id>-seed<seed>.png.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no timing lines on stderr.")
@click.option("--save-scales", is_flag=True,
              help="Also write OUT.scale<i>.png: the decoded accumulation after each scale (paper Fig. 2c).")
def main(class_ids, seed, batch, steps, cfg_scales, solver, shift, model_dir, backend, device, dtype, compile_,
         compile_mode, cuda_graph, out, out_dir, quiet, save_scales):
    """Generate class-conditional images with an MSF cascade: scale 0 from noise, each further
    scale a residual conditioned on the accumulated latent (Algorithm 3), then the VAE decoder.

    \b
    Examples:
      msf-run --class 330 --out img.png
      msf-run --model runs/msf --class 1,2,3 --batch 4 --steps 100,50 --cfg 1.4,1.0 --out grid.png
      msf-run --model artifacts/onnx --class 7 --save-scales --out seven.png

    A progress bar runs on stderr when it is a terminal. Then one line per stage: wall time, engine
    calls and their time; the last line gives images/s and the overhead (end-to-end time / time
    inside engine calls). More images than an exported artifact's batch range are sampled in chunks
    (same images: each depends only on its class and seed).
    """
    classes = parse_list(class_ids, int, "--class")
    steps = parse_list(steps, int, "--steps")
    cfg_list = parse_list(cfg_scales, float, "--cfg")
    if steps is not None and any(s < 1 for s in steps):
        raise MsfError(f"--steps must be >= 1 for every stage, got {','.join(map(str, steps))}")
    if any(c < 0 for c in classes):
        raise MsfError(f"class id {min(classes)} is negative: class ids start at 0")
    if not (shift > 0 and math.isfinite(shift)):
        raise MsfError(f"--shift must be > 0 (1 = none), got {shift}")
    if out is None and out_dir is None:
        out = Path("img.png")
    if out is not None:
        check_output(out)
    if out_dir is not None:
        check_writable_dir(out_dir, "--out-dir")
    if model_dir is None:
        if not DEMO_MODEL.is_dir():
            raise MsfError(f"the embedded demo model is not in this install ({DEMO_MODEL}); "
                           "pass --model DIR (a cascade folder from msf-train or an artifact folder from msf-export)")
        model_dir = DEMO_MODEL
    elif not model_dir.is_dir():
        raise MsfError(f"model folder not found: {model_dir}")

    from runtime import engines, sampler  # torch: the slow imports come after the cheap checks
    from runtime.pipeline import Pipeline

    dev = engines.resolve_device(device)
    backend = engines.resolve_backend(model_dir, backend)
    if backend == "torch":  # check the plan against the configs before loading weights
        cfgs = engines.cascade_configs(model_dir)
        sampler.make_plan(cfgs, steps, cfg_list, solver, shift, engines.sampling_defaults(model_dir))
        sampler.check_classes(cfgs, classes)
    pipe = Pipeline.load(model_dir, backend, dev, dtype, compile_mode or compile_)
    plan = pipe.plan(steps, cfg_list, solver, shift)
    sampler.check_classes(pipe.cfgs, classes)
    from runtime.memory import check_memory

    n = len(classes) * batch  # --batch 100000: refuse before sampling, with the figure
    check_memory(pipe.stages, pipe.decoder, n, plan, save_scales, dev, per_call=min(n, pipe.chunk_size(plan) or n))

    y = [c for c in classes for _ in range(batch)]  # class-major: one grid row per class
    use_graph = dev.type == "cuda" if cuda_graph is None else cuda_graph
    if use_graph and dev.type != "cuda":
        click.echo("note: --cuda-graph needs --device cuda; running eager", err=True)
        use_graph = False
    progress = not quiet and sys.stderr.isatty()
    gen = pipe.generate(y, seed, plan, save_scales=save_scales, use_graph=use_graph, progress=progress)

    ncol = batch if len(classes) > 1 else math.ceil(math.sqrt(len(y)))
    written = []
    if out is not None:
        write_png(out, to_grid(gen.image, ncol))
        written.append(out)
        if save_scales:
            for i, img in enumerate(gen.scales):
                write_png(scale_path(out, i), to_grid(img, ncol))
                written.append(scale_path(out, i))
    if out_dir is not None:
        for k, (c, s) in enumerate(zip(gen.class_ids, gen.seeds)):
            write_png(out_dir / image_name(c, s), to_grid(gen.image[k:k + 1], 1))
        written.append(out_dir / "class*-seed*.png")
    if gen.reason and use_graph:
        click.echo(f"note: CUDA graph off, running eager: {gen.reason}", err=True)
    if not quiet:
        prefix = f"[{backend} {dev.type}{' graph' if gen.mode == 'graph' else ''}]"
        if gen.chunks > 1:
            click.echo(f"{prefix} {len(y)} images in {gen.chunks} chunks (the artifacts' batch range)", err=True)
        lines = sampler.timing_lines(gen.as_result(), len(y))
        lines[-1] += f"; {peak_memory_line(dev)}"  # the total line ends with the peak memory
        for line in lines:
            click.echo(f"{prefix} {line}", err=True)
        if gen.mode == "graph":
            click.echo(f"{prefix} graph capture (once per batch size and plan): {gen.capture_s:.3f} s", err=True)
    H, W = gen.image.shape[-2:]
    click.echo(f"wrote {', '.join(map(str, written))} ({len(y)} image(s) of {W}x{H}, seed {seed})")


if __name__ == "__main__":
    main()
