"""Lay out trained demo weights the way the repository ships them (runtime/weights/, msf_eval/weights/).

    python scripts/pack_demo.py WORK PACK

WORK holds what scripts/gpu_demo.sh (or train_demo.sh) trained: msf/ and dit-cascade/ (assembled
cascade folders), scale0/, scale1/, dit/ (stage folders with log.jsonl), classifier/. PACK gets
    demo/{vae,scale0,scale1,dit}/   weights + configs; denoiser weights stored in fp16 (they load into
                                    fp32 models; halves the repository's size, changes no sample visibly)
    demo-msf/cascade.json           MSF: ../demo/scale0 + ../demo/scale1 + ../demo/vae
    demo-dit/cascade.json           the DiT baseline: ../demo/dit + ../demo/vae
    shapes-classifier/              msf-eval's classifier
    logs/                           training logs (JSONL) and the VAE's training record
"""
import shutil
import sys
from pathlib import Path

from safetensors.torch import load_file

from msf_train.checkpoint import CONFIG_FILE, WEIGHTS_FILE, atomic_save_safetensors, write_cascade


def copy_stage(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    sd = load_file(str(src / WEIGHTS_FILE))
    atomic_save_safetensors(dst / WEIGHTS_FILE, {k: v.half() if v.is_floating_point() else v for k, v in sd.items()})
    shutil.copy2(src / CONFIG_FILE, dst / CONFIG_FILE)


def main(work: str, pack: str) -> None:
    w, p = Path(work), Path(pack)
    shutil.rmtree(p, ignore_errors=True)
    copy_stage(w / "msf" / "scale0", p / "demo" / "scale0")
    copy_stage(w / "msf" / "scale1", p / "demo" / "scale1")
    copy_stage(w / "dit-cascade" / "scale0", p / "demo" / "dit")
    shutil.copytree(w / "msf" / "vae", p / "demo" / "vae")
    write_cascade(p / "demo-msf", ["../demo/scale0", "../demo/scale1"], "../demo/vae")
    write_cascade(p / "demo-dit", ["../demo/dit"], "../demo/vae")
    if (w / "classifier").is_dir():
        shutil.copytree(w / "classifier", p / "shapes-classifier")
    (p / "logs").mkdir(parents=True, exist_ok=True)
    for name in ("scale0", "scale1", "dit"):
        if (w / name / "log.jsonl").is_file():
            shutil.copy2(w / name / "log.jsonl", p / "logs" / f"{name}.jsonl")
    for f in (w / "vae").glob("*.json"):
        if f.name != "config.json":
            shutil.copy2(f, p / "logs" / f"vae-{f.name}")
    print(f"packed {p}: " + ", ".join(sorted(str(x.relative_to(p)) for x in p.rglob("*") if x.is_file())))


if __name__ == "__main__":
    main(*sys.argv[1:3])
