import pytest
import torch
import torch.nn.functional as F

from attnseg.losses import segmentation_loss
from attnseg.models import create_model
from attnseg.models.attention_to_scale import AttentionToScale, ScaleAttentionHead, fuse, rescale, scale_weights
from attnseg.models.base import resize_to

from .base import ModelTest


class TestAttentionToScaleFCN(ModelTest):
    model_name = "attention_to_scale"
    input_size = (48, 64)
    batch1_train_size = (128, 160)  # the 0.5 scale must leave layer4 more than one pixel for train-mode BN


class TestMaxToScaleNoSupv(ModelTest):
    model_name = "attention_to_scale"
    kwargs = {"fusion": "max", "extra_supervision": False, "scales": (1.0, 0.5)}
    input_size = (48, 64)
    batch1_train_size = (128, 160)


class TestAttentionToScaleLargeFOV(ModelTest):
    model_name = "attention_to_scale_largefov"
    kwargs = {"base_kwargs": {"width": 0.125}, "head_channels": 32}
    input_size = (41, 49)


def make(fusion="attention", scales=(1.0, 0.75, 0.5), **kw):
    torch.manual_seed(0)
    m = create_model("attention_to_scale", 4, fusion=fusion, scales=scales, **kw)
    if m.head is not None:  # leave average pooling: random last layer so the weights differ per pixel
        torch.nn.init.normal_(m.head.conv2.weight, std=0.05)
        torch.nn.init.normal_(m.head.conv2.bias, std=0.5)
    return m.eval()


def reference_scores(m, x):
    """Per-scale scores on the scale-1 grid, computed outside the wrapper's forward."""
    parts = [m.base.forward_parts(rescale(x, s)) for s in m.scales]
    grid = parts[m.scales.index(1.0)]["scores"].shape[-2:]
    return [resize_to(p["scores"], grid) for p in parts], parts


def test_weights_are_shared_across_scales():
    base = create_model("fcn8s_resnet18", 4)
    n_base = sum(p.numel() for p in base.parameters())
    for scales in [(1.0, 0.5), (1.0, 0.75, 0.5), (1.5, 1.0, 0.75, 0.5)]:
        for fusion in ("max", "avg"):
            m = create_model("attention_to_scale", 4, fusion=fusion, scales=scales)
            assert sum(p.numel() for p in m.parameters()) == n_base
        m = create_model("attention_to_scale", 4, scales=scales, head_channels=16)
        S, C = len(scales), 512
        head = (S * C * 9 * 16 + 16) + (16 * S + S)
        assert sum(p.numel() for p in m.parameters()) == n_base + head
    # one module, run once per scale on the rescaled image
    m = make()
    hits = []
    m.base.backbone.conv1.register_forward_hook(lambda mod, i, o: hits.append(i[0].shape[-2:]))
    with torch.no_grad():
        m(torch.randn(1, 3, 40, 48))
    assert [tuple(h) for h in hits] == [(40, 48), (30, 36), (20, 24)]


def test_avg_fusion_is_the_mean_of_the_scale_scores():
    m, x = make("avg"), torch.randn(2, 3, 45, 61)
    with torch.no_grad():
        scores, _ = reference_scores(m, x)
        expected = m.base.upsample_scores(torch.stack(scores).mean(0), (45, 61))
        out = m(x, return_attention=True)
    torch.testing.assert_close(out["logits"], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["logits"], out["attention"]["scale_logits"].mean(1), atol=1e-5, rtol=1e-5)


def test_max_fusion_is_the_elementwise_max():
    m, x = make("max"), torch.randn(2, 3, 45, 61)
    with torch.no_grad():
        scores, _ = reference_scores(m, x)
        grid_max = torch.maximum(torch.maximum(scores[0], scores[1]), scores[2])
        out = m(x, return_attention=True)
    torch.testing.assert_close(out["logits"], m.base.upsample_scores(grid_max, (45, 61)), atol=1e-5, rtol=1e-5)
    w = out["attention"]["scale_weights"]
    assert set(w.unique().tolist()) <= {0.0, 1.0}


def test_attention_fusion_matches_eq1_and_eq2():
    m, x = make("attention"), torch.randn(2, 3, 45, 61)
    with torch.no_grad():
        scores, parts = reference_scores(m, x)
        feats = [p["features"] for p in parts]
        fgrid = feats[0].shape[-2:]
        h = m.head(torch.cat([resize_to(f, fgrid) for f in feats], 1))
        w = resize_to(torch.softmax(h, 1), scores[0].shape[-2:])
        g = sum(w[:, s:s + 1] * scores[s] for s in range(3))
        out = m(x, return_attention=True)
    torch.testing.assert_close(out["logits"], m.base.upsample_scores(g, (45, 61)), atol=1e-5, rtol=1e-5)


