"""The fast torch path (issue #11) checked on the CPU: torch.compile'd denoisers give the eager
image within tolerance, and bf16 engines run without autocast islands yet match fp32 closely.
The CUDA side (flash/cuDNN attention for head dims 72 and 80, compile inside the cascade graph)
is in the gpu-marked tests at the end, skipped without CUDA."""
import pytest
import torch
import torch.nn.functional as F

from runtime.cascade import build_random_cascade
from runtime.sampler import make_plan, sample

MSF = ("tiny/scale0", "tiny/scale1")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.slow
def test_compiled_denoisers_give_the_eager_image():
    eager_stages, dec = build_random_cascade(MSF, "cpu")
    comp_stages, _ = build_random_cascade(MSF, "cpu", compile="default")
    plan = make_plan([c for c, _ in eager_stages], [3, 2], [1.4, 1.0])
    a = sample(eager_stages, dec, [1, 2], 4, plan)
    b = sample(comp_stages, dec, [1, 2], 4, plan)
    assert comp_stages[0][1].compiled == "default"
    torch.testing.assert_close(b.latent, a.latent, atol=1e-4, rtol=1e-4)


def test_bf16_engine_runs_without_autocast_and_stays_close_to_fp32():
    f32, dec = build_random_cascade(MSF, "cpu")
    b16, _ = build_random_cascade(MSF, "cpu", dtype="bf16")
    plan = make_plan([c for c, _ in f32], [3, 2], [1.4, 1.0])
    a = sample(f32, dec, [1, 2], 4, plan).latent
    b = sample(b16, dec, [1, 2], 4, plan).latent
    assert b.dtype == torch.float32 and 0 < (a - b).abs().max() < 0.05 * a.abs().max()
    eng = b16[0][1]
    assert next(eng.module.parameters()).dtype == torch.bfloat16


def test_unknown_compile_mode_is_refused_in_one_line():
    from msf_train.errors import MsfError

    with pytest.raises(MsfError, match="unknown torch.compile mode 'reduce-overhead'.*cannot run inside"):
        build_random_cascade(MSF, "cpu", compile="reduce-overhead")


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("preset", ["msf-xl/scale0", "msf-xl/scale1", "dit-xl/2"])
def test_paper_attention_hits_a_fused_kernel_in_bf16(preset):
    """Head dims 72 (1152/16) and 80 (1280/16): only flash or cuDNN attention allowed, so a layout
    that falls back to the math kernel raises instead of running slowly."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from msf_train.config import get_preset
    from msf_train.model import Attention

    cfg = get_preset(preset)
    attn = Attention(cfg.hidden_size, cfg.num_heads).cuda().to(torch.bfloat16)
    x = torch.randn(8, cfg.num_tokens, cfg.hidden_size, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        ref = attn(x)
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION]):
            fused = attn(x)
    torch.testing.assert_close(fused, ref, atol=2e-2, rtol=2e-2)
    assert F.scaled_dot_product_attention is not None


@pytest.mark.gpu
@cuda
def test_compiled_denoisers_capture_in_the_cascade_graph():
    from runtime.graphs import CascadeRunner

    stages, dec = build_random_cascade(MSF, "cuda", dtype="bf16", compile="default")
    eager, _ = build_random_cascade(MSF, "cuda", dtype="bf16")
    plan = make_plan([c for c, _ in stages], [4, 3], [1.4, 1.0])
    runner = CascadeRunner(stages, dec, 2, plan, warn=False)
    assert runner.mode == "graph", runner.reason
    g = runner.sample([1, 2], seeds=5).latent
    e = sample(eager, dec, [1, 2], 5, plan).latent
    torch.testing.assert_close(g, e, atol=3e-2, rtol=3e-2)
