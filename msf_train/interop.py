"""Released DiTs in, diffusers folders out: the key maps between our DiT and two other layouts.

Our DiT (`msf_train.model`) is the reference DiT (Peebles & Xie, facebookresearch/DiT `models.py`)
with velocity output; the layouts differ only in names and in where the embedders live:

| ours                         | facebookresearch/DiT `.pt`            | diffusers `DiTTransformer2DModel`                  |
| ---                          | ---                                   | ---                                                |
| x_embedder                   | x_embedder.proj                       | pos_embed.proj                                     |
| t_embedder.mlp.0 / .2        | same                                  | transformer_blocks.N.norm1.emb.timestep_embedder.linear_1 / _2 (one copy per block) |
| y_embedder                   | y_embedder.embedding_table            | transformer_blocks.N.norm1.emb.class_embedder.embedding_table (per block) |
| blocks.N.attn.qkv            | same                                  | transformer_blocks.N.attn1.to_q / to_k / to_v      |
| blocks.N.attn.proj           | same                                  | transformer_blocks.N.attn1.to_out.0                |
| blocks.N.mlp.0 / .2          | blocks.N.mlp.fc1 / fc2                | transformer_blocks.N.ff.net.0.proj / ff.net.2      |
| blocks.N.adaLN_modulation.1  | same                                  | transformer_blocks.N.norm1.linear                  |
| final_layer.adaLN_modulation.1 | same                                | proj_out_1 (conditioned by block 0's embedders)    |
| final_layer.linear           | same (2C outputs: learned sigma)      | proj_out_2 (2C outputs in released folders)        |
| pos_embed (buffer, not saved) | pos_embed (saved; checked, dropped)  | pos_embed.pos_embed (buffer, not saved)            |

Released DiTs predict DDPM noise plus a learned variance: the variance half of the output is dropped
and the stage records ``parameterization = "eps-ddpm"`` (converted to a velocity in the forward,
`msf_train.parameterization`). diffusers' DiT differs numerically from the reference in two details
our config records: timestep frequencies ``10000^(-k/127)`` (``time_freq_shift = 1``) and its MLP
LayerNorm epsilon (``mlp_norm_eps`` = the folder's ``norm_eps``). A diffusers folder we write carries our
stage config under the private key ``_msf`` (diffusers ignores keys starting with "_"), so reading it
back restores the stage exactly; a folder without it is a DiT as diffusers runs it.

Reading never unpickles code: `.pt` files go through ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from msf_train.checkpoint import (CONFIG_FILE, FORMAT, atomic_save_safetensors, atomic_write_json, read_json,
                                  save_stage, write_cascade)
from msf_train.config import PRESETS, ModelConfig
from msf_train.errors import MsfError

DIFFUSERS_CLASSES = ("DiTTransformer2DModel", "Transformer2DModel")
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
HEADS_BY_WIDTH = {1152: 16, 1024: 16, 768: 12, 384: 6}  # DiT-XL, -L, -B, -S (the DiT paper, Table 1)
EMBEDDERS = ("timestep_embedder.linear_1.weight", "timestep_embedder.linear_1.bias",
             "timestep_embedder.linear_2.weight", "timestep_embedder.linear_2.bias", "class_embedder.embedding_table.weight")
OURS_EMBEDDERS = ("t_embedder.mlp.0.weight", "t_embedder.mlp.0.bias", "t_embedder.mlp.2.weight", "t_embedder.mlp.2.bias",
                  "y_embedder.weight")


# ---- shared helpers ----------------------------------------------------------------------------
def _name_for(depth: int, hidden: int, heads: int, patch: int, latent: int, channels: int, classes: int) -> str:
    """The preset name when the architecture is a preset's (dit-xl/2 ...), else a descriptive one."""
    for name, c in PRESETS.items():
        if (c.depth, c.hidden_size, c.num_heads, c.patch_size, c.latent_size, c.in_channels, c.num_classes,
                c.has_prior) == (depth, hidden, heads, patch, latent, channels, classes, False):
            return name
    return f"dit-d{depth}-w{hidden}/{patch}"


