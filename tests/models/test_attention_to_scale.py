import pytest
import torch
import torch.nn.functional as F

from attnseg.losses import segmentation_loss
from attnseg.models import create_model
from attnseg.models.attention_to_scale import AttentionToScale, ScaleAttentionHead, fuse, scale_weights

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


# Where the bases' maps sit on their input, from the networks' layouts (not from the code under test): entry i at
# input pixel origin + stride·i. Zero-padded ResNet: feature i of stride s at s·i, and FCN-8s's odd final kernel
# keeps its stride-8 scores there; DeepLab-LargeFOV: fc7 / fc8 entry i on pixel 8i (test_deeplab_largefov).
FCN_SCORES, FCN_FEATURES, LARGEFOV = (8, 0.0), (32, 0.0), (8, 0.0)


def resized(x, s):
    """The scale-s input: bilinear (antialiased when shrinking), the size rounded to the nearest pixel."""
    if s == 1:
        return x
    H, W = x.shape[-2:]
    return F.interpolate(x, size=(int(H * s + 0.5), int(W * s + 0.5)), mode="bilinear", align_corners=False,
                         antialias=s < 1)


def on_grid(x, in_size, full, grid, size, dst=None):
    """Read map x (grid (stride, origin) of an in_size input, a resize of the full-size image) at the entries of
    grid ``dst`` (default: the same) of the full-size image -> (B, C, *size), with grid_sample (align_corners=True:
    -1 and 1 are the first and last entries; "border" padding: the edge value beyond)."""
    (st, o), (sd, od) = grid, dst or grid
    norm = []
    for axis in (0, 1):
        pos = od + sd * torch.arange(size[axis], dtype=torch.float64)                # on the full-size image
        idx = ((pos + 0.5) * in_size[axis] / full[axis] - 0.5 - o) / st              # index into x
        norm.append(2 * idx / max(x.shape[-2 + axis] - 1, 1) - 1)
    gy, gx = torch.meshgrid(norm[0], norm[1], indexing="ij")
    g = torch.stack([gx, gy], -1)[None].expand(x.shape[0], -1, -1, -1)
    return F.grid_sample(x.double(), g, mode="bilinear", padding_mode="border", align_corners=True)


def make(fusion="attention", scales=(1.0, 0.75, 0.5), **kw):
    torch.manual_seed(0)
    m = create_model("attention_to_scale", 4, fusion=fusion, scales=scales, **kw)
    if m.head is not None:  # leave average pooling: random last layer so the weights differ per pixel
        torch.nn.init.normal_(m.head.conv2.weight, std=0.05)
        torch.nn.init.normal_(m.head.conv2.bias, std=0.5)
    return m.eval()


def reference_scores(m, x):
    """Per-scale scores (float64) on the scale-1 grid of the FCN-8s ResNet base, and the per-scale parts,
    computed outside the wrapper's forward."""
    inputs = [resized(x, s) for s in m.scales]
    parts = [m.base.forward_parts(xs) for xs in inputs]
    size = parts[m.scales.index(1.0)]["scores"].shape[-2:]
    full = x.shape[-2:]
    scores = [on_grid(p["scores"], xs.shape[-2:], full, FCN_SCORES, size) for p, xs in zip(parts, inputs)]
    return scores, parts, inputs


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
        scores, _, _ = reference_scores(m, x)
        expected = m.base.upsample_scores(torch.stack(scores).mean(0).float(), (45, 61))
        out = m(x, return_attention=True)
    torch.testing.assert_close(out["logits"], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["logits"], out["attention"]["scale_logits"].mean(1), atol=1e-5, rtol=1e-5)


def test_max_fusion_is_the_elementwise_max():
    m, x = make("max"), torch.randn(2, 3, 45, 61)
    with torch.no_grad():
        scores, _, _ = reference_scores(m, x)
        grid_max = torch.maximum(torch.maximum(scores[0], scores[1]), scores[2]).float()
        out = m(x, return_attention=True)
    torch.testing.assert_close(out["logits"], m.base.upsample_scores(grid_max, (45, 61)), atol=1e-5, rtol=1e-5)
    w = out["attention"]["scale_weights"]
    assert set(w.unique().tolist()) <= {0.0, 1.0}


