"""Lay out trained demo weights the way the repository ships them (runtime/weights/, msf_eval/weights/).

    python scripts/pack_demo.py WORK PACK [--vae DECODER_FINE_TUNED_VAE]

WORK holds what scripts/gpu_demo.sh (or train_demo.sh) trained: msf/ and dit-cascade/ (assembled
cascade folders), scale0/, scale1/, dit/ (stage folders with log.jsonl), classifier/. PACK gets
    demo/{vae,scale0,scale1,dit}/   weights + configs; denoiser weights stored in fp16 (they load into
                                    fp32 models; halves the repository's size, changes no sample visibly)
    demo-msf/cascade.json           MSF: ../demo/scale0 + ../demo/scale1 + ../demo/vae, its plan (MSF_PLAN)
    demo-dit/cascade.json           the DiT baseline: ../demo/dit + ../demo/vae, its plan (DIT_PLAN)
    shapes-classifier/              msf-eval's classifier
    logs/                           training logs (JSONL) and the VAE's training record

--vae ships another VAE with the same encoder (`msf-train vae --init WORK/vae --freeze-encoder`): the
stages' VAE records are completed with the encoder's hash (checked against WORK/msf/vae, the VAE they
were trained with), so the new VAE's latents are accepted as theirs; its training record goes to logs/.
"""
import argparse
import json
import shutil
from pathlib import Path

from safetensors.torch import load_file

from msf_train.checkpoint import CONFIG_FILE, WEIGHTS_FILE, atomic_save_safetensors, atomic_write_json, write_cascade
from msf_train.errors import MsfError
from msf_train.vae import complete_record, same_vae, vae_identity


MSF_PLAN = {"steps": [50, 15], "cfg": [3.0, 2.0]}
DIT_PLAN = {"steps": [50], "cfg": [3.0]}


def copy_stage(src: Path, dst: Path, trained_with: Path | None = None, new_vae: Path | None = None) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    sd = load_file(str(src / WEIGHTS_FILE))
    atomic_save_safetensors(dst / WEIGHTS_FILE, {k: v.half() if v.is_floating_point() else v for k, v in sd.items()})
    if new_vae is None:
        shutil.copy2(src / CONFIG_FILE, dst / CONFIG_FILE)
        return
    meta = json.loads((src / CONFIG_FILE).read_text())
    meta["vae"] = complete_record(meta["vae"], trained_with)  # the latents' VAE, now with its encoder hash
    if not same_vae(meta["vae"], vae_identity(new_vae)):
        raise MsfError(f"{new_vae} has another encoder or scaling factor than {trained_with}, whose latents "
                       f"{src} was trained on: fine-tune it with msf-train vae --init {trained_with} --freeze-encoder")
    atomic_write_json(dst / CONFIG_FILE, meta)


def main(work: str, pack: str, vae: str | None = None) -> None:
    w, p = Path(work), Path(pack)
    new_vae = Path(vae) if vae else None
    shutil.rmtree(p, ignore_errors=True)
    copy_stage(w / "msf" / "scale0", p / "demo" / "scale0", w / "msf" / "vae", new_vae)
    copy_stage(w / "msf" / "scale1", p / "demo" / "scale1", w / "msf" / "vae", new_vae)
    copy_stage(w / "dit-cascade" / "scale0", p / "demo" / "dit", w / "dit-cascade" / "vae", new_vae)
    shutil.copytree(new_vae or w / "msf" / "vae", p / "demo" / "vae",
                    ignore=shutil.ignore_patterns("*.jsonl", "*.png", "training.json", ".*", "state"))
    # Each cascade's own plan, what msf-run samples at by default: the sweeps' best within the
    # multiply-add goal (docs/RESULTS.md, "Sweeps": MSF 50 + 15 steps, CFG 3 / 2 at 46% of the DiT's
    # multiply-adds), and the DiT at its own best guidance (CFG 3), so the two compare at their best.
    write_cascade(p / "demo-msf", ["../demo/scale0", "../demo/scale1"], "../demo/vae", MSF_PLAN)
    write_cascade(p / "demo-dit", ["../demo/dit"], "../demo/vae", DIT_PLAN)
    if (w / "classifier").is_dir():
        shutil.copytree(w / "classifier", p / "shapes-classifier")
    (p / "logs").mkdir(parents=True, exist_ok=True)
    for name in ("scale0", "scale1", "dit"):
        if (w / name / "log.jsonl").is_file():
            shutil.copy2(w / name / "log.jsonl", p / "logs" / f"{name}.jsonl")
    for f in (w / "vae").glob("*.json"):
        if f.name != "config.json":
            shutil.copy2(f, p / "logs" / f"vae-{f.name}")
    if new_vae is not None:
        for f in new_vae.glob("*.json*"):
            if f.name != "config.json" and not f.name.startswith("."):
                shutil.copy2(f, p / "logs" / f"vae-decoder-{f.name}")
    print(f"packed {p}: " + ", ".join(sorted(str(x.relative_to(p)) for x in p.rglob("*") if x.is_file())))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("work")
    ap.add_argument("pack")
    ap.add_argument("--vae", default=None, help="ship this VAE (same encoder as WORK/msf/vae) instead")
    a = ap.parse_args()
    try:
        main(a.work, a.pack, a.vae)
    except MsfError as e:
        raise SystemExit(f"error: {e}") from None
