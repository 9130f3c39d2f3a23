"""The segmentation-aware bilateral filter: a normalised smoothing whose weights are local attention masks.

Harley, Derpanis, Kokkinos, "Segmentation-Aware Convolutional Networks Using Local Attention Masks", ICCV 2017,
https://arxiv.org/abs/1708.04607. Official code (Caffe): https://github.com/aharley/segaware (``norm_conv`` layer
with unit filter weights).

    y_i = sum_k x_{i+k} m_{i,k} / sum_k m_{i,k}                 Eq. 4 (x (B, C, H, W), m (B, k², H, W))

A zero embedding gives a box filter, e = position a Gaussian filter, e = (position, colour) a bilateral filter.
Every channel is filtered with the same weights (depthwise). The input is padded once and every tap is a view of
it; a custom backward accumulates the input's gradient into one padded buffer, so neither pass builds k² shifted
or padded copies.

The weighted sums run in at least float32, also under autocast (``attnseg.nn.amp``: x and m are cast before the
Function, so their gradients come back in their own dtypes); the result has x's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .amp import at_least_fp32, common_dtype, no_autocast
from .local_attention_mask import inside, window_distances, window_offsets
from .tracing import is_exporting


def filter_forward(x: torch.Tensor, m: torch.Tensor, kernel_size: int, dilation: int, eps: float):
    """Eq. 4 on inputs of one dtype: (y (B, C, H, W), s (B, 1, H, W)) with y = z / s. The forward of
    ``_SegAwareFilter`` and, called directly, the export path (views of one padded copy: no size-dependent
    Python)."""
    H, W = x.shape[-2:]
    p = dilation * (kernel_size // 2)
    xp = F.pad(x, (p, p, p, p))                                          # (B, C, H + 2p, W + 2p), zeros outside
    z = torch.zeros_like(x)
    for (dy, dx), mt in zip(window_offsets(kernel_size, dilation), m.split(1, 1)):    # (few ops per tap: export)
        z.addcmul_(xp.narrow(2, p + dy, H).narrow(3, p + dx, W), mt)    # a view times the mask (B, 1, H, W)
    s = m.sum(1, keepdim=True) + eps                                     # (B, 1, H, W)
    return z / s, s


class _SegAwareFilter(torch.autograd.Function):
    """y = z / s with z = Σ_t x_t m_t and s = Σ_t m_t + ε (x_t: the input shifted by tap t, zeros outside).
    Backward, one tap at a time into one padded buffer (autograd of the sliced sum would build a padded-size
    gradient per tap): ∂L/∂x_t = (g / s) m_t, ∂L/∂m_t = Σ_c (g / s)(x_t − y)."""

    @staticmethod
    def forward(ctx, x, m, kernel_size: int, dilation: int, eps: float):
        with no_autocast(x.device.type):
            return _SegAwareFilter._forward(ctx, x, m, kernel_size, dilation, eps)

    @staticmethod
    def _forward(ctx, x, m, kernel_size, dilation, eps):
        y, s = filter_forward(x, m, kernel_size, dilation, eps)
        ctx.save_for_backward(x, m, y, s)
        ctx.window = (kernel_size, dilation)
        return y

    @staticmethod
    def backward(ctx, g):
        with no_autocast(g.device.type):      # backward() may be called inside an autocast block
            return _SegAwareFilter._backward(ctx, g)

    @staticmethod
    def _backward(ctx, g):
        x, m, y, s = ctx.saved_tensors
        g = g.to(x.dtype)
        kernel_size, dilation = ctx.window
        H, W = x.shape[-2:]
        p = dilation * (kernel_size // 2)
        xp = F.pad(x, (p, p, p, p))
        gz = g / s                                                        # (B, C, H, W)
        gxp = torch.zeros_like(xp)
        gm = torch.empty_like(m)
        base = (gz * y).sum(1)                                            # (B, H, W): Σ_c (g/s) y
        for t, (dy, dx) in enumerate(window_offsets(kernel_size, dilation)):
            view = (slice(None), slice(None), slice(p + dy, p + dy + H), slice(p + dx, p + dx + W))
            gxp[view].addcmul_(gz, m[:, t:t + 1])
            gm[:, t] = (gz * xp[view]).sum(1) - base
        return gxp[:, :, p:p + H, p:p + W], gm, None, None, None


def segaware_filter(x: torch.Tensor, m: torch.Tensor, kernel_size: int, dilation: int = 1,
                    eps: float = 1e-6) -> torch.Tensor:
    """x (B, C, H, W) filtered by the (B, k², H, W) masks of a k×k window with dilation ``dilation`` (Eq. 4);
    computed in at least float32, returned in x's dtype."""
    B, C, H, W = x.shape
    offsets = window_offsets(kernel_size, dilation)
    if m.shape != (B, len(offsets), H, W):
        raise ValueError(f"mask of shape {tuple(m.shape)} does not fit a {kernel_size}x{kernel_size} window over "
                         f"input {tuple(x.shape)}: expected {(B, len(offsets), H, W)}")
    dt = at_least_fp32(common_dtype(x, m))
    if is_exporting():   # the Function's forward as plain ops (its backward is of no use in an exported graph)
        with no_autocast(x.device.type):
            return filter_forward(x.to(dt), m.to(dt), kernel_size, dilation, eps)[0].to(x.dtype)
    return _SegAwareFilter.apply(x.to(dt), m.to(dt), kernel_size, dilation, eps).to(x.dtype)


def segaware_filter_cascade(x: torch.Tensor, e: torch.Tensor, windows=((3, 1), (3, 2), (3, 4), (3, 8)),
                            lam: float = 1.0, distance: str = "l1", iterations: int = 1) -> torch.Tensor:
    """A cascade of Eq. 4 filters with masks m = exp(-λ d(e)) (Eq. 3) over the (kernel size, dilation) windows in
    order, the sequence repeated ``iterations`` times with the same masks: the paper's replacement of DenseCRF
    inference ("a cascade of segmentation-aware filters"), and its flow filtering. Out-of-image taps get weight 0.
    x (B, C, H, W), e (B, D, H, W) -> (B, C, H, W)."""
    if x.dim() != 4 or e.dim() != 4 or x.shape[0] != e.shape[0] or x.shape[-2:] != e.shape[-2:]:
        raise ValueError(f"input {tuple(x.shape)} and embedding {tuple(e.shape)} must be (B, C, H, W) tensors of the "
                         "same batch and size; resize the embedding to the input")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, not {iterations}")
    H, W = x.shape[-2:]
    masks = {}
    for k, d in windows:                                                  # each window's masks once
        if (k, d) not in masks:
            masks[k, d] = torch.exp(-lam * window_distances(e, k, d, distance)) * inside(H, W, k, d, x.device)
    for _ in range(iterations):
        for k, d in windows:
            x = segaware_filter(x, masks[k, d], k, d)                    # masks (B, k², H, W)
    return x