def test_attention_fusion_matches_eq1_and_eq2():
    m, x = make("attention"), torch.randn(2, 3, 45, 61)
    with torch.no_grad():
        scores, parts, inputs = reference_scores(m, x)
        fsize = parts[0]["features"].shape[-2:]
        feats = [on_grid(p["features"], xs.shape[-2:], (45, 61), FCN_FEATURES, fsize) for p, xs in zip(parts, inputs)]
        h = m.head(torch.cat(feats, 1).float())
        w = on_grid(torch.softmax(h, 1), (45, 61), (45, 61), FCN_FEATURES, scores[0].shape[-2:], FCN_SCORES)
        g = sum(w[:, s:s + 1] * scores[s] for s in range(3))
        out = m(x, return_attention=True)
    torch.testing.assert_close(out["logits"], m.base.upsample_scores(g.float(), (45, 61)), atol=1e-5, rtol=1e-5)


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


# ---- grid alignment: ramps through the real wrapper on both bases ------------------------------------------------

RAMP_BASES = [("attention_to_scale", {}, FCN_SCORES, FCN_FEATURES, (161, 193)),
              ("attention_to_scale_largefov", {"base_kwargs": {"width": 0.125}}, LARGEFOV, LARGEFOV, (321, 321))]


def position_ramps(grid, shape, in_size, full):
    """(1, 2, h, w): at every entry of a (stride, origin) grid of an in_size input, the (x, y) image position it
    sits on in the full-size image (the scale-s input is the image resized with align_corners=False)."""
    st, o = grid
    h, w = shape
    ys = ((o + st * torch.arange(h) + 0.5) * full[0] / in_size[0] - 0.5).view(h, 1).expand(h, w)
    xs = ((o + st * torch.arange(w) + 0.5) * full[1] / in_size[1] - 0.5).view(1, w).expand(h, w)
    return torch.stack([xs, ys])[None]


