"""The segmentation-aware bilateral filter: a normalised smoothing whose weights are local attention masks.

Harley, Derpanis, Kokkinos, "Segmentation-Aware Convolutional Networks Using Local Attention Masks", ICCV 2017,
https://arxiv.org/abs/1708.04607. Official code (Caffe): https://github.com/aharley/segaware (``norm_conv`` layer
with unit filter weights).

    y_i = sum_k x_{i+k} m_{i,k} / sum_k m_{i,k}                 Eq. 4 (x (B, C, H, W), m (B, k², H, W))

A zero embedding gives a box filter, e = position a Gaussian filter, e = (position, colour) a bilateral filter.
Every channel is filtered with the same weights (depthwise). The input is padded once and every tap is a view of
it, so autograd keeps the padded input and the mask, never k² shifted copies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .local_attention_mask import window_offsets


def segaware_filter(x: torch.Tensor, m: torch.Tensor, kernel_size: int, dilation: int = 1,
                    eps: float = 1e-6) -> torch.Tensor:
    """x (B, C, H, W) filtered by the (B, k², H, W) masks of a k×k window with dilation ``dilation`` (Eq. 4)."""
    B, C, H, W = x.shape
    offsets = window_offsets(kernel_size, dilation)
    if m.shape != (B, len(offsets), H, W):
        raise ValueError(f"mask of shape {tuple(m.shape)} does not fit a {kernel_size}x{kernel_size} window over "
                         f"input {tuple(x.shape)}: expected {(B, len(offsets), H, W)}")
    p = dilation * (kernel_size // 2)
    xp = F.pad(x, (p, p, p, p))                                          # (B, C, H + 2p, W + 2p), zeros outside
    y = None
    for t, (dy, dx) in enumerate(offsets):
        z = xp[:, :, p + dy:p + dy + H, p + dx:p + dx + W] * m[:, t:t + 1]   # (B, C, H, W): a view times the mask
        y = z if y is None else y + z
    return y / (m.sum(1, keepdim=True) + eps)
