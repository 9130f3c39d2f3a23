"""The embedding loss of segmentation-aware networks: pull same-label neighbours together, push others apart.

Harley, Derpanis, Kokkinos, "Segmentation-Aware Convolutional Networks Using Local Attention Masks", ICCV 2017,
https://arxiv.org/abs/1708.04607. Official code (Caffe): https://github.com/aharley/segaware (``dist_loss``,
``im2dist``, ``im2parity`` layers; dilations 1, 2, 5 in ``scripts/test_res.sh``).

For every pixel i and every neighbour j of a 3x3 window at each dilation (METHODS.md §1.4):

    d_ij = sum_c |e_i^c - e_j^c|                               L1, as the code
    l_ij = max(d_ij - alpha, 0)   if label_i == label_j         Eq. 1, alpha = 0.5
    l_ij = max(beta - d_ij, 0)    if label_i != label_j         Eq. 2, beta = 2
    L = sum over dilations of the mean of l_ij over the valid pairs

Valid pairs: both pixels inside the image ("same" padding, out-of-image neighbours masked, not the code's pad-1
quirk that shrinks the dilated maps), neither label the ignore index (the code treats 255 as a class), and j ≠ i
(the centre pair has no loss; the code counts it in the mean). ``squared=True`` uses ½·hinge², the loss whose
gradient the code's backward actually applies (its reported value is the plain hinge).
"""

from __future__ import annotations

import torch
from torch import nn

from .local_attention_mask import shifted, window_distances, window_offsets


def embedding_loss(e: torch.Tensor, labels: torch.Tensor, alpha: float = 0.5, beta: float = 2.0,
                   dilations=(1, 2, 5), ignore_index: int = 255, squared: bool = False) -> torch.Tensor:
    """e (B, D, H, W) embedding, labels (B, H, W) int -> scalar loss (see the module docstring)."""
    if not 0 < alpha < beta:
        raise ValueError(f"the margins must satisfy 0 < alpha < beta, not alpha={alpha}, beta={beta}")
    if labels.shape != (e.shape[0], *e.shape[-2:]):
        raise ValueError(f"labels of shape {tuple(labels.shape)} do not fit the embedding {tuple(e.shape)}")
    total = e.new_zeros(())
    own_valid = labels != ignore_index
    for dil in dilations:
        d = window_distances(e, 3, dil, "l1")                                   # (B, 9, H, W)
        losses, counts = [], []
        for t, (dy, dx) in enumerate(window_offsets(3, dil)):
            if (dy, dx) == (0, 0):
                continue
            other = shifted(labels, dy, dx, fill=ignore_index)                # outside: ignored
            valid = own_valid & (other != ignore_index)
            same = labels == other
            hinge = torch.where(same, (d[:, t] - alpha).clamp_min(0), (beta - d[:, t]).clamp_min(0))
            if squared:
                hinge = 0.5 * hinge.pow(2)
            losses.append((hinge * valid).sum())
            counts.append(valid.sum())
        total = total + torch.stack(losses).sum() / torch.stack(counts).sum().clamp_min(1)
    return total


class EmbeddingLoss(nn.Module):
    """``forward(e, labels)``: ``embedding_loss`` with the options fixed at construction."""

    def __init__(self, alpha: float = 0.5, beta: float = 2.0, dilations=(1, 2, 5), ignore_index: int = 255,
                 squared: bool = False):
        super().__init__()
        self.alpha, self.beta, self.dilations = alpha, beta, tuple(dilations)
        self.ignore_index, self.squared = ignore_index, squared

    def forward(self, e: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return embedding_loss(e, labels, self.alpha, self.beta, self.dilations, self.ignore_index, self.squared)


__all__ = ["embedding_loss", "EmbeddingLoss"]
