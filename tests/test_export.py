"""msf-export: ONNX export, FP16 islands, manifests, parity, and the rules that protect a user's files."""
import json
import shutil

import pytest
import torch

from export_helpers import assert_one_line_error, exported, msf_export, tiny_cascade
from msf_export import manifest as mf
from msf_export.export import ExportOptions, check_out_dir, resolve_options
from msf_export.fp16 import Fp16Denoiser
from msf_export.onnx import export_onnx, onnx_parity
from msf_train.checkpoint import sha256_file
from msf_train.config import get_preset
from msf_train.errors import MsfError
from msf_train.model import build_model, export_contract
from runtime.cascade import random_model_state


def _model(name="tiny/scale1", seed=0):
    cfg = get_preset(name)
    m = build_model(cfg)
    m.load_state_dict(random_model_state(cfg, seed, std=0.05))
    return cfg, m.eval()


# ---- FP16 variant ------------------------------------------------------------------------------
def test_fp16_wrapper_keeps_norms_time_embedding_and_modulation_in_fp32():
    cfg, m = _model()
    w = Fp16Denoiser(m)
    dtypes = {n: p.dtype for n, p in w.named_parameters()}
    fp32 = {n for n, d in dtypes.items() if d == torch.float32}
    assert fp32 and all("t_embedder" in n or "adaLN_modulation" in n for n in fp32), sorted(fp32)
    assert all(dtypes[n] == torch.float32 for n in dtypes if "t_embedder" in n or "adaLN_modulation" in n)
    assert dtypes["model.blocks.0.attn.qkv.weight"] == torch.float16
    assert dtypes["model.x_embedder.inner.weight"] == torch.float16
    # LayerNorms (no parameters here) run inside FP32 islands.
    from msf_export.fp16 import Fp32Island

    assert isinstance(w.model.blocks[0].norm1, Fp32Island) and isinstance(w.model.final_layer.norm, Fp32Island)
    # The source model is untouched: still FP32 and bit-identical outputs.
    assert all(p.dtype == torch.float32 for p in m.parameters())
    from msf_train.model import sample_inputs

    x = sample_inputs(cfg, 2)
    v16 = w(**x)
    assert v16.dtype == torch.float32 and v16.shape == (2, *cfg.latent_shape)


