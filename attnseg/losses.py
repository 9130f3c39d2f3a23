"""Segmentation losses with an ignore index, and class weighting by median-frequency balancing.

Median-frequency balancing (Eigen & Fergus, ICCV 2015, https://arxiv.org/abs/1411.4734; used by SegNet on
CamVid): w_c = median_k(f_k) / f_c, where f_c = pixels of class c / pixels of the images in which c appears.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .nn.embedding_loss import embedding_loss


def class_pixel_stats(labels, num_classes: int, ignore_index: int = 255) -> tuple[np.ndarray, np.ndarray]:
    """Per class: pixel count, and total pixels of the images where the class appears. ``labels`` iterates
    (H, W) id arrays."""
    counts = np.zeros(num_classes, np.int64)
    image_pixels = np.zeros(num_classes, np.int64)
    for lab in labels:
        lab = np.asarray(lab)
        valid = lab[(lab != ignore_index) & (lab >= 0) & (lab < num_classes)]
        c = np.bincount(valid.ravel().astype(np.int64), minlength=num_classes)
        counts += c
        image_pixels += np.where(c > 0, valid.size, 0)
    return counts, image_pixels


def median_frequency_weights(counts: np.ndarray, image_pixels: np.ndarray) -> np.ndarray:
    """w_c = median(f) / f_c with f_c = counts_c / image_pixels_c; classes never seen get weight 0."""
    seen = counts > 0
    if not seen.any():
        raise ValueError("no labelled pixels: cannot compute median-frequency class weights")
    freq = np.zeros(len(counts), np.float64)
    freq[seen] = counts[seen] / image_pixels[seen]
    w = np.zeros(len(counts), np.float64)
    w[seen] = np.median(freq[seen]) / freq[seen]
    return w


def segmentation_loss(out: dict, target: torch.Tensor, ignore_index: int = 255, class_weights=None,
                      aux_weight: float = 0.4, label_smoothing: float = 0.0,
                      embedding_weight: float = 1.0) -> tuple[torch.Tensor, dict]:
    """Cross-entropy on ``out['logits']`` plus ``aux_weight`` x each ``out['aux']`` term, computed in fp32.
    A model may set its own weights per aux term in ``out['aux_weights']`` (attention to scale's E-Supv uses 1).
    When the model returns a per-pixel ``out['embedding']`` (B, D, H, W) (segmentation-aware networks), the
    embedding loss of Harley et al. (``attnseg.nn.embedding_loss``) on the target is added ``embedding_weight``
    times (0 switches it off).

    Returns (total, {"loss_main": ..., "loss_aux_<name>": ...}) with detached float parts for logging. An
    all-ignore batch gives a zero loss (not NaN) that still back-propagates.
    """
    weight = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32,
                                                                device=target.device)

    def ce(logits):
        valid = (target != ignore_index).sum()
        if valid == 0:
            return logits.float().sum() * 0.0
        return F.cross_entropy(logits.float(), target, weight=weight, ignore_index=ignore_index,
                               label_smoothing=label_smoothing)

    main = ce(out["logits"])
    parts = {"loss_main": main.detach()}
    total = main
    weights = out.get("aux_weights") or {}
    for name, logits in (out.get("aux") or {}).items():
        term = ce(logits)
        parts[f"loss_aux_{name}"] = term.detach()
        total = total + weights.get(name, aux_weight) * term
    if embedding_weight and out.get("embedding") is not None:
        term = embedding_loss(out["embedding"].float(), target, ignore_index=ignore_index)
        parts["loss_embedding"] = term.detach()
        total = total + embedding_weight * term
    return total, parts
