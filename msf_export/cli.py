"""`msf-export`: turn checkpoints into ONNX graphs, TensorRT engines or AOTInductor packages."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from msf_train.cliutil import MsfGroup, version_option
from msf_train.errors import MsfError


@click.group(cls=MsfGroup, invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@version_option("msf-export")
@click.option("--engine", type=click.Choice(["onnx", "trt", "aoti"]), help="Artifact kind: ONNX graph (onnxruntime), "
              "TensorRT plan (FP16, strongly typed; needs a GPU), AOTInductor .pt2 package.")
@click.option("--model", "model_dir", type=click.Path(path_type=Path),
              help="Cascade folder (cascade.json + stage folders + vae/), as written by msf-train.")
@click.option("--out", type=click.Path(path_type=Path), help="Artifact folder to write (empty, new, or an earlier "
              "export of the same model).")
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default=None,
              help="Denoiser precision. Default: fp16 for trt, fp32 otherwise. FP16 keeps LayerNorm, the timestep "
              "embedding and adaLN modulation in FP32; the VAE decoder is always FP32.")
@click.option("--min-batch", type=int, default=None, help="Smallest batch the artifacts accept (default 1).")
@click.option("--opt-batch", type=int, default=None, help="Batch TensorRT tunes for (default 8).")
@click.option("--max-batch", type=int, default=None,
              help="Largest batch (default 64). Classifier-free guidance doubles the batch: allow 2x your images.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None,
              help="AOTInductor only: compile for cpu (default) or cuda. A package runs only on its device.")
@click.option("--external-data/--no-external-data", default=None,
              help="ONNX weights in a separate <file>.data (default: only when > 1.5 GB).")
@click.option("--timing-cache", type=click.Path(path_type=Path), default=None,
              help="TensorRT timing cache file, kept across builds (default ~/.cache/msf/tensorrt-timing.cache).")
@click.option("--force", is_flag=True, help="Write into a non-empty --out that is not an export of this model, "
              "and rebuild even when nothing changed.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def main(ctx, engine, model_dir, out, precision, min_batch, opt_batch, max_batch, device, external_data, timing_cache,
         force, quiet):
    """Export every stage of a cascade (and the VAE decoder) for a runtime backend.

    \b
    msf-export --engine onnx --model runs/demo --out art/demo-onnx
    msf-export --engine aoti --device cpu --model runs/demo --out art/demo-aoti
    msf-export --engine trt --model runs/demo --out art/demo-trt      # on the GPU that will run it
    msf-run --model art/demo-onnx --class 330 --out img.png            # the manifest picks the backend

    Each export checks its parity against PyTorch (max/mean abs error in manifest.json), records the
    weights' and artifacts' sha256, tensor names and shapes, tool versions and this command.
    Re-running with unchanged inputs does nothing. Subcommands: `verify DIR`, `info DIR`.
    """
    if ctx.invoked_subcommand is not None:
        return
    missing = [f"--{n}" for n, v in (("engine", engine), ("model", model_dir), ("out", out)) if v is None]
    if missing:
        raise MsfError(f"missing {', '.join(missing)}; see msf-export --help")
    from msf_export.export import export_cascade, resolve_options

    _quiet_diffusers()

    opts = resolve_options(engine, precision, (min_batch, opt_batch, max_batch), device, external_data,
                           str(timing_cache) if timing_cache else None)
    command = ["msf-export", *sys.argv[1:]]  # as typed (also when run as python -m msf_export.cli)
    result = export_cascade(model_dir, out, opts, force=force, command=command, progress=not quiet)
    if result.status == "up-to-date":
        click.echo(f"{out} is up to date (same weights, options and tools; artifacts verified): nothing to do")
        return
    for e in result.manifest["stages"] + [result.manifest["decoder"]]:
        p = e["parity"]
        click.echo(f"{e['name']:<10} {e['artifact']:<16} {e['precision']}  parity max {p['max_abs']:.2e} "
                   f"mean {p['mean_abs']:.2e}  ({e['export_seconds']:.1f} s)")
    click.echo(f"wrote {out}/manifest.json ({opts.engine}, {opts.precision}, batch {opts.batch[0]}..{opts.batch[2]}) "
               f"in {result.seconds:.1f} s")


def _quiet_diffusers():
    try:
        from diffusers.utils import logging as dlogging

        dlogging.set_verbosity_error()  # loader chatter (accelerate hints) is noise on the CLI
    except ImportError:
        pass


@main.command()
@click.argument("folder", type=click.Path(path_type=Path))
def verify(folder):
    """Check an artifact folder: manifest format, every file's sha256, and that each artifact loads."""
    from msf_export.manifest import read_manifest, verify_files

    from msf_export.manifest import stale_staging

    m = read_manifest(folder)
    verify_files(folder, m)
    loaded = load_check(folder, m)
    click.echo(f"{folder}: {m['engine']} export, {len(m['stages'])} stage(s) + decoder, all sha256 match{loaded}")
    stale = stale_staging(folder)
    if stale:
        click.echo(f"note: {len(stale)} staging folder(s) left by an interrupted export ({stale[0].name}...); "
                   f"the next msf-export into {folder} removes them, or delete them", err=True)


def load_check(folder: Path, m: dict) -> str:
    """Open each artifact with its runtime where that runtime exists here (ONNX: always)."""
    if m["engine"] == "onnx":
        from msf_export.onnx import ort_session

        for e in m["stages"] + [m["decoder"]]:
            ort_session(folder / e["artifact"])
        return ", all load in onnxruntime"
    return ""


@main.command()
@click.argument("folder", type=click.Path(path_type=Path))
def info(folder):
    """Summarise an artifact folder's manifest: stages, shapes, batch range, parity, tools."""
    from msf_export.manifest import read_manifest

    m = read_manifest(folder)
    b = m["batch"]
    click.echo(f"engine {m['engine']}  precision {m['precision']}  device {m['device']}  batch {b['min']}..{b['max']} "
               f"(opt {b['opt']})  created {m.get('created')}")
    for e in m["stages"] + [m["decoder"]]:
        ins = ", ".join(f"{s['name']}{tuple(s['shape'])}" for s in e["inputs"])
        p = e["parity"]
        click.echo(f"  {e['name']:<10} {e['artifact']:<16} {ins} -> {e['outputs'][0]['name']}  "
                   f"parity max {p['max_abs']:.2e}")
    tools = ", ".join(f"{k} {v}" for k, v in m.get("tools", {}).items() if v)
    click.echo(f"  tools: {tools}")
    if m.get("target"):
        click.echo(f"  target: {m['target']}")


if __name__ == "__main__":
    main()
