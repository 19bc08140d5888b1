"""The model interface v = model(x, t, y, prior=None) and the conventions it carries."""
import pytest
import torch

from msf_train.config import get_preset
from msf_train.model import TIME_SCALE, build_model, sample_inputs, timestep_embedding


@pytest.mark.parametrize("name", ["tiny/scale0", "tiny/scale1", "tiny/dit"])
def test_fresh_model_outputs_exactly_zero(name):
    cfg = get_preset(name)
    v = build_model(cfg)(**sample_inputs(cfg, batch=3))
    assert v.shape == (3, *cfg.latent_shape)
    assert torch.count_nonzero(v) == 0


def _perturbed(cfg, seed=0):
    torch.manual_seed(seed)
    m = build_model(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.eval()


def test_prior_channels_are_used_and_required():
    cfg = get_preset("tiny/scale1")
    m = _perturbed(cfg)
    x = sample_inputs(cfg, batch=2)
    v1 = m(**x)
    v2 = m(**{**x, "prior": x["prior"] + 1})
    assert not torch.allclose(v1, v2)
    assert m.x_embedder.in_channels == 2 * cfg.in_channels
    with pytest.raises(ValueError, match="needs a prior"):
        m(x["x"], x["t"], x["y"])
    base = build_model(get_preset("tiny/scale0"))
    with pytest.raises(ValueError, match="takes no prior"):
        base(**sample_inputs(get_preset("tiny/scale0")), prior=torch.zeros(2, 4, 4, 4))


def test_null_class_is_num_classes_and_has_its_own_embedding():
    cfg = get_preset("tiny/dit")
    m = _perturbed(cfg)
    assert cfg.null_class == cfg.num_classes
    assert m.y_embedder.num_embeddings == cfg.num_classes + 1
    x = sample_inputs(cfg, batch=2)
    null = torch.full_like(x["y"], cfg.null_class)
    assert not torch.allclose(m(x["x"], x["t"], null), m(x["x"], x["t"], torch.zeros_like(null)))
    with pytest.raises(IndexError):
        m(x["x"], x["t"], null + 1)


def test_timestep_embedder_sees_1000_t():
    assert TIME_SCALE == 1000.0
    t = torch.tensor([0.0, 0.25, 1.0])
    emb = timestep_embedding(t)
    # the first frequency is 1: its cos/sin features are cos(1000 t), sin(1000 t)
    assert torch.allclose(emb[:, 0], torch.cos(1000 * t), atol=1e-4)
    assert torch.allclose(emb[:, 128], torch.sin(1000 * t), atol=1e-4)


def test_batch_elements_are_independent():
    cfg = get_preset("tiny/scale1")
    m = _perturbed(cfg)
    x = sample_inputs(cfg, batch=4)
    full = m(**x)
    one = m(**{k: v[1:2] for k, v in x.items()})
    assert torch.allclose(full[1:2], one, atol=1e-5)


@pytest.mark.parametrize("dim,grid", [(32, 4), (1152, 16), (64, 6)])
def test_position_table_matches_diffusers_reference_layout(dim, grid):
    """Released DiT/diffusers weights expect [column | row] halves; a swapped table breaks them silently."""
    from diffusers.models.embeddings import get_2d_sincos_pos_embed

    from msf_train.model import sincos_pos_embed_2d

    # base_size=grid: positions 0..grid-1, as diffusers' PatchEmbed sets it for DiT (base_size = height // patch)
    ref = get_2d_sincos_pos_embed(dim, grid, base_size=grid, output_type="pt")
    ours = sincos_pos_embed_2d(dim, grid)
    assert ours.shape == ref.shape == (grid * grid, dim)
    torch.testing.assert_close(ours, ref.float(), atol=1e-6, rtol=0)
    # token 1 is (row 0, col 1): only the first (column) half differs from token 0
    assert not torch.allclose(ours[1, : dim // 2], ours[0, : dim // 2])
    torch.testing.assert_close(ours[1, dim // 2 :], ours[0, dim // 2 :])
