"""Box operations (``attnseg.nn.boxes``): IoU, the Faster R-CNN box code, clipping, anchors and NMS.

The references are independent of the code under test: IoU by a pure-Python double loop in double precision, the
greedy NMS by a pure-Python loop over the boxes in (score, index) order, box deltas and anchors by hand. NMS is
compared EXACTLY (the same indices in the same order) on random clustered boxes with tied scores, duplicate and
degenerate boxes, over several seeds and thresholds, through the public functions and through the blocked kernel
with tiny blocks and chunks (so that the cross-block screen, its float64 fallback and the in-block greedy order
are all exercised on small inputs).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from attnseg.nn import boxes as B
from attnseg.nn.boxes import (
    anchor_grid,
    anchors_per_location,
    batched_nms,
    box_area,
    box_iou,
    clip_boxes,
    decode_boxes,
    encode_boxes,
    nms,
    remove_small_boxes,
)


# -- references ------------------------------------------------------------------------------------------------------
def iou_py(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def nms_py(boxes, scores, thr, classes=None) -> list[int]:
    boxes, scores = boxes.tolist(), scores.tolist()
    classes = classes.tolist() if classes is not None else [0] * len(boxes)
    kept = []
    for i in sorted(range(len(boxes)), key=lambda i: (-scores[i], i)):
        if all(classes[j] != classes[i] or iou_py(boxes[j], boxes[i]) <= thr for j in kept):
            kept.append(i)
    return kept


def clustered_boxes(seed: int, n: int, dtype=torch.float32):
    """Boxes around a few centres (much overlap), on a 1/8 px lattice; ~10% duplicates of earlier boxes, a few
    degenerate (zero or negative width / height); scores on a coarse grid (many ties)."""
    g = np.random.default_rng(seed)
    centres = g.uniform(0, 100, (max(2, n // 12), 2))
    c = centres[g.integers(0, len(centres), n)] + g.normal(0, 3, (n, 2))
    wh = g.uniform(4, 30, (n, 2))
    b = np.round(np.concatenate([c - wh / 2, c + wh / 2], 1) * 8) / 8
    dup = g.random(n) < 0.1
    dup[0] = False
    b[dup] = b[g.integers(0, np.arange(n)[dup])]                     # copies of earlier boxes
    deg = g.choice(n, max(1, n // 25), replace=False)
    b[deg, 2] = b[deg, 0] - g.choice([0.0, 2.0], len(deg))           # zero or negative width
    scores = np.round(g.random(n) * 20) / 20
    return torch.tensor(b, dtype=dtype), torch.tensor(scores, dtype=torch.float32)


# -- IoU, area -------------------------------------------------------------------------------------------------------
def test_box_iou_matches_python_loop():
    a, _ = clustered_boxes(0, 40, torch.float64)
    b = torch.cat([a[:10], clustered_boxes(1, 30, torch.float64)[0],
                   torch.tensor([[5.0, 5, 5, 9], [3, 3, 1, 1], [0, 0, 0, 0]], dtype=torch.float64)])
    got = box_iou(a, b)
    ref = torch.tensor([[iou_py(p, q) for q in b.tolist()] for p in a.tolist()], dtype=torch.float64)
    assert got.dtype == torch.float64 and got.shape == (40, len(b))
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-14)
    assert torch.isfinite(got).all() and (got[:, -3:] == 0).all()           # degenerate columns
    for i in range(10):                                                      # identical boxes
        if box_area(a[i:i + 1]) > 0:
            assert got[i, i] == 1
    f32 = box_iou(a.float(), b.float())
    assert f32.dtype == torch.float32
    torch.testing.assert_close(f32, ref.float(), rtol=1e-5, atol=1e-6)


def test_box_iou_gradient_finite_with_degenerate_boxes():
    a = torch.tensor([[0.0, 0, 4, 4], [2, 2, 2, 2], [1, 1, 0, 3]], requires_grad=True)
    b = torch.tensor([[1.0, 1, 5, 6], [3, 3, 3, 3]], requires_grad=True)
    box_iou(a, b).sum().backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()
    assert a.grad[0].abs().sum() > 0
    x = torch.tensor([[0.3, 0.2, 4.1, 4.7]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([[1.1, 1.3, 5.2, 6.1], [-1.0, 0.5, 2.2, 3.3]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: box_iou(t, y), (x,))


def test_box_area_negative_extents_are_zero():
    got = box_area(torch.tensor([[0.0, 0, 2, 3], [5, 5, 4, 9], [1, 1, 3, 0], [2, 2, 2, 8]]))
    assert got.tolist() == [6.0, 0.0, 0.0, 0.0]


def test_box_iou_bf16_autocast_is_float32():
    a, _ = clustered_boxes(3, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = box_iou(a.bfloat16(), a)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, box_iou(a.bfloat16().float(), a))


# -- box code --------------------------------------------------------------------------------------------------------
def test_encode_hand_values_and_weights():
    ref = torch.tensor([[0.0, 0, 10, 20]])          # centre (5, 10), size 10 x 20
    tgt = torch.tensor([[5.0, 10, 25, 30]])         # centre (15, 20), size 20 x 20
    d = encode_boxes(tgt, ref)
    torch.testing.assert_close(d, torch.tensor([[1.0, 0.5, math.log(2), 0.0]]))
    dw = encode_boxes(tgt, ref, (10.0, 10.0, 5.0, 5.0))
    torch.testing.assert_close(dw, torch.tensor([[10.0, 5.0, 5 * math.log(2), 0.0]]))
    torch.testing.assert_close(decode_boxes(dw, ref, (10.0, 10.0, 5.0, 5.0)), tgt)


def test_encode_decode_round_trip_float64():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=g, dtype=torch.float64) * 100
    refs = torch.cat([xy, xy + 1 + torch.rand(50, 2, generator=g, dtype=torch.float64) * 60], 1)
    xy2 = torch.rand(50, 2, generator=g, dtype=torch.float64) * 100
    tgts = torch.cat([xy2, xy2 + 1 + torch.rand(50, 2, generator=g, dtype=torch.float64) * 60], 1)
    for w in ((1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)):
        d = encode_boxes(tgts, refs, w)
        assert d.dtype == torch.float64
        torch.testing.assert_close(decode_boxes(d, refs, w), tgts, rtol=0, atol=1e-11)
        torch.testing.assert_close(encode_boxes(decode_boxes(d, refs, w), refs, w), d, rtol=0, atol=1e-11)


def test_decode_clamps_log_scale_and_is_differentiable():
    ref = torch.tensor([[0.0, 0, 16, 8]], dtype=torch.float64)
    d = torch.tensor([[0.0, 0, 100.0, -2.0]], dtype=torch.float64, requires_grad=True)
    out = decode_boxes(d, ref)
    w = 16 * 1000 / 16                                              # exp(log(1000/16)) · 16
    h = 8 * math.exp(-2.0)
    torch.testing.assert_close(out, torch.tensor([[8 - w / 2, 4 - h / 2, 8 + w / 2, 4 + h / 2]], dtype=torch.float64))
    out2 = decode_boxes(d, ref, max_log_scale=1.0)
    torch.testing.assert_close(out2[0, 2] - out2[0, 0], torch.tensor(16 * math.e, dtype=torch.float64))
    out.sum().backward()
    assert d.grad[0, 2] == 0 and d.grad[0, 3] == 0                  # sum of x0 + x1 does not see w, h
    d2 = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    refs = torch.tensor([[0.0, 0, 10, 20], [5, 5, 9, 30], [1, 2, 3, 4], [0, 0, 100, 50]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: decode_boxes(t, refs, (10.0, 10.0, 5.0, 5.0)), (d2,))


def test_clip_and_remove_small():
    b = torch.tensor([[-5.0, 3, 20, 40], [2, -1, 8, 9], [31, 2, 45, 3]], requires_grad=True)
    c = clip_boxes(b, (30, 32))
    assert c.tolist() == [[0.0, 3, 20, 30], [2, 0, 8, 9], [31, 2, 32, 3]]
    c.sum().backward()
    assert b.grad.tolist() == [[0.0, 1, 1, 0], [1, 0, 1, 1], [1, 1, 0, 1]]
    keep = remove_small_boxes(torch.tensor([[0.0, 0, 2, 5], [0, 0, 1.9, 5], [0, 0, 3, 2], [4, 4, 3, 9]]), 2.0)
    assert keep.dtype == torch.int64 and keep.tolist() == [0, 2]


# -- anchors ---------------------------------------------------------------------------------------------------------
def test_anchor_grid_order_centres_areas_ratios():
    sizes, ratios, stride, (h, w) = (32, 64), (0.5, 1.0, 2.0), 16, (3, 4)
    A = anchors_per_location(sizes, ratios)
    assert A == 6
    a = anchor_grid((h, w), stride, sizes, ratios)
    assert a.shape == (h * w * A, 4) and a.dtype == torch.float32
    a64 = anchor_grid((h, w), stride, sizes, ratios, dtype=torch.float64)
    for i in range(h):
        for j in range(w):
            for si, s in enumerate(sizes):
                for ri, r in enumerate(ratios):
                    x0, y0, x1, y1 = a64[(i * w + j) * A + si * len(ratios) + ri].tolist()
                    assert (x0 + x1) / 2 == pytest.approx((j + 0.5) * stride)
                    assert (y0 + y1) / 2 == pytest.approx((i + 0.5) * stride)
                    assert (x1 - x0) * (y1 - y0) == pytest.approx(s * s)
                    assert (y1 - y0) / (x1 - x0) == pytest.approx(r)
    assert a64[0].tolist() == pytest.approx([8 - 16 * math.sqrt(2), 8 - 8 * math.sqrt(2),
                                             8 + 16 * math.sqrt(2), 8 + 8 * math.sqrt(2)])


def test_anchor_grid_matches_rpn_output_layout():
    """Row r of the anchors is row r of an RPN output (B, A·k, h, w) reshaped the documented way."""
    h, w, A, k = 2, 3, 4, 4
    ii, jj = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    code = torch.zeros(1, A, k, h, w)
    for a in range(A):
        code[0, a] = ((ii * w + jj) * A + a).float()              # the anchor row each output should land on
    rows = code.view(1, A * k, h, w).view(1, A, k, h, w).permute(0, 3, 4, 1, 2).reshape(1, h * w * A, k)
    assert rows[0, :, 0].tolist() == list(range(h * w * A))
    anchors = anchor_grid((h, w), 8, (16, 32), (1.0, 2.0))
    assert len(anchors) == h * w * A
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    r = (1 * w + 2) * A + 3                                       # position (1, 2), anchor 3
    assert centres[r].tolist() == pytest.approx([2.5 * 8, 1.5 * 8])
    x0, y0, x1, y1 = anchors[r].tolist()                          # anchor 3 = size 32 (outer), ratio 2 (inner)
    assert (x1 - x0) * (y1 - y0) == pytest.approx(32 * 32) and (y1 - y0) / (x1 - x0) == pytest.approx(2.0)


# -- nms -------------------------------------------------------------------------------------------------------------
THRESHOLDS = (0.0, 0.3, 0.5, 0.7, 1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nms_exact_against_python_greedy(seed):
    boxes, scores = clustered_boxes(seed, 300 if seed == 0 else 120)
    for thr in THRESHOLDS:
        ref = nms_py(boxes, scores, thr)
        got = nms(boxes, scores, thr)
        assert got.dtype == torch.int64
        assert got.tolist() == ref, (seed, thr)


@pytest.mark.parametrize("block,chunk", [(1, 1), (7, 5), (16, 3)])
def test_nms_blocked_kernel_exact_fast_and_float64_paths(block, chunk):
    """Tiny blocks / chunks: every pair crosses blocks and chunks. Float32-exact boxes take the float32 screen;
    boxes off the float32 lattice (float64) and a threshold under 1e-3 take the float64 path."""
    boxes, scores = clustered_boxes(5, 90, torch.float64)
    off = boxes + torch.linspace(0, 1e-9, len(boxes), dtype=torch.float64)[:, None]   # not float32-representable
    for b, thr in ((boxes, 0.5), (boxes, 0.7), (off, 0.5), (boxes, 1e-4)):
        order = np.argsort(-scores.double().numpy(), kind="stable")
        sorted_b = b.numpy()[order]
        assert B._fast_ok(sorted_b, thr) == (b is boxes and thr >= 1e-3)
        got = order[B._nms_sorted(sorted_b, thr, block=block, chunk=chunk)].tolist()
        assert got == nms_py(b, scores, thr), (block, chunk, thr)


def test_nms_iou_exactly_at_threshold_is_kept():
    boxes = torch.tensor([[0.0, 0, 3, 1], [1, 0, 4, 1]])             # inter 2, union 4: IoU 0.5 exactly
    scores = torch.tensor([0.9, 0.8])
    assert iou_py(*boxes.tolist()) == 0.5
    assert nms(boxes, scores, 0.5).tolist() == [0, 1]
    assert nms(boxes, scores, 0.4999).tolist() == [0]
    for block in (1, 2):                                             # across blocks (the screen) and within one
        assert B._nms_sorted(boxes.double().numpy(), 0.5, block=block).tolist() == [0, 1]
        assert B._nms_sorted(boxes.double().numpy(), 0.4999, block=block).tolist() == [0]


def test_nms_ties_duplicates_degenerate_empty_single():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [5, 5, 5, 9], [5, 5, 5, 9],
                          [20, 20, 30, 30]])
    scores = torch.tensor([0.5, 0.9, 0.9, 0.9, 0.1, 0.9])
    assert nms(boxes, scores, 0.5).tolist() == [1, 3, 5, 4]          # tie 0.9: lower index first; degenerate kept
    assert nms(boxes, scores, 1.0).tolist() == [1, 2, 3, 5, 0, 4]    # IoU 1 is not > 1: nothing suppressed
    empty = nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert empty.dtype == torch.int64 and empty.shape == (0,)
    assert nms(torch.tensor([[1.0, 2, 3, 4]]), torch.tensor([0.3]), 0.5).tolist() == [0]
    assert batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5).shape == (0,)


def test_nms_many_proposals_greedy_consistent():
    """1,500 proposal-like boxes (six blocks): the kept set is greedy-consistent (no kept pair above the
    threshold, every dropped box overlaps a kept box ranked before it above the threshold), checked vectorised."""
    g = np.random.default_rng(0)
    n = 1500
    c = g.uniform(0, 1024, (n, 2))
    wh = np.exp(g.uniform(np.log(16), np.log(400), (n, 2)))
    boxes = torch.tensor(np.concatenate([c - wh / 2, c + wh / 2], 1).clip(0, 1024), dtype=torch.float32)
    scores = torch.rand(n, generator=torch.Generator().manual_seed(0))
    keep = nms(boxes, scores, 0.7)
    b = boxes.double()
    iou = box_iou(b, b)
    kept = torch.zeros(n, dtype=torch.bool)
    kept[keep] = True
    rank = torch.empty(n, dtype=torch.long)
    rank[torch.from_numpy(np.argsort(-scores.double().numpy(), kind="stable"))] = torch.arange(n)
    assert (iou[keep][:, keep].triu(1) <= 0.7).all()
    earlier = rank[keep][:, None] < rank[None, :]                   # (K, N) kept box before box j
    dropped_ok = ((iou[keep] > 0.7) & earlier).any(0)
    assert bool((dropped_ok | kept).all())
    assert (scores[keep][:-1] >= scores[keep][1:]).all()


@pytest.mark.parametrize("seed", [0, 3])
def test_batched_nms_per_class(seed):
    boxes, scores = clustered_boxes(seed, 200)
    classes = torch.from_numpy(np.random.default_rng(seed).integers(0, 4, len(boxes)))
    for thr in (0.3, 0.6):
        got = batched_nms(boxes, scores, classes, thr)
        assert got.tolist() == nms_py(boxes, scores, thr, classes)
        merged = []                                                  # nms per class, merged in score order
        for c in classes.unique():
            idx = torch.nonzero(classes == c).reshape(-1)
            merged += idx[nms(boxes[idx], scores[idx], thr)].tolist()
        merged.sort(key=lambda i: (-scores[i].item(), i))
        assert got.tolist() == merged
    same = batched_nms(boxes, scores, torch.zeros(len(boxes), dtype=torch.int32), 0.5)
    assert same.tolist() == nms(boxes, scores, 0.5).tolist()


# -- bad inputs ------------------------------------------------------------------------------------------------------
def test_bad_inputs():
    b = torch.rand(5, 4)
    with pytest.raises(ValueError, match=r"nms: boxes must be an \(N, 4\) tensor.*\(5, 3\)"):
        nms(torch.rand(5, 3), torch.rand(5), 0.5)
    with pytest.raises(ValueError, match=r"scores must be a \(N,\) tensor.*got \(4,\) for boxes \(5, 4\)"):
        nms(b, torch.rand(4), 0.5)
    with pytest.raises(ValueError, match=r"iou_threshold must be a number in \[0, 1\], not 1.5"):
        nms(b, torch.rand(5), 1.5)
    with pytest.raises(ValueError, match="scores contain NaN at"):
        nms(b, torch.tensor([0.1, float("nan"), 0.2, 0.3, 0.4]), 0.5)
    with pytest.raises(ValueError, match=r"classes must be an integer \(N,\) tensor.*\(5,\) torch.float32"):
        batched_nms(b, torch.rand(5), torch.rand(5), 0.5)
    with pytest.raises(ValueError, match=r"box_iou: b must be an \(N, 4\)"):
        box_iou(b, torch.rand(2, 4, 1))
    with pytest.raises(ValueError, match=r"encode_boxes: targets \(5, 4\) and references \(3, 4\)"):
        encode_boxes(b, torch.rand(3, 4))
    with pytest.raises(ValueError, match="weights must be 4 positive numbers"):
        decode_boxes(b, b, (1.0, 1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match=r"clip_boxes: the size must be a pair \(H, W\)"):
        clip_boxes(b, (10,))
    with pytest.raises(ValueError, match="stride must be a positive number.*not 0"):
        anchor_grid((2, 2), 0, (32,), (1.0,))
    with pytest.raises(ValueError, match=r"sizes must be a non-empty sequence of positive numbers, not \(\)"):
        anchor_grid((2, 2), 16, (), (1.0,))
    with pytest.raises(ValueError, match="ratios must be a non-empty sequence of positive numbers"):
        anchors_per_location((32,), (1.0, -2.0))
    with pytest.raises(ValueError, match="min_size must be a number"):
        remove_small_boxes(b, "2")