def test_fp16_onnx_parity_is_reported_and_bounded(tmp_path_factory, tmp_path):
    """The FP16 graph (what TensorRT builds from) against FP32 PyTorch: error above FP32's, but bounded."""
    from msf_train.checkpoint import load_stage

    cfg, m = load_stage(tiny_cascade(tmp_path_factory) / "scale1")
    ins, outs = export_contract(cfg)
    f16 = export_onnx(Fp16Denoiser(m), ins, outs, tmp_path / "f16.onnx", (1, 8, 16), num_classes=cfg.num_classes)
    e16 = onnx_parity(f16[0], m, ins, outs, (1, 8, 16), cfg.num_classes)
    e32 = mf.read_manifest(exported(tmp_path_factory))["stages"][1]["parity"]  # same weights, FP32 export
    assert e16["ref_mean_abs"] > 0.05  # non-trivial outputs
    assert e16["max_abs"] > 10 * e32["max_abs"]  # it really computes in half precision
    assert e16["max_abs"] < 1e-2 and e16["mean_abs"] < 2e-3, e16
    assert e32["max_abs"] < 1e-5
    import onnx

    g = onnx.load(str(f16[0]))
    half = [i for i in g.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    assert half, "no FP16 weights in the FP16 graph"
    assert {i.name: i.type.tensor_type.elem_type for i in g.graph.input}["x"] == onnx.TensorProto.FLOAT
    assert "Cast" in {n.op_type for n in g.graph.node}  # the explicit casts around the FP32 islands


def test_onnx_export_keeps_batch_dynamic_and_uses_external_data(tmp_path_factory):
    """The session export runs with --external-data: weights in <name>.onnx.data, listed and hashed."""
    from msf_export.onnx import ort_session, run_ort
    from msf_train.checkpoint import load_stage

    out = exported(tmp_path_factory)
    entry = mf.read_manifest(out)["stages"][0]
    assert sorted(entry["files"]) == ["scale0.onnx", "scale0.onnx.data"]
    assert (out / "scale0.onnx.data").stat().st_size > (out / "scale0.onnx").stat().st_size
    cfg, m = load_stage(tiny_cascade(tmp_path_factory) / "scale0")
    s = ort_session(out / "scale0.onnx")
    assert s.get_inputs()[0].shape[0] == "batch"
    from msf_train.model import sample_inputs

    for b in (1, 5):
        x = sample_inputs(cfg, b, seed=b)
        assert torch.allclose(run_ort(s, x)["v"], m(**x), atol=1e-5)


# ---- options and the output folder -------------------------------------------------------------
def test_option_defaults_and_validation():
    assert resolve_options("onnx").precision == "fp32"
    assert resolve_options("aoti").device == "cpu"
    assert resolve_options("onnx", batch=(2, 1, 4)).batch == (2, 2, 4)  # opt clipped into the range
    with pytest.raises(MsfError, match="--max-batch must|max-batch >= 2"):
        resolve_options("onnx", batch=(1, 1, 1))
    with pytest.raises(MsfError, match="below --min-batch"):
        resolve_options("onnx", batch=(8, 8, 4))
    if not torch.cuda.is_available():
        with pytest.raises(MsfError, match="no CUDA"):
            resolve_options("aoti", device="cuda")


def test_export_cli_writes_a_complete_manifest(tmp_path_factory):
    out = exported(tmp_path_factory)
    model = tiny_cascade(tmp_path_factory)
    m = mf.read_manifest(out, "onnx")
    assert m["format"] == mf.FORMAT and m["engine"] == "onnx" and m["precision"] == "fp32"
    assert m["batch"] == {"min": 1, "opt": 8, "max": 16}
    assert [s["name"] for s in m["stages"]] == ["scale0", "scale1"]
    for s, preset in zip(m["stages"], ["tiny/scale0", "tiny/scale1"]):
        assert s["config"] == get_preset(preset).to_dict()
        assert s["source"]["sha256"] == sha256_file(model / s["name"] / "model.safetensors")
        assert s["artifact"] in s["files"] and s["files"] == {n: sha256_file(out / n) for n in s["files"]}
        ins, outs = export_contract(get_preset(preset))
        assert s["inputs"] == [mf.spec_to_json(x) for x in ins] and s["outputs"] == [mf.spec_to_json(x) for x in outs]
        assert s["parity"]["max_abs"] < 1e-4 and s["parity"]["ref_mean_abs"] > 0.01
    dec = m["decoder"]
    assert dec["inputs"][0]["shape"] == ["batch", 4, 8, 8] and dec["outputs"][0]["shape"] == ["batch", 3, 64, 64]
    assert dec["parity"]["max_abs"] < 1e-4 and dec["vae"]["class"] == "AutoencoderKL"
    assert m["tools"]["torch"] == torch.__version__ and m["tools"]["onnx"] and m["tools"]["onnxruntime"]
    assert m["command"][:3] == ["msf-export", "--engine", "onnx"]
    assert m["created"] and len(m["fingerprint"]) == 64
    mf.verify_files(out, m)


def test_rerun_with_unchanged_inputs_is_a_noop(tmp_path_factory):
    out = exported(tmp_path_factory)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    r = msf_export("--engine", "onnx", "--model", tiny_cascade(tmp_path_factory), "--out", out, "--max-batch", 16,
                   "--external-data")
    assert r.returncode == 0, r.stderr
    assert "up to date" in r.stdout and "nothing to do" in r.stdout
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_refuses_a_non_empty_folder_that_is_not_an_export(tmp_path_factory, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    r = msf_export("--engine", "onnx", "--model", tiny_cascade(tmp_path_factory), "--out", out)
    assert_one_line_error(r, "not empty", "--force")
    assert (out / "notes.txt").read_text() == "precious" and sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_refuses_an_export_of_another_model(tmp_path_factory, tmp_path):
    from msf_export.export import describe_sources

    out = tmp_path / "other"
    shutil.copytree(exported(tmp_path_factory), out)
    m = json.loads((out / "manifest.json").read_text())
    m["stages"][0]["source"]["sha256"] = "0" * 64  # as if exported from other weights
    (out / "manifest.json").write_text(json.dumps(m))
    src = describe_sources(tiny_cascade(tmp_path_factory))
    with pytest.raises(MsfError, match="different model.*--force"):
        check_out_dir(out, src, "fingerprint-of-this-model", False)
    assert check_out_dir(out, src, "fingerprint-of-this-model", True)[1] is False  # --force: rebuild


def test_out_dir_rules_in_process(tmp_path_factory, tmp_path):
    """check_out_dir: empty/new folders are fine; same fingerprint with intact files is up to date."""
    from msf_export.export import describe_sources

    src = describe_sources(tiny_cascade(tmp_path_factory))
    assert check_out_dir(tmp_path / "new", src, "f", False) == (None, False)
    out = exported(tmp_path_factory)
    m = mf.read_manifest(out)
    old, fresh = check_out_dir(out, src, m["fingerprint"], False)
    assert fresh and old["fingerprint"] == m["fingerprint"]
    old, fresh = check_out_dir(out, src, "another-fingerprint", False)  # e.g. other precision: re-export allowed
    assert not fresh and old is not None


# ---- damaged artifacts: one line, non-zero exit --------------------------------------------------
def _copy(tmp_path_factory, tmp_path):
    out = tmp_path / "art"
    shutil.copytree(exported(tmp_path_factory), out)
    return out


def test_verify_accepts_an_intact_export(tmp_path_factory):
    r = msf_export("verify", exported(tmp_path_factory))
    assert r.returncode == 0, r.stderr
    assert "all sha256 match" in r.stdout and "load in onnxruntime" in r.stdout


def test_truncated_onnx_is_one_line(tmp_path_factory, tmp_path):
    out = _copy(tmp_path_factory, tmp_path)
    data = (out / "scale1.onnx").read_bytes()
    (out / "scale1.onnx").write_bytes(data[: len(data) // 3])
    assert_one_line_error(msf_export("verify", out), "scale1.onnx", "does not match its manifest")
    # Even with a manifest that agrees with the truncated file, loading it fails in one line.
    m = json.loads((out / "manifest.json").read_text())
    m["stages"][1]["files"]["scale1.onnx"] = sha256_file(out / "scale1.onnx")
    (out / "manifest.json").write_text(json.dumps(m))
    assert_one_line_error(msf_export("verify", out), "cannot load", "scale1.onnx")


def test_artifact_changed_after_export_is_one_line(tmp_path_factory, tmp_path):
    out = _copy(tmp_path_factory, tmp_path)
    data = bytearray((out / "decoder.onnx").read_bytes())
    data[-10] ^= 0xFF  # same size, one byte flipped
    (out / "decoder.onnx").write_bytes(bytes(data))
    assert_one_line_error(msf_export("verify", out), "decoder.onnx", "sha256")


def test_manifest_from_a_newer_format_is_one_line(tmp_path_factory, tmp_path):
    out = _copy(tmp_path_factory, tmp_path)
    m = json.loads((out / "manifest.json").read_text())
    m["format"] = mf.FORMAT + 1
    (out / "manifest.json").write_text(json.dumps(m))
    assert_one_line_error(msf_export("verify", out), "newer", "upgrade msf")
    # ... and msf-export will not overwrite it without --force
    r = msf_export("--engine", "onnx", "--model", tiny_cascade(tmp_path_factory), "--out", out)
    assert_one_line_error(r, "newer")


def test_trt_without_gpu_is_one_line(tmp_path_factory, tmp_path):
    from msf_export.tensorrt import unavailable_reason

    why = unavailable_reason()
    if why is None:
        pytest.skip("TensorRT and CUDA are present: the refusal path does not apply")
    r = msf_export("--engine", "trt", "--model", tiny_cascade(tmp_path_factory), "--out", tmp_path / "t")
    assert_one_line_error(r, "TensorRT")
    assert not (tmp_path / "t").exists()  # refused before touching --out


def test_export_options_fingerprint_changes_with_precision():
    a = ExportOptions("onnx", "fp32").describe()
    b = ExportOptions("onnx", "fp16").describe()
    assert mf.fingerprint(a) != mf.fingerprint(b) and mf.fingerprint(a) == mf.fingerprint(dict(a))


@pytest.mark.slow
def test_fp16_export_and_force_overwrite(tmp_path_factory, tmp_path):
    """--precision fp16 writes FP16 denoisers (decoder FP32) and reports its parity; --force rewrites."""
    out = _copy(tmp_path_factory, tmp_path)
    r = msf_export("--engine", "onnx", "--precision", "fp16", "--model", tiny_cascade(tmp_path_factory), "--out", out,
                   "--max-batch", 16, "--quiet")
    assert r.returncode == 0, r.stderr  # an export of the same model: overwriting our own files is fine
    m = mf.read_manifest(out)
    assert m["precision"] == "fp16" and m["decoder"]["precision"] == "fp32"
    for s in m["stages"]:
        assert 1e-6 < s["parity"]["max_abs"] < 1e-2
    (out / "notes.txt").write_text("x")
    r = msf_export("--engine", "onnx", "--model", tiny_cascade(tmp_path_factory), "--out", out, "--force", "--quiet",
                   "--max-batch", 16)
    assert r.returncode == 0 and mf.read_manifest(out)["precision"] == "fp32"
    assert (out / "notes.txt").exists()  # --force writes our files, it does not delete others
