"""Engines and loading (runtime.engines, runtime.cascade) and the CPU side of runtime.graphs, on real
cascade folders: tiny presets with perturbed random weights and a tiny random AutoencoderKL."""
import json
import warnings

import pytest
import torch

from msf_train import checkpoint
from msf_train.checkpoint import load_stage
from msf_train.config import get_preset
from msf_train.errors import MsfError
from msf_train.model import export_contract
from runtime import graphs
from runtime.cascade import random_model_state, write_random_cascade
from runtime.engines import Engine, load_cascade, resolve_backend, resolve_device, resolve_dtype
from runtime.sampler import make_plan, sample


@pytest.fixture(scope="module")
def cascade_dir(tmp_path_factory):
    return write_random_cascade(tmp_path_factory.mktemp("msf") / "tiny", ["tiny/scale0", "tiny/scale1"])


@pytest.fixture(scope="module")
def cascade(cascade_dir):
    return load_cascade(cascade_dir, device="cpu")


def test_load_cascade_gives_engines_in_scale_order_that_follow_the_contract(cascade_dir, cascade):
    stages, decoder = cascade
    assert [c.name for c, _ in stages] == ["tiny/scale0", "tiny/scale1"]
    for cfg, engine in stages:
        assert (engine.inputs, engine.outputs) == export_contract(cfg)
        assert engine.backend == "torch" and engine.kind == "denoiser" and engine.capturable
    assert decoder.input_names == ["latent"] and decoder.output_names == ["image"]
    assert decoder.inputs[0].shape == ("batch", 4, 8, 8) and decoder.outputs[0].shape == ("batch", 3, 64, 64)
    # the engine computes exactly what the stored model computes
    cfg, model = load_stage(cascade_dir / "scale1")
    g = torch.Generator().manual_seed(0)
    x, prior = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    t, y = torch.tensor([0.2, 0.7]), torch.tensor([3, cfg.null_class])
    v = stages[1][1](x=x, t=t, y=y, prior=prior)["v"]
    assert torch.equal(v, model(x, t, y, prior)) and v.abs().max() > 0  # perturbed weights: not adaLN-Zero's 0
    image = decoder(latent=torch.randn(2, 4, 8, 8, generator=g))["image"]
    assert image.shape == (2, 3, 64, 64) and image.dtype == torch.float32
    assert image.min() >= -1 and image.max() <= 1


def test_engine_names_missing_inputs(cascade):
    stages, _ = cascade
    with pytest.raises(MsfError, match="prior"):
        stages[1][1](x=torch.zeros(1, 4, 8, 8), t=torch.zeros(1), y=torch.zeros(1, dtype=torch.long))


def test_sample_decodes_and_saves_each_accumulated_scale(cascade):
    stages, decoder = cascade
    out = sample(stages, decoder, [1, 2], seeds=3, plan=make_plan([c for c, _ in stages], [3, 2], [1.4, 1.0]),
                 save_scales=True)
    assert out.image.shape == (2, 3, 64, 64) and len(out.scales) == 2
    assert torch.equal(out.scales[-1], out.image)  # the last accumulation is the image
    assert (out.scales[0] - out.image).abs().max() > 1e-3  # scale 1 added something
    torch.testing.assert_close(decoder(latent=out.latent)["image"], out.image)
    assert [r.name for r in out.timings] == ["scale 0", "scale 1", "decode"]
    assert out.timings[-1].calls == 2  # one decode per accumulated scale


def test_bf16_engines_stay_close_to_fp32(cascade_dir, cascade):
    stages32, _ = cascade
    stages16, _ = load_cascade(cascade_dir, device="cpu", dtype="bf16")
    assert next(stages16[0][1].module.parameters()).dtype == torch.bfloat16
    plan = make_plan([c for c, _ in stages32], [3, 2], [1.0, 1.0])
    a = sample(stages32, None, [4], seeds=0, plan=plan).latent
    b = sample(stages16, None, [4], seeds=0, plan=plan).latent
    assert b.dtype == torch.float32
    assert (a - b).abs().max() < 0.1 * a.abs().max()


def test_dtype_and_device_choices():
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(MsfError, match="fp16 runs on CUDA only"):
        resolve_dtype("fp16", torch.device("cpu"))
    with pytest.raises(MsfError, match="unknown dtype"):
        resolve_dtype("int8", torch.device("cpu"))
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(MsfError, match="no CUDA"):
            resolve_device("cuda")


def test_backend_comes_from_the_flag_then_the_manifest_then_torch(tmp_path, cascade_dir):
    assert resolve_backend(cascade_dir) == "torch"
    art = tmp_path / "art"
    art.mkdir()
    (art / "manifest.json").write_text(json.dumps({"engine": "tensorrt"}))
    assert resolve_backend(art) == "trt"  # aliases fold to the short names
    assert resolve_backend(art, "onnx") == "onnx"
    with pytest.raises(MsfError, match="exported artifact folder"):
        resolve_backend(art, "torch")
    (art / "manifest.json").write_text(json.dumps({"format": 1}))
    with pytest.raises(MsfError, match="names no 'engine'"):
        resolve_backend(art)
    with pytest.raises(MsfError, match="model folder not found: .*nowhere"):
        resolve_backend(tmp_path / "nowhere")


