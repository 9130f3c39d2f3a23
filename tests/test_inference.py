import torch
from torch import nn

from attnseg.engine.inference import InferenceConfig, infer, slide_logits
from attnseg.models.base import SegmentationModel


class Pointwise(SegmentationModel):
    """1x1 conv: translation- and flip-equivariant, so every inference mode must agree with 'whole'."""

    def __init__(self, k=4):
        super().__init__()
        self.num_classes = k
        self.conv = nn.Conv2d(3, k, 1)

    def forward(self, x, return_attention=False):
        return self.output(self.conv(x), return_attention=return_attention)


class Context(SegmentationModel):
    """3x3 conv: the output near a window border depends on the window, so slide != whole there."""

    def __init__(self, k=3):
        super().__init__()
        self.num_classes = k
        self.conv = nn.Conv2d(3, k, 3, padding=1)

    def forward(self, x, return_attention=False):
        return self.output(self.conv(x))


def test_whole_is_the_model():
    torch.manual_seed(0)
    m = Pointwise().eval()
    x = torch.randn(2, 3, 17, 23)
    assert torch.allclose(infer(m, x, InferenceConfig(), 4), m(x)["logits"])


def test_slide_equals_whole_for_pointwise_model_any_window():
    torch.manual_seed(0)
    m = Pointwise().eval()
    x = torch.randn(2, 3, 37, 51)
    ref = m(x)["logits"]
    for crop, stride in [((16, 16), (8, 8)), ((20, 30), (7, 11)), ((64, 64), (10, 10)), ((37, 51), (1, 1))]:
        out = infer(m, x, InferenceConfig(mode="slide", crop=crop, stride=stride), 4)
        assert out.shape == ref.shape
        assert torch.allclose(out, ref, atol=1e-6), (crop, stride)


def test_slide_averages_overlaps():
    torch.manual_seed(0)
    m = Context().eval()
    x = torch.randn(1, 3, 10, 10)
    out = slide_logits(m, x, (6, 10), (4, 10), 3, torch.autocast("cpu", enabled=False))
    # windows rows 0-5 and 4-9: rows 4, 5 are the mean of two windows' outputs
    w1 = m(x[..., 0:6, :])["logits"]
    w2 = m(x[..., 4:10, :])["logits"]
    assert torch.allclose(out[..., :4, :], w1[..., :4, :], atol=1e-6)
    assert torch.allclose(out[..., 4:6, :], (w1[..., 4:6, :] + w2[..., 0:2, :]) / 2, atol=1e-6)
    assert torch.allclose(out[..., 6:, :], w2[..., 2:, :], atol=1e-6)


def test_flip_tta_of_equivariant_model_is_its_softmax():
    torch.manual_seed(0)
    m = Pointwise().eval()
    x = torch.randn(1, 3, 15, 21)
    out = infer(m, x, InferenceConfig(flip=True), 4)
    assert torch.allclose(out, m(x)["logits"].softmax(1), atol=1e-6)


def test_multiscale_returns_input_resolution_probabilities():
    torch.manual_seed(0)
    m = Context().eval()
    x = torch.randn(1, 3, 31, 45)
    out = infer(m, x, InferenceConfig(scales=(0.5, 1.0, 1.5), flip=True), 3)
    assert out.shape == (1, 3, 31, 45)
    assert torch.allclose(out.sum(1), torch.ones(1, 31, 45), atol=1e-5)
    # a constant image gives the same answer at every scale: the average equals the single-scale softmax
    c = torch.full((1, 3, 31, 45), 0.3)
    ms = infer(m, c, InferenceConfig(scales=(0.5, 1.0)), 3)
    single = m(c)["logits"].softmax(1)
    assert torch.allclose(ms[..., 4:-4, 4:-4], single[..., 4:-4, 4:-4], atol=1e-5)


def test_test_scale_resizes_back():
    m = Pointwise().eval()
    x = torch.randn(1, 3, 20, 30)
    out = infer(m, x, InferenceConfig(test_scale=0.5), 4)
    assert out.shape[-2:] == (20, 30)
