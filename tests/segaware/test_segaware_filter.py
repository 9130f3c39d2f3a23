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
