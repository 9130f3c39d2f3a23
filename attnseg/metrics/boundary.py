"""Boundary metrics: IoU inside a trimap band around ground-truth boundaries, and the boundary F-score.

Trimap evaluation: Kohli, Ladicky & Torr, "Robust Higher Order Potentials for Enforcing Label Consistency",
IJCV 2009; Kraehenbuehl & Koltun, "Efficient Inference in Fully Connected CRFs with Gaussian Edge Potentials",
NIPS 2011; Chen et al., "Semantic Image Segmentation with Deep Convolutional Nets and Fully Connected CRFs"
(DeepLab), ICLR 2015, Fig. 5. The confusion matrix is restricted to the pixels near a ground-truth boundary.

Boundary F-score: Csurka, Larlus & Perronnin, "What is a good evaluation measure for semantic segmentation?",
BMVC 2013; Perazzi et al., "A Benchmark Dataset and Evaluation Methodology for Video Object Segmentation"
(DAVIS contour accuracy F), CVPR 2016. Precision and recall of predicted against ground-truth boundary pixels,
matched within a distance tolerance (nearest neighbour by k-d tree, not DAVIS's one-to-one bipartite matching,
so several predicted pixels may match one ground-truth pixel, as in Csurka et al.). A pixel's class is the label
it carries, so class c's edge is compared only with class c's edge: a straight edge predicted s px off scores
F = 1 for s <= w and 0 beyond.

Conventions shared by everything in this file:
    * A boundary pixel is a labelled pixel with a 4-neighbour that holds a *different labelled* value, so both
      sides of an edge are boundary pixels. The image border is not a boundary.
    * Ignore pixels (``ignore_index``, or outside ``[0, num_classes)`` when that is given) are never boundaries
      and do not make their labelled neighbours boundaries: a class next to an unlabelled region has no edge
      there. With ``bridge_ignore=True`` every ignore pixel first takes the label of its nearest labelled pixel,
      so that class edges hidden under a void outline (PASCAL VOC draws a ~5 px void band around each object)
      become boundaries, in the middle of the void. Ignore pixels never enter a confusion matrix either way;
      the F-score, once bridged, counts the boundary pixels that lie under the void, since the edges are there.
    * Distances are Euclidean between pixel centres (not Chebyshev), and "within w px" means distance <= w.
      A straight edge therefore gets a band ``2 * (w + 1)`` pixels across (w + 1 on each side); ``width=0``
      is the boundary pixels themselves.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from scipy.spatial import cKDTree

from .segmentation import ConfusionMatrix, confusion_counts

ArrayLike = torch.Tensor | np.ndarray


def boundary_mask(
    label: ArrayLike, ignore_index: int = 255, *, num_classes: int | None = None, bridge_ignore: bool = False
) -> np.ndarray:
    """Boundary pixels of a ground-truth label map (see the module docstring for the definition).

    Args:
        label: (H, W) class ids.
        ignore_index: label value that is never a boundary.
        num_classes: when given, values outside ``[0, num_classes)`` are treated as ignore too.
        bridge_ignore: fill ignore pixels with the nearest label before looking for edges.

    Returns:
        (H, W) bool array.
    """
    label, valid = _prepare_target(label, ignore_index, num_classes, bridge_ignore)
    return _edges(label, valid)


def boundary_band(
    label: ArrayLike,
    width: float,
    ignore_index: int = 255,
    *,
    num_classes: int | None = None,
    bridge_ignore: bool = False,
) -> np.ndarray:
    """The trimap band: pixels within ``width`` px (Euclidean) of a ground-truth boundary pixel.

    Args:
        label: (H, W) class ids.
        width: band half-width w >= 0 in pixels; a straight edge gets 2 * (w + 1) pixels across.
        ignore_index, num_classes, bridge_ignore: as in ``boundary_mask``.

    Returns:
        (H, W) bool array; all False when the label map has no boundary. Ignore pixels may lie inside the band:
        the metrics skip them.
    """
    if width < 0:
        raise ValueError(f"band width must be >= 0 pixels, got {width}")
    edges = boundary_mask(label, ignore_index, num_classes=num_classes, bridge_ignore=bridge_ignore)
    return within_distance(edges, width)


class BoundaryConfusion(ConfusionMatrix):
    """Confusion matrix restricted to the trimap band of width w around ground-truth boundaries.

    ``compute()`` returns the keys of ``metrics_from_confusion`` (aAcc, mIoU, mAcc, IoU, Acc), measured on the
    band pixels only. An image without any boundary adds nothing. With ``width`` at least the image diagonal,
    every pixel of an image that has a boundary is in the band, and the result equals ``ConfusionMatrix``'s.

    Args:
        num_classes: K.
        ignore_index: label value excluded from the counts (default 255).
        width: band half-width w in pixels (see ``boundary_band``).
        bridge_ignore: find edges under ignore regions (see the module docstring).
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, width: float = 5, bridge_ignore: bool = False):
        super().__init__(num_classes, ignore_index)
        if width < 0:
            raise ValueError(f"band width must be >= 0 pixels, got {width}")
        self.width = width
        self.bridge_ignore = bridge_ignore

    @torch.no_grad()
    def update(self, pred: ArrayLike, target: ArrayLike) -> None:
        """Adds the band pixels of (H, W) or (N, H, W) class-id maps ``pred`` and ``target``."""
        if tuple(pred.shape) != tuple(target.shape):
            raise ValueError(f"prediction shape {tuple(pred.shape)} differs from label shape {tuple(target.shape)}")
        targets = _as_numpy_batch(target)
        bands = np.stack([
            boundary_band(t, self.width, self.ignore_index, num_classes=self.num_classes,
                          bridge_ignore=self.bridge_ignore)
            for t in targets
        ])
        banded = np.where(bands, targets, self.ignore_index)  # outside the band counts as ignore
        self.mat += confusion_counts(_as_numpy_batch(pred), banded, self.num_classes, self.ignore_index)