def _drop_sigma(w: torch.Tensor, patch: int, channels: int) -> torch.Tensor:
    """Final projection rows are (p, q, channel) with the channel fastest: keep the first C channels
    of each patch position (the noise), drop the learned-variance half."""
    out = w.shape[0] // (patch * patch)
    return w.reshape(patch * patch, out, *w.shape[1:])[:, :channels].reshape(patch * patch * channels, *w.shape[1:])


def _check_against_model(cfg: ModelConfig, sd: dict[str, torch.Tensor], source) -> dict[str, torch.Tensor]:
    """Keys and shapes must be exactly those of `build_model(cfg)` (built on the meta device)."""
    from msf_train.model import build_model

    want = build_model(cfg, "meta").state_dict()
    missing, unexpected = sorted(set(want) - set(sd)), sorted(set(sd) - set(want))
    if missing or unexpected:
        raise MsfError(f"{source} is not a DiT this msf can import: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for k, v in want.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            raise MsfError(f"{source}: {k} has shape {tuple(sd[k].shape)}, expected {tuple(v.shape)} for {cfg.name}")
    return {k: sd[k].float().contiguous() for k in want}


# ---- facebookresearch/DiT .pt ------------------------------------------------------------------
_REF_RENAMES = [(r"^x_embedder\.proj\.", "x_embedder."), (r"^y_embedder\.embedding_table\.", "y_embedder."),
                (r"\.mlp\.fc1\.", ".mlp.0."), (r"\.mlp\.fc2\.", ".mlp.2.")]


def read_reference(path) -> dict[str, torch.Tensor]:
    """A facebookresearch/DiT checkpoint (`DiT-XL-2-256x256.pt`, or a training checkpoint's "ema")."""
    path = Path(path)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # pickles with code, truncated files, not a torch file at all
        raise MsfError(f"cannot read {path} as a weights-only torch checkpoint ({str(e).splitlines()[0][:120]})") from None
    for key in ("ema", "model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or "x_embedder.proj.weight" not in obj:
        raise MsfError(f"{path} is not a facebookresearch/DiT state dict (no x_embedder.proj.weight)")
    return obj


def from_reference(sd: dict[str, torch.Tensor], heads: int | None = None, source="checkpoint"
                   ) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """facebookresearch/DiT state dict -> (eps-ddpm config, our state dict)."""
    from msf_train.model import sincos_pos_embed_2d

    w = sd["x_embedder.proj.weight"]  # (D, C, p, p)
    hidden, channels, patch = w.shape[0], w.shape[1], w.shape[2]
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    classes = sd["y_embedder.embedding_table.weight"].shape[0] - 1  # the last row is the null class
    if "pos_embed" not in sd:
        raise MsfError(f"{source} has no pos_embed: cannot tell its latent size")
    grid = int(round(sd["pos_embed"].shape[1] ** 0.5))
    heads = heads or HEADS_BY_WIDTH.get(hidden)
    if heads is None:
        raise MsfError(f"{source}: width {hidden} is not a DiT-S/B/L/XL width; pass --heads")
    inner = sd["blocks.0.mlp.fc1.weight"].shape[0]
    cfg = ModelConfig(name=_name_for(depth, hidden, heads, patch, grid * patch, channels, classes), depth=depth,
                      hidden_size=hidden, num_heads=heads, patch_size=patch, latent_size=grid * patch,
                      in_channels=channels, num_classes=classes, mlp_ratio=inner / hidden,
                      scale_sizes=(grid * patch,), parameterization="eps-ddpm")
    table = sincos_pos_embed_2d(hidden, grid)
    if not torch.allclose(sd["pos_embed"].reshape(table.shape).float(), table, atol=1e-5):
        raise MsfError(f"{source}: its pos_embed is not DiT's fixed sin-cos table ([column | row]); not importable")
    out = {}
    for k, v in sd.items():
        if k == "pos_embed":
            continue
        for pat, rep in _REF_RENAMES:
            k = re.sub(pat, rep, k)
        if k.startswith("final_layer.linear.") and v.shape[0] != patch * patch * channels:
            v = _drop_sigma(v, patch, channels)
        out[k] = v
    return cfg, _check_against_model(cfg, out, source)


# ---- diffusers DiTTransformer2DModel -----------------------------------------------------------
def _diffusers_folder(path: Path) -> Path:
    """A transformer folder, or a DiTPipeline folder holding one in transformer/."""
    if (path / "transformer" / CONFIG_FILE).is_file() and not (path / CONFIG_FILE).is_file():
        return path / "transformer"
    return path


def read_diffusers(path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json, state dict) of a diffusers DiT folder: safetensors (single or sharded) or .bin."""
    from safetensors.torch import load_file

    folder = _diffusers_folder(Path(path))
    cfg = read_json(folder / CONFIG_FILE, "diffusers config")
    if cfg.get("_class_name") not in DIFFUSERS_CLASSES or cfg.get("norm_type", "ada_norm_zero") != "ada_norm_zero":
        raise MsfError(f"{folder} holds a {cfg.get('_class_name')!r}, not a class-conditional DiT "
                       f"({' or '.join(DIFFUSERS_CLASSES)} with norm_type ada_norm_zero)")
    single, index, binary = (folder / DIFFUSERS_WEIGHTS, folder / f"{DIFFUSERS_WEIGHTS}.index.json",
                             folder / "diffusion_pytorch_model.bin")
    try:
        if single.is_file():
            sd = load_file(str(single))
        elif index.is_file():
            shards = sorted(set(read_json(index, "safetensors index").get("weight_map", {}).values()))
            sd = {k: v for s in shards for k, v in load_file(str(folder / s)).items()}
        elif binary.is_file():
            sd = torch.load(str(binary), map_location="cpu", weights_only=True)
        else:
            raise MsfError(f"{folder} has no {DIFFUSERS_WEIGHTS} (or .bin) weights")
    except MsfError:
        raise
    except Exception as e:
        raise MsfError(f"cannot read the weights in {folder}: {str(e).splitlines()[0][:120]}") from None
    return cfg, sd


def from_diffusers(dcfg: dict, sd: dict[str, torch.Tensor], source="folder", parameterization: str | None = None
                   ) -> tuple[ModelConfig, dict[str, torch.Tensor], dict]:
    """diffusers DiT (config, state dict) -> (our config, our state dict, extra stage meta from ``_msf``).

    Every block's copy of the timestep and label embedders must be identical (converted checkpoints
    hold copies of one embedder; ours has one): a folder whose copies differ is refused."""
    depth, heads, head_dim = dcfg.get("num_layers", 28), dcfg.get("num_attention_heads", 16), dcfg.get("attention_head_dim", 72)
    hidden, patch, latent = heads * head_dim, dcfg.get("patch_size", 2), dcfg.get("sample_size", 32)
    cin = dcfg.get("in_channels", 4)
    cout = dcfg.get("out_channels") or cin
    classes = dcfg.get("num_embeds_ada_norm", 1000)
    msf = dcfg.get("_msf") or {}
    if msf.get("model"):
        cfg = ModelConfig.from_dict(msf["model"])
        if (cfg.depth, cfg.hidden_size, cfg.num_heads, cfg.patch_size, cfg.latent_size, cfg.input_channels) != \
                (depth, hidden, heads, patch, latent, cin):
            raise MsfError(f"{source}: its _msf config does not describe this transformer; re-export it")
    else:
        if cin != cout and cout != 2 * cin:
            raise MsfError(f"{source}: {cin} input and {cout} output channels: a residual stage needs the _msf config "
                           "that msf-train assemble --format diffusers writes")
        cfg = ModelConfig(name=_name_for(depth, hidden, heads, patch, latent, cin, classes), depth=depth,
                          hidden_size=hidden, num_heads=heads, patch_size=patch, latent_size=latent, in_channels=cin,
                          num_classes=classes, scale_sizes=(latent,), time_freq_shift=1,
                          mlp_norm_eps=float(dcfg.get("norm_eps", 1e-5)),
                          parameterization=parameterization or "eps-ddpm")
    if parameterization and parameterization != cfg.parameterization:
        cfg = cfg.replace(parameterization=parameterization)
    blocks = [f"transformer_blocks.{i}" for i in range(depth)]
    for i, b in enumerate(blocks[1:], 1):
        for name in EMBEDDERS:
            a, c = sd.get(f"{blocks[0]}.norm1.emb.{name}"), sd.get(f"{b}.norm1.emb.{name}")
            if a is not None and c is not None and not torch.equal(a, c):
                raise MsfError(f"{source}: block {i}'s {name.split('.')[0]} differs from block 0's; msf's DiT has one "
                               "shared embedder, so only folders with identical per-block copies can be imported")
    emb0 = f"{blocks[0]}.norm1.emb."
    out = {"x_embedder.weight": sd.get("pos_embed.proj.weight"), "x_embedder.bias": sd.get("pos_embed.proj.bias"),
           "final_layer.adaLN_modulation.1.weight": sd.get("proj_out_1.weight"),
           "final_layer.adaLN_modulation.1.bias": sd.get("proj_out_1.bias")}
    for ours, theirs in zip(OURS_EMBEDDERS, EMBEDDERS):
        out[ours] = sd.get(emb0 + theirs)
    for p in ("weight", "bias"):
        w = sd.get(f"proj_out_2.{p}")
        out[f"final_layer.linear.{p}"] = w if w is None or cout == cfg.out_channels else _drop_sigma(w, patch, cfg.out_channels)
    for i, b in enumerate(blocks):
        for p in ("weight", "bias"):
            qkv = [sd.get(f"{b}.attn1.to_{n}.{p}") for n in "qkv"]
            out[f"blocks.{i}.attn.qkv.{p}"] = None if any(t is None for t in qkv) else torch.cat(qkv)
            out[f"blocks.{i}.attn.proj.{p}"] = sd.get(f"{b}.attn1.to_out.0.{p}")
            out[f"blocks.{i}.mlp.0.{p}"] = sd.get(f"{b}.ff.net.0.proj.{p}")
            out[f"blocks.{i}.mlp.2.{p}"] = sd.get(f"{b}.ff.net.2.{p}")
            out[f"blocks.{i}.adaLN_modulation.1.{p}"] = sd.get(f"{b}.norm1.linear.{p}")
    missing = [k for k, v in out.items() if v is None]
    if missing:
        raise MsfError(f"{source} lacks weights for {missing[:3]}: not a DiTTransformer2DModel state dict")
    used = {"pos_embed.proj.weight", "pos_embed.proj.bias", "proj_out_1.weight", "proj_out_1.bias",
            "proj_out_2.weight", "proj_out_2.bias"}
    extra = sorted(k for k in sd if k not in used and not re.match(
        r"transformer_blocks\.\d+\.(norm1\.emb\.|attn1\.to_[qkv]\.|attn1\.to_out\.0\.|ff\.net\.[02]\.|norm1\.linear\.)", k))
    if extra:
        raise MsfError(f"{source} has weights msf's DiT has no place for: {extra[:3]}")
    meta = {k: v for k, v in msf.items() if k not in ("model", "format")}
    return cfg, _check_against_model(cfg, out, source), meta


def to_diffusers(cfg: ModelConfig, sd: dict[str, torch.Tensor], meta: dict | None = None
                 ) -> tuple[dict, dict[str, torch.Tensor]]:
    """Our stage -> (DiTTransformer2DModel config.json, state dict), embedders copied into every block."""
    if cfg.mlp_ratio != 4.0:
        raise MsfError(f"{cfg.name}: diffusers' DiT has MLP ratio 4, this stage {cfg.mlp_ratio}; it cannot be written as one")
    try:
        from importlib.metadata import version

        dver = version("diffusers")
    except Exception:  # diffusers not installed: the folder is still valid for the version that reads it
        dver = "0.30.0"
    dcfg = {"_class_name": "DiTTransformer2DModel", "_diffusers_version": dver,
            "num_attention_heads": cfg.num_heads, "attention_head_dim": cfg.hidden_size // cfg.num_heads,
            "in_channels": cfg.input_channels, "out_channels": cfg.out_channels, "num_layers": cfg.depth,
            "dropout": 0.0, "norm_num_groups": 32, "attention_bias": True, "sample_size": cfg.latent_size,
            "patch_size": cfg.patch_size, "activation_fn": "gelu-approximate", "num_embeds_ada_norm": cfg.num_classes,
            "upcast_attention": False, "norm_type": "ada_norm_zero", "norm_elementwise_affine": False,
            "norm_eps": cfg.mlp_norm_eps, "_msf": {"format": FORMAT, "model": cfg.to_dict(), **(meta or {})}}
    D = cfg.hidden_size
    out = {"pos_embed.proj.weight": sd["x_embedder.weight"], "pos_embed.proj.bias": sd["x_embedder.bias"],
           "proj_out_1.weight": sd["final_layer.adaLN_modulation.1.weight"],
           "proj_out_1.bias": sd["final_layer.adaLN_modulation.1.bias"],
           "proj_out_2.weight": sd["final_layer.linear.weight"], "proj_out_2.bias": sd["final_layer.linear.bias"]}
    for i in range(cfg.depth):
        b = f"transformer_blocks.{i}"
        for ours, theirs in zip(OURS_EMBEDDERS, EMBEDDERS):
            out[f"{b}.norm1.emb.{theirs}"] = sd[ours].clone()  # one copy per block (safetensors refuses shared memory)
        for p in ("weight", "bias"):
            q, k, v = sd[f"blocks.{i}.attn.qkv.{p}"].split(D)
            out.update({f"{b}.attn1.to_q.{p}": q, f"{b}.attn1.to_k.{p}": k, f"{b}.attn1.to_v.{p}": v,
                        f"{b}.attn1.to_out.0.{p}": sd[f"blocks.{i}.attn.proj.{p}"],
                        f"{b}.ff.net.0.proj.{p}": sd[f"blocks.{i}.mlp.0.{p}"],
                        f"{b}.ff.net.2.{p}": sd[f"blocks.{i}.mlp.2.{p}"],
                        f"{b}.norm1.linear.{p}": sd[f"blocks.{i}.adaLN_modulation.1.{p}"]})
    return dcfg, {k: v.contiguous() for k, v in out.items()}


# ---- folders -----------------------------------------------------------------------------------
def write_diffusers_stage(folder, cfg: ModelConfig, sd: dict[str, torch.Tensor], meta: dict | None = None) -> Path:
    """A DiTTransformer2DModel folder (config.json last, so a config implies complete weights)."""
    folder = Path(folder)
    dcfg, dsd = to_diffusers(cfg, sd, meta)
    atomic_save_safetensors(folder / DIFFUSERS_WEIGHTS, dsd, metadata={"format": "pt"})
    atomic_write_json(folder / CONFIG_FILE, dcfg)
    return folder


def write_diffusers_cascade(out, stages: list, vae, force: bool = False) -> list[Path]:
    """`msf-train assemble --format diffusers`: every stage as a diffusers folder out/scale<i>, the VAE in
    out/vae. The output folder follows msf_train.outdir's rule (nothing a user wrote is replaced
    without --force)."""
    from safetensors.torch import load_file

    from msf_train import outdir
    from msf_train.assemble import copy_vae, prepare
    from msf_train.checkpoint import WEIGHTS_FILE

    out = Path(out)
    checked, key = prepare(out, stages, vae)
    written = []
    with outdir.claim(out, "msf-train assemble --format diffusers", key, force, recognise=_is_diffusers_cascade):
        for s, (cfg, meta) in zip(stages, checked):
            sd = load_file(str(Path(s) / WEIGHTS_FILE))
            extra = {k: v for k, v in meta.items() if k not in ("format", "model")}
            written.append(write_diffusers_stage(out / f"scale{cfg.scale_index}", cfg, sd, extra))
        copy_vae(vae, out / "vae")
    return written


def _is_diffusers_cascade(folder: Path) -> bool:
    """An earlier `assemble --format diffusers` output from before output folders were marked."""
    return (folder / "scale0" / CONFIG_FILE).is_file() and (folder / "vae" / CONFIG_FILE).is_file()


def _is_import(folder: Path) -> bool:
    """An earlier `import-dit` output (a stage or a one-stage cascade) from before folders were marked."""
    return (folder / CONFIG_FILE).is_file() or (folder / "cascade.json").is_file()


def import_dit(src, out, vae=None, heads: int | None = None, parameterization: str | None = None,
               force: bool = False) -> Path:
    """A DiT checkpoint (facebookresearch `.pt`) or diffusers folder -> an msf stage folder at ``out``,
    or, with a VAE folder (or a DiTPipeline folder's own vae/), a one-stage cascade folder
    (out/scale0, out/vae, out/cascade.json) that msf-run and msf-export take as they are.
    Returns the stage folder written."""
    from msf_train import outdir
    from msf_train.assemble import check_no_overlap, copy_vae
    from msf_train.checkpoint import sha256_file
    from msf_train.vae import vae_identity

    src, out = Path(src), Path(out)
    if src.is_dir():
        dcfg, sd = read_diffusers(src)
        cfg, ours, meta = from_diffusers(dcfg, sd, src, parameterization)
        if vae is None and (src / "vae" / CONFIG_FILE).is_file():
            vae = src / "vae"  # a DiTPipeline folder brings its own VAE
        origin = {"kind": "diffusers", "path": str(src.resolve())}
    elif src.is_file():
        cfg, ours = from_reference(read_reference(src), heads, src)
        if parameterization:
            cfg = cfg.replace(parameterization=parameterization)
        meta, origin = {}, {"kind": "facebookresearch/DiT", "path": str(src.resolve()), "sha256": sha256_file(src)}
    else:
        raise MsfError(f"{src} not found: give a DiT .pt file or a diffusers DiTTransformer2DModel folder")
    if cfg.has_prior and vae is not None:
        raise MsfError(f"{src} is a residual stage ({cfg.name}): import it without --vae and assemble the cascade")
    meta = {**meta, "imported_from": origin}
    if vae is not None:
        meta["vae"] = vae_identity(vae)  # the user vouches that these latents are this VAE's
    stage = out / "scale0" if vae is not None else out
    check_no_overlap(out, [p for p in (src, vae) if p is not None and Path(p).is_dir()])
    key = {"source": str(src.resolve()), "vae": None if vae is None else str(Path(vae).resolve()), "heads": heads,
           "parameterization": parameterization}
    with outdir.claim(out, "msf-train import-dit", key, force, recognise=_is_import):
        save_stage(stage, ours, cfg, **meta)
        if vae is not None:
            copy_vae(vae, out / "vae")
            write_cascade(out, ["scale0"], "vae")
    return stage


def describe(path) -> str:
    """One line on what a stage folder imported from (for the CLI)."""
    meta = json.loads((Path(path) / CONFIG_FILE).read_text())
    m = meta["model"]
    return f"{m['name']} ({m['depth']} blocks, width {m['hidden_size']}, {m['latent_size']}x{m['latent_size']} latent, " \
           f"{m.get('parameterization', 'velocity')})"
