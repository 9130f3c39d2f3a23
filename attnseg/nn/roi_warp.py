"""Differentiable RoI warping: crop a box of a feature map and resample it bilinearly to a fixed size.

Dai, He, Sun, "Instance-aware Semantic Segmentation via Multi-task Network Cascades", CVPR 2016,
https://arxiv.org/abs/1512.04412, §3.2 "differentiable RoI warping layer": the box predicted by stage 1 is cropped
from the shared features and warped to a fixed size by bilinear interpolation, a function of the features AND of
the box coordinates, so the losses of the mask stage and the category stage back-propagate into the box regression
(Eq. 4's ∂L/∂B terms); then §3.3's mask-based pathway, the warped features times the stage-2 mask (feature masking,
:func:`mask_pool`). Official code https://github.com/daijifeng001/MNC (the layers ``ROIWarpingLayer`` and
``MaskPoolingLayer`` of its Caffe fork, caffe-mnc). RoIAlign
(He, Gkioxari, Dollár, Girshick, "Mask R-CNN", ICCV 2017, https://arxiv.org/abs/1703.06870, §3, official code
https://github.com/facebookresearch/Detectron) is the same warp with several samples averaged per output bin
(:func:`roi_align`).

The warp is exactly torchvision's ``roi_align(..., sampling_ratio=s, aligned=True)`` (s >= 1; Detectron2's
ROIAlignV2: the half-cell shift below, which the original Mask R-CNN code did not have). For an RoI (x0, y0, x1, y1)
in input pixels, an output of oh x ow bins, s = sampling_ratio, a feature map of H x W cells:

    X0 = x0·scale − 0.5, X1 = x1·scale − 0.5 (likewise Y)     the box in cell-centre coordinates (cell j's centre is j)
    bw = (X1 − X0)/ow, bh = (Y1 − Y0)/oh                      the bin size (a box may be smaller than a cell)
    x_{q, u} = X0 + (q + (u + 0.5)/s)·bw,  q < ow, u < s     the s x s sample points of bin (p, q): sub-bin centres
    y_{p, v} = Y0 + (p + (v + 0.5)/s)·bh,  p < oh, v < s
    out[p, q] = (1/s²) Σ_{u, v} f(y_{p, v}, x_{q, u})
    f(y, x) = 0 when y < −1 or y > H or x < −1 or x > W;      a point more than a cell outside the map
    otherwise y, x clamped into [0, H − 1] x [0, W − 1] and the features sampled bilinearly there.

sampling_ratio = 1 (one bilinear sample at each bin centre) is MNC's warping layer; RoIAlign's usual setting is 2.

Implementation: ``F.grid_sample`` (bilinear, padding_mode "border", align_corners=False, whose unnormalised
coordinate ((g + 1)·W − 1)/2 is the cell-centre coordinate above and whose border padding is the clamp), times the
mask of the points within range, then the mean over each bin's s x s samples. The RoIs are grouped by image: per
image one grid (1, R_b·oh·s, ow·s, 2) over that image's features, never a copy of the features per RoI; the
results are written back into the RoIs' order. The gradient w.r.t. the boxes is grid_sample's gradient w.r.t. the
grid (0 where a point is clamped or masked).

Mixed precision: computed in at least float32 with autocast disabled and returned in that dtype (bf16 features give
a float32 output; float64 stays). Device: any (CPU, CUDA); a few host synchronisations (the batch_index range
check, whether any point is out of range, the per-image counts).
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import Tensor

from .amp import compute_dtype, no_autocast


def _shape(x) -> str:
    return str(tuple(x.shape)) if isinstance(x, Tensor) else type(x).__name__


def _check_output_size(size, what: str) -> tuple[int, int]:
    if isinstance(size, numbers.Integral) and not isinstance(size, bool):
        size = (size, size)
    ok = isinstance(size, (tuple, list, torch.Size)) and len(size) == 2 and all(
        isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 1 for s in size)
    if not ok:
        raise ValueError(f"{what}: output_size must be a pair (oh, ow) of ints >= 1 (or one int), not {size!r}")
    return int(size[0]), int(size[1])


def _check_rois(features, boxes, batch_index, what: str) -> tuple[Tensor, int]:
    if not isinstance(features, Tensor) or features.dim() != 4:
        raise ValueError(f"{what} takes features (B, C, H, W), got {_shape(features)}")
    if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[-1] != 4 or not boxes.is_floating_point():
        dtype = f" {boxes.dtype}" if isinstance(boxes, Tensor) else ""
        raise ValueError(f"{what}: boxes must be a float (R, 4) tensor of (x0, y0, x1, y1) input pixels, got "
                         f"{_shape(boxes)}{dtype}")
    R = boxes.shape[0]
    if (not isinstance(batch_index, Tensor) or batch_index.dim() != 1 or batch_index.shape[0] != R
            or batch_index.is_floating_point() or batch_index.is_complex() or batch_index.dtype == torch.bool):
        dtype = f" {batch_index.dtype}" if isinstance(batch_index, Tensor) else ""
        raise ValueError(f"{what}: batch_index must be an integer (R,) tensor, the image of each RoI, got "
                         f"{_shape(batch_index)}{dtype} for boxes {_shape(boxes)}")
    if boxes.device != features.device or batch_index.device != features.device:
        raise ValueError(f"{what}: features ({features.device}), boxes ({boxes.device}) and batch_index "
                         f"({batch_index.device}) must be on one device; move them with .to(features.device)")
    B = features.shape[0]
    if R:
        lo, hi = int(batch_index.min()), int(batch_index.max())
        if lo < 0 or hi >= B:
            raise ValueError(f"{what}: batch_index holds {lo if lo < 0 else hi}, outside [0, {B}) for features of "
                             f"batch {B}; give each RoI the index of its image")
    return batch_index.long(), R


def roi_warp(features: Tensor, boxes: Tensor, batch_index: Tensor, output_size: tuple[int, int],
             spatial_scale: float = 1.0, sampling_ratio: int = 1) -> Tensor:
    """Warp each RoI of the features to ``output_size`` (the formulas of the module docstring).

    Args:
        features: (B, C, H, W).
        boxes: (R, 4) (x0, y0, x1, y1) in INPUT pixels (edge coordinates: pixel j spans [j, j + 1)).
        batch_index: (R,) integer, the image of each RoI, in [0, B).
        output_size: (oh, ow) bins (an int for a square).
        spatial_scale: feature cells per input pixel, 1 / the feature stride (> 0).
        sampling_ratio: s, the s x s bilinear samples averaged per bin (>= 1); 1 is MNC's warp.

    Returns:
        (R, C, oh, ow) in at least float32, differentiable w.r.t. the features and the boxes.

    Raises:
        ValueError: features not 4-D, boxes not float (R, 4), batch_index not an integer (R,) in [0, B) on the
            features' device, a bad output size, sampling_ratio < 1 or spatial_scale <= 0.
    """
    batch_index, R = _check_rois(features, boxes, batch_index, "roi_warp")
    oh, ow = _check_output_size(output_size, "roi_warp")
    if isinstance(sampling_ratio, bool) or not isinstance(sampling_ratio, numbers.Integral) or sampling_ratio < 1:
        raise ValueError(f"roi_warp: sampling_ratio must be an int >= 1 (samples per bin and axis; 1 is MNC's warp, "
                         f"2 RoIAlign's), not {sampling_ratio!r}")
    if (isinstance(spatial_scale, bool) or not isinstance(spatial_scale, numbers.Real)
            or not (math.isfinite(spatial_scale) and spatial_scale > 0)):
        raise ValueError(f"roi_warp: spatial_scale must be a positive number, 1 / the feature stride (e.g. 1/16), "
                         f"not {spatial_scale!r}")
    s = int(sampling_ratio)
    B, C, H, W = features.shape
    dtype = compute_dtype(features, boxes)
    device = features.device
    if R == 0:
        return features.new_zeros((0, C, oh, ow), dtype=dtype)
    with no_autocast(device.type):
        b = boxes.to(dtype) * spatial_scale          # (R, 4) in feature EDGE coordinates (cell j spans [j, j + 1))
        x0, y0, x1, y1 = b.unbind(-1)                                             # 4 x (R,)
        tx = (torch.arange(ow * s, device=device, dtype=dtype) + 0.5) / (ow * s)  # (ow·s,) = (q + (u + 0.5)/s)/ow
        ty = (torch.arange(oh * s, device=device, dtype=dtype) + 0.5) / (oh * s)  # (oh·s,)
        # sample points in edge coordinates, X = x + 0.5 of the module docstring's cell-centre x
        xs = x0[:, None] + (x1 - x0)[:, None] * tx[None]                          # (R, ow·s)
        ys = y0[:, None] + (y1 - y0)[:, None] * ty[None]                          # (R, oh·s)
        inside = (((ys >= -0.5) & (ys <= H + 0.5))[:, :, None]                    # y >= −1 and y <= H
                  & ((xs >= -0.5) & (xs <= W + 0.5))[:, None, :])                 # (R, oh·s, ow·s)
        gx = (2.0 / W) * xs - 1.0                                                 # align_corners=False: 2X/W − 1
        gy = (2.0 / H) * ys - 1.0
        grid = torch.stack([gx[:, None, :].expand(R, oh * s, ow * s),
                            gy[:, :, None].expand(R, oh * s, ow * s)], dim=-1)   # (R, oh·s, ow·s, 2) (x, y)
        masked = not bool(inside.all())
        if B == 1:
            order, counts = None, [R]
        else:
            order = torch.argsort(batch_index, stable=True)                       # RoIs grouped by image
            counts = torch.bincount(batch_index, minlength=B).tolist()
            grid, inside = grid[order], inside[order]
        out, start = None, 0
        for img, n in enumerate(counts):
            if n == 0:
                continue
            g = grid[start:start + n].reshape(1, n * oh * s, ow * s, 2)           # (n, oh·s, ow·s, 2) -> one grid
            v = F.grid_sample(features[img:img + 1].to(dtype), g, mode="bilinear", padding_mode="border",
                              align_corners=False)                                # (1, C, n·oh·s, ow·s)
            if masked:   # in place: grid_sample's backward does not need its output
                v.mul_(inside[start:start + n].reshape(1, 1, n * oh * s, ow * s).to(dtype))
            if s > 1 and v.numel() >= 1 << 16:   # the mean of each bin's s x s samples; bins never straddle
                v = F.avg_pool2d(v, s)              # two RoIs (oh·s rows each). (1, C, n·oh, ow)
            elif s > 1:                             # small: avg_pool2d's CPU kernel forks threads even for tiny inputs
                v = v.reshape(C, n * oh, s, ow, s).mean(dim=(2, 4))                # (C, n·oh, ow)
            v = v.reshape(C, n, oh, ow).permute(1, 0, 2, 3)                       # (n, C, oh, ow), a view
            if n == R:
                return v.contiguous()                                             # one image: in the RoIs' order
            if out is None:
                out = v.new_empty((R, C, oh, ow))
            out[order[start:start + n]] = v        # into the RoIs' own rows (index_put: its backward is a gather)
            start += n
        return out


def roi_align(features: Tensor, boxes: Tensor, batch_index: Tensor, output_size: tuple[int, int],
              spatial_scale: float = 1.0, sampling_ratio: int = 2) -> Tensor:
    """RoIAlign (Mask R-CNN), the special case of :func:`roi_warp` with s x s (default 2 x 2) samples per bin
    averaged; exactly ``roi_warp(..., sampling_ratio=sampling_ratio)``, torchvision's
    ``roi_align(..., sampling_ratio, aligned=True)``."""
    return roi_warp(features, boxes, batch_index, output_size, spatial_scale, sampling_ratio)


def mask_pool(roi_features: Tensor, masks: Tensor) -> Tensor:
    """MNC's mask pooling (§3.3): the warped RoI features times the RoI's soft mask.

    Args:
        roi_features: (R, C, h, w) warped features (:func:`roi_warp`).
        masks: (R, mh, mw) mask probabilities in the RoI's frame (stage 2's m x m output); resized bilinearly
            (``F.interpolate``, align_corners=False) to (h, w) first when the sizes differ.

    Returns:
        (R, C, h, w) in at least float32, differentiable w.r.t. both.

    Raises:
        ValueError: roi_features not 4-D, masks not (R, mh, mw) of the same R.
    """
    if not isinstance(roi_features, Tensor) or roi_features.dim() != 4:
        raise ValueError(f"mask_pool takes roi_features (R, C, h, w), got {_shape(roi_features)}")
    if not isinstance(masks, Tensor) or masks.dim() != 3 or masks.shape[0] != roi_features.shape[0]:
        raise ValueError(f"mask_pool: masks must be (R, m, m) probabilities, one per RoI, got {_shape(masks)} for "
                         f"roi_features {_shape(roi_features)}")
    dtype = compute_dtype(roi_features, masks)
    h, w = roi_features.shape[-2:]
    with no_autocast(roi_features.device.type):
        m = masks.to(dtype)[:, None]                                              # (R, 1, mh, mw)
        if tuple(m.shape[-2:]) != (h, w):
            m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)   # (R, 1, h, w)
        return roi_features.to(dtype) * m                                         # (R, C, h, w) * (R, 1, h, w)


def paste_masks(masks: Tensor, boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Resample each RoI mask into its box on the image (inference).

    Image pixel (x, y), centre (x + 0.5, y + 0.5), belongs to the box when x0 <= x + 0.5 < x1 and
    y0 <= y + 0.5 < y1; there it takes the mask bilinearly at the mask edge coordinates
    u = (x + 0.5 − x0)/(x1 − x0)·mw, v = (y + 0.5 − y0)/(y1 − y0)·mh (mask cell-centre coordinates u − 0.5, v − 0.5,
    clamped into [0, mw − 1] x [0, mh − 1], as ``F.grid_sample`` with border padding); outside the box it is 0.
    Only the pixels of each box's integer range are computed (a Python loop over the RoIs).

    Args:
        masks: (R, mh, mw) probabilities.
        boxes: (R, 4) (x0, y0, x1, y1) image pixels; a degenerate or non-finite box pastes nothing.
        size: (H, W) of the image.

    Returns:
        (R, H, W) in at least float32 (float32 for float32 / bf16 masks).

    Raises:
        ValueError: masks not (R, mh, mw), boxes not (R, 4), a bad size.
    """
    if not isinstance(masks, Tensor) or masks.dim() != 3:
        raise ValueError(f"paste_masks takes masks (R, m, m), got {_shape(masks)}")
    if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape != (masks.shape[0], 4):
        raise ValueError(f"paste_masks: boxes must be (R, 4) image pixels (x0, y0, x1, y1), one per mask, got "
                         f"{_shape(boxes)} for masks {_shape(masks)}")
    ok = isinstance(size, (tuple, list, torch.Size)) and len(size) == 2 and all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 0 for v in size)
    if not ok:
        raise ValueError(f"paste_masks: size must be the image's (H, W) as two ints >= 0, not {size!r}")
    H, W = int(size[0]), int(size[1])
    R = masks.shape[0]
    dtype = compute_dtype(masks)
    device = masks.device
    out = torch.zeros((R, H, W), dtype=dtype, device=device)
    coords = boxes.detach().to("cpu", torch.float64).tolist()
    with no_autocast(device.type):
        for r, (x0, y0, x1, y1) in enumerate(coords):
            if not all(math.isfinite(c) for c in (x0, y0, x1, y1)) or x1 <= x0 or y1 <= y0:
                continue
            xa, xb = max(0, math.ceil(x0 - 0.5)), min(W, math.ceil(x1 - 0.5))   # x0 <= x + 0.5 < x1
            ya, yb = max(0, math.ceil(y0 - 0.5)), min(H, math.ceil(y1 - 0.5))
            if xa >= xb or ya >= yb:
                continue
            px = torch.arange(xa, xb, device=device, dtype=torch.float64) + 0.5   # (ww,) pixel centres
            py = torch.arange(ya, yb, device=device, dtype=torch.float64) + 0.5   # (hh,)
            gx = (2 * (px - x0) / (x1 - x0) - 1).to(dtype)                        # 2u/mw − 1 (align_corners=False)
            gy = (2 * (py - y0) / (y1 - y0) - 1).to(dtype)
            grid = torch.stack([gx[None, :].expand(len(gy), len(gx)),
                                gy[:, None].expand(len(gy), len(gx))], dim=-1)   # (hh, ww, 2)
            v = F.grid_sample(masks[r][None, None].to(dtype), grid[None], mode="bilinear", padding_mode="border",
                              align_corners=False)                                # (1, 1, hh, ww)
            out[r, ya:yb, xa:xb] = v[0, 0]
    return out
