import torch

from attnseg.attention.fla import FullyAttentionalBlock, fla_attention


def slow_reference(x, proj_h, proj_w):
    """Loop over images, columns and rows: METHODS.md §2.2 step by step, each slice with its own image's prior."""
    B, C, H, W = x.shape
    out = torch.zeros_like(x)
    for b in range(B):
        ph = proj_h(x[b].mean(2).T)  # (H, C): mean over width, one C-vector per row
        pw = proj_w(x[b].mean(1).T)  # (W, C)
        for w in range(W):
            f = x[b, :, :, w]                             # (C, H)
            a = torch.softmax(f @ ph, dim=1)              # (C, C)
            out[b, :, :, w] += a @ f
        for h in range(H):
            f = x[b, :, h, :]                             # (C, W)
            a = torch.softmax(f @ pw, dim=1)
            out[b, :, h, :] += a @ f
    return out


def make(C=6, seed=0):
    torch.manual_seed(seed)
    return FullyAttentionalBlock(C).double().eval()


def test_matches_the_slow_reference_on_odd_non_square_sizes():
    blk = make()
    for shape in [(2, 6, 5, 7), (3, 6, 1, 4), (1, 6, 9, 2)]:
        x = torch.randn(*shape, dtype=torch.float64)
        torch.testing.assert_close(fla_attention(x, blk.proj_h, blk.proj_w), slow_reference(x, blk.proj_h, blk.proj_w))


def test_gamma_zero_is_conv_bn_relu():
    blk = make()
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    torch.testing.assert_close(blk(x), blk.post(x))
    with torch.no_grad():
        blk.gamma.fill_(0.7)
    torch.testing.assert_close(blk(x), blk.post(0.7 * fla_attention(x, blk.proj_h, blk.proj_w) + x))


def test_batch_independence_unlike_the_official_repeat():
    """An image's output must not change when the other images change (the official code tiles priors with
    ``repeat`` and pairs slices with other images' priors whenever B > 1)."""
    blk = make()
    with torch.no_grad():
        blk.gamma.fill_(1.0)
    x = torch.randn(3, 6, 4, 5, dtype=torch.float64)
    y = blk(x)
    x2 = x.clone()
    x2[1:] = torch.randn_like(x2[1:])
    torch.testing.assert_close(blk(x2)[0], y[0])
    torch.testing.assert_close(blk(x[:1])[0], y[0])


def test_attention_maps_are_row_stochastic():
    blk = make()
    y, att = blk(torch.randn(2, 6, 5, 7, dtype=torch.float64), return_attention=True)
    assert att["fla_column"].shape == (2, 7, 6, 6) and att["fla_row"].shape == (2, 5, 6, 6)
    for a in att.values():
        assert (a >= 0).all()
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1], dtype=a.dtype))


def test_gradcheck_float64():
    torch.manual_seed(0)
    proj_h, proj_w = torch.nn.Linear(4, 4).double(), torch.nn.Linear(4, 4).double()
    x = torch.randn(2, 4, 3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: fla_attention(t, proj_h, proj_w), (x,))


def test_bf16_autocast_is_finite_and_computes_in_fp32():
    torch.manual_seed(0)
    blk = FullyAttentionalBlock(8).train()
    with torch.no_grad():
        blk.gamma.fill_(1.0)
    x = torch.randn(2, 8, 5, 7) * 30  # large energies: would overflow a low-precision softmax's input range
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, att = blk(x, return_attention=True)
        y.float().sum().backward()
    assert torch.isfinite(y.float()).all() and att["fla_row"].dtype == torch.float32
    assert torch.isfinite(blk.proj_h.weight.grad).all() and blk.gamma.grad is not None


def test_chunked_slices_equal_all_at_once():
    """The CPU path processes a few slices at a time; any chunk size gives the same output, maps and gradients."""
    torch.manual_seed(0)
    blk = FullyAttentionalBlock(6).double()
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    per_slice = 2 * 6 * 6 * 8  # bytes of one slice's energies for the batch
    ref, (ah, aw) = fla_attention(x, blk.proj_h, blk.proj_w, return_maps=True, chunk_bytes=2**40)
    for chunk in (1, 2, 3):
        out, (ah2, aw2) = fla_attention(x, blk.proj_h, blk.proj_w, return_maps=True, chunk_bytes=chunk * per_slice)
        torch.testing.assert_close(out, ref)
        torch.testing.assert_close(ah2, ah)
        torch.testing.assert_close(aw2, aw)
    xs = x[:, :, :3, :4].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: fla_attention(t, blk.proj_h, blk.proj_w, chunk_bytes=2 * per_slice),
                                    (xs,))
