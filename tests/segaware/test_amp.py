"""The custom autograd Functions of attnseg.nn under torch.autocast (CPU bf16; CUDA bf16 / fp16 where present).

Each check runs the op the way a network under autocast does (a low-precision activation beside fp32 parameters),
calls backward inside and outside the autocast block, and compares values and gradients with float64 references
written here (unfold + einsum, explicit softmax), not with the code under test."""

import pytest
import torch
import torch.nn.functional as F

from attnseg.nn.local_attention_mask import LocalAttentionMask, window_distances
from attnseg.nn.segaware_conv import segaware_conv2d
from attnseg.nn.segaware_crf import SegAwareCRF
from attnseg.nn.segaware_filter import segaware_filter

CASES = [("cpu", torch.bfloat16)]
if torch.cuda.is_available():
    CASES += [("cuda", torch.bfloat16), ("cuda", torch.float16)]
TOL = {torch.bfloat16: 3e-2, torch.float16: 5e-3}


def unfold(x, k, d):
    """(B, C, H, W) -> (B, C, k², H, W): every pixel's window, zeros outside the image."""
    B, C, H, W = x.shape
    return F.unfold(x, k, dilation=d, padding=d * (k // 2)).view(B, C, k * k, H, W)


def conv_reference(x, m, w, b, d, normalize):
    k = w.shape[-1]
    y = torch.einsum("ock,bckhw->bohw", w.flatten(2), unfold(x, k, d) * m[:, None])
    if normalize:
        y = y / (m.sum(1, keepdim=True) + 1e-6)
    return y + b.view(1, -1, 1, 1)


def close(a, b, dtype):
    """Relative to the reference's scale: a low-precision result carries about 3 (bf16) or 4 (fp16) digits."""
    tol = TOL[dtype] * b.abs().max().clamp_min(1.0).item()
    torch.testing.assert_close(a.double(), b.double(), atol=tol, rtol=TOL[dtype])


def leaves(device, *specs):
    torch.manual_seed(0)
    return [(torch.randn(*shape, device=device) if kind == "n" else torch.rand(*shape, device=device))
            .to(dtype).requires_grad_() for kind, shape, dtype in specs]


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("backward_inside", [False, True])
def test_segaware_conv_under_autocast(device, dtype, normalize, backward_inside):
    x, m, w, b = leaves(device, ("n", (2, 4, 9, 10), dtype), ("u", (2, 9, 9, 10), torch.float32),
                        ("n", (5, 4, 3, 3), torch.float32), ("n", (5,), torch.float32))
    up = torch.randn(2, 5, 9, 10, device=device, dtype=torch.float64)
    with torch.autocast(device, dtype=dtype):
        y = segaware_conv2d(x, m, w, b, dilation=2, normalize=normalize)
        assert y.dtype == dtype                               # a convolution: autocast's dtype, as F.conv2d
        if backward_inside:
            (y.double() * up).sum().backward()
    if not backward_inside:
        (y.double() * up).sum().backward()
    for t in (x, m, w, b):
        assert t.grad is not None and t.grad.dtype == t.dtype and torch.isfinite(t.grad).all()
    ref = [t.detach().double().requires_grad_() for t in (x, m, w, b)]
    yr = conv_reference(*ref, 2, normalize)
    (yr * up).sum().backward()
    close(y, yr, dtype)
    for t, r in zip((x, m, w, b), ref):
        close(t.grad, r.grad, dtype)


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("distance", ["l1", "l2"])
def test_window_distances_stay_fp32_under_autocast(device, dtype, distance):
    (e,) = leaves(device, ("n", (2, 5, 7, 8), dtype))
    up = torch.randn(2, 9, 7, 8, device=device, dtype=torch.float64)
    with torch.autocast(device, dtype=dtype):
        d = window_distances(e, 3, 2, distance)
        assert d.dtype == torch.float32                       # energies: fp32 whatever the embedding's dtype
        (d * up).sum().backward()
    assert e.grad.dtype == dtype
    er = e.detach().double().requires_grad_()
    diff = er[:, :, None] - unfold(er, 3, 2)                  # (B, D, 9, H, W); outside: 0 as the code's
    diff = diff * (unfold(torch.ones_like(er[:, :1]), 3, 2) > 0)
    dr = diff.abs().sum(1) if distance == "l1" else 0.5 * diff.pow(2).sum(1)
    (dr * up).sum().backward()
    torch.testing.assert_close(d.double(), dr, atol=1e-5, rtol=1e-5)   # exact up to fp32: e was only cast up
    close(e.grad, er.grad, dtype)


@pytest.mark.parametrize("device,dtype", CASES)
def test_filter_and_normalised_mask_under_autocast(device, dtype):
    x, e = leaves(device, ("n", (2, 3, 8, 9), dtype), ("n", (2, 4, 8, 9), dtype))
    blk = LocalAttentionMask(3, 1, distance="l2", init_lambda=0.8, remove_center=True, remove_bounds=True,
                             normalize=True).to(device)
    up = torch.randn(2, 3, 8, 9, device=device, dtype=torch.float64)
    with torch.autocast(device, dtype=dtype):
        m = blk(e)
        assert m.dtype == torch.float32
        y = segaware_filter(x, m, 3)
        assert y.dtype == dtype                               # x's dtype; the sums ran in fp32
        (y.double() * up).sum().backward()
    assert x.grad.dtype == dtype and e.grad.dtype == dtype and blk.lam.grad.dtype == torch.float32
    xr, er = (t.detach().double().requires_grad_() for t in (x, e))
    lam = blk.lam.detach().double().requires_grad_()
    a = -lam * 0.5 * (er[:, :, None] - unfold(er, 3, 1)).pow(2).sum(1)      # (B, 9, H, W)
    keep = unfold(torch.ones_like(er[:, :1]), 3, 1)[:, 0] > 0
    keep[:, 4] = False
    mr = torch.softmax(a.masked_fill(~keep, float("-inf")), 1)
    yr = (unfold(xr, 3, 1) * mr[:, None]).sum(2)
    (yr * up).sum().backward()
    close(y, yr, dtype)
    for t, r in ((x, xr), (e, er), (blk.lam, lam)):
        close(t.grad, r.grad, dtype)


@pytest.mark.parametrize("device,dtype", CASES)
def test_crf_runs_in_fp32_under_autocast(device, dtype):
    torch.manual_seed(0)
    crf = SegAwareCRF(3, spatial_window=3, bilateral_window=5, bilateral_dilation=2).to(device)
    u, e = leaves(device, ("n", (1, 3, 10, 12), dtype), ("n", (1, 4, 10, 12), dtype))
    with torch.autocast(device, dtype=dtype):
        out = crf(u, e)
        assert out.dtype == torch.float32
        out.square().sum().backward()
    assert u.grad.dtype == dtype and e.grad.dtype == dtype and torch.isfinite(e.grad).all()
    ref = crf(u.detach().float(), e.detach().float())         # fp32 without autocast: the same computation
    torch.testing.assert_close(out, ref)
