"""Segmentation-aware convolution: every input patch is multiplied by its local attention mask before the filter.

Harley, Derpanis, Kokkinos, "Segmentation-Aware Convolutional Networks Using Local Attention Masks", ICCV 2017,
https://arxiv.org/abs/1708.04607. Official code (Caffe): https://github.com/aharley/segaware (im2col -> masked
columns -> convolution with ``bottom_is_im2col``).

    y_i = sum_k t_k x_{i+k} m_{i,k} [ / sum_k m_{i,k} ]  + b          Eq. 5 (normalised) or the code's unnormalised form

with x (B, C, H, W), the filter t (O, C, kh, kw), the mask m (B, k², H, W) (``LocalAttentionMask``, taps in raster
order), stride 1, "same" padding with zeros. With m ≡ 1 and no normalisation it is ``F.conv2d``.

Memory: the unfolded (B, C·k², H, W) tensor of the layer is never built. The forward accumulates one tap at a time
(a shifted, masked copy of x and a 1x1 convolution), and the backward recomputes the taps instead of keeping them:
besides the inputs, only y (for the normalised form's gradient) is saved.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .local_attention_mask import window_offsets


class _SegAwareConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, m, weight, bias, dilation: int, normalize: bool, eps: float):
        O, C, kh, kw = weight.shape
        H, W = x.shape[-2:]
        p = dilation * (kh // 2)
        xp = F.pad(x, (p, p, p, p))                                      # padded once; every tap is a view
        y = x.new_zeros(x.shape[0], O, H, W)
        for t, (dy, dx) in enumerate(window_offsets(kh, dilation)):
            xs = xp[:, :, p + dy:p + dy + H, p + dx:p + dx + W]          # (B, C, H, W): tap t (a view)
            # the mask is one number per output pixel and tap, so W_t (x_t m_t) = (W_t x_t) m_t: no masked copy
            y.addcmul_(F.conv2d(xs, weight[:, :, t // kw, t % kw, None, None]), m[:, t:t + 1])   # (B, O, H, W)
        s = m.sum(1, keepdim=True) + eps if normalize else None          # (B, 1, H, W)
        if normalize:
            y = y / s
        ctx.save_for_backward(x, m, weight, y if normalize else None, s)
        ctx.dilation, ctx.normalize, ctx.has_bias = dilation, normalize, bias is not None
        return y if bias is None else y + bias.view(1, -1, 1, 1)

    @staticmethod
    def backward(ctx, g):
        x, m, weight, y, s = ctx.saved_tensors
        O, C, kh, kw = weight.shape
        H, W = x.shape[-2:]
        p = ctx.dilation * (kh // 2)
        xp = F.pad(x, (p, p, p, p))
        gz = g / s if ctx.normalize else g                                # (B, O, H, W)
        gxp, gm, gw = torch.zeros_like(xp), torch.empty_like(m), torch.empty_like(weight)
        for t, (dy, dx) in enumerate(window_offsets(kh, ctx.dilation)):
            xs = xp[:, :, p + dy:p + dy + H, p + dx:p + dx + W]           # (B, C, H, W): tap t (a view)
            mt = m[:, t:t + 1]
            wt = weight[:, :, t // kw, t % kw]                            # (O, C)
            gw[:, :, t // kw, t % kw] = torch.einsum("bohw,bchw->oc", gz * mt, xs)
            back = torch.einsum("oc,bohw->bchw", wt, gz)                  # (B, C, H, W): dL/d(masked tap)
            gm[:, t] = torch.einsum("bchw,bchw->bhw", back, xs)
            gxp[:, :, p + dy:p + dy + H, p + dx:p + dx + W].addcmul_(back, mt)   # the tap read x at +(dy, dx)
        if ctx.normalize:                                                 # y = z / s, s = sum_k m_k + eps
            gm -= (g * y).sum(1, keepdim=True) / s
        gb = g.sum((0, 2, 3)) if ctx.has_bias else None
        gx = gxp[:, :, p:p + H, p:p + W]
        return gx, gm, gw, gb, None, None, None


def segaware_conv2d(x: torch.Tensor, m: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                    dilation: int = 1, normalize: bool = False, eps: float = 1e-6) -> torch.Tensor:
    """x (B, C, H, W), m (B, k², H, W), weight (O, C, k, k) odd k -> (B, O, H, W); see the module docstring."""
    O, C, kh, kw = weight.shape
    if kh != kw or kh % 2 != 1:
        raise ValueError(f"segmentation-aware convolution takes square odd kernels, not {kh}x{kw}")
    if x.shape[1] != C:
        raise ValueError(f"input has {x.shape[1]} channels, the filter {C}")
    if m.shape != (x.shape[0], kh * kw, *x.shape[-2:]):
        raise ValueError(f"mask of shape {tuple(m.shape)} does not fit a {kh}x{kw} window over input "
                         f"{tuple(x.shape)}: expected {(x.shape[0], kh * kw, *x.shape[-2:])}")
    return _SegAwareConv.apply(x, m, weight, bias, dilation, normalize, eps)


class SegAwareConv2d(nn.Conv2d):
    """A stride-1 "same" convolution gated by a local attention mask: ``forward(x, m)``; the parameters are those of
    ``nn.Conv2d`` (so pretrained convolution weights load unchanged)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1,
                 bias: bool = True, normalize: bool = False, eps: float = 1e-6):
        super().__init__(in_channels, out_channels, kernel_size, 1, dilation * (kernel_size // 2), dilation,
                         bias=bias)
        self.normalize, self.eps = normalize, eps

    def forward(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return segaware_conv2d(x, m, self.weight, self.bias, self.dilation[0], self.normalize, self.eps)
