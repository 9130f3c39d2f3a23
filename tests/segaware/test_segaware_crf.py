import torch

from attnseg.nn.segaware_crf import SegAwareCRF, pixel_coordinates


def small_crf(k=3, **kw):
    return SegAwareCRF(k, spatial_window=3, bilateral_window=3, bilateral_dilation=2, **kw).double()


def test_identity_settings_and_shapes():
    torch.manual_seed(0)
    u = torch.randn(2, 3, 9, 11, dtype=torch.float64)
    e = torch.randn(2, 4, 9, 11, dtype=torch.float64)
    assert torch.equal(small_crf(iterations=0)(u, e), u)
    crf = small_crf()
    with torch.no_grad():
        crf.w_spatial.weight.zero_()
        crf.w_bilateral.weight.zero_()
    torch.testing.assert_close(crf(u, e), u)  # no messages: the unaries
    out = SegAwareCRF(3)(u.float(), e.float())  # the released model's windows, 5x5 and 13x13 at dilation 9
    assert out.shape == u.shape and torch.isfinite(out).all()
    assert pixel_coordinates(1, 2, 3)[0, :, 1, 2].tolist() == [1, 2]


def test_smooths_noise_inside_a_segment_and_keeps_the_edge():
    torch.manual_seed(1)
    H, W = 12, 12
    truth = torch.zeros(H, W, dtype=torch.long)
    truth[:, 6:] = 1
    u = 2.0 * torch.nn.functional.one_hot(truth, 2).permute(2, 0, 1)[None].double()
    noisy = u + 2.5 * torch.randn_like(u)
    e = truth[None, None].double() * 0.1                        # the embedding separates the two segments
    crf = SegAwareCRF(2, iterations=2, spatial_window=3, bilateral_window=5, bilateral_dilation=1).double()
    with torch.no_grad():
        crf.w_spatial.weight.mul_(2.0)
        crf.w_bilateral.weight.mul_(6.0)
    before = (noisy.argmax(1)[0] != truth).sum()
    after = (crf(noisy, e).argmax(1)[0] != truth).sum()
    assert after < before


def test_gradcheck_end_to_end():
    torch.manual_seed(2)
    crf = small_crf(k=2)
    u = torch.randn(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    e = torch.randn(1, 2, 4, 5, dtype=torch.float64, requires_grad=True) * 0.01
    e = e.detach().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: crf(a, b), (u, e))
    crf(u, e).sum().backward()
    assert crf.compat.weight.grad is not None


def test_low_resolution_mean_field_adds_the_upsampled_pairwise_term():
    torch.manual_seed(3)
    u = torch.randn(1, 3, 12, 16, dtype=torch.float64)
    e = torch.randn(1, 4, 12, 16, dtype=torch.float64)
    crf = small_crf(scale=0.5)
    small_u = torch.nn.functional.interpolate(u, size=(6, 8), mode="bilinear", antialias=True)
    small_e = torch.nn.functional.interpolate(e, size=(6, 8), mode="bilinear", antialias=True)
    pairwise = crf.mean_field(small_u, small_e) - small_u
    expected = u + torch.nn.functional.interpolate(pairwise, size=(12, 16), mode="bilinear")
    torch.testing.assert_close(crf(u, e), expected)
    with torch.no_grad():
        crf.w_spatial.weight.zero_()
        crf.w_bilateral.weight.zero_()
    torch.testing.assert_close(crf(u, e), u)   # no messages: the full-resolution unary, untouched


def test_bilateral_message_at_the_released_scale_matches_a_float64_reference():
    """emb_scale 200 (the released model): one iteration with the spatial message off is U + A, A the bilateral
    filter of softmax(U) with weights softmax_j(-½‖f_i - f_j‖²) over the in-image, non-centre taps,
    f = [200·e, 0.05·(y, x)], written here with unfold. The plain exp underflowed and A was 0."""
    torch.manual_seed(4)
    B, K, H, W, k, d = 1, 3, 9, 10, 5, 2
    crf = SegAwareCRF(K, iterations=1, spatial_window=3, bilateral_window=k, bilateral_dilation=d).double()
    with torch.no_grad():
        crf.w_spatial.weight.zero_()
    u = torch.randn(B, K, H, W, dtype=torch.float64)
    e = torch.randn(B, 4, H, W, dtype=torch.float64)
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    f = torch.cat([200.0 * e, 0.05 * torch.stack([ys, xs])[None]], 1)              # (B, 6, H, W)
    unf = (lambda t: torch.nn.functional.unfold(t, k, dilation=d, padding=d * (k // 2)).view(B, -1, k * k, H, W))
    inside = unf(torch.ones(1, 1, H, W, dtype=torch.float64))[:, 0] > 0              # (1, k², H, W)
    keep = inside.clone()
    keep[:, k * k // 2] = False
    a = -0.5 * (f[:, :, None] - unf(f)).pow(2).sum(1)                              # (B, k², H, W)
    m = torch.softmax(a.masked_fill(~keep, float("-inf")), 1)
    message = (unf(torch.softmax(u, 1)) * m[:, None]).sum(2)                        # (B, K, H, W)
    assert message.abs().amax() > 0.1
    torch.testing.assert_close(crf(u, e), u + message, atol=1e-5, rtol=0)          # the filter's ε = 1e-6