@pytest.mark.parametrize("name,kw,sgrid,fgrid,size", RAMP_BASES, ids=["fcn8s_resnet18", "largefov"])
def test_every_scale_lands_on_the_scale_1_positions(name, kw, sgrid, fgrid, size):
    """The base's scores are replaced by the image position each entry sits on (x in class 0, y in class 1) and
    its features by the x ramp, on the real networks' grids. Laid correctly onto the scale-1 grid, every scale
    then holds the same positions: each scale's upsampled scores equal the pixel coordinates, and a head that
    passes the features through as energies gives weights 1/3. A plain align_corners=False resize of the arrays
    is off by up to 1.1 px (scale 0.75) and 3.4 px (scale 0.5) on LargeFOV at 321 px."""
    torch.manual_seed(0)
    m = create_model(name, 2, scales=(1.0, 0.75, 0.5), **kw).eval()
    m.head = torch.nn.Identity()                       # energies = the resampled x-ramp features, one per scale
    H, W = size
    real, seen = m.base.forward_parts, []

    def ramp_parts(images):
        parts = real(images)                           # the real network: its grid sizes at this input
        B, in_size = images.shape[0], images.shape[-2:]
        seen.append((in_size, parts["scores"].shape[-2:], parts["features"].shape[-2:]))
        scores = position_ramps(sgrid, parts["scores"].shape[-2:], in_size, (H, W)).expand(B, -1, -1, -1)
        feats = position_ramps(fgrid, parts["features"].shape[-2:], in_size, (H, W))[:, :1].expand(B, -1, -1, -1)
        return {"scores": scores.contiguous(), "features": feats.contiguous()}

    m.base.forward_parts = ramp_parts
    with torch.no_grad():
        out = m(torch.zeros(1, 3, H, W), return_attention=True)
    assert [s[0] for s in seen] == [(H, W), (int(0.75 * H + 0.5), int(0.75 * W + 0.5)), ((H + 1) // 2, (W + 1) // 2)]
    # where every scale's map covers the image (beyond its last entry a map holds its border value): per axis,
    # the image position of the last entry, the least over the scales
    def last(grid, which):
        st, o = grid
        return [min((o + st * (shapes[which][a] - 1) + 0.5) * (H, W)[a] / shapes[0][a] - 0.5 for shapes in seen)
                for a in (0, 1)]

    y, x = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    (ly, lx), st = last(sgrid, 1), sgrid[0]
    inner = (y >= st) & (x >= st) & (y <= ly - st) & (x <= lx - st)
    assert inner.float().mean() > 0.8
    logits = out["attention"]["scale_logits"][0]       # (S, 2, H, W), each scale upsampled by the base
    for s in range(3):
        torch.testing.assert_close(logits[s, 0][inner], x[inner], atol=2e-3, rtol=0, msg=f"scale {m.scales[s]}, x")
        torch.testing.assert_close(logits[s, 1][inner], y[inner], atol=2e-3, rtol=0, msg=f"scale {m.scales[s]}, y")
    torch.testing.assert_close(out["logits"][0, 0][inner], x[inner], atol=2e-3, rtol=0)
    f = fgrid[0]
    flat = (x >= f) & (x <= last(fgrid, 2)[1] - f)      # the x ramp is the same at every scale there
    w = out["attention"]["scale_weights"][0]            # (S, H, W)
    torch.testing.assert_close(w[:, flat], torch.full_like(w[:, flat], 1 / 3), atol=1e-3, rtol=0)


@pytest.mark.parametrize("model,grid", [("fcn8s_resnet18", FCN_SCORES), ("fcn8s_vgg16", (8, -23.5)),
                                        ("deeplab_largefov_vgg16_w05", LARGEFOV), ("farabet", (4, 1.5)),
                                        ("deconvnet_vgg16_w025", (1, 0.0))])
def test_declared_score_grids_match_the_bases_own_upsampling(model, grid):
    """``score_grid`` is where ``upsample_scores`` puts each score: a score map holding its own index upsamples
    to (pixel − origin) / stride. Expected grids: FCN-8s VGG's pool3c origin −95.5 + 9·8 (Caffe's crop 9);
    Farabet's half-pixel stride-4 grid 4k + 1.5; full-resolution logits (1, 0)."""
    kw = {"width": 0.125} if model == "fcn8s_vgg16" else {}
    base = create_model(model, 2, **kw).eval()
    assert (base.score_grid().stride, base.score_grid().origin) == grid
    H, W = 97, 129
    with torch.no_grad():
        h, w = base.forward_parts(torch.zeros(1, 3, H, W))["scores"].shape[-2:]
        idx = torch.stack(torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                                         indexing="ij"))[None]
        up = base.upsample_scores(idx, (H, W))[0]        # (2, H, W)
    st, o = grid
    y, x = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    m = 24                                               # away from the borders, where FCN's kernels fade out
    torch.testing.assert_close(up[0, m:-m, m:-m], ((y - o) / st)[m:-m, m:-m], atol=1e-3, rtol=0)
    torch.testing.assert_close(up[1, m:-m, m:-m], ((x - o) / st)[m:-m, m:-m], atol=1e-3, rtol=0)


def test_resample_reproduces_interpolate_on_its_two_conventions():
    """Half-pixel grids Grid(s, (s − 1)/2) give F.interpolate(align_corners=False) (upsampling; it clamps at the
    border the same way); grids whose first and last entries sit on the first and last pixels give
    align_corners=True."""
    from attnseg.models.base import Grid, resample
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    got = resample(x, Grid(4, 1.5), (20, 28), Grid(), (20, 28), (20, 28))       # stride-4 half-pixel -> pixels
    torch.testing.assert_close(got, F.interpolate(x, size=(20, 28), mode="bilinear", align_corners=False))
    got = resample(x, Grid(8, 0.0), (33, 49), Grid(), (33, 49), (33, 49))       # corner-aligned stride 8
    torch.testing.assert_close(got, F.interpolate(x, size=(33, 49), mode="bilinear", align_corners=True))
    assert resample(x, Grid(8, 0.0), (33, 49), Grid(8, 0.0), (33, 49), (5, 7)) is x
