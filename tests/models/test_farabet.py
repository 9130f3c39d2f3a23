import pytest
import torch
from torch import nn

from attnseg.models import create_model
from attnseg.models.farabet import (
    FarabetMultiScale,
    SharedBatchNorm2d,
    gaussian_kernel1d,
    laplacian_pyramid,
    local_contrast_normalize,
    pyramid_down,
    pyramid_up,
    reconstruct_laplacian,
    rgb_to_yuv,
    separable_blur,
)

from .base import ModelTest

SMALL = {"channels": (8, 16, 32)}


class TestFarabet(ModelTest):
    model_name = "farabet"


class TestFarabet2LayerBN(ModelTest):
    model_name = "farabet_2layer"
    kwargs = {**SMALL, "classifier_hidden": 24, "batch_norm": True, "dropout": 0.1, "pyramid": "gaussian"}


# ---- weight sharing ----------------------------------------------------------------------------------------------

def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("hidden", [0, 1024])
def test_one_convnet_for_all_levels(hidden):
    """The parameter count depends on ``levels`` only through the classifier's input width (256 per level)."""
    K = 5
    convnet = 3 * 16 * 49 + 16 + 16 * 64 * 49 + 64 + 64 * 256 * 49 + 256
    assert convnet == 855_680
    for levels in (1, 2, 3, 4):
        model = create_model("farabet", num_classes=K, levels=levels, classifier_hidden=hidden)
        width = 256 * levels
        head = width * K + K if not hidden else width * hidden + hidden + hidden * K + K
        assert n_params(model.convnet) == convnet
        assert n_params(model) == convnet + head
        convs = [m for m in model.convnet.modules() if isinstance(m, nn.Conv2d)]
        assert len(convs) == 3


def test_levels_use_the_same_convnet():
    """Each level's features are that one convnet applied to that level (no per-level copies)."""
    torch.manual_seed(0)
    model = FarabetMultiScale(3, **SMALL).eval()
    x = torch.randn(1, 3, 37, 45)
    with torch.no_grad():
        per_scale = model.scale_features(x)
        for s, level in enumerate(model.preprocess(x)):
            f = model.convnet(level)
            up = torch.nn.functional.interpolate(f, scale_factor=2 ** s, mode="bilinear", align_corners=False)
            torch.testing.assert_close(per_scale[s], up[..., :10, :12])


# ---- pyramid -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [(1, 1), (2, 3), (33, 49), (40, 64), (37, 53)])
@pytest.mark.parametrize("levels", [1, 3, 4])
def test_laplacian_pyramid_reconstructs(size, levels):
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    bands = laplacian_pyramid(x, levels)
    assert len(bands) == levels
    H, W = size
    for s, b in enumerate(bands):
        assert b.shape == (2, 3, -(-H // 2 ** s), -(-W // 2 ** s))
    torch.testing.assert_close(reconstruct_laplacian(bands), x, rtol=0, atol=1e-12)
    # by hand, with the module's up operator
    y = bands[-1]
    for b in reversed(bands[:-1]):
        y = b + pyramid_up(y, b.shape[-2:])
    torch.testing.assert_close(y, x, rtol=0, atol=1e-12)
    # gaussian: g_0 = x, g_{s+1} = down(g_s); the last laplacian level is the last gaussian one
    g = laplacian_pyramid(x, levels, pyramid="gaussian")
    assert torch.equal(g[0], x) and torch.equal(g[-1], bands[-1])
    for s in range(levels - 1):
        torch.testing.assert_close(g[s + 1], pyramid_down(g[s]))


def test_pyramid_geometry_half_pixel():
    """Down: output i sits at input 2i + 1/2 (a ramp maps to 2i + 1/2 away from the border); up inverts that."""
    H, W = 21, 30
    ramp = torch.arange(W, dtype=torch.float64).expand(1, 1, H, W).clone()
    d = pyramid_down(ramp)
    assert d.shape[-2:] == (11, 15)
    expect = 2 * torch.arange(15, dtype=torch.float64) + 0.5
    torch.testing.assert_close(d[0, 0, :, 1:-1], expect[1:-1].expand(11, 13))
    u = pyramid_up(d, (H, W))
    torch.testing.assert_close(u[0, 0, :, 3:-3], ramp[0, 0, :, 3:-3])
    # a laplacian band of a ramp is zero away from the borders
    assert laplacian_pyramid(ramp, 2)[0][..., 3:-3].abs().max() < 1e-12


def test_laplacian_bands_are_band_pass():
    """A constant image has all its energy in the last (low-pass) level."""
    x = torch.full((1, 3, 33, 49), 0.7, dtype=torch.float64)
    bands = laplacian_pyramid(x, 3)
    assert bands[0].abs().max() < 1e-12 and bands[1].abs().max() < 1e-12
    torch.testing.assert_close(bands[2], torch.full_like(bands[2], 0.7))


# ---- local contrast normalisation --------------------------------------------------------------------------------

def test_lcn_zero_local_mean_unit_local_std():
    torch.manual_seed(0)
    x = 3.0 + 5.0 * torch.randn(4, 2, 96, 96, dtype=torch.float64)
    y = local_contrast_normalize(x, kernel_size=9)
    taps = gaussian_kernel1d(9, 9 / 4, dtype=torch.float64)
    local_mean = separable_blur(y, taps)
    local_std = separable_blur(y * y, taps).sqrt()
    inner = (slice(None), slice(None), slice(8, -8), slice(8, -8))
    assert local_mean[inner].abs().mean() < 0.08
    assert y[inner].mean().abs() < 0.02
    assert 0.85 < local_std[inner].mean() < 1.05
    assert 0.85 < y[inner].std() < 1.05


def test_lcn_invariant_to_affine_brightness():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 31, 40, dtype=torch.float64)
    y = local_contrast_normalize(x)
    for a, b in [(3.7, -2.0), (0.2, 0.5)]:
        torch.testing.assert_close(local_contrast_normalize(a * x + b), y, rtol=0, atol=1e-5)
    per_channel = x * torch.tensor([0.5, 2.0, 7.0]).view(1, 3, 1, 1) + torch.tensor([1.0, -3.0, 0.2]).view(1, 3, 1, 1)
    torch.testing.assert_close(local_contrast_normalize(per_channel), y, rtol=0, atol=1e-5)


def test_lcn_flat_and_borders():
    """A flat image stays finite (zero); a uniform-texture image keeps its contrast up to the borders."""
    assert local_contrast_normalize(torch.full((1, 1, 12, 12), 4.0)).abs().max() == 0
    torch.manual_seed(1)
    y = local_contrast_normalize(torch.randn(1, 1, 64, 64, dtype=torch.float64))
    border, inner = y[..., :2, :].std(), y[..., 16:-16, 16:-16].std()
    assert abs(border / inner - 1) < 0.2
    for size in [(1, 1), (3, 2), (5, 7)]:  # smaller than the window: replicate instead of reflect
        assert torch.isfinite(local_contrast_normalize(torch.randn(1, 3, *size))).all()


def test_lcn_gradcheck():
    torch.manual_seed(0)
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: local_contrast_normalize(t, kernel_size=5), (x,))


