"""Optical-flow metrics: endpoint error overall, near motion boundaries and away from them.

Endpoint error (EPE): Baker et al., "A Database and Evaluation Methodology for Optical Flow", IJCV 2011,
http://vision.middlebury.edu/flow/ : |f_pred(p) - f_gt(p)|₂ per pixel, averaged. Used to test the claim of
Harley, Derpanis, Kokkinos, "Segmentation-Aware Convolutional Networks Using Local Attention Masks", ICCV 2017,
https://arxiv.org/abs/1708.04607, that segmentation-aware filtering sharpens flow at motion boundaries.

Conventions shared by everything in this file:
    * Flow is (B, 2, H, W) or (2, H, W), channels (dx, dy).
    * A motion-boundary pixel is a pixel with a 4-neighbour whose ground-truth flow differs from its own by more
      than ``threshold`` px (Euclidean, default 0.5), so both sides of an edge are boundary pixels; a
      segmentation edge between layers that move alike is *not* a motion boundary. ``motion_boundaries`` can also
      take a segmentation (layer ids), whose edges are then boundaries too (``mode="segmentation"`` uses them
      alone, ``mode="either"`` both); the metrics use the flow definition.
    * The band of width w is every pixel within Euclidean distance <= w of a boundary pixel (a straight edge
      gets 2 (w + 1) pixels across); w = 0 is the boundary pixels themselves.
    * "near" = valid pixels in the band, "away" = valid pixels outside it; overall = all valid pixels (valid:
      the dataset's mask of pixels visible in frame 2, or every pixel when none is given).
    * ``FlowMetrics`` pools pixels over the whole dataset (sum of errors / number of pixels), it does not
      average per-image means.
"""

from __future__ import annotations

import numpy as np
import torch

from .boundary import within_distance


def _batched(t: torch.Tensor, dims: int) -> torch.Tensor:
    """Add the batch dimension to a single flow (2, H, W) or map (H, W)."""
    return t.unsqueeze(0) if t.dim() == dims - 1 else t


def endpoint_error(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """(B, 2, H, W) flows -> (B, H, W) per-pixel endpoint error |pred - gt|₂ (unbatched inputs: (H, W))."""
    if pred.shape != gt.shape or pred.shape[-3] != 2:
        raise ValueError(f"prediction {tuple(pred.shape)} and ground truth {tuple(gt.shape)} must be flows of the "
                         "same shape (B, 2, H, W) or (2, H, W); resize the prediction to the ground truth first")
    return (pred - gt).pow(2).sum(-3).sqrt()


def motion_boundaries(flow: torch.Tensor | None = None, threshold: float = 0.5,
                      segmentation: torch.Tensor | None = None, mode: str = "flow") -> torch.Tensor:
    """(B, H, W) bool motion-boundary pixels (see the module docstring).

    Args:
        flow: (B, 2, H, W) ground-truth flow (needed for ``mode`` "flow" and "either").
        threshold: the flow difference (px) between 4-neighbours that makes an edge.
        segmentation: (B, H, W) layer ids (needed for "segmentation" and "either").
        mode: "flow", "segmentation" or "either".
    """
    if mode not in ("flow", "segmentation", "either"):
        raise ValueError(f"mode must be 'flow', 'segmentation' or 'either', not {mode!r}")
    edges = []
    if mode in ("flow", "either"):
        if flow is None:
            raise ValueError(f"mode={mode!r} needs the ground-truth flow")
        f = _batched(flow, 4)
        dy = (f[:, :, 1:] - f[:, :, :-1]).pow(2).sum(1).sqrt() > threshold      # (B, H - 1, W)
        dx = (f[..., 1:] - f[..., :-1]).pow(2).sum(1).sqrt() > threshold        # (B, H, W - 1)
        edges.append((dy, dx))
    if mode in ("segmentation", "either"):
        if segmentation is None:
            raise ValueError(f"mode={mode!r} needs the segmentation")
        s = _batched(segmentation, 3)
        edges.append((s[:, 1:] != s[:, :-1], s[..., 1:] != s[..., :-1]))
    B, H, W = edges[0][1].shape[0], edges[0][0].shape[1] + 1, edges[0][1].shape[2] + 1
    out = torch.zeros(B, H, W, dtype=torch.bool, device=edges[0][0].device)
    for dy, dx in edges:
        out[:, 1:] |= dy                                  # both pixels of every differing pair
        out[:, :-1] |= dy
        out[..., 1:] |= dx
        out[..., :-1] |= dx
    return out


def boundary_band(boundaries: torch.Tensor, width: float = 3.0) -> torch.Tensor:
    """(B, H, W) bool boundary pixels -> (B, H, W) bool: pixels within Euclidean distance ``width`` of one (the
    trimap band of ``attnseg.metrics.boundary``, image by image)."""
    if width < 0:
        raise ValueError(f"band width must be >= 0 pixels, got {width}")
    b = _batched(boundaries, 3)
    band = np.stack([within_distance(m, width) for m in b.cpu().numpy()])      # (B, H, W)
    return torch.from_numpy(band).to(b.device)


def flow_epe(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor | None = None, width: float = 3.0,
             threshold: float = 0.5) -> dict:
    """EPE of one batch: {"epe", "epe_near", "epe_away"} (pixel means; NaN when a region is empty) and the pixel
    counts {"n", "n_near", "n_away"}. pred, gt (B, 2, H, W); valid (B, H, W) bool or None (every pixel)."""
    acc = FlowMetrics(width, threshold)
    acc.update(pred, gt, valid)
    return acc.compute()


class FlowMetrics:
    """Accumulates EPE over a dataset: ``update(pred, gt, valid)`` per batch, ``compute()`` at the end.

    Args:
        width: band width w (px) around motion boundaries.
        threshold: flow difference (px) that makes a motion boundary.
    """

    def __init__(self, width: float = 3.0, threshold: float = 0.5):
        self.width, self.threshold = width, threshold
        self.sums = {"all": 0.0, "near": 0.0, "away": 0.0}
        self.counts = {"all": 0, "near": 0, "away": 0}

    def update(self, pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        pred, gt = _batched(pred, 4), _batched(gt, 4)
        err = endpoint_error(pred.float(), gt.float())                          # (B, H, W)
        valid = torch.ones_like(err, dtype=torch.bool) if valid is None else _batched(valid, 3).bool()
        if valid.shape != err.shape:
            raise ValueError(f"valid mask {tuple(valid.shape)} does not fit the flow {tuple(gt.shape)}: expected "
                             f"{tuple(err.shape)}")
        band = boundary_band(motion_boundaries(gt, self.threshold), self.width)
        for key, mask in (("all", valid), ("near", valid & band), ("away", valid & ~band)):
            self.sums[key] += float(err[mask].double().sum())
            self.counts[key] += int(mask.sum())

    def compute(self) -> dict:
        def mean(key):
            return self.sums[key] / self.counts[key] if self.counts[key] else float("nan")
        return {"epe": mean("all"), "epe_near": mean("near"), "epe_away": mean("away"),
                "n": self.counts["all"], "n_near": self.counts["near"], "n_away": self.counts["away"]}


__all__ = ["endpoint_error", "motion_boundaries", "boundary_band", "flow_epe", "FlowMetrics"]