def test_scale_weights_are_a_distribution_per_pixel():
    for fusion in ("attention", "max", "avg"):
        m = make(fusion)
        with torch.no_grad():
            w = m(torch.randn(2, 3, 37, 53), return_attention=True)["attention"]["scale_weights"]
        assert w.shape == (2, 3, 37, 53)
        assert (w >= 0).all()
        torch.testing.assert_close(w.sum(1), torch.ones(2, 37, 53), atol=1e-5, rtol=0)
        if fusion == "attention":  # a non-trivial head gives weights that vary from pixel to pixel
            assert w[:, 0].std() > 1e-3


def test_zero_initialised_head_starts_as_average_pooling():
    torch.manual_seed(0)
    att = create_model("attention_to_scale", 4).eval()
    avg = create_model("attention_to_scale", 4, fusion="avg").eval()
    avg.base.load_state_dict(att.base.state_dict())
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        torch.testing.assert_close(att(x)["logits"], avg(x)["logits"], atol=1e-5, rtol=1e-5)


def test_head_gradcheck_float64():
    torch.manual_seed(0)
    head = ScaleAttentionHead(2 * 3, 2, hidden=4, dropout=0.0).double()
    torch.nn.init.normal_(head.conv2.weight, std=0.5)
    feats = torch.randn(1, 6, 4, 5, dtype=torch.float64, requires_grad=True)
    stack = torch.randn(1, 2, 3, 4, 5, dtype=torch.float64, requires_grad=True)

    def f(feats, stack):
        return fuse(stack, "attention", scale_weights(head(feats)).double())

    assert torch.autograd.gradcheck(f, (feats, stack))


def test_gradient_of_fusion_matches_the_paper():
    """dg/df^s = w^s and dL/dh^s = sum_c w^s (f^s_c - g_c) dL/dg_c (paper, section 3)."""
    torch.manual_seed(0)
    h = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    f = torch.randn(2, 3, 6, 4, 5, dtype=torch.float64, requires_grad=True)
    w = torch.softmax(h, 1)
    g = fuse(f, "attention", w)
    up = torch.randn_like(g)
    (g * up).sum().backward()
    wd, gd = w.detach(), g.detach()
    torch.testing.assert_close(f.grad, wd[:, :, None] * up[:, None])
    torch.testing.assert_close(h.grad, (wd[:, :, None] * (f.detach() - gd[:, None]) * up[:, None]).sum(2))


def test_odd_sizes_at_every_scale():
    m = make("attention", scales=(1.0, 0.75, 0.5, 0.25))
    for size in [(37, 53), (33, 33), (61, 45)]:
        with torch.no_grad():
            out = m(torch.randn(1, 3, *size), return_attention=True)
        assert out["logits"].shape == (1, 4, *size)
        assert out["attention"]["scale_logits"].shape == (1, 4, 4, *size)
        assert torch.isfinite(out["logits"]).all()


def test_extra_supervision_losses_equal_weights():
    torch.manual_seed(0)
    m = create_model("attention_to_scale", 4)
    m.train()
    x, y = torch.randn(2, 3, 40, 48), torch.randint(0, 4, (2, 40, 48))
    out = m(x)
    assert set(out["aux"]) == {"scale_1", "scale_0.75", "scale_0.5"}
    assert out["aux_weights"] == {k: 1.0 for k in out["aux"]}
    total, parts = segmentation_loss(out, y, aux_weight=0.4)
    ref = F.cross_entropy(out["logits"], y) + sum(F.cross_entropy(a, y) for a in out["aux"].values())
    torch.testing.assert_close(total, ref)
    off = create_model("attention_to_scale", 4, extra_supervision=False).train()
    assert off(x)["aux"] == {}
    assert m.eval()(x)["aux"] == {}


def test_bad_options_fail_clearly():
    with pytest.raises(ValueError, match="must include 1.0"):
        create_model("attention_to_scale", 4, scales=(0.75, 0.5))
    with pytest.raises(ValueError, match="fusion"):
        create_model("attention_to_scale", 4, fusion="sum")
    with pytest.raises(ValueError, match="single-scale"):
        create_model("attention_to_scale", 4, base="attention_to_scale")
    assert isinstance(create_model("attention_to_scale", 4, base="deconvnet_vgg16_w025", head_channels=8),
                      AttentionToScale)


def test_bases_without_features_and_wrapped_bases():
    """A base with the default forward_parts (full-resolution logits, no features) feeds its scores to the head;
    a wrapper (recurrent refinement, whose inner net reads 3 + K channels) works as a base too."""
    for base in ("rcnn2_fcn8s_resnet18", "farabet"):
        m = create_model("attention_to_scale", 4, base=base, head_channels=8).eval()
        with torch.no_grad():
            out = m(torch.randn(1, 3, 37, 53), return_attention=True)
        assert out["logits"].shape == (1, 4, 37, 53)
        torch.testing.assert_close(out["attention"]["scale_weights"].sum(1), torch.ones(1, 37, 53))
