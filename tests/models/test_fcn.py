import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnseg.models import create_model
from attnseg.models.base import BilinearUpsample, crop_to

from .base import ModelTest

VGG_TINY = {"width": 1 / 16}  # 4-8-16-32-32 channels, fc 256: the pad-100 geometry at CPU test cost


class TestFCN32sResNet18(ModelTest):
    model_name = "fcn32s_resnet18"


class TestFCN16sResNet18(ModelTest):
    model_name = "fcn16s_resnet18"


class TestFCN8sResNet18(ModelTest):
    model_name = "fcn8s_resnet18"


class TestFCN32sVGG16(ModelTest):
    model_name, kwargs, input_size = "fcn32s_vgg16", VGG_TINY, (24, 32)


class TestFCN16sVGG16(ModelTest):
    model_name, kwargs, input_size = "fcn16s_vgg16", VGG_TINY, (24, 32)


class TestFCN8sVGG16(ModelTest):
    model_name, kwargs, input_size = "fcn8s_vgg16", VGG_TINY, (24, 32)


# ---- FCN-VGG geometry: the Caffe reference crops -----------------------------------------------------------------

def test_vgg_origins_and_caffe_crop_offsets():
    """voc-fcn8s: score_pool4c offset 5, score_pool3c offset 9, upscore8 crop 31; fcn16s: 27; fcn32s: 19."""
    finals = {"32s": 19, "16s": 27, "8s": 31}
    for variant, final in finals.items():
        model = create_model(f"fcn{variant}_vgg16", num_classes=3, **VGG_TINY)
        bb = model.backbone
        assert bb.out_origins["conv1"] == -99.0  # pad 100, 3x3
        assert (bb.out_origins["pool3"], bb.out_origins["pool4"], bb.out_origins["fc7"]) == (-95.5, -91.5, 12.5)
        assert bb.skip_crops == {"pool4": 5, "pool3": 9}  # Caffe's crops of score_pool4 / score_pool3
        assert set(model.offsets.values()) <= {0}  # the upsampled map is then used whole
        assert model.final_offset == final


@pytest.mark.parametrize("variant", ["32s", "16s", "8s"])
def test_vgg_output_has_input_size(variant):
    model = create_model(f"fcn{variant}_vgg16", num_classes=2, **VGG_TINY).eval()
    with torch.no_grad():
        for H, W in [(1, 1), (3, 5), (31, 33), (37, 53), (63, 65), (97, 129), (150, 131)]:
            assert model(torch.randn(1, 3, H, W))["logits"].shape == (1, 2, H, W)


# ---- zero-initialised skips: FCN-8s starts as FCN-32s ----------------------------------------------------------

class RampBackbone(nn.Module):
    """Runs a real backbone for the feature shapes, then replaces the top feature by its input coordinates
    (channel 0: x, channel 1: y) and every other feature by noise."""

    def __init__(self, inner: nn.Module, top: str):
        super().__init__()
        self.inner, self.top = inner, top
        self.out_channels, self.out_strides, self.out_origins = inner.out_channels, inner.out_strides, inner.out_origins

    def forward(self, x):
        feats = {}
        for k, f in self.inner(x).items():
            if k == self.top:
                a, s = self.out_origins[k], self.out_strides[k]
                ramp = torch.zeros_like(f)
                ramp[:, 0] = a + s * torch.arange(f.shape[-1], dtype=f.dtype)
                ramp[:, 1] = (a + s * torch.arange(f.shape[-2], dtype=f.dtype))[:, None]
                feats[k] = ramp
            else:
                feats[k] = torch.randn_like(f) if f.is_floating_point() else f
        return feats


def ramp_logits(name: str, size, **kwargs) -> torch.Tensor:
    """(2, H, W) logits of a freshly built FCN whose score_fr passes the coordinate channels through."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=2, **kwargs).eval()
    model.backbone = RampBackbone(model.backbone, model.skips[-1])
    with torch.no_grad():
        model.score_fr.weight.zero_()
        model.score_fr.bias.zero_()
        model.score_fr.weight[0, 0] = model.score_fr.weight[1, 1] = 1.0
        return model(torch.zeros(1, 3, *size))["logits"][0]


def test_skip_scores_start_at_zero():
    model = create_model("fcn8s_vgg16", num_classes=3, **VGG_TINY)
    assert set(model.score_pool) == {"pool4c", "pool3c"}
    for score in model.score_pool.values():
        assert torch.count_nonzero(score.weight) == 0 and torch.count_nonzero(score.bias) == 0


@pytest.mark.parametrize("size", [(160, 192), (129, 97)])
def test_vgg_fcn8s_starts_as_fcn32s_and_is_aligned(size):
    """With zero skip scores, FCN-16s/8s give FCN-32s's output (whatever the skip features hold); with a score
    map equal to its own input coordinates every net must return the pixel coordinates (bilinear upsampling is
    exact on linear maps), which checks every crop offset to the pixel. The first ~25 px lie left of the first
    fc7 sample (origin 12.5) where the transposed convolutions fade out, hence the margins."""
    H, W = size
    y, x = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    inner = (slice(None), slice(32, H - 16), slice(32, W - 16))
    expected = torch.stack([x, y])[inner]
    outs = {v: ramp_logits(f"fcn{v}_vgg16", size, **VGG_TINY)[inner] for v in ("32s", "16s", "8s")}
    for v, out in outs.items():
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-3, msg=f"FCN-{v}")
    torch.testing.assert_close(outs["8s"], outs["32s"], rtol=0, atol=1e-3)


def test_resnet_fcn8s_starts_as_fcn32s_and_is_aligned():
    H, W = 160, 192
    inner = (slice(None), slice(32, H - 48), slice(32, W - 48))
    y, x = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    expected = torch.stack([x, y])[inner]
    for v in ("32s", "8s"):
        torch.testing.assert_close(ramp_logits(f"fcn{v}_resnet18", (H, W))[inner], expected, rtol=0, atol=0.6)


# ---- BilinearUpsample --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("factor", [2, 4, 8, 32])
def test_bilinear_upsample_constant_and_matches_interpolate(factor):
    f, n = factor, 5
    up = BilinearUpsample(3, f)
    with torch.no_grad():
        const = up(torch.full((1, 3, n, n + 1), 2.5))  # (1, 3, (n + 1) f, (n + 2) f)
        assert const.shape[-2:] == ((n + 1) * f, (n + 2) * f)
        # every output in [f, n f) gets two taps whose weights sum to one
        inner = const[..., f:n * f, f:(n + 1) * f]
        torch.testing.assert_close(inner, torch.full_like(inner, 2.5))
        assert const[..., 0, 0].abs().max() < 2.5  # the border fades out (Caffe behaviour)

        x = torch.randn(2, 3, n, n + 1, dtype=torch.float64)
        up = up.double()
        # input j sits at output f j + f - 1/2; F.interpolate(align_corners=False) puts it at f j + (f - 1)/2,
        # so cropping f/2 aligns the two; compare where F.interpolate does not clamp at the border
        ours = crop_to(up(x), (n * f, (n + 1) * f), f // 2)
        ref = F.interpolate(x, scale_factor=f, mode="bilinear", align_corners=False)
        lo, hi_h, hi_w = f // 2, n * f - f // 2, (n + 1) * f - f // 2
        torch.testing.assert_close(ours[..., lo:hi_h, lo:hi_w], ref[..., lo:hi_h, lo:hi_w])
