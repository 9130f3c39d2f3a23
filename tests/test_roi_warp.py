"""Differentiable RoI warping (``attnseg.nn.roi_warp``): roi_warp / roi_align, mask pooling, mask pasting.

The references are independent of the code under test: a pure-Python/numpy brute force of the warp formula written
in the module docstring (loops over RoIs, bins and samples, its own bilinear interpolation with the out-of-range
rule and the clamp), hand-sliced crops, block means for the mask resizing and a per-pixel loop for the pasting.
Gradchecks in float64 w.r.t. the features and the box coordinates, bf16 autocast, bad inputs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from attnseg.nn.roi_warp import mask_pool, paste_masks, roi_align, roi_warp


# -- references ------------------------------------------------------------------------------------------------------
def bilinear_ref(f: np.ndarray, y: float, x: float) -> np.ndarray:
    """f (C, H, W) at cell-centre coordinates (y, x): 0 more than a cell outside, else clamped and bilinear."""
    C, H, W = f.shape
    if y < -1 or y > H or x < -1 or x > W:
        return np.zeros(C)
    y, x = min(max(y, 0.0), H - 1.0), min(max(x, 0.0), W - 1.0)
    y0, x0 = int(math.floor(y)), int(math.floor(x))
    y1, x1 = min(y0 + 1, H - 1), min(x0 + 1, W - 1)
    ly, lx = y - y0, x - x0
    return (f[:, y0, x0] * (1 - ly) * (1 - lx) + f[:, y0, x1] * (1 - ly) * lx
            + f[:, y1, x0] * ly * (1 - lx) + f[:, y1, x1] * ly * lx)


def roi_warp_ref(features, boxes, batch_index, size, scale, s) -> torch.Tensor:
    f = features.double().numpy()
    oh, ow = size
    out = np.zeros((len(boxes), f.shape[1], oh, ow))
    for r, (x0, y0, x1, y1) in enumerate(boxes.double().tolist()):
        X0, Y0, X1, Y1 = x0 * scale - 0.5, y0 * scale - 0.5, x1 * scale - 0.5, y1 * scale - 0.5
        bw, bh = (X1 - X0) / ow, (Y1 - Y0) / oh
        for p in range(oh):
            for q in range(ow):
                acc = np.zeros(f.shape[1])
                for v in range(s):
                    for u in range(s):
                        acc += bilinear_ref(f[int(batch_index[r])], Y0 + (p + (v + 0.5) / s) * bh,
                                            X0 + (q + (u + 0.5) / s) * bw)
                out[r, :, p, q] = acc / (s * s)
    return torch.from_numpy(out)


def sample_points(boxes, size, scale, s):
    """The cell-centre sample coordinates (ys, xs) of each RoI, for choosing gradcheck boxes."""
    oh, ow = size
    pts = []
    for x0, y0, x1, y1 in boxes.tolist():
        X0, Y0 = x0 * scale - 0.5, y0 * scale - 0.5
        bw, bh = (x1 - x0) * scale / ow, (y1 - y0) * scale / oh
        pts.append(([Y0 + (p + (v + 0.5) / s) * bh for p in range(oh) for v in range(s)],
                    [X0 + (q + (u + 0.5) / s) * bw for q in range(ow) for u in range(s)]))
    return pts


def paste_ref(mask: np.ndarray, box, H: int, W: int) -> np.ndarray:
    mh, mw = mask.shape
    x0, y0, x1, y1 = box
    out = np.zeros((H, W))
    for y in range(H):
        for x in range(W):
            cx, cy = x + 0.5, y + 0.5
            if not (x0 <= cx < x1 and y0 <= cy < y1):
                continue
            u = (cx - x0) / (x1 - x0) * mw - 0.5
            v = (cy - y0) / (y1 - y0) * mh - 0.5
            out[y, x] = bilinear_ref(mask[None], v, u)[0]
    return out


# -- roi_warp --------------------------------------------------------------------------------------------------------
BOXES = torch.tensor([
    [2.0, 3.0, 30.0, 20.0],        # inside
    [-10.0, -5.0, 8.0, 9.0],       # partly outside (top-left)
    [30.0, 25.0, 60.0, 52.0],      # partly outside (bottom-right)
    [5.3, 7.1, 5.9, 7.4],          # tiny: smaller than a feature cell
    [-100.0, -90.0, -50.0, -60.0], # far outside: zeros
    [1.0, 1.0, 43.0, 35.0],        # nearly the whole map
    [12.7, 2.2, 13.1, 33.9],       # thin
], dtype=torch.float64)
BATCH = torch.tensor([1, 0, 2, 1, 0, 2, 0])


@pytest.mark.parametrize("s", [1, 2])
@pytest.mark.parametrize("scale,size", [(0.25, (4, 5)), (0.5, (3, 3))])
def test_roi_warp_matches_brute_force(s, scale, size):
    torch.manual_seed(0)
    feats = torch.randn(3, 2, 9, 11, dtype=torch.float64)
    got = roi_warp(feats, BOXES, BATCH, size, scale, s)
    assert got.shape == (len(BOXES), 2, *size) and got.dtype == torch.float64
    torch.testing.assert_close(got, roi_warp_ref(feats, BOXES, BATCH, size, scale, s), rtol=0, atol=1e-12)
    assert (got[4] == 0).all()                                                # far outside the map
    got32 = roi_warp(feats.float(), BOXES.float(), BATCH.int(), size, scale, s)
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double(), got, rtol=1e-4, atol=1e-5)


def test_roi_warp_many_channels_brute_force():
    """Enough samples per image (>= 2^16) for the avg_pool2d branch of the bin means; RoIs of two images mixed."""
    g = torch.Generator().manual_seed(8)
    feats = torch.randn(2, 64, 10, 12, generator=g, dtype=torch.float64)
    xy = torch.rand(12, 2, generator=g, dtype=torch.float64) * 50 - 5
    boxes = torch.cat([xy, xy + 4 + torch.rand(12, 2, generator=g, dtype=torch.float64) * 30], 1)
    bidx = torch.tensor([0, 1] * 6)
    got = roi_warp(feats, boxes, bidx, (7, 7), 0.25, 2)
    torch.testing.assert_close(got, roi_warp_ref(feats, boxes, bidx, (7, 7), 0.25, 2), rtol=0, atol=1e-12)


def test_roi_align_is_roi_warp_with_two_samples():
    torch.manual_seed(1)
    feats = torch.randn(3, 4, 9, 11)
    a = roi_align(feats, BOXES.float(), BATCH, (7, 7), 0.25)
    torch.testing.assert_close(a, roi_warp(feats, BOXES.float(), BATCH, (7, 7), 0.25, sampling_ratio=2),
                               rtol=0, atol=0)
    assert not torch.allclose(a, roi_warp(feats, BOXES.float(), BATCH, (7, 7), 0.25))


def test_integer_box_at_its_own_size_is_the_crop():
    torch.manual_seed(2)
    feats = torch.randn(2, 3, 12, 10, dtype=torch.float64)
    boxes = torch.tensor([[2.0, 3.0, 7.0, 9.0], [0.0, 0.0, 10.0, 12.0]], dtype=torch.float64)
    out = roi_warp(feats, boxes[:1], torch.tensor([1]), (6, 5), 1.0)
    torch.testing.assert_close(out[0], feats[1, :, 3:9, 2:7], rtol=0, atol=1e-12)
    whole = roi_warp(feats, boxes[1:], torch.tensor([0]), (12, 10), 1.0)
    torch.testing.assert_close(whole[0], feats[0], rtol=0, atol=1e-12)
    half = roi_warp(feats.float(), boxes[:1].float() * 2, torch.tensor([1]), (6, 5), 0.5)   # stride 2
    torch.testing.assert_close(half[0], feats[1, :, 3:9, 2:7].float())


def test_empty_rois():
    out = roi_warp(torch.randn(2, 5, 8, 8), torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), (7, 7), 0.5)
    assert out.shape == (0, 5, 7, 7)


def test_gradcheck_features_and_boxes():
    torch.manual_seed(3)
    feats = torch.randn(2, 2, 6, 7, dtype=torch.float64, requires_grad=True)
    boxes = torch.tensor([[4.91, 2.33, 10.0, 8.29], [3.48, 3.2, 11.3, 8.93], [0.92, -1.16, 8.32, 8.33]],
                         dtype=torch.float64)
    bidx = torch.tensor([1, 0, 1])
    size, scale = (3, 2), 0.5
    for s in (1, 2):   # every sample off the integers: cell centres, the clamp at 0 / H − 1, the mask's −1 / H
        for ys, xs in sample_points(boxes, size, scale, s):
            assert all(0.05 < c - math.floor(c) < 0.95 for c in ys + xs)
        assert torch.autograd.gradcheck(lambda f, s=s: roi_warp(f, boxes, bidx, size, scale, s), (feats,))
        b = boxes.clone().requires_grad_(True)
        assert torch.autograd.gradcheck(lambda t, s=s: roi_warp(feats.detach(), t, bidx, size, scale, s), (b,))
    b = boxes.clone().requires_grad_(True)
    roi_warp(feats.detach(), b, bidx, size, scale).sum().backward()
    assert (b.grad.abs().sum(1) > 0).all()                                    # the box stage gets a gradient


def test_bf16_autocast_gives_float32():
    torch.manual_seed(4)
    feats = torch.randn(3, 4, 9, 11)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = roi_warp(feats.bfloat16(), BOXES.float(), BATCH, (5, 5), 0.25, 2)
        masked = mask_pool(out.bfloat16(), torch.rand(len(BOXES), 10, 10).bfloat16())
        same = roi_warp(feats, BOXES.float(), BATCH, (5, 5), 0.25, 2)
    ref = roi_warp(feats, BOXES.float(), BATCH, (5, 5), 0.25, 2)
    assert out.dtype == torch.float32 and masked.dtype == torch.float32 and same.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(out, roi_warp(feats.bfloat16().float(), BOXES.float(), BATCH, (5, 5), 0.25, 2))
    torch.testing.assert_close(same, ref)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    torch.manual_seed(5)
    feats = torch.randn(3, 4, 9, 11)
    cpu = roi_warp(feats, BOXES.float(), BATCH, (5, 5), 0.25, 2)
    gpu = roi_warp(feats.cuda(), BOXES.float().cuda(), BATCH.cuda(), (5, 5), 0.25, 2)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-5)


# -- mask_pool, paste_masks ------------------------------------------------------------------------------------------
def test_mask_pool_manual_product_and_gradients():
    torch.manual_seed(6)
    feats = torch.randn(4, 3, 14, 14, dtype=torch.float64)
    masks = torch.rand(4, 28, 28, dtype=torch.float64)
    down = masks.reshape(4, 14, 2, 14, 2).mean((2, 4))            # bilinear 28 -> 14 = 2 x 2 block means
    torch.testing.assert_close(mask_pool(feats, masks), feats * down[:, None], rtol=0, atol=1e-12)
    same = torch.rand(4, 14, 14, dtype=torch.float64)
    torch.testing.assert_close(mask_pool(feats, same), feats * same[:, None], rtol=0, atol=0)
    f = feats[:2, :2, :4, :4].clone().requires_grad_(True)
    m = torch.rand(2, 6, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(mask_pool, (f, m), fast_mode=True)   # interpolate's backward forks threads


def test_paste_masks_brute_force_and_round_trip():
    torch.manual_seed(7)
    H, W = 17, 23
    masks = torch.rand(5, 6, 6)
    boxes = torch.tensor([[2.0, 3.0, 11.0, 15.0], [-4.3, 5.6, 7.2, 21.9], [15.25, -2.5, 30.0, 9.75],
                          [4.0, 4.0, 4.0, 9.0], [8.4, 8.6, 8.9, 9.4]])
    got = paste_masks(masks, boxes, (H, W))
    assert got.shape == (5, H, W) and got.dtype == torch.float32
    for r in range(5):
        ref = paste_ref(masks[r].double().numpy(), boxes[r].tolist(), H, W)
        np.testing.assert_allclose(got[r].numpy(), ref, rtol=0, atol=1e-5)
    assert (got[3] == 0).all()                                     # degenerate box
    ones = paste_masks(torch.ones(1, 28, 28), torch.tensor([[2.0, 3.0, 6.0, 8.0]]), (10, 9))[0]
    expected = torch.zeros(10, 9)
    expected[3:8, 2:6] = 1
    assert torch.equal(ones, expected)
    frac = paste_masks(torch.ones(1, 4, 4), torch.tensor([[1.5, 0.4, 4.6, 3.5]]), (5, 6))[0]
    expected = torch.zeros(5, 6)
    expected[0:3, 1:5] = 1                                         # centres 1.5 .. 4.5 in x, 0.5 .. 2.5 in y
    assert torch.equal(frac, expected)
    assert paste_masks(torch.zeros(0, 4, 4), torch.zeros(0, 4), (5, 6)).shape == (0, 5, 6)


# -- bad inputs ------------------------------------------------------------------------------------------------------
def test_bad_inputs():
    f = torch.randn(2, 3, 8, 8)
    b = torch.tensor([[0.0, 0, 4, 4], [1, 1, 5, 5]])
    i = torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"roi_warp takes features \(B, C, H, W\), got \(3, 8, 8\)"):
        roi_warp(f[0], b, i, (2, 2))
    with pytest.raises(ValueError, match=r"boxes must be a float \(R, 4\) tensor.*\(2, 5\)"):
        roi_warp(f, torch.zeros(2, 5), i, (2, 2))
    with pytest.raises(ValueError, match=r"batch_index must be an integer \(R,\) tensor.*\(3,\).*for boxes \(2, 4\)"):
        roi_warp(f, b, torch.tensor([0, 1, 1]), (2, 2))
    with pytest.raises(ValueError, match=r"batch_index holds 2, outside \[0, 2\)"):
        roi_warp(f, b, torch.tensor([0, 2]), (2, 2))
    with pytest.raises(ValueError, match=r"batch_index holds -1"):
        roi_warp(f, b, torch.tensor([-1, 0]), (2, 2))
    with pytest.raises(ValueError, match=r"output_size must be a pair \(oh, ow\) of ints >= 1.*\(0, 3\)"):
        roi_warp(f, b, i, (0, 3))
    with pytest.raises(ValueError, match="sampling_ratio must be an int >= 1.*not 0"):
        roi_warp(f, b, i, (2, 2), 1.0, 0)
    with pytest.raises(ValueError, match="spatial_scale must be a positive number.*not -0.5"):
        roi_warp(f, b, i, (2, 2), -0.5)
    with pytest.raises(ValueError, match=r"masks must be \(R, m, m\) probabilities.*\(3, 7, 7\)"):
        mask_pool(torch.randn(2, 3, 7, 7), torch.rand(3, 7, 7))
    with pytest.raises(ValueError, match=r"paste_masks: boxes must be \(R, 4\).*\(1, 4\) for masks \(2, 4, 4\)"):
        paste_masks(torch.rand(2, 4, 4), torch.zeros(1, 4), (5, 5))
    with pytest.raises(ValueError, match=r"size must be the image's \(H, W\)"):
        paste_masks(torch.rand(1, 4, 4), torch.zeros(1, 4), (5, -1))
