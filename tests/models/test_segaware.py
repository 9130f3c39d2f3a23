"""Segmentation-aware networks (Harley et al. 2017): SegAwareNet over registered networks and SegAwareRefiner."""

import pytest
import torch
from torch import nn

from attnseg.losses import segmentation_loss
from attnseg.models import create_model
from attnseg.models.segaware import MaskedConv2d, SegAwareNet, SegAwareRefiner, convertible

from .base import ModelTest

TINY_VGG = {"base_kwargs": {"width": 0.125, "batch_norm": True}, "embedding_width": 0.125, "embedding_dim": 8}
TINY_RES = {"channels": 16, "mid_channels": 16, "aux_mid": 8, "embedding_width": 0.125, "embedding_dim": 8}


class TestSegAwareLargeFOV(ModelTest):
    model_name = "segaware_deeplab_largefov_vgg16"
    kwargs = TINY_VGG


class TestSegAwareDilatedResNetCRF(ModelTest):
    model_name = "segaware_dilated_resnet18_crf"
    kwargs = {**TINY_RES, "crf_kwargs": {"bilateral_window": 5, "bilateral_dilation": 2}}


class TestSegAwareRefiner(ModelTest):
    model_name = "segaware_crf"
    kwargs = {"base": "fcn8s_resnet18", "embedding_width": 0.125, "embedding_dim": 8,
              "crf_kwargs": {"bilateral_window": 5, "bilateral_dilation": 2}}


def tiny_largefov(seed=0, **kw):
    torch.manual_seed(seed)
    return create_model("segaware_deeplab_largefov_vgg16", 4, **{**TINY_VGG, **kw}).eval()


def constant_embedding(net):
    with torch.no_grad():   # e = the projection's bias: the same vector at every pixel
        net.embedding.project.weight.zero_()
        net.embedding.project.bias.uniform_(-1, 1)


def test_every_convolution_of_largefov_is_segaware_and_plain_weights_load():
    net = tiny_largefov()
    convs = [n for n, m in net.base.named_modules() if isinstance(m, nn.Conv2d)]
    masked = [n for n, m in net.base.named_modules() if isinstance(m, MaskedConv2d)]
    # the 13 VGG convolutions and fc6 (3x3, dilation 12); fc7 and fc8 are 1x1
    assert len(masked) == 14 and set(convs) - set(masked) == {"backbone.fc7", "fc8"}
    windows = [m.window for m in net.base.modules() if isinstance(m, MaskedConv2d)]
    assert windows == [(3, 1)] * 10 + [(3, 2)] * 3 + [(3, 12)]           # conv1-4, conv5 (dilation 2), fc6
    torch.manual_seed(0)
    plain = create_model("deeplab_largefov_vgg16", 4, width=0.125, batch_norm=True)
    missing, unexpected = net.base.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(k.endswith(".lam") for k in missing) and len(missing) == 14


@pytest.mark.parametrize("how", ["constant embedding", "lambda zero"])
def test_uninformative_masks_give_the_plain_network(how):
    torch.manual_seed(0)
    plain = create_model("dilated_resnet18_none", 4, channels=16, mid_channels=16, aux_mid=8).eval()
    net = SegAwareNet(create_model("dilated_resnet18_none", 4, channels=16, mid_channels=16, aux_mid=8),
                      embedding_dim=8, embedding_width=0.125).eval()
    net.base.load_state_dict(plain.state_dict(), strict=False)
    if how == "constant embedding":
        constant_embedding(net)
    else:
        for m in net.modules():
            if isinstance(m, MaskedConv2d):
                m.lam.data.zero_()
    x = torch.randn(2, 3, 40, 52)
    with torch.no_grad():
        torch.testing.assert_close(net(x)["logits"], plain(x)["logits"], rtol=1e-4, atol=1e-4)


