import pytest
import torch
import torch.nn.functional as F

from attnseg.attention import (
    CrissCrossAttention,
    DANetBlock,
    PositionAttention,
    criss_cross_memory_bytes,
)


def conv1x1(conv, x):
    return torch.einsum("oc,bchw->bohw", conv.weight[:, :, 0, 0], x) + conv.bias[:, None, None]


def pam(sub_sample=False, seed=0):
    torch.manual_seed(seed)
    return PositionAttention(16, sub_sample=sub_sample).double().eval()


def cca(sub_sample=False, recurrence=2, seed=0):
    torch.manual_seed(seed)
    return CrissCrossAttention(16, recurrence=recurrence, sub_sample=sub_sample).double().eval()


def criss_cross_reference(blk, x):
    """Per-pixel loop: softmax over the pixel's column (itself excluded) and row, then the weighted value sum;
    keys and values on the 2x2 max-pooled grid when the block sub-samples."""
    q, k, v = conv1x1(blk.query, x), conv1x1(blk.key, x), conv1x1(blk.value, x)
    s = 2 if blk.sub_sample else 1
    if s == 2:
        k, v = F.max_pool2d(k, 2, ceil_mode=True), F.max_pool2d(v, 2, ceil_mode=True)
    B, _, H, W = x.shape
    h, w = k.shape[-2:]
    out = torch.zeros(B, v.shape[1], H, W, dtype=x.dtype)
    maps = torch.zeros(B, H, W, h + w, dtype=x.dtype)
    for b in range(B):
        for i in range(H):
            for j in range(W):
                keys = [(r, j // s) for r in range(h) if r != i // s] + [(i // s, c) for c in range(w)]
                e = torch.stack([q[b, :, i, j] @ k[b, :, r, c] for r, c in keys])
                a = torch.softmax(e, 0)
                out[b, :, i, j] = sum(a[n] * v[b, :, r, c] for n, (r, c) in enumerate(keys))
                slots = [r for r in range(h) if r != i // s] + [h + c for c in range(w)]
                maps[b, i, j, slots] = a
    return out, maps


def test_position_attention_identity_and_reference():
    blk = pam()
    x = torch.randn(2, 16, 5, 7, dtype=torch.float64)
    torch.testing.assert_close(blk(x), x)  # gamma = 0
    q, k, v = conv1x1(blk.query, x), conv1x1(blk.key, x), conv1x1(blk.value, x)
    ref = torch.zeros_like(v)
    for b in range(2):
        for i in range(5):
            for j in range(7):
                a = torch.softmax((q[b, :, i, j, None, None] * k[b]).sum(0).flatten(), 0)  # Eq. 1
                ref[b, :, i, j] = (v[b].flatten(1) * a).sum(1)
    torch.testing.assert_close(blk.attention(x), ref)
    with torch.no_grad():
        blk.gamma.fill_(0.3)
    torch.testing.assert_close(blk(x), 0.3 * ref + x)  # Eq. 2


def test_position_attention_subsampled_maps_and_memory():
    blk = pam(sub_sample=True)
    x = torch.randn(1, 16, 7, 9, dtype=torch.float64)
    _, att = blk(x, return_attention=True)
    assert att["position"].shape == (1, 63, 4 * 5)
    torch.testing.assert_close(att["position"].sum(-1), torch.ones(1, 63, dtype=torch.float64))
    assert blk.memory_bytes(1, 7, 9, training=False) == att["position"].numel() * 4


def test_danet_block_gamma_zero_is_sum_of_the_two_convs():
    torch.manual_seed(0)
    blk = DANetBlock(16).double().eval()
    x = torch.randn(2, 16, 5, 6, dtype=torch.float64)
    torch.testing.assert_close(blk(x), blk.conv_p(x) + blk.conv_c(x))
    with torch.no_grad():
        blk.pam.gamma.fill_(0.5)
        blk.cam.gamma.fill_(-0.2)
    y, att = blk(x, return_attention=True)
    ref = blk.conv_p(x + 0.5 * blk.pam.attention(x)) + blk.conv_c(x - 0.2 * blk.cam.attention(x))
    torch.testing.assert_close(y, ref)
    assert set(att) == {"position", "channel"}
    assert att["position"].shape == (2, 30, 30) and att["channel"].shape == (2, 16, 16)
    assert blk.memory_bytes(2, 5, 6, training=False) == (att["position"].numel() + att["channel"].numel()) * 4


@pytest.mark.parametrize("sub_sample", [False, True])
def test_criss_cross_matches_a_per_pixel_reference(sub_sample):
    blk = cca(sub_sample)
    x = torch.randn(2, 16, 5, 7, dtype=torch.float64)
    out, maps = blk.attention(x, return_maps=True)
    ref, ref_maps = criss_cross_reference(blk, x)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(maps, ref_maps)  # the pixel itself has weight 0 in the column part
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 5, 7, dtype=torch.float64))


def test_criss_cross_recurrence_identity_and_memory():
    blk = cca(recurrence=2)
    x = torch.randn(2, 16, 6, 5, dtype=torch.float64)
    torch.testing.assert_close(blk(x), x)  # gamma = 0: every recurrence is the identity
    with torch.no_grad():
        blk.gamma.fill_(0.7)
    x1 = 0.7 * blk.attention(x) + x
    x2 = 0.7 * blk.attention(x1) + x1  # the same weights twice
    y, att = blk(x, return_attention=True)
    torch.testing.assert_close(y, x2)
    assert att["criss_cross"].shape == (2, 2, 6, 5, 6 + 5)
    one = att["criss_cross"][:, 0].float()
    assert criss_cross_memory_bytes(2, 6, 5, training=False) == one.numel() * one.element_size()
    assert blk.memory_bytes(2, 6, 5) == 2 * 2 * one.numel() * 4  # energies + softmax, both recurrences
    assert criss_cross_memory_bytes(2, 97, 97, sub_sample=True) == 2 * 2 * 2 * 97 * 97 * 98 * 4
    with pytest.raises(ValueError, match="recurrence"):
        CrissCrossAttention(8, recurrence=0)


def make_danet():
    torch.manual_seed(0)
    return DANetBlock(16).double().eval()


@pytest.mark.parametrize("make", [pam, lambda: pam(True), cca, lambda: cca(True), make_danet])
def test_batch_independence_and_gradcheck(make):
    blk = make()
    with torch.no_grad():
        for m in blk.modules():
            if hasattr(m, "gamma"):
                m.gamma.fill_(0.5)
    x = torch.randn(3, 16, 4, 5, dtype=torch.float64)
    x2 = x.clone()
    x2[1:] = torch.randn_like(x2[1:])
    torch.testing.assert_close(blk(x2)[0], blk(x)[0])
    assert not torch.allclose(blk(x2)[1], blk(x)[1])
    xs = torch.randn(2, 16, 3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(blk, (xs,))


def test_bf16_autocast_finite_with_fp32_maps():
    torch.manual_seed(0)
    x = torch.randn(2, 16, 5, 7) * 20
    for blk in (PositionAttention(16), CrissCrossAttention(16), DANetBlock(16)):
        for m in blk.modules():
            if hasattr(m, "gamma"):
                m.gamma.data.fill_(1.0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, att = blk(x, return_attention=True)
        assert torch.isfinite(y.float()).all()
        assert all(a.dtype == torch.float32 for a in att.values())