def test_yuv_matrix():
    white = torch.ones(1, 3, 2, 2)
    yuv = rgb_to_yuv(white)
    torch.testing.assert_close(yuv[:, 0], torch.ones(1, 2, 2), atol=1e-6, rtol=0)  # Y of white is 1
    torch.testing.assert_close(yuv[:, 1:], torch.zeros(1, 2, 2, 2), atol=1e-4, rtol=0)  # grey has no chroma


# ---- shared batch norm -------------------------------------------------------------------------------------------

def test_shared_batchnorm_equals_one_big_batch():
    torch.manual_seed(0)
    a, b = torch.randn(2, 4, 5, 6), torch.randn(2, 4, 5, 6) * 3 + 1
    ours, ref = SharedBatchNorm2d(4), nn.BatchNorm2d(4)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 2)
        ours.bias.normal_()
    ref.load_state_dict(ours.state_dict())
    ya, yb = ours.forward_many([a, b])
    torch.testing.assert_close(torch.cat([ya, yb]), ref(torch.cat([a, b])), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.running_mean, ref.running_mean)
    torch.testing.assert_close(ours.running_var, ref.running_var)
    # different sizes: one set of statistics over all pixels
    c = torch.randn(2, 4, 3, 2) - 4
    outs = ours.forward_many([a, c])
    flat = torch.cat([o.transpose(0, 1).reshape(4, -1) for o in outs], 1)
    w, bias = ours.weight.detach(), ours.bias.detach()
    torch.testing.assert_close(((flat - bias[:, None]) / w[:, None]).mean(1), torch.zeros(4), atol=1e-5, rtol=0)
    ours.eval()
    torch.testing.assert_close(ours.forward_many([a])[0], ours(a))


# ---- model behaviour ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [(33, 49), (1, 1), (5, 3), (66, 31)])
def test_odd_sizes_every_level(size):
    """33 -> 17 -> 9 and 49 -> 25 -> 13 are odd at every level; features on the ceil(H/4) grid."""
    torch.manual_seed(0)
    model = FarabetMultiScale(4, **SMALL).eval()
    x = torch.randn(2, 3, *size)
    H, W = size
    with torch.no_grad():
        levels = model.preprocess(x)
        assert [tuple(m.shape[-2:]) for m in levels] == [(-(-H // 2 ** s), -(-W // 2 ** s)) for s in range(3)]
        parts = model.forward_parts(x)
        assert parts["features"].shape == (2, 3 * 32, -(-H // 4), -(-W // 4))
        assert parts["scores"].shape == (2, 4, -(-H // 4), -(-W // 4))
        logits = model(x)["logits"]
        assert logits.shape == (2, 4, H, W)
        torch.testing.assert_close(model.upsample_scores(parts["scores"], size), logits)


def test_scale_energy_is_a_distribution():
    torch.manual_seed(0)
    model = FarabetMultiScale(3, levels=4, **SMALL).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 37, 53), return_attention=True)
    e = out["attention"]["scale_energy"]
    assert e.shape == (2, 4, 37, 53)
    assert (e >= 0).all()
    torch.testing.assert_close(e.sum(1), torch.ones(2, 37, 53), rtol=0, atol=1e-5)
    assert e.std() > 0  # not uniform


def test_bad_options():
    with pytest.raises(ValueError):
        FarabetMultiScale(3, pyramid="steerable")
    with pytest.raises(ValueError):
        FarabetMultiScale(3, levels=0)
