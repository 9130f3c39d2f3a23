import torch

from attnseg.models import create_model
from attnseg.models.deeplab_largefov import upsample_aligned

from .base import ModelTest


class TestDeepLabLargeFOVW05(ModelTest):
    model_name = "deeplab_largefov_vgg16_w05"
    input_size = (33, 41)


def test_layout_and_output_stride():
    model = create_model("deeplab_largefov_vgg16_w05", num_classes=4)
    bb = model.backbone
    assert bb.fc6.kernel_size == (3, 3) and bb.fc6.dilation == (12, 12) and bb.fc6.out_channels == 512
    assert bb.fc7.kernel_size == (1, 1)
    assert isinstance(bb.pool5a, torch.nn.AvgPool2d)
    assert bb.out_strides["fc7"] == 8 and bb.out_origins["fc7"] == 0
    pools = [m for m in bb.features if isinstance(m, torch.nn.MaxPool2d)]
    assert [(p.kernel_size, p.stride, p.padding) for p in pools] == [(3, 2, 1)] * 3 + [(3, 1, 1)] * 2
    dil5 = [m.dilation for m in bb.features if isinstance(m, torch.nn.Conv2d)][-3:]
    assert dil5 == [(2, 2)] * 3
    with torch.no_grad():
        assert bb(torch.randn(1, 3, 65, 65))["fc7"].shape[-2:] == (9, 9)  # 65 -> 33 -> 17 -> 9 (Caffe ceil)
        assert bb(torch.randn(1, 3, 64, 64))["fc7"].shape[-2:] == (9, 9)
    assert abs(model.fc8.weight.std().item() - 0.01) < 0.003 and torch.count_nonzero(model.fc8.bias) == 0


def test_upsampling_is_aligned():
    """Score i sits on input pixel 8i: a score map holding its own pixel coordinates upsamples to the ramp."""
    h, w = 5, 7
    score = torch.stack(torch.meshgrid(8.0 * torch.arange(h), 8.0 * torch.arange(w), indexing="ij"))[None]
    for H, W in [(33, 49), (30, 43)]:
        out = upsample_aligned(score, 8, (H, W))
        y, x = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32),
                              indexing="ij")
        torch.testing.assert_close(out[0], torch.stack([y, x]))


def test_parameter_count_matches_paper():
    model = create_model("deeplab_largefov_vgg16", num_classes=21)
    assert abs(sum(p.numel() for p in model.parameters()) / 1e6 - 20.5) < 0.1
