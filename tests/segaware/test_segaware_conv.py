import pytest
import torch
import torch.nn.functional as F

from attnseg.nn.local_attention_mask import LocalAttentionMask, window_distances
from attnseg.nn.segaware_conv import SegAwareConv2d, segaware_conv2d


def unfold_reference(x, m, weight, bias, dilation, normalize, eps=1e-6):
    """The naive form: unfold the whole layer (B, C·k², H·W), mask, matmul (METHODS.md §1.6)."""
    B, C, H, W = x.shape
    k = weight.shape[-1]
    cols = F.unfold(x, k, dilation=dilation, padding=dilation * (k // 2)).view(B, C, k * k, H, W)
    y = torch.einsum("ockl,bckhw->bohw", weight.view(weight.shape[0], C, k * k, 1), cols * m[:, None])
    if normalize:
        y = y / (m.sum(1, keepdim=True) + eps)
    return y + bias.view(1, -1, 1, 1)


@pytest.mark.parametrize("k,dilation", [(3, 1), (3, 2), (5, 1), (1, 1)])
def test_constant_embedding_unnormalised_equals_conv2d(k, dilation):
    torch.manual_seed(0)
    conv = SegAwareConv2d(4, 6, k, dilation).double()
    x = torch.randn(2, 4, 7, 9, dtype=torch.float64)
    e = torch.full((2, 3, 7, 9), 0.3, dtype=torch.float64)           # constant embedding: every mask entry is 1
    m = LocalAttentionMask(k, dilation).double()(e)
    torch.testing.assert_close(m, torch.ones_like(m))
    ref = F.conv2d(x, conv.weight, conv.bias, padding=dilation * (k // 2), dilation=dilation)
    torch.testing.assert_close(conv(x, m), ref)


@pytest.mark.parametrize("normalize", [False, True])
def test_matches_the_unfold_reference_and_gradcheck(normalize):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    m = torch.rand(2, 9, 5, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(segaware_conv2d(x, m, w, b, 2, normalize),
                               unfold_reference(x, m, w, b, 2, normalize))
    assert torch.autograd.gradcheck(lambda *a: segaware_conv2d(*a, dilation=2, normalize=normalize), (x, m, w, b))


def test_mask_symmetry_centre_bounds_and_distances():
    torch.manual_seed(2)
    e = torch.randn(1, 4, 6, 7, dtype=torch.float64)
    blk = LocalAttentionMask(3, 2, remove_bounds=True).double()
    m = blk(e)
    # m_ij = m_ji: the tap of pixel i at offset o is the mirrored tap (k² - 1 - t) of pixel i + o
    for tap, (dy, dx) in ((0, (-2, -2)), (5, (0, 2)), (7, (2, 0))):
        for i in range(2, 4):
            for j in range(2, 5):
                torch.testing.assert_close(m[0, tap, i, j], m[0, 8 - tap, i + dy, j + dx])
    assert m[0, 0, 0, 0] == 0 and m[0, 8, 5, 6] == 0          # outside the image, removed
    assert torch.all(m[:, 4] == 1)                              # the centre: distance 0
    assert torch.all(LocalAttentionMask(3, remove_center=True).double()(e)[:, 4] == 0)
    d = window_distances(e, 3, 1)
    torch.testing.assert_close(d[0, 5, 2, 3], (e[0, :, 2, 3] - e[0, :, 2, 4]).abs().sum())
    d2 = window_distances(e, 3, 1, "l2")
    torch.testing.assert_close(d2[0, 1, 2, 3], 0.5 * (e[0, :, 2, 3] - e[0, :, 1, 3]).pow(2).sum())
    mn = LocalAttentionMask(3, normalize=True).double()(e)
    torch.testing.assert_close(mn.sum(1), torch.ones(1, 6, 7, dtype=torch.float64), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="odd"):
        LocalAttentionMask(4)


def test_mask_gradcheck_in_the_embedding_and_lambda():
    torch.manual_seed(3)
    blk = LocalAttentionMask(3, 2, normalize=True, remove_center=True).double()
    with torch.no_grad():
        blk.lam.fill_(0.7)
    e = torch.randn(1, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(blk, (e,))
    blk(e).sum().backward()
    assert blk.lam.grad is not None and torch.isfinite(blk.lam.grad)


def test_dilation_larger_than_the_image():
    """Taps that fall outside for every output (dilation 12 on a 5x6 map) contribute nothing, forward and backward."""
    torch.manual_seed(4)
    x = torch.randn(1, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    m = torch.rand(1, 9, 5, 6, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(segaware_conv2d(x, m, w, None, dilation=12),
                               F.conv2d(x, w[:, :, 1:2, 1:2]) * m[:, 4:5])
    assert torch.autograd.gradcheck(lambda a, b, c: segaware_conv2d(a, b, c, None, dilation=12), (x, m, w))
