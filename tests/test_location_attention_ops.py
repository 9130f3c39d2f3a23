"""Location-based attention operators: DRAW / Ren & Zemel Gaussian attention (``attnseg.nn.gaussian_attention``), the
spatial transformer (``attnseg.nn.spatial_transformer``) and RAM's glimpse sensor (``attnseg.nn.glimpse_sensor``).

Every reference is independent of the code under test: filter banks built by Python loops from the papers' formulas
(DRAW's 1-based means, scipy's normal pdf), numpy einsums, hand-sliced crops and block means, ``F.interpolate``,
zero-padded numpy cuts, and hand-computed parameter values. Read / write adjointness, gradchecks in float64, batch
independence, ONNX export (onnxruntime), bad inputs and bf16 autocast.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import norm
from torch import nn

from attnseg.nn.gaussian_attention import (
    GaussianAttention,
    GlimpseParams,
    attention_banks,
    draw_attention_params,
    filterbank_means,
    filterbank_read,
    filterbank_write,
    gaussian_filterbank,
    grid_points,
    ren_zemel_box_params,
)
from attnseg.nn.glimpse_sensor import GlimpseSensor, glimpse_boxes, glimpse_sensor
from attnseg.nn.spatial_transformer import (
    SpatialTransformer,
    attention_theta,
    box_theta,
    identity_theta,
    sampling_grid,
    transform,
)

B, C, H, W, N = 2, 2, 7, 9, 3
DRAW_RAW = torch.tensor([[0.1, -0.2, 0.3, -0.5, 0.1], [-0.3, 0.25, -0.4, -0.2, -0.2]], dtype=torch.float64)
RZ_RAW = torch.tensor([[0.1, -0.1, math.log(0.5), math.log(0.4), 0.2, 0.3, 0.1],
                       [-0.2, 0.3, math.log(0.6), math.log(0.7), -0.3, 0.1, -0.1]], dtype=torch.float64)


def rng(seed=0):
    return np.random.default_rng(seed)


def t64(a):
    return torch.as_tensor(np.asarray(a, dtype=np.float64))


# -- numpy references for the Gaussian attention ---------------------------------------------------------------------
def ref_means(g, d, n, convention):
    """Loops over the paper's 1-based index i (DRAW Eq. 19-20) or the 0-based k of Ren & Zemel's code."""
    out = np.zeros((len(g), n))
    for b in range(len(g)):
        for i in range(1, n + 1):
            if convention == "draw":
                out[b, i - 1] = g[b] + (i - n / 2 - 0.5) * d[b]
            else:
                k = i - 1
                out[b, k] = g[b] + (d[b] + 1) / n * (k - (n - 1) / 2)
    return out


def ref_bank(mu, s2, size, normalise):
    out = np.zeros((*mu.shape, size))
    for b in range(mu.shape[0]):
        for k in range(mu.shape[1]):
            if normalise == "pdf":
                out[b, k] = norm.pdf(np.arange(size), loc=mu[b, k], scale=math.sqrt(s2[b]))
                continue
            row = [math.exp(-((a - mu[b, k]) ** 2) / (2 * s2[b])) for a in range(size)]
            z = sum(row)
            out[b, k] = [v / z for v in row]
    return out


def ref_draw_banks(raw, h, w, n):
    """DRAW eqs 21-26 by hand (1-based g, then shifted to 0-based pixel indices)."""
    raw = np.asarray(raw, dtype=np.float64)
    gx = (w + 1) / 2 * (raw[:, 0] + 1) - 1
    gy = (h + 1) / 2 * (raw[:, 1] + 1) - 1
    s2, d, gamma = np.exp(raw[:, 2]), (max(h, w) - 1) / (n - 1) * np.exp(raw[:, 3]), np.exp(raw[:, 4])
    Fy = ref_bank(ref_means(gy, d, n, "draw"), s2, h, "row")
    Fx = ref_bank(ref_means(gx, d, n, "draw"), s2, w, "row")
    return Fy, Fx, gamma


def ref_rz_banks(raw, h, w, k, dynamic_var=False, normalise="pdf"):
    raw = np.asarray(raw, dtype=np.float64)
    cy, cx = (raw[:, 0] + 1) * h / 2, (raw[:, 1] + 1) * w / 2
    dy, dx = np.exp(raw[:, 2]) * h, np.exp(raw[:, 3]) * w
    s2y, s2x = (np.exp(raw[:, 4]), np.exp(raw[:, 5])) if dynamic_var else (dy / k, dx / k)
    Fy = ref_bank(ref_means(cy, dy, k, "ren_zemel"), s2y, h, normalise)
    Fx = ref_bank(ref_means(cx, dx, k, "ren_zemel"), s2x, w, normalise)
    return Fy, Fx, np.exp(raw[:, 6])


def ref_read(x, Fy, Fx, gamma):
    return gamma[:, None, None, None] * np.einsum("bnh,bchw,bmw->bcnm", Fy, x, Fx)


def ref_write(p, Fy, Fx, gamma):
    return np.einsum("bnh,bcnm,bmw->bchw", Fy, p, Fx) / gamma[:, None, None, None]


# -- Gaussian attention: filter banks ----------------------------------------------------------------------------------
@pytest.mark.parametrize("convention", ["draw", "ren_zemel"])
@pytest.mark.parametrize("normalise", ["row", "pdf"])
def test_filterbank_equals_loops_of_the_formulas(convention, normalise):
    r = rng(1)
    g, d, s2 = r.uniform(2, 6, B), r.uniform(0.5, 2, B), r.uniform(0.4, 3, B)
    mu = filterbank_means(t64(g), t64(d), 4, convention)
    np.testing.assert_allclose(mu.numpy(), ref_means(g, d, 4, convention), rtol=1e-12, atol=1e-12)
    f = gaussian_filterbank(mu, t64(s2), 11, normalise)
    assert f.shape == (B, 4, 11) and f.dtype == torch.float64
    np.testing.assert_allclose(f.numpy(), ref_bank(ref_means(g, d, 4, convention), s2, 11, normalise),
                               rtol=1e-10, atol=1e-14)
    if normalise == "row":
        np.testing.assert_allclose(f.sum(-1).numpy(), 1.0, rtol=1e-12)
    else:                                        # the normal density, not normalised over the pixels
        mu_np = mu.numpy()
        np.testing.assert_allclose(f[1, 2].numpy(), norm.pdf(np.arange(11), mu_np[1, 2], math.sqrt(s2[1])),
                                   rtol=1e-10)
        assert not np.allclose(f.sum(-1).numpy(), 1.0)


def test_means_of_the_two_conventions_differ_as_documented():
    g, d = torch.tensor([4.0]), torch.tensor([3.0])
    torch.testing.assert_close(filterbank_means(g, d, 3, "draw"), torch.tensor([[1.0, 4.0, 7.0]]))
    torch.testing.assert_close(filterbank_means(g, d, 4, "ren_zemel"), torch.tensor([[2.5, 3.5, 4.5, 5.5]]))
    torch.testing.assert_close(filterbank_means(g, d, 1, "draw"), torch.tensor([[4.0]]))


def test_row_normalisation_floors_an_empty_row_at_eps():
    # a mean far outside the image: the row underflows to 0 and is divided by eps, not by 0 (no NaN)
    f = gaussian_filterbank(torch.tensor([[2.0, 1e4]]), torch.tensor([0.5]), 6, "row")
    assert torch.isfinite(f).all() and f[0, 1].abs().max() == 0
    torch.testing.assert_close(f[0, 0].sum(), torch.tensor(1.0))


# -- Gaussian attention: parametrisations ------------------------------------------------------------------------------
def test_draw_params_centre_corners_and_span():
    h, w, n = 7, 12, 4
    raw = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0], [-1.0, -1.0, math.log(2.0), 0.0, math.log(3.0)],
                        [1.0, 1.0, 0.0, math.log(0.5), 0.0]])
    p = draw_attention_params(raw, h, w, n)
    # g̃ = 0: the image centre in 0-based pixel indices
    assert (p.centre_y[0].item(), p.centre_x[0].item()) == pytest.approx(((h - 1) / 2, (w - 1) / 2))
    # g̃ = -1 / +1: the paper's 1-based 0 and A + 1 (Eq. 22-23), i.e. -1 and A here
    assert (p.centre_y[1].item(), p.centre_x[1].item()) == pytest.approx((-1.0, -1.0))
    assert (p.centre_y[2].item(), p.centre_x[2].item()) == pytest.approx((h, w))
    # δ̃ = 1: the N means span max(A, B) − 1 (Eq. 24); δ̃ = 1/2 half of it
    mu = grid_points(p, n)                                      # (B, N, N, 2)
    assert mu[0, -1, 0, 0] - mu[0, 0, 0, 0] == pytest.approx(max(h, w) - 1)
    assert mu[0, 0, -1, 1] - mu[0, 0, 0, 1] == pytest.approx(max(h, w) - 1)
    assert mu[2, 0, -1, 1] - mu[2, 0, 0, 1] == pytest.approx((max(h, w) - 1) / 2)
    assert p.delta_y[0].item() == pytest.approx((max(h, w) - 1) / (n - 1))
    assert p.sigma2_x[1].item() == pytest.approx(2.0) and p.sigma2_y[1].item() == pytest.approx(2.0)
    assert p.gamma[1].item() == pytest.approx(3.0) and p.gamma[0].item() == pytest.approx(1.0)
    # N = 1: δ = (max(A, B) − 1) δ̃ (documented), the single mean at the centre
    p1 = draw_attention_params(raw, h, w, 1)
    assert p1.delta_x[0].item() == pytest.approx(max(h, w) - 1)
    assert grid_points(p1, 1)[0, 0, 0].tolist() == pytest.approx([(h - 1) / 2, (w - 1) / 2])


def test_ren_zemel_params_by_hand():
    h, w, k = 10, 16, 4
    raw = torch.tensor([[0.5, -0.25, math.log(0.5), math.log(0.25), math.log(2.0), math.log(3.0), math.log(0.5)]])
    p = ren_zemel_box_params(raw, h, w, k)
    assert p.centre_y.item() == pytest.approx(1.5 * 10 / 2)
    assert p.centre_x.item() == pytest.approx(0.75 * 16 / 2)
    assert (p.delta_y.item(), p.delta_x.item()) == pytest.approx((5.0, 4.0))
    assert (p.sigma2_y.item(), p.sigma2_x.item()) == pytest.approx((5.0 / k, 4.0 / k))     # σ² = δ/K
    assert p.gamma.item() == pytest.approx(0.5)
    pd = ren_zemel_box_params(raw, h, w, k, dynamic_var=True)
    assert (pd.sigma2_y.item(), pd.sigma2_x.item()) == pytest.approx((2.0, 3.0))
    # the means are (δ + 1)/K apart around the centre
    mu = grid_points(p, k, "ren_zemel")
    assert mu[0, 1, 0, 0] - mu[0, 0, 0, 0] == pytest.approx(6.0 / k)
    assert mu[0, 0, :, 1].mean().item() == pytest.approx(6.0)


# -- Gaussian attention: read / write ----------------------------------------------------------------------------------
def test_read_and_write_equal_numpy_einsums():
    r = rng(2)
    x, p = r.standard_normal((B, C, H, W)), r.standard_normal((B, C, N, 5))
    Fy, Fx5, Fx3 = r.random((B, N, H)), r.random((B, 5, W)), r.random((B, N, W))
    gamma = r.uniform(0.5, 2, B)
    out = filterbank_read(t64(x), t64(Fy), t64(Fx5), t64(gamma))
    assert out.shape == (B, C, N, 5)
    np.testing.assert_allclose(out.numpy(), ref_read(x, Fy, Fx5, gamma), rtol=1e-12)
    np.testing.assert_allclose(filterbank_read(t64(x), t64(Fy), t64(Fx3)).numpy(),
                               ref_read(x, Fy, Fx3, np.ones(B)), rtol=1e-12)
    back = filterbank_write(t64(p), t64(Fy), t64(Fx5), t64(gamma))
    assert back.shape == (B, C, H, W)
    np.testing.assert_allclose(back.numpy(), ref_write(p, Fy, Fx5, gamma), rtol=1e-12)


@pytest.mark.parametrize("parametrisation, normalise, dynamic_var",
                         [("draw", None, False), ("ren_zemel", None, False), ("ren_zemel", "row", True),
                          ("draw", "pdf", False)])
def test_module_read_write_equal_the_papers_formulas(parametrisation, normalise, dynamic_var):
    r = rng(3)
    x, patch = r.standard_normal((B, C, H, W)), r.standard_normal((B, C, N, N))
    att = GaussianAttention(N, parametrisation, normalise, dynamic_var)
    raw = DRAW_RAW if parametrisation == "draw" else RZ_RAW
    if parametrisation == "draw":
        Fy, Fx, gamma = ref_draw_banks(raw.numpy(), H, W, N)
        if normalise == "pdf":                    # the same means, the normal density instead of row sums
            rw = raw.numpy()
            s2, d = np.exp(rw[:, 2]), (max(H, W) - 1) / (N - 1) * np.exp(rw[:, 3])
            Fy = ref_bank(ref_means((H + 1) / 2 * (rw[:, 1] + 1) - 1, d, N, "draw"), s2, H, "pdf")
            Fx = ref_bank(ref_means((W + 1) / 2 * (rw[:, 0] + 1) - 1, d, N, "draw"), s2, W, "pdf")
    else:
        Fy, Fx, gamma = ref_rz_banks(raw.numpy(), H, W, N, dynamic_var, normalise or "pdf")
    out, params = att.read(t64(x), raw)
    assert isinstance(params, GlimpseParams) and out.shape == (B, C, N, N) and att.raw_size == raw.shape[1]
    np.testing.assert_allclose(out.numpy(), ref_read(x, Fy, Fx, gamma), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(att(t64(x), raw), out)
    np.testing.assert_allclose(att.write(t64(patch), raw, H, W).numpy(), ref_write(patch, Fy, Fx, gamma),
                               rtol=1e-9, atol=1e-12)


def test_read_write_adjoint_in_float64():
    r = rng(4)
    x, p = t64(r.standard_normal((B, C, H, W))), t64(r.standard_normal((B, C, N, 4)))
    Fy, Fx, gamma = t64(r.random((B, N, H))), t64(r.random((B, 4, W))), t64([0.5, 3.0])
    lhs = (filterbank_read(x, Fy, Fx) * p).sum()
    rhs = (x * filterbank_write(p, Fy, Fx)).sum()
    assert lhs.item() == pytest.approx(rhs.item(), rel=1e-12)
    # with γ: per image, <read X, P> = γ² <X, write P>
    lhs_b = (filterbank_read(x, Fy, Fx, gamma) * p).sum((1, 2, 3))
    rhs_b = (x * filterbank_write(p, Fy, Fx, gamma)).sum((1, 2, 3))
    torch.testing.assert_close(lhs_b, gamma ** 2 * rhs_b, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(lhs_b, rhs_b)
    # through the module (γ = exp(log γ) of each row)
    att = GaussianAttention(N)
    xm, pm = t64(r.standard_normal((B, C, H, W))), t64(r.standard_normal((B, C, N, N)))
    lhs_m = (att(xm, DRAW_RAW) * pm).sum((1, 2, 3))
    rhs_m = (xm * att.write(pm, DRAW_RAW, H, W)).sum((1, 2, 3))
    torch.testing.assert_close(lhs_m, torch.exp(DRAW_RAW[:, 4]) ** 2 * rhs_m, rtol=1e-12, atol=1e-12)


def test_full_image_grid_with_small_sigma_reads_the_image_back():
    n = 6
    x = torch.randn(B, C, n, n, dtype=torch.float64)
    raw = torch.tensor([[0.0, 0.0, -6.0, 0.0, 0.0]] * B, dtype=torch.float64)   # centre, δ = 1, σ² = e⁻⁶, γ = 1
    att = GaussianAttention(n)
    torch.testing.assert_close(att(x, raw), x, rtol=0, atol=1e-12)
    torch.testing.assert_close(att.write(x, raw, n, n), x, rtol=0, atol=1e-12)
    # non-square: the banks of each axis at its own size, one grid per axis
    h, w = 5, 8
    xs = torch.randn(B, C, h, w, dtype=torch.float64)
    one, small = torch.ones(B, dtype=torch.float64), torch.full((B,), 1e-3, dtype=torch.float64)
    p = GlimpseParams(one * (h - 1) / 2, one * (w - 1) / 2, one, one, small, small, one)
    Fy, _ = attention_banks(p, h, w, h)
    _, Fx = attention_banks(p, h, w, w)
    assert Fy.shape == (B, h, h) and Fx.shape == (B, w, w)
    torch.testing.assert_close(Fy, torch.eye(h, dtype=torch.float64).expand(B, h, h), rtol=0, atol=1e-12)
    torch.testing.assert_close(filterbank_read(xs, Fy, Fx), xs, rtol=0, atol=1e-12)


def test_grid_points_are_the_outer_product_of_the_means():
    p = draw_attention_params(DRAW_RAW, H, W, N)
    pts = grid_points(p, N)
    Fy, Fx, _ = ref_draw_banks(DRAW_RAW.numpy(), H, W, N)
    raw = DRAW_RAW.numpy()
    d = (max(H, W) - 1) / (N - 1) * np.exp(raw[:, 3])
    my = ref_means((H + 1) / 2 * (raw[:, 1] + 1) - 1, d, N, "draw")
    mx = ref_means((W + 1) / 2 * (raw[:, 0] + 1) - 1, d, N, "draw")
    assert pts.shape == (B, N, N, 2)
    for b in range(B):
        for i in range(N):
            for j in range(N):
                assert pts[b, i, j].tolist() == pytest.approx([my[b, i], mx[b, j]], abs=1e-12)


@pytest.mark.parametrize("parametrisation, dynamic_var", [("draw", False), ("ren_zemel", False), ("ren_zemel", True)])
def test_gradcheck_read_and_write(parametrisation, dynamic_var):
    torch.manual_seed(0)
    att = GaussianAttention(N, parametrisation, dynamic_var=dynamic_var)
    raw = (DRAW_RAW if parametrisation == "draw" else RZ_RAW).clone().requires_grad_(True)
    x = torch.randn(B, C, H, W, dtype=torch.float64, requires_grad=True)
    p = torch.randn(B, C, N, N, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x_, r_: att(x_, r_), (x, raw))
    assert torch.autograd.gradcheck(lambda p_, r_: att.write(p_, r_, H, W), (p, raw))


@pytest.mark.parametrize("parametrisation", ["draw", "ren_zemel"])
def test_batch_independence(parametrisation):
    torch.manual_seed(1)
    att = GaussianAttention(N, parametrisation)
    raw = (DRAW_RAW if parametrisation == "draw" else RZ_RAW).float()
    x = torch.randn(B, C, H, W)
    out = att(x, raw)
    x2, raw2 = x.clone(), raw.clone()
    x2[1] = torch.randn(C, H, W)
    raw2[1, :2] += 0.3
    out2 = att(x2, raw2)
    torch.testing.assert_close(out2[0], out[0], rtol=0, atol=1e-6)
    assert (out2[1] - out[1]).abs().max() > 1e-2
    p = torch.randn(B, C, N, N)
    w1, w2 = att.write(p, raw, H, W), att.write(p, raw2, H, W)
    torch.testing.assert_close(w2[0], w1[0], rtol=0, atol=1e-6)
    assert (w2[1] - w1[1]).abs().max() > 1e-2


def test_gaussian_attention_bad_inputs():
    x = torch.randn(B, C, H, W)
    with pytest.raises(ValueError, match=r"raw parameters of shape \(B, 5\).*needs 5 outputs"):
        GaussianAttention(N)(x, torch.zeros(B, 7))
    with pytest.raises(ValueError, match=r"\(B, 7\)"):
        GaussianAttention(N, "ren_zemel")(x, torch.zeros(B, 5))
    with pytest.raises(ValueError, match=r"takes \(B, C, H, W\)"):
        GaussianAttention(N)(torch.randn(C, H, W), torch.zeros(B, 5))
    with pytest.raises(ValueError, match="rows for a batch of"):
        GaussianAttention(N)(x, torch.zeros(3, 5))
    with pytest.raises(ValueError, match="unknown normalise option 'sum'.*'row'.*'pdf'"):
        GaussianAttention(N, normalise="sum")
    with pytest.raises(ValueError, match="unknown normalise option"):
        gaussian_filterbank(torch.zeros(B, N), torch.ones(B), W, "l1")
    with pytest.raises(ValueError, match=r"N \(the number of filters per axis\) must be an int >= 1, not 0"):
        GaussianAttention(0)
    with pytest.raises(ValueError, match="must be an int >= 1"):
        draw_attention_params(torch.zeros(B, 5), H, W, 0)
    with pytest.raises(ValueError, match=r"K \(the number"):
        ren_zemel_box_params(torch.zeros(B, 7), H, W, 0)
    with pytest.raises(ValueError, match="unknown parametrisation 'stn'"):
        GaussianAttention(N, "stn")
    with pytest.raises(ValueError, match="unknown means convention 'centre'"):
        filterbank_means(torch.zeros(B), torch.ones(B), N, "centre")
    with pytest.raises(ValueError, match=r"mu must be \(B, N\) and sigma2 \(B,\)"):
        gaussian_filterbank(torch.zeros(B, N), torch.ones(B, 1), W)
    with pytest.raises(ValueError, match="do not fit the image of size 7x9; build them with height=7, width=9"):
        filterbank_read(x, torch.zeros(B, N, W), torch.zeros(B, N, H))
    with pytest.raises(ValueError, match=r"takes a patch \(B, C, N, M\)"):
        filterbank_write(torch.zeros(C, N, N), torch.zeros(B, N, H), torch.zeros(B, N, W))
    with pytest.raises(ValueError, match="takes an 3x3 patch"):
        GaussianAttention(N).write(torch.zeros(B, C, 4, 4), torch.zeros(B, 5), H, W)
    with pytest.raises(ValueError, match=r"gamma must be a \(B,\) tensor"):
        filterbank_read(x, torch.zeros(B, N, H), torch.zeros(B, N, W), torch.ones(B, 1))


def test_gaussian_attention_under_bf16_autocast():
    torch.manual_seed(2)
    x = torch.rand(B, C, H, W)
    for parametrisation, raw in (("draw", DRAW_RAW), ("ren_zemel", RZ_RAW)):
        att = GaussianAttention(N, parametrisation)
        ref = att(x, raw.float())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            Fy, Fx, _ = att.banks(raw.to(torch.bfloat16), H, W)
            out = att(x, raw.to(torch.bfloat16))
            back = att.write(ref, raw.float(), H, W)
        assert Fy.dtype == torch.float32 and Fx.dtype == torch.float32       # banks in float32
        assert out.dtype == torch.bfloat16                                   # the matmuls follow autocast
        torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2 * ref.abs().max().item())
        ref_back = att.write(ref, raw.float(), H, W)
        torch.testing.assert_close(back.float(), ref_back, rtol=2e-2, atol=2e-2 * ref_back.abs().max().item())


# -- spatial transformer -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("align_corners", [False, True])
def test_identity_theta_returns_the_input(align_corners):
    x = torch.randn(B, 3, 6, 11)
    theta = identity_theta(B)
    assert theta.shape == (B, 2, 3) and theta.tolist()[1] == [[1, 0, 0], [0, 1, 0]]
    torch.testing.assert_close(transform(x, theta, (6, 11), align_corners=align_corners), x, rtol=0, atol=1e-5)


@pytest.mark.parametrize("align_corners", [False, True])
def test_box_theta_crop_equals_the_hand_sliced_crop(align_corners):
    x = torch.randn(B, 3, 10, 13)
    boxes = torch.tensor([[2.0, 1.0, 7.0, 7.0], [6.0, 3.0, 11.0, 9.0]])           # 5 wide, 6 tall
    out = transform(x, box_theta(boxes, 10, 13, align_corners), (6, 5), align_corners=align_corners)
    expected = torch.stack([x[0, :, 1:7, 2:7], x[1, :, 3:9, 6:11]])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    # and the sampled points are the box's pixel centres
    g = sampling_grid(box_theta(boxes, 10, 13, align_corners), (6, 5), 10, 13, align_corners)
    torch.testing.assert_close(g[1, 0, 0], torch.tensor([6.5, 3.5]))
    torch.testing.assert_close(g[1, -1, -1], torch.tensor([10.5, 8.5]))


def test_box_theta_values_by_hand():
    t = box_theta(torch.tensor([[2.0, 1.0, 7.0, 9.0]]), 10, 20)
    torch.testing.assert_close(t[0], torch.tensor([[5 / 20, 0, 9 / 20 - 1], [0, 8 / 10, 10 / 10 - 1]]))
    t = box_theta(torch.tensor([[2.0, 1.0, 7.0, 9.0]]), 10, 20, align_corners=True)
    torch.testing.assert_close(t[0], torch.tensor([[4 / 19, 0, 8 / 19 - 1], [0, 7 / 9, 9 / 9 - 1]]))


def test_box_theta_downsampling_by_two_averages_2x2_blocks():
    x = torch.randn(B, 3, 12, 14)
    boxes = torch.tensor([[1.0, 2.0, 9.0, 8.0], [4.0, 5.0, 12.0, 11.0]])          # 8 wide, 6 tall
    out = transform(x, box_theta(boxes, 12, 14), (3, 4))
    crops = torch.stack([x[0, :, 2:8, 1:9], x[1, :, 5:11, 4:12]])               # (B, 3, 6, 8)
    expected = crops.reshape(B, 3, 3, 2, 4, 2).mean((3, 5))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def test_box_theta_zoom_matches_bilinear_interpolate_in_the_interior():
    x = torch.randn(B, 3, 12, 14)
    boxes = torch.tensor([[4.0, 3.0, 8.0, 8.0], [5.0, 4.0, 9.0, 9.0]])           # 4 wide, 5 tall
    out = transform(x, box_theta(boxes, 12, 14), (12, 10))
    crops = torch.stack([x[0, :, 3:8, 4:8], x[1, :, 4:9, 5:9]])                 # (B, 3, 5, 4)
    ref = F.interpolate(crops, size=(12, 10), mode="bilinear", align_corners=False)
    # interior: the source point lies between the crop's first and last pixel centres (interpolate clamps beyond)
    sy = (np.arange(12) + 0.5) * 5 / 12 - 0.5
    sx = (np.arange(10) + 0.5) * 4 / 10 - 0.5
    iy, ix = np.nonzero((sy >= 0) & (sy <= 4))[0], np.nonzero((sx >= 0) & (sx <= 3))[0]
    assert 0 < len(iy) < 12 and 0 < len(ix) < 10
    inner = (slice(None), slice(None), torch.as_tensor(iy)[:, None], torch.as_tensor(ix)[None, :])
    torch.testing.assert_close(out[inner], ref[inner], rtol=0, atol=1e-5)
    assert (out - ref).abs().max() > 1e-3          # at the border grid_sample reads the pixels outside the crop


def test_attention_theta_by_hand():
    t = attention_theta(torch.tensor([[0.5, 0.1, -0.2]]))
    torch.testing.assert_close(t, torch.tensor([[[0.5, 0.0, 0.1], [0.0, 0.5, -0.2]]]))
    t = attention_theta(torch.tensor([[0.5, 0.25, 0.1, -0.2]]))
    torch.testing.assert_close(t, torch.tensor([[[0.5, 0.0, 0.1], [0.0, 0.25, -0.2]]]))


@pytest.mark.parametrize("align_corners", [False, True])
def test_sampling_grid_of_identity_is_the_pixel_centres(align_corners):
    g = sampling_grid(identity_theta(B), (4, 7), 4, 7, align_corners)
    assert g.shape == (B, 4, 7, 2)
    ys, xs = np.meshgrid(np.arange(4) + 0.5, np.arange(7) + 0.5, indexing="ij")
    np.testing.assert_allclose(g[1].numpy(), np.stack([xs, ys], -1), rtol=0, atol=1e-5)


@pytest.mark.parametrize("mode", ["affine", "attention"])
def test_spatial_transformer_starts_at_identity_and_trains(mode):
    torch.manual_seed(3)
    st = SpatialTransformer(3, mode=mode)
    x = torch.randn(B, 3, 16, 20)
    out, theta = st(x, return_theta=True)
    torch.testing.assert_close(theta, identity_theta(B), rtol=0, atol=0)
    torch.testing.assert_close(out, x, rtol=0, atol=1e-5)
    theta.retain_grad()
    (out * torch.randn_like(out)).sum().backward()
    assert theta.grad.abs().sum() > 0 and st.fc.weight.grad.abs().sum() > 0 and st.fc.bias.grad.abs().sum() > 0
    # with a non-zero regression layer the gradient reaches the localisation network too
    st.zero_grad()
    with torch.no_grad():
        st.fc.weight.normal_(0, 0.05)
    out, theta = st(x, return_theta=True)
    (out * torch.randn_like(out)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in st.localisation.parameters())
    if mode == "attention":                      # scale + translation only
        assert theta[:, 0, 1].abs().max() == 0 and theta[:, 1, 0].abs().max() == 0
        torch.testing.assert_close(theta[:, 0, 0], theta[:, 1, 1], rtol=0, atol=0)
        assert (theta[:, 0, 0] - 1).abs().max() > 0
    else:
        assert theta[:, 0, 1].abs().max() > 0


def test_spatial_transformer_out_size_and_custom_localisation():
    loc = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 10, 7))
    st = SpatialTransformer(3, out_size=(4, 5), localisation=loc, loc_features=7)
    x = torch.randn(B, 3, 8, 10)
    out = st(x)
    assert out.shape == (B, 3, 4, 5) and st.fc.in_features == 7
    # the identity at half size is the 2x2 block mean (bilinear between pixels)
    torch.testing.assert_close(out, x.reshape(B, 3, 4, 2, 5, 2).mean((3, 5)), rtol=0, atol=1e-5)


def test_spatial_transformer_bad_inputs():
    x = torch.randn(B, 3, 8, 10)
    with pytest.raises(ValueError, match=r"θ of shape \(B, 2, 3\), got \(2, 3, 3\)"):
        transform(x, torch.zeros(B, 3, 3), (4, 4))
    with pytest.raises(ValueError, match=r"takes an input \(B, C, H, W\)"):
        transform(x[0], identity_theta(B), (4, 4))
    with pytest.raises(ValueError, match="2 matrices for a batch of 3"):
        transform(torch.randn(3, 3, 8, 10), identity_theta(B), (4, 4))
    with pytest.raises(ValueError, match="unknown padding_mode 'wrap'"):
        transform(x, identity_theta(B), (4, 4), padding_mode="wrap")
    with pytest.raises(ValueError, match=r"output size must be a pair \(h, w\)"):
        transform(x, identity_theta(B), (4, 0))
    with pytest.raises(ValueError, match=r"boxes \(B, 4\)"):
        box_theta(torch.zeros(B, 5), 8, 10)
    with pytest.raises(ValueError, match="align_corners=True maps pixel centres"):
        box_theta(torch.zeros(B, 4), 1, 10, align_corners=True)
    with pytest.raises(ValueError, match=r"\(B, 3\) \(s, t_x, t_y\) or \(B, 4\)"):
        attention_theta(torch.zeros(B, 6))
    with pytest.raises(ValueError, match="unknown mode 'projective'"):
        SpatialTransformer(3, mode="projective")
    with pytest.raises(ValueError, match="needs loc_features"):
        SpatialTransformer(3, localisation=nn.Flatten())
    with pytest.raises(ValueError, match=r"takes \(B, 3, H, W\)"):
        SpatialTransformer(3)(torch.randn(B, 1, 8, 10))
    with pytest.raises(ValueError, match=r"must return \(B, 7\) features"):
        SpatialTransformer(3, localisation=nn.Flatten(), loc_features=7)(x)


def test_spatial_transformer_under_bf16_autocast():
    torch.manual_seed(4)
    st = SpatialTransformer(3, out_size=(8, 9))
    with torch.no_grad():
        st.fc.weight.normal_(0, 0.05)
    x = torch.rand(B, 3, 16, 20)
    ref, ref_theta = st(x, return_theta=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, theta = st(x, return_theta=True)
    assert out.dtype == torch.float32 and theta.dtype == torch.float32
    torch.testing.assert_close(theta, ref_theta, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)


# -- glimpse sensor ----------------------------------------------------------------------------------------------------
def test_glimpse_boxes_by_hand():
    loc = torch.tensor([[0.0, 0.0], [-1.0, -1.0], [1.0, 1.0], [0.3, -0.5], [3.0, -7.0]])
    b = glimpse_boxes(loc, 10, 12, 4, 2)
    assert b.shape == (5, 2, 4)
    assert b[0].tolist() == [[4, 3, 8, 7], [2, 1, 10, 9]]            # centre (6, 5)
    assert b[1].tolist() == [[-2, -2, 2, 2], [-4, -4, 4, 4]]         # centre (0, 0)
    assert b[2].tolist() == [[10, 8, 14, 12], [8, 6, 16, 14]]        # centre (12, 10)
    assert b[3].tolist() == [[6, 1, 10, 5], [4, -1, 12, 7]]          # centre (7.8, 2.5): 0.5 rounds up
    assert b[4].tolist() == [[10, -2, 14, 2], [8, -4, 16, 4]]        # clamped to (1, -1)
    assert glimpse_boxes(torch.zeros(1, 2), 10, 12, 3, 2, factor=3)[0].tolist() == [[5, 4, 8, 7], [2, 1, 11, 10]]


def ref_glimpse(x, loc, size, scales, factor):
    """Zero-padded numpy cuts and block means; x (B, C, H, W), loc (B, 2) numpy."""
    b_, c_, h, w = x.shape
    m = size * factor ** (scales - 1) + 2
    pad = np.zeros((b_, c_, h + 2 * m, w + 2 * m))
    pad[:, :, m:m + h, m:m + w] = x
    out = np.zeros((b_, scales, c_, size, size))
    for b in range(b_):
        lx, ly = np.clip(loc[b], -1, 1)
        for i in range(scales):
            s, k = size * factor ** i, factor ** i
            x0 = math.floor((lx + 1) / 2 * w - s / 2 + 0.5)
            y0 = math.floor((ly + 1) / 2 * h - s / 2 + 0.5)
            cut = pad[b, :, y0 + m:y0 + m + s, x0 + m:x0 + m + s]
            out[b, i] = cut.reshape(c_, size, k, size, k).mean((2, 4))
    return out


LOCS = [[0.0, 0.0], [-1.0, -1.0], [1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [0.37, -0.81], [-0.6, 0.25], [1.5, -2.0]]


@pytest.mark.parametrize("scales, factor", [(1, 2), (2, 2), (3, 2), (2, 3)])
def test_glimpse_equals_numpy_cuts(scales, factor):
    r = rng(5)
    x = r.standard_normal((len(LOCS), 2, 11, 14))
    loc = np.array(LOCS, dtype=np.float32)
    out = glimpse_sensor(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(loc), 3, scales, factor)
    assert out.shape == (len(LOCS), scales, 2, 3, 3) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), ref_glimpse(x, loc.astype(np.float64), 3, scales, factor),
                               rtol=1e-5, atol=1e-6)
    sensor = GlimpseSensor(3, scales, factor)
    torch.testing.assert_close(sensor(torch.as_tensor(x), torch.as_tensor(loc)).float(), out, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(sensor.boxes(torch.as_tensor(loc), 11, 14),
                               glimpse_boxes(torch.as_tensor(loc), 11, 14, 3, scales, factor))


def test_glimpse_gradient_is_the_usage_over_block_area():
    r = rng(6)
    size, scales, factor, h, w = 2, 3, 2, 9, 12
    x = torch.tensor(r.standard_normal((3, 2, h, w)), requires_grad=True)
    loc = torch.tensor([[0.1, -0.2], [-1.0, 1.0], [0.9, 0.0]], dtype=torch.float64, requires_grad=True)
    out = glimpse_sensor(x, loc, size, scales, factor)
    g = r.standard_normal(out.shape)
    out.backward(torch.as_tensor(g))
    m = size * factor ** (scales - 1)
    expected = np.zeros((3, 2, h + 2 * m, w + 2 * m))
    for b in range(3):
        lx, ly = loc[b].tolist()
        for i in range(scales):
            s, k = size * factor ** i, factor ** i
            x0 = math.floor((lx + 1) / 2 * w - s / 2 + 0.5)
            y0 = math.floor((ly + 1) / 2 * h - s / 2 + 0.5)
            # every pixel of a k x k block gets the block's upstream gradient / k²
            expected[b, :, y0 + m:y0 + m + s, x0 + m:x0 + m + s] += np.kron(g[b, i], np.ones((k, k))) / k ** 2
    np.testing.assert_allclose(x.grad.numpy(), expected[:, :, m:m + h, m:m + w], rtol=1e-10, atol=1e-12)
    assert loc.grad is None                      # the location is not differentiated (REINFORCE)


def test_glimpse_bad_inputs():
    x = torch.randn(B, C, H, W)
    with pytest.raises(ValueError, match=r"location must be \(B, 2\) \(x, y\)"):
        glimpse_sensor(x, torch.zeros(B, 3), 3, 1)
    with pytest.raises(ValueError, match="3 glimpse locations for a batch of 2"):
        glimpse_sensor(x, torch.zeros(3, 2), 3, 1)
    with pytest.raises(ValueError, match=r"takes an image \(B, C, H, W\)"):
        glimpse_sensor(x[0], torch.zeros(B, 2), 3, 1)
    with pytest.raises(ValueError, match="glimpse size must be an int >= 1, not 0"):
        GlimpseSensor(0)
    with pytest.raises(ValueError, match="glimpse scales must be an int >= 1"):
        glimpse_boxes(torch.zeros(B, 2), H, W, 3, 0)
    with pytest.raises(ValueError, match="glimpse factor must be an int >= 1"):
        GlimpseSensor(3, 2, factor=1.5)


def test_glimpse_under_bf16_autocast():
    x = torch.rand(B, C, 12, 14)
    loc = torch.tensor([[0.2, -0.4], [-0.9, 0.7]])
    ref = glimpse_sensor(x, loc, 3, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = GlimpseSensor(3, 3)(x, loc.to(torch.bfloat16))
        out_bf = glimpse_sensor(x.to(torch.bfloat16), loc, 3, 3)
    assert out.dtype == torch.float32 and out_bf.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=1e-2)
    torch.testing.assert_close(out_bf, ref, rtol=2e-2, atol=1e-2)


# -- ONNX --------------------------------------------------------------------------------------------------------------
class _Read(nn.Module):
    def __init__(self, parametrisation):
        super().__init__()
        self.att = GaussianAttention(N, parametrisation)

    def forward(self, x, raw):
        return self.att(x, raw)


class _Stn(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.st = SpatialTransformer(2, out_size=(6, 5))
        with torch.no_grad():
            self.st.fc.weight.normal_(0, 0.1)

    def forward(self, x):
        return self.st(x)


class _Glimpse(nn.Module):
    def __init__(self):
        super().__init__()
        self.sensor = GlimpseSensor(3, 3)

    def forward(self, x, loc):
        return self.sensor(x, loc)


def _onnx_case(name):
    torch.manual_seed(6)
    x = torch.randn(B, C, H, W) if name != "stn" else torch.randn(B, 2, 16, 18)
    if name == "draw":
        return _Read("draw"), (x, DRAW_RAW.float())
    if name == "ren_zemel":
        return _Read("ren_zemel"), (x, RZ_RAW.float())
    if name == "stn":
        return _Stn(), (x,)
    return _Glimpse(), (torch.randn(B, C, 11, 13), torch.tensor([[0.1, -0.3], [1.0, -1.0]]))


@pytest.mark.parametrize("name", ["draw", "ren_zemel", "stn", "glimpse"])
def test_onnx_export_matches_onnxruntime(name, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    from attnseg.export import DEFAULT_OPSET
    module, inputs = _onnx_case(name)
    module.eval()
    path = tmp_path / f"{name}.onnx"
    names = [f"in{i}" for i in range(len(inputs))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, inputs, str(path), dynamo=True, opset_version=DEFAULT_OPSET, input_names=names,
                          output_names=["out"], verbose=False)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)}
    got = session.run(None, feeds)[0]
    with torch.no_grad():
        ref = module(*inputs).numpy()
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)