def test_unknown_backend_is_one_clear_error(cascade_dir):
    with pytest.raises(MsfError, match="unknown backend 'nosuch'; use one of torch, onnx, aoti, trt"):
        load_cascade(cascade_dir, backend="nosuch")
    with pytest.raises(MsfError, match="unknown backend"):
        load_cascade(cascade_dir, backend="../evil")


@pytest.mark.parametrize("scale1,match", [
    (get_preset("tiny/scale1").replace(num_classes=10), "disagree on classes"),
    (get_preset("tiny/dit").replace(scale_index=0), "disagree on latent shape"),
])
def test_stages_that_disagree_are_refused(tmp_path, cascade_dir, scale1, match):
    bad = tmp_path / "bad"
    s0 = get_preset("tiny/scale0")
    checkpoint.save_stage(bad / "scale0", random_model_state(s0), s0)
    checkpoint.save_stage(bad / "scale1", random_model_state(scale1), scale1)
    checkpoint.write_cascade(bad, ["scale0", "scale1"], str(cascade_dir / "vae"))
    with pytest.raises(MsfError, match=match):
        load_cascade(bad)


def test_one_stage_dit_cascade_folder_decodes(tmp_path):
    stages, decoder = load_cascade(write_random_cascade(tmp_path / "dit", ["tiny/dit"]))
    out = sample(stages, decoder, [3], seeds=1, plan=make_plan([stages[0][0]], [2], [1.5], "heun", shift=2.0))
    assert out.image.shape == (1, 3, 64, 64) and out.timings[0].calls == 4  # Heun: two calls per step


def test_graph_runner_falls_back_to_eager_on_cpu_and_says_why_once(cascade):
    stages, decoder = cascade
    plan = make_plan([c for c, _ in stages], [2, 2], [1.4, 1.0])
    graphs._SAID.clear()
    with pytest.warns(RuntimeWarning, match="CUDA graph off, running eager: CUDA graphs need a CUDA device"):
        runner = graphs.CascadeRunner(stages, decoder, 2, plan)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same reason is not repeated
        again = graphs.CascadeRunner(stages, decoder, 2, plan)
    assert runner.mode == again.mode == "eager" and runner.graph is None
    out = runner.sample([5, 6], seeds=9)
    ref = sample(stages, decoder, [5, 6], seeds=9, plan=plan)
    assert torch.equal(out.image, ref.image)


def test_time_cascade_reports_eager_on_cpu(cascade):
    stages, decoder = cascade
    r = graphs.time_cascade(stages, decoder, 1, make_plan([c for c, _ in stages], [2, 1], [1.0, 1.0]),
                            repeats=2, warmup=0)
    assert r["mode"] == "eager" and r["device"] == "cpu" and len(r["times_s"]) == 2
    assert r["reason"] == "CUDA graphs need a CUDA device"


class Placed(Engine):
    """An engine that only states where it runs and whether it can be captured (all that
    `capture_blocker` reads), so the CUDA checks can be exercised on a CPU machine."""

    def __init__(self, kind, backend, device, capturable):
        self.kind, self.backend, self.device, self.capturable = kind, backend, torch.device(device), capturable
        self.inputs = self.outputs = []


def test_non_capturable_or_scattered_engines_block_the_graph():
    s0, s1 = get_preset("tiny/scale0"), get_preset("tiny/scale1")
    stages = [(s0, Placed("denoiser", "torch", "cuda", True)), (s1, Placed("denoiser", "torch", "cuda", True))]
    assert graphs.capture_blocker(stages, Placed("decoder", "torch", "cuda", True)) is None
    assert graphs.capture_blocker(stages, None) is None
    assert graphs.capture_blocker(stages, Placed("decoder", "onnx", "cuda", False)) == "the onnx decoder engine cannot be captured"
    assert "different devices" in graphs.capture_blocker(stages, Placed("decoder", "torch", "cpu", True))


@pytest.mark.slow
def test_torch_compile_matches_eager(cascade_dir, cascade):
    stages, decoder = cascade
    cstages, cdecoder = load_cascade(cascade_dir, device="cpu", compile=True)
    plan = make_plan([c for c, _ in stages], [2, 2], [1.4, 1.0])
    a = sample(stages, decoder, [1], seeds=0, plan=plan)
    b = sample(cstages, cdecoder, [1], seeds=0, plan=plan)
    torch.testing.assert_close(a.image, b.image, atol=1e-3, rtol=1e-3)
