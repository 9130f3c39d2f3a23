"""Losses of recurrent instance segmentation: soft IoU under a one-to-one matching of outputs to ground truth, the
box loss, and the monotone score loss.

Ren, Zemel, "End-to-End Instance Segmentation with Recurrent Attention", CVPR 2017, https://arxiv.org/abs/1605.09410,
§3.4 (eqs 9-11). Official code (TensorFlow): https://github.com/renmengye/rec-attend-public, ``modellib.py``
(``f_iou``, ``f_segm_match``, ``f_greedy_match``, ``f_bce_minmax``) and ``hungarian.cc`` (the matching op, no gradient).

    IoU(a, b) = Σ a·b / Σ (a + b − a·b + ε),  ε = 1e-5               soft IoU of masks in [0, 1]      (Eq. 9)
    M = argmax over one-to-one matchings of Σ M_tj IoU(y_t, y*_j)    no gradient                      (Eq. 10)
    L_y = −(1/B) Σ_b (1/|M_b|) Σ_tj M_tj IoU(y_t, y*_j)
    L_s = −(1/(B T)) Σ_t [ŝ_t log(min_{t'≤t} s_t') + (1 − ŝ_t) log(1 − max_{t'≥t} s_t')]               (Eq. 11)

The matching, as ``f_segm_match``: the IoU matrix is masked by the ground-truth count N on **both** axes (output t
may be matched only when t < N, ground truth j only when j < N), rounded to 1e-6, and matched by the Hungarian
method (``scipy.optimize.linear_sum_assignment``, maximising). So the first min(T, N) outputs are matched and
the score target is ŝ_t = 1 for t < N, 0 after.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .amp import no_autocast

IOU_EPS = 1e-5


def soft_iou(a: Tensor, b: Tensor, eps: float = IOU_EPS) -> Tensor:
    """Pairwise soft IoU (Eq. 9): a (B, T, H, W), b (B, N, H, W) in [0, 1] -> (B, T, N), in float32 or wider."""
    if a.dim() != 4 or b.dim() != 4 or a.shape[0] != b.shape[0] or a.shape[2:] != b.shape[2:]:
        raise ValueError(f"soft_iou takes masks (B, T, H, W) and (B, N, H, W) of one batch and size, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    a, b = a.to(dtype).flatten(2), b.to(dtype).flatten(2)              # (B, T, HW), (B, N, HW)
    with no_autocast(a.device.type):                                    # not in bf16 under the trainer's autocast
        inter = a @ b.transpose(1, 2)                                   # (B, T, N)
    hw = a.shape[-1]
    # Σ (a + b − ab + ε) over the pixels
    union = a.sum(-1)[:, :, None] + b.sum(-1)[:, None, :] - inter + eps * hw
    return inter / union


def hungarian_match(iou: Tensor, counts: Tensor) -> Tensor:
    """The maximum-IoU one-to-one matching of outputs to ground truth (Eq. 10), without gradient.

    Args:
        iou: (B, T, N) IoU of output t with ground truth j.
        counts: (B,) ground-truth counts N_b; output rows t ≥ N_b and columns j ≥ N_b are masked (as the code's
            ``f_segm_match``), so only the first min(T, N_b) outputs can be matched.

    Returns:
        (B, T, N) float 0/1 matrix with at most one 1 per row and per column.
    """
    from scipy.optimize import linear_sum_assignment
    if iou.dim() != 3 or counts.shape != (iou.shape[0],):
        raise ValueError(f"hungarian_match takes iou (B, T, N) and counts (B,), got {tuple(iou.shape)} and "
                         f"{tuple(counts.shape)}")
    scores = iou.detach().float().cpu().numpy()
    out = np.zeros(scores.shape, np.float32)
    for b, n in enumerate(counts.tolist()):
        rows, cols = min(int(n), scores.shape[1]), min(int(n), scores.shape[2])
        if rows == 0 or cols == 0:
            continue
        block = np.round(scores[b, :rows, :cols], 6) + 1e-6            # the code: round to 1e-6, + ε
        r, c = linear_sum_assignment(block, maximize=True)
        out[b, r, c] = 1
    return torch.from_numpy(out).to(iou.device)


def greedy_pick(iou: Tensor, used: Tensor) -> Tensor:
    """One step of the greedy match (``f_greedy_match``): per example, the not yet used ground truth of highest IoU
    (ties: the first, i.e. the largest instance). The code never marks a ground truth used (``grd_match_cum`` stays
    zero) and spreads ties over every slot; pass ``used`` with only the padding marked to get its re-use.

    Args:
        iou: (B, N) IoU of this step's output with each ground truth.
        used: (B, N) bool, ground truth already taken (or absent: padding columns must be marked used).

    Returns:
        (B,) int64 index of the chosen ground truth, −1 where none is left.
    """
    masked = torch.where(used, torch.full_like(iou, -1.0), iou.detach().float())
    best = masked.argmax(1)
    return torch.where(used.all(1), torch.full_like(best, -1), best)


def matched_iou_loss(iou: Tensor, match: Tensor) -> Tensor:
    """L = −(1/B) Σ_b (1/|M_b|) Σ_tj M_tj IoU_tj (|M_b| at least 1): iou and match (B, T, N) -> scalar."""
    per = (match * iou).flatten(1).sum(1) / match.flatten(1).sum(1).clamp_min(1)
    return -per.mean()


def monotone_score_loss(scores: Tensor, target: Tensor, eps: float = 1e-5) -> Tensor:
    """The monotone score loss (Eq. 11, ``f_bce_minmax``): an output that should be an object is judged by the
    lowest score up to it, one that should not by the highest score from it on, so the trained sequence of scores
    does not increase.

    Args:
        scores: (B, T) s_t in (0, 1).
        target: (B, T) ŝ_t in {0, 1}.
        eps: added inside the logarithms (the code's 1e-5).
    """
    if scores.shape != target.shape or scores.dim() != 2:
        raise ValueError(f"scores and targets must both be (B, T), got {tuple(scores.shape)} and {tuple(target.shape)}")
    s = scores.to(torch.promote_types(scores.dtype, torch.float32))  # float32, or float64 when given
    low = torch.cummin(s, 1).values                                   # min_{t' ≤ t} s_t'
    high = torch.flip(torch.cummax(torch.flip(s, [1]), 1).values, [1])  # max_{t' ≥ t} s_t'
    t = target.to(s.dtype)
    ll = t * torch.log(low + eps) + (1 - t) * torch.log(1 - high + eps)  # the code's + 1e-5 inside the logs
    return -ll.mean()


def gt_masks(instances: Tensor, max_count: int | None = None) -> tuple[Tensor, Tensor]:
    """(B, H, W) int ids (0 background, any positive ids) -> ((B, N, H, W) float 0/1 masks, padded with empty ones;
    (B,) counts). Instances are sorted by area, largest first (the code's ``area_sort``), and cut to the
    ``max_count`` largest; N = the largest count (at least 1)."""
    masks, counts = [], []
    for ids in instances:
        labels, areas = torch.unique(ids, return_counts=True)
        keep = labels > 0
        labels, areas = labels[keep], areas[keep]
        labels = labels[torch.argsort(areas, descending=True, stable=True)]
        if max_count is not None:
            labels = labels[:max_count]
        masks.append((ids[None] == labels[:, None, None]).float())    # (n, H, W)
        counts.append(len(labels))
    n = max(1, max(counts))
    H, W = instances.shape[-2:]
    out = instances.new_zeros((len(masks), n, H, W), dtype=torch.float32)
    for b, m in enumerate(masks):
        out[b, :len(m)] = m
    return out, torch.tensor(counts, dtype=torch.int64, device=instances.device)


def mask_boxes(masks: Tensor, counts: Tensor, pad_ratio: float = 0.2, pad_min: float = 20.0) -> Tensor:
    """Tight boxes of masks, padded: (B, N, H, W) -> (B, N, 4) (y0, x0, y1, x1) in pixel-edge coordinates, each side
    grown by max(pad_ratio · size, pad_min) and clipped to the image (the code's ``get_gt_box``:
    ``attn_box_padding_ratio`` 0.2, ``padding`` 16 + 4 at 224x224). Empty masks get an empty box at 0."""
    B, N, H, W = masks.shape
    rows, cols = masks.amax(3) > 0, masks.amax(2) > 0                   # (B, N, H), (B, N, W)
    ar_y = torch.arange(H, device=masks.device, dtype=torch.float32)
    ar_x = torch.arange(W, device=masks.device, dtype=torch.float32)
    big = 1e9
    y0 = torch.where(rows, ar_y, big).amin(-1)
    y1 = torch.where(rows, ar_y, -big).amax(-1) + 1
    x0 = torch.where(cols, ar_x, big).amin(-1)
    x1 = torch.where(cols, ar_x, -big).amax(-1) + 1
    present = rows.any(-1)
    hy = torch.clamp(pad_ratio * (y1 - y0), min=pad_min)               # per side
    hx = torch.clamp(pad_ratio * (x1 - x0), min=pad_min)
    box = torch.stack([(y0 - hy).clamp(0, H), (x0 - hx).clamp(0, W), (y1 + hy).clamp(0, H), (x1 + hx).clamp(0, W)], -1)
    return torch.where(present[..., None], box, torch.zeros_like(box))


def box_masks(boxes: Tensor, height: int, width: int) -> Tensor:
    """(..., 4) boxes (y0, x0, y1, x1) in pixel-edge coordinates -> (..., H, W) 0/1 masks of the pixels whose centre
    is inside."""
    ys = torch.arange(height, device=boxes.device, dtype=torch.float32) + 0.5
    xs = torch.arange(width, device=boxes.device, dtype=torch.float32) + 0.5
    inside_y = (ys >= boxes[..., 0:1]) & (ys < boxes[..., 2:3])        # (..., H)
    inside_x = (xs >= boxes[..., 1:2]) & (xs < boxes[..., 3:4])        # (..., W)
    return (inside_y[..., :, None] & inside_x[..., None, :]).float()
