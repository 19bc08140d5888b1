"""The artifact backends (onnx, aoti, trt) behind the runtime's Engine interface, against the torch backend."""
import json
import shutil

import pytest
import torch

from export_helpers import assert_one_line_error, exported, msf_export, msf_run, png, run_cli, tiny_cascade
from msf_train.errors import MsfError

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (none on this machine)")


def _images(tmp_path, model, name, *extra):
    out = tmp_path / f"{name}.png"
    r = msf_run("--model", model, "--class", "3,7", "--batch", 2, "--steps", "4,3", "--seed", 11, "--out", out, *extra)
    assert r.returncode == 0, r.stderr
    return png(out)


def test_onnx_backend_images_match_torch_within_one_level(tmp_path_factory, tmp_path):
    """Acceptance: msf-run --backend onnx vs --backend torch at the same seed, FP32: mean |diff| <= 1/255."""
    ref = _images(tmp_path, tiny_cascade(tmp_path_factory), "torch", "--backend", "torch", "--device", "cpu")
    got = _images(tmp_path, exported(tmp_path_factory), "onnx", "--backend", "onnx", "--device", "cpu")
    assert ref.std() > 10  # non-trivial images
    assert abs(ref - got).mean() <= 1.0  # PNG levels: 1 level = 1/255 of the [0, 1] range


def test_onnx_engines_follow_the_engine_interface(tmp_path_factory):
    from runtime import engines, sampler

    art = exported(tmp_path_factory)
    stages, dec = engines.load_cascade(art, None, "cpu")  # the manifest picks the backend
    assert [c.name for c, _ in stages] == ["tiny/scale0", "tiny/scale1"]
    e0, e1 = stages[0][1], stages[1][1]
    assert (e0.backend, e0.kind, dec.kind) == ("onnx", "denoiser", "decoder")
    assert e0.input_names == ["x", "t", "y"] and e1.input_names == ["x", "t", "y", "prior"]
    assert dec.input_names == ["latent"] and dec.outputs[0].name == "image" and dec.device == torch.device("cpu")
    tstages, tdec = engines.load_cascade(tiny_cascade(tmp_path_factory), "torch", "cpu")
    plan = sampler.make_plan([c for c, _ in stages], [3, 2])
    a = sampler.sample(stages, dec, [1, 2, 3], 5, plan)
    b = sampler.sample(tstages, tdec, [1, 2, 3], 5, plan)
    assert torch.allclose(a.latent, b.latent, atol=1e-4) and (a.image - b.image).abs().max() < 1e-3
    # The decoder range stops at 16 here; a larger batch is decoded in chunks, image by image the same.
    lat = torch.randn(20, 4, 8, 8)
    big = dec.run({"latent": lat})["image"]
    assert big.shape == (20, 3, 64, 64) and torch.allclose(big[17:], dec.run({"latent": lat[17:]})["image"], atol=1e-5)
    with pytest.raises(MsfError, match="outside the exported range 1..16.*--max-batch 17"):
        e0.run({"x": torch.randn(17, 4, 4, 4), "t": torch.rand(17), "y": torch.zeros(17, dtype=torch.long)})


