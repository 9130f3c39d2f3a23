import torch

from attnseg.attention import ChannelAttention, NonLocalBlock, attention_memory_bytes


def nl(sub_sample=False, seed=0):
    torch.manual_seed(seed)
    return NonLocalBlock(6, 3, sub_sample=sub_sample).double().eval()


def test_nonlocal_starts_as_identity_and_matches_a_reference():
    blk = nl()
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    torch.testing.assert_close(blk(x), x)  # zero BN scale
    q = torch.einsum("oc,bchw->bohw", blk.theta.weight[:, :, 0, 0], x) + blk.theta.bias[:, None, None]
    k = torch.einsum("oc,bchw->bohw", blk.phi.weight[:, :, 0, 0], x) + blk.phi.bias[:, None, None]
    v = torch.einsum("oc,bchw->bohw", blk.g.weight[:, :, 0, 0], x) + blk.g.bias[:, None, None]
    ref = torch.zeros_like(v)
    for b in range(2):
        for i in range(5):
            for j in range(7):
                a = torch.softmax((q[b, :, i, j, None, None] * k[b]).sum(0).flatten(), 0)  # (HW,)
                ref[b, :, i, j] = (v[b].flatten(1) * a).sum(1)
    torch.testing.assert_close(blk.attention(x), ref)


def test_nonlocal_subsampled_keys_odd_sizes_and_memory_estimate():
    blk = nl(sub_sample=True)
    x = torch.randn(1, 6, 7, 9, dtype=torch.float64)
    y, att = blk(x, return_attention=True)
    assert y.shape == x.shape and att["nonlocal"].shape == (1, 63, 4 * 5)
    torch.testing.assert_close(att["nonlocal"].sum(-1), torch.ones(1, 63, dtype=torch.float64))
    a = att["nonlocal"].float()
    assert attention_memory_bytes(1, 7, 9, sub_sample=True, training=False) == a.numel() * a.element_size()
    assert attention_memory_bytes(2, 97, 97) == 2 * 97 ** 4 * 4 * 2


def test_batch_independence_and_gradcheck():
    for blk in (nl(), ChannelAttention().double()):
        with torch.no_grad():
            if isinstance(blk, NonLocalBlock):
                blk.out[1].weight.fill_(1.0)
            else:
                blk.gamma.fill_(0.5)
        x = torch.randn(3, 6, 4, 5, dtype=torch.float64)
        x2 = x.clone()
        x2[1:] = torch.randn_like(x2[1:])
        torch.testing.assert_close(blk(x2)[0], blk(x)[0])
        xs = torch.randn(2, 6, 3, 4, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(blk, (xs,))


def test_channel_attention_identity_reference_and_maps():
    cam = ChannelAttention().double()
    x = torch.randn(2, 5, 4, 6, dtype=torch.float64)
    torch.testing.assert_close(cam(x), x)  # gamma = 0
    f = x.flatten(2)
    e = f @ f.transpose(1, 2)
    ref = (torch.softmax(-e, -1) @ f).reshape_as(x)  # softmax(max E - E) = softmax(-E)
    torch.testing.assert_close(cam.attention(x), ref)
    _, att = cam(x, return_attention=True)
    torch.testing.assert_close(att["channel"].sum(-1), torch.ones(2, 5, dtype=torch.float64))


def test_bf16_autocast_finite_with_fp32_maps():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 5, 7) * 20
    for blk in (NonLocalBlock(8), ChannelAttention()):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, att = blk(x, return_attention=True)
        assert torch.isfinite(y.float()).all()
        assert next(iter(att.values())).dtype == torch.float32


def test_nonlocal_value_channels():
    torch.manual_seed(0)
    blk = NonLocalBlock(6, 3, value_channels=6).double().eval()
    x = torch.randn(1, 6, 4, 5, dtype=torch.float64)
    q = torch.einsum("oc,bchw->bohw", blk.theta.weight[:, :, 0, 0], x) + blk.theta.bias[:, None, None]
    k = torch.einsum("oc,bchw->bohw", blk.phi.weight[:, :, 0, 0], x) + blk.phi.bias[:, None, None]
    v = torch.einsum("oc,bchw->bohw", blk.g.weight[:, :, 0, 0], x) + blk.g.bias[:, None, None]
    a = torch.softmax(q.flatten(2).transpose(1, 2) @ k.flatten(2), -1)  # (1, HW, HW)
    ref = (v.flatten(2) @ a.transpose(1, 2)).reshape(1, 6, 4, 5)
    torch.testing.assert_close(blk.attention(x), ref)
    assert blk.out[0].in_channels == 6
