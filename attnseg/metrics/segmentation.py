"""Semantic-segmentation metrics from one confusion matrix (rows = ground truth, columns = prediction).

aAcc = trace / total; per class c: IoU = TP / (TP + FP + FN), Acc = TP / (TP + FN). A class with no ground-truth
and no predicted pixels gets NaN and is left out of the means (mmsegmentation's ``nanmean`` convention); a class
that is predicted but absent from the ground truth has IoU 0 and counts in mIoU (its Acc is NaN: no pixel to
recall). Every other metric of the package (the trimap band, the report) reuses this one bincount.
"""

from __future__ import annotations

import numpy as np
import torch

ArrayLike = torch.Tensor | np.ndarray


def _as_long_tensor(x: ArrayLike) -> torch.Tensor:
    """Any integer array or tensor -> int64 tensor on its own device (numpy arrays land on the CPU)."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    return x.long()


def confusion_counts(pred: ArrayLike, target: ArrayLike, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """One (K, K) int64 count matrix, rows = ground truth, columns = prediction, on the CPU.

    Pixels whose ground truth is ``ignore_index`` or outside ``[0, K)`` are skipped. A prediction outside
    ``[0, K)`` at a counted pixel is a bug upstream (argmax cannot produce one) and raises, rather than
    being clamped silently onto a real class.

    Args:
        pred: predicted class ids, any shape.
        target: ground-truth class ids, same shape as ``pred``.
        num_classes: K.
        ignore_index: label value that counts nowhere.
    """
    if tuple(pred.shape) != tuple(target.shape):
        raise ValueError(f"prediction shape {tuple(pred.shape)} differs from label shape {tuple(target.shape)}")
    K = num_classes
    pred, target = _as_long_tensor(pred).reshape(-1), _as_long_tensor(target).reshape(-1)
    target = target.to(pred.device)
    keep = (target != ignore_index) & (target >= 0) & (target < K)
    pred, target = pred[keep], target[keep]
    if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= K):
        raise ValueError(
            f"prediction holds class ids outside [0, {K}) (min {int(pred.min())}, max {int(pred.max())}) at "
            "labelled pixels; pass argmax class ids and check num_classes")
    # Counting happens where the tensors live; only the K*K result travels to the CPU.
    return torch.bincount(target * K + pred, minlength=K * K).reshape(K, K).cpu()


class ConfusionMatrix:
    """Accumulates a (K, K) int64 confusion matrix over batches; rows = ground truth, columns = prediction.

    ``ignore_index`` pixels and ground-truth values outside ``[0, K)`` are skipped. ``update`` takes class-id
    tensors or numpy arrays of equal shape (any layout, any device); ``compute()`` returns the metrics.

    Args:
        num_classes: K.
        ignore_index: label value excluded from the counts (default 255).
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        self.mat.zero_()

    @torch.no_grad()
    def update(self, pred: ArrayLike, target: ArrayLike) -> None:
        """Adds the pixels of one batch: ``pred`` and ``target`` hold class ids and have the same shape."""
        self.mat += confusion_counts(pred, target, self.num_classes, self.ignore_index)

    def merge(self, other: ConfusionMatrix | ArrayLike) -> None:
        """Adds another matrix (a ``ConfusionMatrix`` or a (K, K) count array), e.g. from another process."""
        mat = other.mat if isinstance(other, ConfusionMatrix) else torch.as_tensor(other)
        if tuple(mat.shape) != tuple(self.mat.shape):
            raise ValueError(f"cannot merge a {tuple(mat.shape)} matrix into a {tuple(self.mat.shape)} one")
        self.mat += mat.to(self.mat)

    def compute(self) -> dict:
        """Returns aAcc, mIoU, mAcc (fractions in [0, 1]) and per-class ``IoU``/``Acc`` lists (NaN = absent)."""
        return metrics_from_confusion(self.mat.numpy())


def metrics_from_confusion(mat: np.ndarray) -> dict:
    """Metrics of a (K, K) confusion matrix, rows = ground truth, columns = prediction.

    Returns:
        ``aAcc``, ``mIoU``, ``mAcc``: floats in [0, 1] (NaN when nothing was counted);
        ``IoU``, ``Acc``: lists of K floats, NaN for a class with no pixel to score.
    """
    mat = np.asarray(mat, dtype=np.float64)
    if mat.ndim != 2 or mat.shape[0] != mat.shape[1]:
        raise ValueError(f"confusion matrix must be square (K, K), got shape {mat.shape}")
    tp = np.diag(mat)
    gt = mat.sum(1)
    pred = mat.sum(0)
    union = gt + pred - tp
    total = mat.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(gt > 0, tp / gt, np.nan)
    return {
        "aAcc": float(tp.sum() / total) if total > 0 else float("nan"),
        "mIoU": _nanmean(iou),
        "mAcc": _nanmean(acc),
        "IoU": iou.tolist(),
        "Acc": acc.tolist(),
    }


def _nanmean(x: np.ndarray) -> float:
    """Mean over the finite entries; NaN (without numpy's warning) when there is none."""
    finite = np.isfinite(x)
    return float(x[finite].mean()) if finite.any() else float("nan")
