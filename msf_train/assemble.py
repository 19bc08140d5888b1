"""Cascade assembly (`msf-train assemble`): stage folders in scale order plus the VAE their latents
came from, copied (weights and configs only) into one cascade folder that msf-run and msf-export read
(MSF_PAPER.md Algorithm 2 samples the scales in that order). The checks and the copy helpers here
serve `assemble --format diffusers` and `import-dit` (msf_train.interop) too.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from msf_train import outdir, schema
from msf_train.checkpoint import (CASCADE_FILE, CONFIG_FILE, WEIGHTS_FILE, check_cascade, load_stage_config,
                                  read_json, write_cascade)
from msf_train.config import ModelConfig
from msf_train.errors import MsfError
from msf_train.vae import same_vae, vae_identity, weights_file


def assemble_cascade(out, stages: list, vae, *, force: bool = False, allow_unfinished: bool = False,
                     log=print, sampling: dict | None = None) -> Path:
    """Copy stage folders (weights + config only, no training state) and a VAE folder into a cascade
    folder that msf-run and msf-export read. The stages must form one cascade in scale order, each
    stage must have been trained on latents of this VAE (its config records the VAE identity) and
    have finished its planned steps (or stopped by its --max-minutes budget, which is said).
    ``sampling`` ({"steps", "cfg"}) is the cascade's own plan, written to cascade.json."""
    out = Path(out)
    if sampling:  # checked before the output folder is touched
        schema.sampling(sampling, out / CASCADE_FILE, len(stages), "give --steps / --cfg one value per stage")
    metas, key = prepare(out, stages, vae)
    for s, (_, meta) in zip(stages, metas):
        _check_finished(Path(s), meta, allow_unfinished, log)
    with outdir.claim(out, "msf-train assemble", key, force, recognise=_is_legacy_cascade):
        names = []
        for s, (c, _) in zip(stages, metas):
            name = f"scale{c.scale_index}"
            copy_files(Path(s), out / name, [WEIGHTS_FILE, CONFIG_FILE])
            names.append(name)
        copy_vae(vae, out / "vae")
        return write_cascade(out, names, "vae", sampling)


def prepare(out: Path, stages: list, vae) -> tuple[list[tuple[ModelConfig, dict]], dict]:
    """Everything checked before an output folder is touched: no overlap with the inputs, the stages
    form one cascade of this VAE's latents. -> (the stages' (config, meta), the inputs' key for
    msf_train.outdir.claim)."""
    check_no_overlap(out, [*stages, vae])
    key = {"stages": [str(Path(p).resolve()) for p in stages], "vae": str(Path(vae).resolve())}
    return check_assembly(stages, vae), key


def check_no_overlap(out: Path, sources: list) -> None:
    """Writing into an input (or an input into the output) would destroy it while it is being read."""
    for src in map(Path, sources):
        a, b = Path(out).resolve(), src.resolve()
        if a == b or a in b.parents or b in a.parents:
            raise MsfError(f"--out {out} overlaps the input {src}: write to a folder of its own")


def _check_finished(stage: Path, meta: dict, allow_unfinished: bool, log) -> None:
    """A stage whose training stopped before its planned steps (killed, interrupted) is refused; one
    stopped by its own --max-minutes budget is reported."""
    from msf_train.train import SUMMARY_FILE, latest_checkpoint

    try:
        found = latest_checkpoint(stage)
        trainer = read_json(found[1] / "trainer.json", "trainer state") if found else None
    except MsfError:
        return  # no readable training state (e.g. a stage copied out of a cascade): nothing to compare
    planned = (trainer or {}).get("options", {}).get("steps")
    step = meta.get("step")
    if not isinstance(planned, int) or not isinstance(step, int) or step >= planned:
        return
    summary = stage / SUMMARY_FILE
    by_time = False
    if summary.is_file():
        try:
            rec = read_json(summary, "training summary")
            by_time = bool(rec.get("stopped_by_time")) and rec.get("steps") == step
        except MsfError:
            pass
    if by_time:
        log(f"note: {stage} stopped by its --max-minutes budget at step {step} of {planned}")
    elif not allow_unfinished:
        raise MsfError(f"stage {stage} stopped at step {step} of {planned} (killed or interrupted): finish it with "
                       f"msf-train ... --resume, or pass --allow-unfinished to assemble it as it is")
    else:
        log(f"note: {stage} is unfinished: step {step} of {planned}")


def _is_legacy_cascade(folder: Path) -> bool:
    """A cascade assembled before output markers existed: our names only, a valid cascade.json."""
    try:
        meta = schema.cascade(read_json(folder / CASCADE_FILE, "cascade"), folder / CASCADE_FILE)
    except MsfError:
        return False
    ours = set(meta["stages"]) | {meta["vae"], CASCADE_FILE}
    return meta["vae"] == "vae" and all(s.startswith("scale") for s in meta["stages"]) \
        and set(outdir.user_entries(folder)) <= ours


def check_assembly(stages: list, vae) -> list[tuple[ModelConfig, dict]]:
    """The stages' (config, meta) once they form one cascade in scale order whose latents came from ``vae``."""
    vae_id = vae_identity(vae)
    metas = [load_stage_config(s) for s in stages]
    check_cascade([c for c, _ in metas])
    for s, (c, meta) in zip(stages, metas):
        rec = meta.get("vae")
        if rec is None:
            raise MsfError(f"stage {s} does not record which VAE its latents came from; retrain it with msf-train "
                           "(or, for an imported DiT, import it again with --vae)")
        if not same_vae(rec, vae_id):
            raise MsfError(f"stage {s} was trained on latents of another VAE (sha256 {rec.get('sha256', '?')[:12]}) "
                           f"than {vae} (sha256 {vae_id['sha256'][:12]})")
    return metas


def copy_vae(vae, dst: Path) -> None:
    """The VAE folder's weights file and config into dst (config last: a config implies weights)."""
    copy_files(Path(vae), dst, [weights_file(vae).name, "config.json"])


def copy_files(src: Path, dst: Path, names: list[str]) -> None:
    """Copy files into dst, each via a temp file and a rename, config last."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        tmp = dst / f".{name}.tmp"
        shutil.copyfile(src / name, tmp)
        os.replace(tmp, dst / name)
