import pytest
import torch
import torch.nn.functional as F

from attnseg.nn.local_attention_mask import LocalAttentionMask
from attnseg.nn.segaware_filter import segaware_filter


@pytest.mark.parametrize("k,dilation", [(3, 1), (5, 1), (3, 2)])
def test_zero_embedding_is_a_box_filter(k, dilation):
    torch.manual_seed(0)
    x = torch.randn(2, 4, 11, 13, dtype=torch.float64)
    e = torch.zeros(2, 8, 11, 13, dtype=torch.float64)
    y = segaware_filter(x, LocalAttentionMask(k, dilation).double()(e), k, dilation, eps=0.0)
    box = F.conv2d(x, torch.ones(4, 1, k, k, dtype=torch.float64) / k ** 2, padding=dilation * (k // 2),
                   dilation=dilation, groups=4)
    r = dilation * (k // 2)
    torch.testing.assert_close(y[..., r:-r, r:-r], box[..., r:-r, r:-r])   # away from the borders
    # with the out-of-image taps removed it is the box filter over the taps inside, borders included
    yb = segaware_filter(x, LocalAttentionMask(k, dilation, remove_bounds=True).double()(e), k, dilation, eps=0.0)
    count = F.conv2d(torch.ones(1, 1, 11, 13, dtype=torch.float64), torch.ones(1, 1, k, k, dtype=torch.float64),
                     padding=r, dilation=dilation)
    torch.testing.assert_close(yb, box * k ** 2 / count)


def test_edges_are_kept_and_gradcheck():
    # two flat regions with different embeddings: a hard mask keeps each region's value (the image border
    # removed: otherwise its zero padding, at distance 0, is averaged in)
    x = torch.zeros(1, 1, 6, 6, dtype=torch.float64)
    x[..., 3:] = 1.0
    e = x.clone() * 100
    y = segaware_filter(x, LocalAttentionMask(3, init_lambda=1.0, remove_bounds=True).double()(e), 3)
    torch.testing.assert_close(y, x, atol=1e-6, rtol=0)
    torch.manual_seed(1)
    xs = torch.randn(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    m = torch.rand(1, 9, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: segaware_filter(a, b, 3, 2), (xs, m))
    with pytest.raises(ValueError, match="does not fit"):
        segaware_filter(xs, m[:, :4], 3)


def softmax_reference(e, k, d, lam, remove_center, remove_bounds):
    """float64 NormConv weights: explicit unfold, ½ squared L2 (0 to out-of-image taps, as the code's im2dist),
    removed taps at -inf, torch.softmax over the window."""
    B, D, H, W = e.shape
    cols = F.unfold(e, k, dilation=d, padding=d * (k // 2)).view(B, D, k * k, H, W)
    ins = F.unfold(torch.ones(1, 1, H, W, dtype=e.dtype), k, dilation=d, padding=d * (k // 2)).view(1, k * k, H, W)
    dist = 0.5 * ((e[:, :, None] - cols) ** 2 * ins[:, None]).sum(1)              # (B, k², H, W)
    keep = torch.ones_like(ins, dtype=torch.bool)
    if remove_bounds:
        keep &= ins > 0
    if remove_center:
        keep[:, k * k // 2] = False
    return torch.softmax((-lam * dist).masked_fill(~keep, float("-inf")), 1)


@pytest.mark.parametrize("scale,spread", [(200.0, 1.0), (200.0, 0.01), (1.0, 1.0), (0.05, 1.0)])
@pytest.mark.parametrize("remove_center,remove_bounds", [(True, True), (False, False), (False, True)])
def test_normalised_mask_is_a_stable_softmax_over_the_window(scale, spread, remove_center, remove_bounds):
    """The released CRF scales the embedding by 200: every exp(-d) underflows unless the window's largest exponent
    is subtracted first (the official NormConv). Weights sum to 1 over the taps that count, match the float64
    softmax, and the message of a filter built from them does not vanish."""
    torch.manual_seed(0)
    e = spread * torch.randn(2, 6, 9, 11, dtype=torch.float64)
    blk = LocalAttentionMask(5, 2, distance="l2", init_lambda=1.0, learn_lambda=False, remove_center=remove_center,
                             remove_bounds=remove_bounds, normalize=True).double()
    m = blk(scale * e)
    ref = softmax_reference(scale * e, 5, 2, 1.0, remove_center, remove_bounds)
    assert torch.isfinite(m).all()
    torch.testing.assert_close(m.sum(1), torch.ones(2, 9, 11, dtype=torch.float64))
    torch.testing.assert_close(m, ref)
    x = torch.randn(2, 3, 9, 11, dtype=torch.float64)
    y = segaware_filter(x, m, 5, 2, eps=0.0)
    cols = F.unfold(x, 5, dilation=2, padding=4).view(2, 3, 25, 9, 11)
    torch.testing.assert_close(y, (cols * ref[:, None]).sum(2))
    m32 = blk.float()(scale * e.float())                                          # float32: no NaN, no underflow
    assert torch.isfinite(m32).all()
    torch.testing.assert_close(m32.sum(1), torch.ones(2, 9, 11), atol=1e-5, rtol=0)


def test_normalised_mask_gradcheck_and_a_pixel_without_taps():
    torch.manual_seed(1)
    blk = LocalAttentionMask(3, 1, distance="l2", init_lambda=0.7, remove_center=True, remove_bounds=True,
                             normalize=True).double()
    e = (3.0 * torch.randn(1, 2, 4, 5, dtype=torch.float64)).requires_grad_()   # large, spread-out exponents
    assert torch.autograd.gradcheck(blk, (e,))
    # a 1x1 image without its centre keeps no tap: weights 0 (not NaN), and a finite (zero) gradient
    one = torch.randn(1, 2, 1, 1, dtype=torch.float64, requires_grad=True)
    m = blk(one)
    assert torch.equal(m, torch.zeros_like(m))
    m.sum().backward()
    assert torch.equal(one.grad, torch.zeros_like(one))