def test_masks_follow_the_embedding_at_every_resolution():
    net = tiny_largefov()
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        out = net(x, return_attention=True)
    att = out["attention"]
    assert att["embedding"].shape == (1, 8, 48, 64)
    masks = {k: v for k, v in att.items() if k.startswith("mask/")}
    assert len(masks) == 14
    assert masks["mask/backbone.features.0/k3_d1"].shape == (1, 9, 48, 64)      # conv1_1: full resolution
    for name, m in masks.items():
        assert ((m > 0) & (m <= 1)).all(), name
        assert torch.allclose(m[:, 4], torch.ones_like(m[:, 4])), name          # the centre: distance 0


def test_fc6_mask_is_on_the_stride_8_grid():
    net = tiny_largefov()
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        att = net(x, return_attention=True)["attention"]
    assert att["mask/backbone.fc6/k3_d12"].shape == (1, 9, 7, 9)   # 48x64 -> 25x33 -> 13x17 -> 7x9 (3x3/2 pools, pad 1)


def test_batch_independence():
    net = tiny_largefov()
    x = torch.randn(2, 3, 40, 48)
    y = x.clone()
    y[1] = torch.randn(3, 40, 48)
    with torch.no_grad():
        torch.testing.assert_close(net(x)["logits"][0], net(y)["logits"][0])


def test_embedding_loss_trains_the_embedding_head_and_lambdas():
    net = tiny_largefov().train()
    x, y = torch.randn(2, 3, 32, 40), torch.randint(0, 4, (2, 32, 40))
    out = net(x)
    assert out["embedding"].shape == (2, 8, 32, 40)
    loss, parts = segmentation_loss(out, y, embedding_weight=1.0)
    assert "loss_embedding" in parts and parts["loss_embedding"] > 0
    loss.backward()
    assert net.embedding.project.weight.grad.abs().sum() > 0
    assert net.base.backbone.features[0].lam.grad is not None
    off, _ = segmentation_loss(out, y, embedding_weight=0.0)
    torch.testing.assert_close(off + parts["loss_embedding"], loss.detach())


def test_crf_stage_supervises_the_unary_and_refines_it():
    torch.manual_seed(0)
    net = create_model("segaware_dilated_resnet18_crf", 4, **{**TINY_RES, "crf_kwargs": {"bilateral_window": 5}})
    out = net.train()(torch.randn(2, 3, 32, 40))
    assert out["aux"]["unary"].shape == out["logits"].shape and out["aux_weights"]["unary"] == 1.0
    assert not torch.allclose(out["aux"]["unary"], out["logits"])


def test_refiner_freezes_its_base_and_can_train_the_embedding_alone(tmp_path):
    torch.manual_seed(0)
    base = create_model("fcn8s_resnet18", 4)
    path = tmp_path / "base.pt"
    torch.save(base.state_dict(), path)
    ref = create_model("segaware_crf", 4, base="fcn8s_resnet18", base_weights=str(path), embedding_width=0.125,
                       embedding_dim=8, train_crf=False, crf_kwargs={"bilateral_window": 5}).train()
    assert not ref.base.training                                        # frozen BN statistics
    x = torch.randn(2, 3, 32, 40)
    out = ref(x)
    with torch.no_grad():
        torch.testing.assert_close(out["logits"], base.eval()(x)["logits"])   # the embedding alone trains
    loss, _ = segmentation_loss(out, torch.randint(0, 4, (2, 32, 40)))
    loss.backward()
    assert all(p.grad is None for p in ref.base.parameters())
    assert ref.embedding.project.weight.grad is not None
    ref.eval()
    with torch.no_grad():
        assert not torch.allclose(ref(x)["logits"], base(x)["logits"])    # evaluation runs the CRF


def test_refiner_rejects_weights_of_another_model(tmp_path):
    path = tmp_path / "other.pt"
    torch.save(create_model("fcn32s_resnet18", 4).state_dict(), path)
    with pytest.raises(ValueError, match="does not hold the weights"):
        SegAwareRefiner(create_model("deeplab_largefov_vgg16", 4, width=0.125), base_weights=str(path))


