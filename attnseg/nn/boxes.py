"""Box operations of region-proposal detectors: IoU, the box regression code, anchors and non-maximum suppression.

Ren, He, Girshick, Sun, "Faster R-CNN: Towards Real-Time Object Detection with Region Proposal Networks", NIPS 2015,
https://arxiv.org/abs/1506.01497, §3.1 (anchors at every position of the feature map, several scales and aspect ratios;
the box parameterisation of Eq. 2; NMS of the proposals), official code https://github.com/rbgirshick/py-faster-rcnn
(``lib/fast_rcnn/bbox_transform.py``, ``lib/rpn/generate_anchors.py``, ``lib/nms``). Used by Dai, He, Sun,
"Instance-aware Semantic Segmentation via Multi-task Network Cascades", CVPR 2016, https://arxiv.org/abs/1512.04412,
official code https://github.com/daijifeng001/MNC, whose stage 1 is Faster R-CNN's region proposal network.

    t_x = w_x (g_x − a_x)/a_w,  t_y = w_y (g_y − a_y)/a_h     Eq. 2: centre offsets in units of the reference's size
    t_w = w_w log(g_w/a_w),     t_h = w_h log(g_h/a_h)        log size ratios (w_* the per-coordinate weights)
    IoU(a, b) = |a ∩ b| / |a ∪ b|                             0 when the union is empty (degenerate boxes)

Conventions: a box is a row (x0, y0, x1, y1) of an (N, 4) float tensor in pixel EDGE coordinates: pixel j spans
[j, j + 1), so the box [x0, x1) x [y0, y1) with integer corners covers the pixels x0..x1−1, y0..y1−1, its width is
x1 − x0 (no "+ 1" as in py-faster-rcnn) and its centre (x0 + x1)/2. A box with x1 <= x0 or y1 <= y0 is degenerate:
area 0, IoU 0 with every box.

Mixed precision: :func:`box_iou`, :func:`encode_boxes` and :func:`decode_boxes` compute in at least float32 with
autocast disabled and return that dtype (bf16 in, float32 out; float64 stays).

NMS: :func:`nms` and :func:`batched_nms` run on the host (numpy) and decide every suppression in float64, exactly
the double-precision IoU ``inter / ((area_a + area_b) − inter)`` of the formula above compared with the threshold
(a pure-Python greedy loop gives the same indices). Most pairs are ruled out first by a float32 screen whose margin
is proven to cover its rounding (``_fast_ok``). No gradient; int64 indices on the boxes' device.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from .amp import compute_dtype, no_autocast

DEFAULT_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
MAX_LOG_SCALE = math.log(1000.0 / 16)   # Detectron's BBOX_XFORM_CLIP: exp(t_w) at most 62.5
NMS_BLOCK = 256                         # boxes resolved together in nms (see _nms_sorted)
NMS_CHUNK = 2048                        # kept boxes screened against a block at once (2 MB float32 buffers)
_FAST_EPS = 1e-4                        # margin of the float32 screen in nms (see _fast_ok)


# -- checks ----------------------------------------------------------------------------------------------------------
def _shape(x) -> str:
    return str(tuple(x.shape)) if isinstance(x, Tensor) else type(x).__name__


def _check_boxes(boxes, what: str, name: str = "boxes") -> Tensor:
    if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"{what}: {name} must be an (N, 4) tensor of (x0, y0, x1, y1) pixel corners, got "
                         f"{_shape(boxes)}")
    return boxes


def _check_size(size, what: str) -> tuple[int, int]:
    ok = isinstance(size, (tuple, list, torch.Size)) and len(size) == 2 and all(
        isinstance(s, numbers.Integral) and not isinstance(s, (bool, np.bool_)) and s >= 0 for s in size)
    if not ok:
        raise ValueError(f"{what}: the size must be a pair (H, W) of ints >= 0, not {size!r}")
    return int(size[0]), int(size[1])


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def _check_threshold(t, what: str) -> float:
    if not _is_number(t) or not 0.0 <= float(t) <= 1.0:
        raise ValueError(f"{what}: iou_threshold must be a number in [0, 1], not {t!r}")
    return float(t)


def _check_weights(weights, what: str) -> tuple[float, float, float, float]:
    ok = isinstance(weights, Sequence) and len(weights) == 4 and all(
        _is_number(w) and math.isfinite(w) and w > 0 for w in weights)
    if not ok:
        raise ValueError(f"{what}: weights must be 4 positive numbers (w_x, w_y, w_w, w_h), not {weights!r}")
    return tuple(float(w) for w in weights)


# -- geometry --------------------------------------------------------------------------------------------------------
def box_area(boxes: Tensor) -> Tensor:
    """Areas (x1 − x0)(y1 − y0), a negative extent counting as 0.

    Args:
        boxes: (N, 4) (x0, y0, x1, y1).

    Returns:
        (N,) in the boxes' dtype (float32 for integer boxes).

    Raises:
        ValueError: boxes not (N, 4).
    """
    _check_boxes(boxes, "box_area")
    b = boxes if boxes.is_floating_point() else boxes.float()
    return (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise intersection over union; differentiable.

    Args:
        a: (N, 4) boxes.
        b: (M, 4) boxes.

    Returns:
        (N, M) IoU in [0, 1], in at least float32. A pair whose union is empty (two degenerate boxes) gets 0, and
        a degenerate box has IoU 0 with every box; no NaN, not in the gradient either.

    Raises:
        ValueError: a or b not (·, 4).
    """
    _check_boxes(a, "box_iou", "a")
    _check_boxes(b, "box_iou", "b")
    dtype = compute_dtype(a, b)
    with no_autocast(a.device.type):
        a, b = a.to(dtype), b.to(dtype)
        lt = torch.maximum(a[:, None, :2], b[None, :, :2])                        # (N, M, 2) intersection corners
        rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])                        # (N, M, 2)
        wh = (rb - lt).clamp(min=0)                                               # (N, M, 2)
        inter = wh[..., 0] * wh[..., 1]                                           # (N, M)
        union = box_area(a)[:, None] + box_area(b)[None, :] - inter               # (N, 1) + (1, M) -> (N, M)
        ok = union > 0
        safe = torch.where(ok, union, torch.ones_like(union))                     # no 0/0, in the gradient either
        return torch.where(ok, inter / safe, torch.zeros_like(inter))