def boundary_fscore(
    pred: ArrayLike,
    target: ArrayLike,
    num_classes: int,
    width: float = 2,
    ignore_index: int = 255,
    *,
    bridge_ignore: bool = False,
) -> dict:
    """Boundary F-score of one image: predicted vs ground-truth boundary pixels of each class, tolerance w.

    A predicted boundary pixel of class c is a hit when a ground-truth boundary pixel of class c lies within
    ``width`` px; precision = hits / predicted boundary pixels, recall likewise from the ground-truth side,
    F = 2PR / (P + R). Predicted boundaries are taken where the ground truth is labelled (after bridging).

    Args:
        pred: (H, W) predicted class ids in ``[0, num_classes)``.
        target: (H, W) ground-truth class ids.
        num_classes: K.
        width: tolerance w in pixels.
        ignore_index: label value that counts nowhere.
        bridge_ignore: find ground-truth edges under ignore regions (see the module docstring).

    Returns:
        See ``fscore_from_counts``.
    """
    return fscore_from_counts(_fscore_counts(pred, target, num_classes, width, ignore_index, bridge_ignore))


class BoundaryFScore:
    """Accumulates per-class boundary-pixel counts over images; ``compute()`` gives the boundary F-scores.

    Counts are pooled over the data set before dividing (as the confusion matrix pools pixels), so an image
    weighs by its boundary length; Csurka et al. average per-image scores instead, which ``boundary_fscore``
    per image gives. ``counts`` is a (K, 4) int64 array: predicted boundary pixels, their hits, ground-truth
    boundary pixels, their hits.

    Args:
        num_classes: K.
        ignore_index: label value that counts nowhere (default 255).
        width: tolerance w in pixels.
        bridge_ignore: find ground-truth edges under ignore regions (see the module docstring).
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, width: float = 2, bridge_ignore: bool = False):
        if width < 0:
            raise ValueError(f"boundary tolerance must be >= 0 pixels, got {width}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.width = width
        self.bridge_ignore = bridge_ignore
        self.counts = np.zeros((num_classes, 4), dtype=np.int64)

    def reset(self) -> None:
        self.counts[:] = 0

    def update(self, pred: ArrayLike, target: ArrayLike) -> None:
        """Adds (H, W) or (N, H, W) class-id maps ``pred`` and ``target``."""
        if tuple(pred.shape) != tuple(target.shape):
            raise ValueError(f"prediction shape {tuple(pred.shape)} differs from label shape {tuple(target.shape)}")
        for p, t in zip(_as_numpy_batch(pred), _as_numpy_batch(target), strict=True):
            self.counts += _fscore_counts(p, t, self.num_classes, self.width, self.ignore_index, self.bridge_ignore)

    def merge(self, other: BoundaryFScore | np.ndarray) -> None:
        """Adds another accumulator's counts (or a (K, 4) count array), e.g. from another process."""
        counts = other.counts if isinstance(other, BoundaryFScore) else np.asarray(other)
        if counts.shape != self.counts.shape:
            raise ValueError(f"cannot merge {counts.shape} counts into {self.counts.shape}")
        self.counts += counts.astype(np.int64)

    def compute(self) -> dict:
        return fscore_from_counts(self.counts)


def fscore_from_counts(counts: np.ndarray) -> dict:
    """Boundary precision, recall and F-score from (K, 4) counts (pred boundary, pred hits, gt boundary, gt hits).

    A class with boundary pixels on one side only scores F = 0; a class with none on either side is NaN and is
    left out of the mean.

    Returns:
        ``mBF``: mean of the per-class F-scores (NaN-skipping); ``aBF``: F-score of all classes' pixels pooled;
        ``BF``, ``BPrecision``, ``BRecall``: per-class lists (fractions, NaN where undefined).
    """
    counts = np.asarray(counts, dtype=np.float64)
    precision, recall, f = _prf(counts[:, 0], counts[:, 1], counts[:, 2], counts[:, 3])
    _, _, f_all = _prf(*counts.sum(0, keepdims=True).T)
    finite = np.isfinite(f)
    return {
        "mBF": float(f[finite].mean()) if finite.any() else float("nan"),
        "aBF": float(f_all[0]),
        "BF": f.tolist(),
        "BPrecision": precision.tolist(),
        "BRecall": recall.tolist(),
    }