def test_convertible():
    assert convertible(nn.Conv2d(3, 4, 3, padding=1))
    assert convertible(nn.Conv2d(3, 4, 3, padding=4, dilation=4))
    assert not convertible(nn.Conv2d(3, 4, 3, stride=2, padding=1))
    assert not convertible(nn.Conv2d(3, 4, 1))
    assert not convertible(nn.Conv2d(4, 4, 3, padding=1, groups=2))
    assert not convertible(nn.Conv2d(3, 4, 3, padding=0))
    assert not convertible(nn.ConvTranspose2d(3, 4, 3, padding=1))


def test_a_network_without_convertible_convolutions_is_rejected():
    class OneByOne(torch.nn.Module):
        num_classes = 2

        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 2, 1)

    with pytest.raises(ValueError, match="no stride-1"):
        SegAwareNet(OneByOne())


def test_refiner_trains_its_crf_end_to_end():
    torch.manual_seed(0)
    ref = create_model("segaware_crf", 4, base="fcn8s_resnet18", embedding_width=0.125, embedding_dim=8,
                       crf_kwargs={"bilateral_window": 5, "bilateral_dilation": 2, "emb_scale": 1.0}).train()
    out = ref(torch.randn(2, 3, 32, 40))
    loss, _ = segmentation_loss(out, torch.randint(0, 4, (2, 32, 40)))
    loss.backward()
    for p in (ref.crf.compat.weight, ref.crf.w_spatial.weight, ref.crf.w_bilateral.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert all(p.grad is None for p in ref.base.parameters())


@pytest.mark.parametrize("remove_bounds", [None, True, False])
def test_normalised_layer_ignores_out_of_image_taps_at_the_border(remove_bounds):
    """Eq. 5 normalised (METHODS.md §1.9.2): the border outputs average the taps inside the image only; the default
    (None) removes the out-of-image taps whenever the layer is normalised. The reference (float64, unfold) is
    y = Σ_{j inside} W_j x_j m_j / Σ_{j inside} m_j + b with m = exp(-|λ| L1(e_i - e_j))."""
    kw = {} if remove_bounds is None else {"remove_bounds": remove_bounds}
    net = tiny_largefov(normalize=True, **kw)
    layer = net.base.backbone.features[0]             # conv1_1: reads the image, mask from the full-res embedding
    assert isinstance(layer, MaskedConv2d) and layer.remove_bounds == (remove_bounds is not False)
    seen = {}
    layer.register_forward_hook(lambda mod, i, o: seen.update(x=i[0], y=o))
    H, W = 11, 13
    with torch.no_grad():
        e = net(torch.randn(1, 3, H, W), return_attention=True)["attention"]["embedding"].double()
    x, y = seen["x"].double(), seen["y"].double()
    unf = (lambda t: torch.nn.functional.unfold(t, 3, padding=1).view(1, t.shape[1], 9, H, W))
    inside = unf(torch.ones(1, 1, H, W, dtype=torch.float64))[:, 0]                 # (1, 9, H, W)
    m = torch.exp(-layer.lam.detach().double().abs() * (e[:, :, None] - unf(e)).abs().sum(1)) * inside
    w = layer.weight.detach().double().flatten(2)                                   # (O, C, 9)
    ref = torch.einsum("ock,bckhw->bohw", w, unf(x) * m[:, None]) / (m.sum(1, keepdim=True) + 1e-6)
    ref = ref + layer.bias.detach().double().view(1, -1, 1, 1)
    border = torch.ones(H, W, dtype=torch.bool)
    border[1:-1, 1:-1] = False
    torch.testing.assert_close(y[..., ~border], ref[..., ~border], atol=1e-5, rtol=1e-5)   # all taps inside
    if remove_bounds is False:                        # the out-of-image taps (mask 1, zero input) are counted
        assert (y[..., border] - ref[..., border]).abs().amax() > 1e-2
    else:
        torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