def _centre_size(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    x0, y0, x1, y1 = boxes.unbind(-1)                                             # 4 x (N,)
    w, h = x1 - x0, y1 - y0
    return x0 + 0.5 * w, y0 + 0.5 * h, w, h


def encode_boxes(targets: Tensor, references: Tensor, weights: Sequence[float] = DEFAULT_WEIGHTS) -> Tensor:
    """Regression targets of ``targets`` relative to ``references`` (Eq. 2 of Faster R-CNN).

    Args:
        targets: (N, 4) ground-truth boxes g.
        references: (N, 4) anchors or proposals a, one per target; their widths and heights must be positive (and
            the targets' too: a zero size gives an infinite t_w / t_h).
        weights: (w_x, w_y, w_w, w_h), the factors of the four deltas (py-faster-rcnn's stage-2 targets use
            (10, 10, 5, 5), i.e. BBOX_NORMALIZE_STDS (0.1, 0.1, 0.2, 0.2)).

    Returns:
        (N, 4) deltas (t_x, t_y, t_w, t_h), in at least float32; :func:`decode_boxes` inverts it.

    Raises:
        ValueError: shapes not (N, 4) of one N, bad weights.
    """
    _check_boxes(targets, "encode_boxes", "targets")
    _check_boxes(references, "encode_boxes", "references")
    if targets.shape[0] != references.shape[0]:
        raise ValueError(f"encode_boxes: targets {_shape(targets)} and references {_shape(references)} must have one "
                         "row each (the reference each target is encoded against)")
    wx, wy, ww, wh = _check_weights(weights, "encode_boxes")
    dtype = compute_dtype(targets, references)
    with no_autocast(targets.device.type):
        gx, gy, gw, gh = _centre_size(targets.to(dtype))
        ax, ay, aw, ah = _centre_size(references.to(dtype))
        d = [wx * (gx - ax) / aw, wy * (gy - ay) / ah, ww * torch.log(gw / aw), wh * torch.log(gh / ah)]
        return torch.stack(d, dim=-1)                                             # 4 x (N,) -> (N, 4)


def decode_boxes(deltas: Tensor, references: Tensor, weights: Sequence[float] = DEFAULT_WEIGHTS,
                 max_log_scale: float = MAX_LOG_SCALE) -> Tensor:
    """Apply deltas to reference boxes, the inverse of :func:`encode_boxes`; differentiable w.r.t. both.

    Args:
        deltas: (N, 4) (t_x, t_y, t_w, t_h).
        references: (N, 4) anchors or proposals.
        weights: as in :func:`encode_boxes`.
        max_log_scale: t_w / w_w and t_h / w_h are clamped to at most this before the exponential (log(1000/16),
            Detectron's BBOX_XFORM_CLIP, as in the Faster R-CNN code descended from py-faster-rcnn), so that a wild
            prediction cannot overflow; the clamp has gradient 0 above it.

    Returns:
        (N, 4) boxes (x0, y0, x1, y1) = (c_x ∓ w/2, c_y ∓ h/2) with c_x = a_x + a_w t_x / w_x,
        w = a_w exp(t_w / w_w) (likewise y), in at least float32. Not clipped to the image (:func:`clip_boxes`).

    Raises:
        ValueError: shapes not (N, 4) of one N, bad weights or max_log_scale.
    """
    _check_boxes(deltas, "decode_boxes", "deltas")
    _check_boxes(references, "decode_boxes", "references")
    if deltas.shape[0] != references.shape[0]:
        raise ValueError(f"decode_boxes: deltas {_shape(deltas)} and references {_shape(references)} must have one "
                         "row each (the reference each delta applies to)")
    wx, wy, ww, wh = _check_weights(weights, "decode_boxes")
    if not _is_number(max_log_scale) or math.isnan(max_log_scale):
        raise ValueError(f"decode_boxes: max_log_scale must be a number (log of the largest size ratio), not "
                         f"{max_log_scale!r}")
    dtype = compute_dtype(deltas, references)
    with no_autocast(deltas.device.type):
        ax, ay, aw, ah = _centre_size(references.to(dtype))
        tx, ty, tw, th = deltas.to(dtype).unbind(-1)                              # 4 x (N,)
        cx, cy = ax + aw * (tx / wx), ay + ah * (ty / wy)
        w = aw * torch.exp((tw / ww).clamp(max=max_log_scale))
        h = ah * torch.exp((th / wh).clamp(max=max_log_scale))
        return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)   # (N, 4)


