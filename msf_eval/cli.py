"""`msf-eval`: score a cascade's samples (FID-EffNet or FID, class and attribute accuracy, cost)."""
from __future__ import annotations

import json
from pathlib import Path

import click

from msf_train.cliutil import MsfGroup, check_writable, version_option
from msf_train.errors import MsfError

ROOT = Path(__file__).resolve().parent
DEFAULT_CLASSIFIER = ROOT / "weights" / "shapes-classifier"
DEFAULT_MODEL = ROOT.parent / "runtime" / "weights" / "demo-msf"


def parse_class_spec(spec: str) -> list[int]:
    """'0-999' | '330,336' | '0-99:10' (every 10th) -> class ids; anything else is one MsfError line."""
    out = []
    for part in str(spec).split(","):
        part = part.strip()
        try:
            step = 1
            if ":" in part:
                part, step_s = part.split(":", 1)
                step = int(step_s)
                if step < 1:
                    raise ValueError
            if "-" in part.lstrip("-"):
                a, b = part.split("-", 1)
                a, b = int(a), int(b)
                if a < 0 or b < a:
                    raise ValueError
                out.extend(range(a, b + 1, step))
            elif part:
                if int(part) < 0:
                    raise ValueError
                out.append(int(part))
        except ValueError:
            raise MsfError(f"--classes {spec!r}: use ids, ranges a-b with a <= b and an optional :step >= 1, "
                           f"e.g. 0-999:11 or 330,336") from None
    if not out:
        raise MsfError(f"--classes {spec!r} names no class; use e.g. 0-999:11 or 330,336")
    return out



@click.group(cls=MsfGroup, context_settings={"help_option_names": ["-h", "--help"]})
@version_option("msf-eval")
def main():
    """Evaluate MSF / DiT cascades on the procedural shapes dataset.

    `msf-eval run` samples a cascade and reports FID-EffNet (or FID with --inception-weights), class
    and attribute accuracy from the shapes classifier, and the sampling cost. `msf-eval classifier`
    trains that classifier.
    """


@main.command()
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=DEFAULT_MODEL, show_default=True,
              help="Cascade folder or exported artifact folder.")
@click.option("--classes", default="0-999:11", show_default=True,
              help="Class ids: ranges a-b, lists, a-b:step. On the shapes data a class id is shape + "
                   "10 x palette + 100 x texture, so a step coprime with 10 (the default 11: 91 classes; 7; 3) "
                   "asks every shape, palette and texture; a step of 10 would ask only circles.")
@click.option("--per-class", default=10, show_default=True, type=click.IntRange(1, 100000), help="Samples per class.")
@click.option("--steps", default=None, help="Steps per stage, e.g. 100,50 (default: the model folder's own plan, "
              "cascade.json \"sampling\", else the paper recipe: msf-run's defaults).")
@click.option("--cfg", "cfg_scales", default=None, help="CFG per stage, e.g. 1.4,1.0 (default: as --steps).")
@click.option("--solver", default="euler", type=click.Choice(["euler", "heun"]), show_default=True)
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2 ** 63 - 2 ** 32))
@click.option("--batch", default=64, show_default=True, type=click.IntRange(1, 4096), help="Images per sampling call.")
@click.option("--backend", type=click.Choice(["torch", "onnx", "aoti", "trt"]), default=None,
              help="Engine backend [default: the artifact manifest's engine, or torch for checkpoints].")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]),
              help="auto = cuda when available.")
@click.option("--classifier", "classifier_dir", type=click.Path(path_type=Path), default=DEFAULT_CLASSIFIER,
              show_default=True)
@click.option("--extractor", default="effnet", type=click.Choice(["effnet", "inception"]), show_default=True,
              help="Features for the Fréchet distance: effnet (offline, reported as FID-EffNet) or inception.")
@click.option("--inception-weights", type=click.Path(path_type=Path), default=None,
              help="pt_inception weights file for --extractor inception.")
@click.option("--npz", type=click.Path(path_type=Path), default=None, help="Save samples as an ADM-style .npz.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Write the figures here too.")
def run(model_dir, classes, per_class, steps, cfg_scales, solver, seed, batch, backend, device, classifier_dir,
        extractor, inception_weights, npz, json_out):
    """Sample PER_CLASS images for each class and print the figures as JSON."""
    classes = parse_class_spec(classes)
    check_writable(json_out, "--json")
    check_writable(npz, "--npz")
    from msf_eval.evaluate import evaluate
    from msf_train.checkpoint import atomic_write_json
    from msf_train.cliutil import parse_list
    from runtime.engines import resolve_device

    device = str(resolve_device(device))  # the classifier and the cascade run on the same device
    res = evaluate(model_dir, classes, per_class, classifier_dir=classifier_dir,
                   steps=parse_list(steps, int, "--steps"), cfg=parse_list(cfg_scales, float, "--cfg"),
                   solver=solver, seed=seed, batch=batch, backend=backend, device=device, extractor=extractor,
                   inception_weights=inception_weights, npz=npz)
    click.echo(json.dumps(res, indent=2))  # the figures first: a failing write below loses nothing
    if json_out:
        atomic_write_json(json_out, res)


@main.command()
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Folder to write the classifier to (msf-eval run --classifier OUT).")
@click.option("--force", is_flag=True, help="Write into a non-empty --out that holds no classifier.")
@click.option("--steps", default=3000, show_default=True, type=click.IntRange(min=1))
@click.option("--batch", default=128, show_default=True, type=click.IntRange(min=1))
@click.option("--size", default=128, show_default=True, type=click.IntRange(16, 4096),
              help="Image side in pixels (the demo's full scale).")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]),
              help="auto = cuda when available.")
@click.option("--workers", default=0, show_default=True, type=click.IntRange(0, 256),
              help="DataLoader workers rendering shapes.")
@click.option("--max-minutes", default=None, type=click.FloatRange(min=0, min_open=True),
              help="Stop training after this many minutes.")
def classifier(out, steps, batch, size, device, workers, max_minutes, force):
    """Train the shapes attribute classifier and report its held-out accuracy."""
    from msf_train import outdir

    outdir.check_claim(out, "msf-eval classifier", force=force)
    from msf_eval.classifier import train_classifier
    from runtime.engines import resolve_device

    device = str(resolve_device(device))
    with outdir.claim(out, "msf-eval classifier", force=force):
        acc = train_classifier(out, size=size, steps=steps, batch=batch, device=device, workers=workers,
                               max_minutes=max_minutes,
                               log=lambda s: click.echo(s, err=True))
    click.echo(json.dumps({"holdout_accuracy": acc}, indent=2))


if __name__ == "__main__":
    main()