def test_run_refuses_a_changed_artifact_in_one_line(tmp_path_factory, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(exported(tmp_path_factory), art)
    data = bytearray((art / "scale0.onnx.data").read_bytes())
    data[100] ^= 0x01
    (art / "scale0.onnx.data").write_bytes(bytes(data))
    r = msf_run("--model", art, "--class", "1", "--steps", "2,2", "--out", tmp_path / "x.png", "--device", "cpu")
    assert_one_line_error(r, "scale0.onnx.data", "does not match its manifest")
    assert not (tmp_path / "x.png").exists()


def test_wrong_backend_for_an_artifact_is_refused(tmp_path_factory):
    from runtime import backend_aoti

    with pytest.raises(MsfError, match="holds a onnx export, not aoti"):
        backend_aoti.load_cascade(exported(tmp_path_factory), torch.device("cpu"))


# ---- TensorRT ----------------------------------------------------------------------------------
def test_trt_plan_from_another_tensorrt_or_gpu_is_refused_in_one_line():
    from msf_export.tensorrt import check_target

    built = {"tensorrt": "10.3.0", "gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    check_target(built, dict(built))  # same target: fine
    with pytest.raises(MsfError, match="TensorRT 10.3.0, this machine has 11.0.0") as e:
        check_target(built, {**built, "tensorrt": "11.0.0"})
    assert "\n" not in str(e.value)
    with pytest.raises(MsfError, match="GPU NVIDIA H100 80GB HBM3, this machine has NVIDIA A10G"):
        check_target(built, {**built, "gpu": "NVIDIA A10G"})


def test_trt_backend_without_cuda_or_tensorrt_says_why(tmp_path_factory):
    from msf_export.tensorrt import unavailable_reason
    from runtime import backend_trt

    why = unavailable_reason()
    if why is None:
        pytest.skip("TensorRT and CUDA are present: the refusal path does not apply")
    with pytest.raises(MsfError, match="CUDA|TensorRT"):
        backend_trt.load_cascade(exported(tmp_path_factory), torch.device("cpu"))


@pytest.mark.gpu
def test_trt_export_runs_and_captures_in_a_cuda_graph(tmp_path_factory, tmp_path):
    from msf_export.tensorrt import unavailable_reason

    why = unavailable_reason()
    if why:
        pytest.skip(f"TensorRT test needs tensorrt and CUDA: {why}")
    from runtime import engines, sampler
    from runtime.graphs import CascadeRunner

    out = tmp_path / "trt"
    r = msf_export("--engine", "trt", "--model", tiny_cascade(tmp_path_factory), "--out", out, "--max-batch", 16,
                   "--timing-cache", tmp_path / "cache.bin", "--quiet")
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert m["target"]["tensorrt"] and m["target"]["gpu"] and (tmp_path / "cache.bin").is_file()
    for s in m["stages"]:
        assert s["parity"]["max_abs"] < 2e-2 and s["onnx_parity"]["max_abs"] < 1e-2
    stages, dec = engines.load_cascade(out, None, "cuda")
    tstages, tdec = engines.load_cascade(tiny_cascade(tmp_path_factory), "torch", "cuda")
    plan = sampler.make_plan([c for c, _ in stages], [4, 3])
    a = sampler.sample(stages, dec, [1, 2], 5, plan).image
    b = sampler.sample(tstages, tdec, [1, 2], 5, plan).image
    assert (a - b).abs().mean() < 2 / 127.5  # FP16: within two 8-bit levels on average
    runner = CascadeRunner(stages, dec, 2, plan, use_graph=True, warn=False)
    assert runner.mode == "graph", runner.reason
    g = runner.sample([1, 2], seeds=5).image
    assert (g - a).abs().max() < 1e-2
    # A manifest that claims another TensorRT version is refused before deserialising.
    m["target"]["tensorrt"] = "0.0.1"
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(MsfError, match="TensorRT 0.0.1"):
        engines.load_cascade(out, None, "cuda")


# ---- AOTInductor -------------------------------------------------------------------------------
@pytest.mark.slow
def test_aoti_backend_images_match_torch_within_one_level(tmp_path_factory, tmp_path):
    """Acceptance: msf-run --backend aoti vs torch, FP32 CPU (compiling the tiny cascade takes minutes)."""
    art = exported(tmp_path_factory, "aoti", "--device", "cpu")
    m = json.loads((art / "manifest.json").read_text())
    assert m["device"] == "cpu" and all(e["parity"]["max_abs"] < 1e-4 for e in m["stages"] + [m["decoder"]])
    ref = _images(tmp_path, tiny_cascade(tmp_path_factory), "torch", "--backend", "torch", "--device", "cpu")
    got = _images(tmp_path, art, "aoti", "--backend", "aoti", "--device", "cpu")
    assert abs(ref - got).mean() <= 1.0
    # A package compiled for one device is refused on another, in one line.
    other = tmp_path / "other"
    shutil.copytree(art, other)
    m["device"] = "cuda"
    (other / "manifest.json").write_text(json.dumps(m))
    from runtime import backend_aoti

    with pytest.raises(MsfError, match="compiled for cuda, not cpu"):
        backend_aoti.load_cascade(other, torch.device("cpu"))


@pytest.mark.gpu
@cuda
def test_aoti_cuda_export_matches_torch(tmp_path_factory, tmp_path):
    art = exported(tmp_path_factory, "aoti", "--device", "cuda")
    assert json.loads((art / "manifest.json").read_text())["device"] == "cuda"
    ref = _images(tmp_path, tiny_cascade(tmp_path_factory), "torch", "--backend", "torch", "--device", "cuda",
                  "--no-cuda-graph")
    got = _images(tmp_path, art, "aoti", "--device", "cuda")
    assert abs(ref - got).mean() <= 1.0


# ---- the GPU self-test script ------------------------------------------------------------------
def test_gpu_selftest_without_cuda_writes_why_it_skipped(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is present: the skip path does not apply")
    r = run_cli("benchmarks.gpu_selftest", "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "gpu_selftest.json").read_text())
    assert report["skipped"] is True and "CUDA" in report["reason"]
    r = run_cli("benchmarks.gpu_selftest", "--out", tmp_path, "--require-cuda")
    assert r.returncode == 1


@pytest.mark.slow
def test_gpu_selftest_cpu_dry_run(tmp_path):
    """The same script on the CPU with the tiny cascade and ONNX: the code path the GPU run takes."""
    r = run_cli("benchmarks.gpu_selftest", "--out", tmp_path, "--device", "cpu", "--cascades", "tiny",
                "--engines", "onnx,trt", "--steps", "2,2", "--batches", "2", "--repeats", "1")
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "gpu_selftest.json").read_text())
    tiny = rep["cascades"]["tiny"]["backends"]
    assert tiny["torch"]["eager"]["2"]["median_s"] > 0
    assert tiny["onnx"]["pixel_diff_vs_torch"] <= 1.0 and tiny["onnx"]["latency"]["2"]["median_s"] > 0
    assert tiny["onnx"]["parity"]["scale0"]["max_abs"] < 1e-4
    if torch.cuda.is_available():
        return
    assert "TensorRT" in tiny["trt"]["error"]  # recorded, and the run went on