def clip_boxes(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Clamp boxes into the image [0, W] x [0, H] (edge coordinates); differentiable (gradient 0 where clamped).

    Args:
        boxes: (N, 4).
        size: (H, W) of the image.

    Returns:
        (N, 4) in the boxes' dtype.

    Raises:
        ValueError: boxes not (N, 4), size not a pair of ints >= 0.
    """
    _check_boxes(boxes, "clip_boxes")
    H, W = _check_size(size, "clip_boxes")
    x0, y0, x1, y1 = boxes.unbind(-1)                                             # 4 x (N,)
    return torch.stack([x0.clamp(0, W), y0.clamp(0, H), x1.clamp(0, W), y1.clamp(0, H)], dim=-1)


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Indices of the boxes whose width and height are both >= ``min_size``.

    Args:
        boxes: (N, 4).
        min_size: the smallest side kept, in pixels.

    Returns:
        (K,) int64 indices, increasing, on the boxes' device.

    Raises:
        ValueError: boxes not (N, 4), min_size not a number.
    """
    _check_boxes(boxes, "remove_small_boxes")
    if not _is_number(min_size) or math.isnan(min_size):
        raise ValueError(f"remove_small_boxes: min_size must be a number of pixels, not {min_size!r}")
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return torch.nonzero((w >= min_size) & (h >= min_size)).reshape(-1)


# -- anchors ---------------------------------------------------------------------------------------------------------
def _check_positive_list(values, what: str, name: str) -> list[float]:
    if isinstance(values, (Tensor, np.ndarray)) and values.ndim == 1:
        values = values.tolist()
    ok = isinstance(values, Sequence) and not isinstance(values, str) and len(values) > 0
    if ok:
        ok = all(_is_number(v) and math.isfinite(v) and v > 0 for v in values)
    if not ok:
        raise ValueError(f"{what}: {name} must be a non-empty sequence of positive numbers, not {values!r}")
    return [float(v) for v in values]


def anchors_per_location(sizes: Sequence[float], ratios: Sequence[float]) -> int:
    """A = len(sizes) · len(ratios), the anchors at each feature-map position (k in Faster R-CNN §3.1)."""
    return (len(_check_positive_list(sizes, "anchors_per_location", "sizes"))
            * len(_check_positive_list(ratios, "anchors_per_location", "ratios")))


def anchor_grid(feature_size: tuple[int, int], stride: float, sizes: Sequence[float], ratios: Sequence[float],
                device=None, dtype: torch.dtype = torch.float32) -> Tensor:
    """The anchors of every feature-map position (Faster R-CNN §3.1, "translation-invariant anchors").

    Position (i, j) of an h x w feature map of stride s is centred at ((j + 0.5) s, (i + 0.5) s) in input pixels
    (the centre of the s x s input cell it covers). Each position carries A = len(sizes) · len(ratios) anchors,
    anchor (size, ratio) having area size² and height / width = ratio: w = size/√ratio, h = size·√ratio (not
    rounded to integers, unlike py-faster-rcnn's ``generate_anchors``).

    Order: position-major, row-major over (i, j), then the anchors of the position, sizes outer and ratios inner:
    row ((i·w + j)·A + a) with a = size_index · len(ratios) + ratio_index. That is the order of an RPN output
    (B, A·k, h, w) viewed (B, A, k, h, w), permuted to (B, h, w, A, k) and reshaped (B, h·w·A, k).

    Args:
        feature_size: (h, w) of the feature map (ints >= 0).
        stride: input pixels per feature cell (> 0).
        sizes: anchor sides √area in input pixels, e.g. (32, 64, 128).
        ratios: height / width ratios, e.g. (0.5, 1, 2).
        device, dtype: of the result (computed in float64 first).

    Returns:
        (h·w·A, 4) anchors (x0, y0, x1, y1).

    Raises:
        ValueError: a bad feature size, a stride <= 0, empty or non-positive sizes / ratios.
    """
    h, w = _check_size(feature_size, "anchor_grid")
    if not _is_number(stride) or not (math.isfinite(stride) and stride > 0):
        raise ValueError(f"anchor_grid: stride must be a positive number (input pixels per feature cell), not "
                         f"{stride!r}")
    sizes = _check_positive_list(sizes, "anchor_grid", "sizes")
    ratios = _check_positive_list(ratios, "anchor_grid", "ratios")
    f64 = torch.float64
    s = torch.tensor(sizes, dtype=f64)[:, None]                                  # (S, 1)
    r = torch.tensor(ratios, dtype=f64)[None, :]                                 # (1, Q)
    aw = (s / r.sqrt()).reshape(-1)                                              # (S, Q) -> (A,) sizes outer
    ah = (s * r.sqrt()).reshape(-1)                                              # (A,)
    base = torch.stack([-aw / 2, -ah / 2, aw / 2, ah / 2], dim=-1)               # (A, 4) centred at 0
    cy = (torch.arange(h, dtype=f64) + 0.5) * stride                             # (h,)
    cx = (torch.arange(w, dtype=f64) + 0.5) * stride                             # (w,)
    cyy, cxx = torch.meshgrid(cy, cx, indexing="ij")                             # (h, w) each
    centres = torch.stack([cxx, cyy, cxx, cyy], dim=-1)                          # (h, w, 4)
    anchors = centres[:, :, None, :] + base[None, None]                          # (h, w, 1, 4) + (A, 4) -> (h, w, A, 4)
    return anchors.reshape(-1, 4).to(device=device, dtype=dtype)                 # (h·w·A, 4)


# -- non-maximum suppression -----------------------------------------------------------------------------------------
def _iou_exceeds64(p: np.ndarray, pa: np.ndarray, q: np.ndarray, qa: np.ndarray, thr: float) -> np.ndarray:
    """IoU(p_i, q_j) > thr, exactly in float64, for (k, 4) p and (n, 4) q with areas pa, qa: (k, n) bool. The
    formula and its order of operations are those of the module docstring: inter / ((area_p + area_q) − inter);
    an empty union gives 0/0 = NaN, which is not > thr (IoU 0)."""
    iw = np.minimum(p[:, None, 2], q[None, :, 2]) - np.maximum(p[:, None, 0], q[None, :, 0])   # (k, n)
    ih = np.minimum(p[:, None, 3], q[None, :, 3]) - np.maximum(p[:, None, 1], q[None, :, 1])   # (k, n)
    inter = np.maximum(iw, 0.0) * np.maximum(ih, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter / (pa[:, None] + qa[None, :] - inter) > thr


def _pair_iou_exceeds64(p, pa, q, qa, thr: float) -> np.ndarray:
    """As :func:`_iou_exceeds64` for the pairs (p_i, q_i) of (n, 4) p and q: (n,) bool."""
    iw = np.minimum(p[:, 2], q[:, 2]) - np.maximum(p[:, 0], q[:, 0])
    ih = np.minimum(p[:, 3], q[:, 3]) - np.maximum(p[:, 1], q[:, 1])
    inter = np.maximum(iw, 0.0) * np.maximum(ih, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter / (pa + qa - inter) > thr


def _screen32(K: list[np.ndarray], Q: list[np.ndarray], work: list[np.ndarray]) -> np.ndarray:
    """The float32 screen of nms: for boxes K (5 (k, 1) columns x0, y0, x1, y1, c·area) and Q (5 (1, n) rows, the
    same quantities), D = inter − c (area_K + area_Q), (k, n). With c = t'/(1 + t'), D > 0 ⟺ inter/union > t'
    (union = area_K + area_Q − inter), without a division. Every temporary lives in the three flat float32
    buffers ``work``, allocated once per nms call (fresh multi-megabyte arrays cost page faults that can outweigh
    the arithmetic); the result is a view of ``work[0]``."""
    shape = (K[0].shape[0], Q[0].shape[1])
    iw, ih, tmp = (w[:shape[0] * shape[1]].reshape(shape) for w in work)
    np.minimum(K[2], Q[2], out=iw)                                              # (k, 1) with (1, n) -> (k, n)
    np.subtract(iw, np.maximum(K[0], Q[0], out=tmp), out=iw)
    np.maximum(iw, 0, out=iw)
    np.minimum(K[3], Q[3], out=ih)
    np.subtract(ih, np.maximum(K[1], Q[1], out=tmp), out=ih)
    np.maximum(ih, 0, out=ih)
    np.multiply(iw, ih, out=iw)                                                 # inter
    return np.subtract(iw, np.add(K[4], Q[4], out=tmp), out=iw)


def _fast_ok(b: np.ndarray, thr: float) -> bool:
    """Whether the float32 screen of nms cannot miss a pair on these float64 boxes: coordinates representable in
    float32 and of moderate magnitude (no overflow), positive sides not tiny (areas far from underflow), a
    threshold of at least 1e-3.

    Why: the screen passes a pair when D = inter − c (a_p + a_q) > 0 in float32, with c = t'/(1 + t') and
    t' = thr − 1e-4. A pair with exact IoU > thr has inter > thr/(1 + thr) · (a_p + a_q), and
    thr/(1 + thr) − c >= 1e-4/4, so its exact D is above 2.5e-5 (a_p + a_q); the float32 D is within about
    10 · 2^-24 (a_p + a_q) < 1e-6 (a_p + a_q) of the exact one (inputs exact in float32, a few roundings of
    2^-24 relative each, all terms bounded by a_p + a_q). Degenerate pairs give D <= 0, as their IoU is 0.
    """
    if thr < 1e-3 or not np.isfinite(b).all():
        return False
    if np.abs(b).max(initial=0.0) > 2.0 ** 60 or not np.array_equal(b.astype(np.float32).astype(np.float64), b):
        return False
    sides = np.concatenate([b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]])
    return not ((sides > 0) & (sides < 2.0 ** -40)).any()


def _nms_sorted(b: np.ndarray, thr: float, block: int = NMS_BLOCK, chunk: int = NMS_CHUNK) -> np.ndarray:
    """Greedy NMS of float64 boxes (n, 4) already sorted best first: positions of the kept ones, increasing.

    The boxes are taken in blocks of ``block``: a block's boxes are first tested against all boxes kept so far
    (a (kept, block) matrix, in chunks of ``chunk`` kept boxes), then the survivors are resolved in order with the
    block's own IoU matrix (a box is dropped when an earlier kept box of the block overlaps it by more than thr).
    That is the greedy order exactly, in O(chunk · block) memory.

    The (kept, block) test is screened in float32 (numpy: one thread, no waiting on torch's intra-op threads,
    which on a busy machine costs more than these small operations) where :func:`_fast_ok` says the screen cannot
    miss a pair, and the pairs that pass are decided in float64; else it is done in float64 outright.
    """
    n = len(b)
    area = np.maximum(b[:, 2] - b[:, 0], 0.0) * np.maximum(b[:, 3] - b[:, 1], 0.0)
    fast = _fast_ok(b, thr)
    if fast:
        t = thr - _FAST_EPS
        cols = np.ascontiguousarray(np.concatenate([b, (area * (t / (1.0 + t)))[:, None]], 1).T, np.float32)
        kept_cols = np.empty((5, n), np.float32)    # rows x0, y0, x1, y1, c·area of cols and of the kept boxes
        work = [np.empty(min(chunk, n) * min(block, n), np.float32) for _ in range(3)]
    kept = np.empty(n, np.int64)
    k = 0
    for s in range(0, n, block):
        e = min(n, s + block)
        alive = np.ones(e - s, bool)
        if fast:
            Q = [v[None, s:e] for v in cols]                                    # 5 x (1, e − s)
        step = chunk if fast else max(1, chunk // 8)  # float64 temporaries: smaller, no buffers
        for c0 in range(0, k, step):
            c1 = min(k, c0 + step)
            if fast:
                d = _screen32([v[c0:c1, None] for v in kept_cols], Q, work)    # (c1 − c0, e − s)
                cols_near = np.flatnonzero(d.max(0) > 0)
                if len(cols_near):                     # the pairs that may suppress, decided in float64
                    ki, ci = np.nonzero(d[:, cols_near] > 0)
                    kk, bi = kept[c0 + ki], cols_near[ci]
                    hit = _pair_iou_exceeds64(b[kk], area[kk], b[bi + s], area[bi + s], thr)
                    alive[bi[hit]] = False
            else:
                kb = kept[c0:c1]
                alive &= ~_iou_exceeds64(b[kb], area[kb], b[s:e], area[s:e], thr).any(0)
        cand = np.nonzero(alive)[0] + s                                              # (m,) positions
        if len(cand) > 1:
            over = _iou_exceeds64(b[cand], area[cand], b[cand], area[cand], thr)    # (m, m)
            live = np.ones(len(cand), bool)
            for i in range(len(cand) - 1):                                           # greedy order within the block
                if live[i]:
                    live[i + 1:] &= ~over[i, i + 1:]
            cand = cand[live]
        kept[k:k + len(cand)] = cand
        if fast:
            kept_cols[:, k:k + len(cand)] = cols[:, cand]
        k += len(cand)
    return kept[:k]


def _score_order(scores: np.ndarray) -> np.ndarray:
    """Indices by decreasing score, ties by increasing index."""
    return np.argsort(-scores, kind="stable")


def _nms_inputs(boxes, scores, iou_threshold, what: str) -> tuple[np.ndarray, np.ndarray, float]:
    _check_boxes(boxes, what)
    if not isinstance(scores, Tensor) or scores.dim() != 1 or scores.shape[0] != boxes.shape[0]:
        raise ValueError(f"{what}: scores must be a (N,) tensor with one score per box, got {_shape(scores)} for "
                         f"boxes {_shape(boxes)}")
    thr = _check_threshold(iou_threshold, what)
    b = boxes.detach().to("cpu", torch.float64).numpy()
    s = scores.detach().to("cpu", torch.float64).numpy()
    if np.isnan(s).any():
        raise ValueError(f"{what}: scores contain NaN at {np.nonzero(np.isnan(s))[0][:5].tolist()}; NMS needs an "
                         "order (drop or replace those boxes first)")
    return b, s, thr


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression (py-faster-rcnn's ``nms``, without its +1 in widths).

    Taking the boxes by decreasing score (ties: the lower index first), a box is kept unless a box kept before it
    overlaps it with IoU > iou_threshold (strictly: a pair at exactly the threshold both stay). Degenerate boxes
    overlap nothing, so they are always kept. No gradient; exact (decided in float64, see the module docstring).

    Args:
        boxes: (N, 4).
        scores: (N,).
        iou_threshold: in [0, 1].

    Returns:
        (K,) int64 indices of the kept boxes in decreasing score order, on the boxes' device.

    Raises:
        ValueError: boxes not (N, 4), scores not (N,) or with NaN, a threshold outside [0, 1].
    """
    b, s, thr = _nms_inputs(boxes, scores, iou_threshold, "nms")
    order = _score_order(s)
    keep = order[_nms_sorted(b[order], thr)]
    return torch.from_numpy(keep).to(boxes.device)


def batched_nms(boxes: Tensor, scores: Tensor, classes: Tensor, iou_threshold: float) -> Tensor:
    """:func:`nms` independently per class: boxes of different classes never suppress each other.

    Args:
        boxes: (N, 4).
        scores: (N,).
        classes: (N,) integer class of each box.
        iou_threshold: in [0, 1].

    Returns:
        (K,) int64 indices of the kept boxes of all classes, in decreasing score order (ties: the lower index
        first), on the boxes' device; the same set as running :func:`nms` on each class and merging.

    Raises:
        ValueError: as :func:`nms`, and classes not an integer (N,) tensor.
    """
    b, s, thr = _nms_inputs(boxes, scores, iou_threshold, "batched_nms")
    if (not isinstance(classes, Tensor) or classes.dim() != 1 or classes.shape[0] != boxes.shape[0]
            or classes.is_floating_point() or classes.is_complex()):
        dtype = f" {classes.dtype}" if isinstance(classes, Tensor) else ""
        raise ValueError(f"batched_nms: classes must be an integer (N,) tensor with one class per box, got "
                         f"{_shape(classes)}{dtype} for boxes {_shape(boxes)}")
    c = classes.detach().to("cpu", torch.int64).numpy()
    order = _score_order(s)                                                      # best first, over all classes
    c_sorted = c[order]
    by_class = np.argsort(c_sorted, kind="stable")                               # grouped, score order kept inside
    starts = np.flatnonzero(np.r_[True, np.diff(c_sorted[by_class]) != 0])
    ends = np.r_[starts[1:], len(by_class)]
    kept = [by_class[lo:hi][_nms_sorted(b[order[by_class[lo:hi]]], thr)] for lo, hi in zip(starts, ends)]
    pos = np.sort(np.concatenate(kept)) if kept else np.empty(0, np.int64)      # positions in the score order
    return torch.from_numpy(order[pos].astype(np.int64)).to(boxes.device)