def _prf(n_pred, hit_pred, n_gt, hit_gt) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F per entry; F is 0 when one side is empty and NaN when both are."""
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(n_pred > 0, hit_pred / n_pred, np.nan)
        recall = np.where(n_gt > 0, hit_gt / n_gt, np.nan)
        p, r = np.nan_to_num(precision), np.nan_to_num(recall)
        f = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    f = np.where((n_pred == 0) & (n_gt == 0), np.nan, f)
    return precision, recall, f


def _fscore_counts(
    pred: ArrayLike, target: ArrayLike, num_classes: int, width: float, ignore_index: int, bridge_ignore: bool
) -> np.ndarray:
    """(K, 4) counts of one (H, W) image: predicted boundary pixels, their hits, gt boundary pixels, their hits."""
    if width < 0:
        raise ValueError(f"boundary tolerance must be >= 0 pixels, got {width}")
    target, valid = _prepare_target(target, ignore_index, num_classes, bridge_ignore)
    pred = _as_numpy_2d(pred)
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from label shape {target.shape}")
    if valid.any() and (pred[valid].min() < 0 or pred[valid].max() >= num_classes):
        raise ValueError(f"prediction holds class ids outside [0, {num_classes}) at labelled pixels")
    gt_points, gt_class = _edge_points(target, valid)
    pred_points, pred_class = _edge_points(pred, valid)
    counts = np.zeros((num_classes, 4), dtype=np.int64)
    counts[:, 0] = np.bincount(pred_class, minlength=num_classes)
    counts[:, 2] = np.bincount(gt_class, minlength=num_classes)
    for c in np.union1d(gt_class, pred_class):
        g, p = gt_points[gt_class == c], pred_points[pred_class == c]
        counts[c, 1], counts[c, 3] = _hits(p, g, width), _hits(g, p, width)
    return counts


def _edge_points(label: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, 2) row/column coordinates of the boundary pixels of ``label`` and (n,) their classes."""
    rows, cols = np.nonzero(_edges(label, valid))
    return np.stack([rows, cols], axis=1), label[rows, cols]


def _hits(src: np.ndarray, dst: np.ndarray, width: float) -> int:
    """How many of the (n, 2) points ``src`` have a point of ``dst`` within ``width`` px (Euclidean)."""
    if len(src) == 0 or len(dst) == 0:
        return 0
    # A k-d tree over the boundary points costs O(n log n) in the boundary length, whatever the image size
    # or the tolerance; the bound only prunes the search (a missing neighbour comes back as inf).
    dist, _ = cKDTree(dst).query(src, distance_upper_bound=width + 1)
    return int((dist <= width).sum())


def within_distance(mask: np.ndarray, width: float) -> np.ndarray:
    """Pixels at Euclidean distance <= ``width`` from a True pixel of ``mask`` (all False for an empty mask)."""
    if not mask.any():
        return np.zeros_like(mask)
    return ndimage.distance_transform_edt(~mask) <= width


def _edges(label: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Valid pixels with a valid 4-neighbour of a different label (both sides of every edge)."""
    edges = np.zeros(label.shape, dtype=bool)
    for axis in (0, 1):
        a, b = _shifted_pair(axis)
        step = (label[a] != label[b]) & valid[a] & valid[b]
        edges[a] |= step
        edges[b] |= step
    return edges


def _shifted_pair(axis: int) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Index pair selecting each pixel and its next neighbour along ``axis`` of a 2-D array."""
    head, tail = [slice(None)] * 2, [slice(None)] * 2
    head[axis], tail[axis] = slice(None, -1), slice(1, None)
    return tuple(head), tuple(tail)


def _prepare_target(
    label: ArrayLike, ignore_index: int, num_classes: int | None, bridge_ignore: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) int64 labels and their validity mask, ignore pixels filled by nearest label if ``bridge_ignore``."""
    label = _as_numpy_2d(label)
    valid = (label != ignore_index) & (label >= 0)
    if num_classes is not None:
        valid &= label < num_classes
    if bridge_ignore and valid.any() and not valid.all():
        nearest = ndimage.distance_transform_edt(~valid, return_distances=False, return_indices=True)
        label, valid = label[tuple(nearest)], np.ones_like(valid)
    return label, valid


def _as_numpy_2d(x: ArrayLike) -> np.ndarray:
    x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"expected one (H, W) label map, got shape {x.shape}")
    return x.astype(np.int64, copy=False)


def _as_numpy_batch(x: ArrayLike) -> np.ndarray:
    """(H, W) or (N, H, W) class ids -> (N, H, W) int64 numpy."""
    x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if x.ndim not in (2, 3):
        raise ValueError(f"expected (H, W) or (N, H, W) label maps, got shape {x.shape}")
    return x.astype(np.int64, copy=False).reshape(-1, *x.shape[-2:])
