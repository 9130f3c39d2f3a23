"""Segmentation-aware convolution: every input patch is multiplied by its local attention mask before the filter.

Harley, Derpanis, Kokkinos, "Segmentation-Aware Convolutional Networks Using Local Attention Masks", ICCV 2017,
https://arxiv.org/abs/1708.04607. Official code (Caffe): https://github.com/aharley/segaware (im2col -> masked
columns -> convolution with ``bottom_is_im2col``).

    y_i = sum_k t_k x_{i+k} m_{i,k} [ / sum_k m_{i,k} ]  + b          Eq. 5 (normalised) or the code's unnormalised form

with x (B, C, H, W), the filter t (O, C, kh, kw), the mask m (B, k², H, W) (``LocalAttentionMask``, taps in raster
order), stride 1, "same" padding with zeros. With m ≡ 1 and no normalisation it is ``F.conv2d``.

Memory: the unfolded (B, C·k², H, W) tensor of the layer is never built, nor any padded or shifted copy of x. The
forward accumulates one tap at a time (a 1x1 convolution of the whole input, added over the outputs whose tap is
inside the image, times the mask), and the backward recomputes the taps instead of keeping them: besides the
inputs, only y (for the normalised form's gradient) is saved.

Mixed precision (``attnseg.nn.amp``): under ``torch.autocast`` the taps' 1x1 convolutions and the weight-gradient
products run in autocast's dtype (bf16 / fp16), as ``F.conv2d`` would, while the sum over the taps, the mask's sum
of the normalised form and every gradient accumulate in float32; x, m, the weight and the bias are cast to that
dtype before the Function, so each gets its gradient back in its own dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .amp import at_least_fp32, cast, lower_precision_dtype, no_autocast
from .local_attention_mask import overlap, window_offsets
from .tracing import is_exporting


class _SegAwareConv(torch.autograd.Function):
    """Tap t of offset o reads x at i + o. Since the mask is one number per output pixel and tap,
    W_t (x_{i+o} m_t(i)) = (W_t x)_{i+o} m_t(i): each tap is a 1x1 convolution of the whole (contiguous) input,
    z_t = W_t x, added into y over the outputs whose tap is inside the image (zero padding = leaving the rest out).
    No padded or shifted copy of x is made. Backward, per tap, over the same overlap:
        b = W_tᵀ g_i             ∂x_{i+o} += b m_t(i)          ∂W_t += Σ (g_i m_t(i)) x_{i+o}ᵀ
        ∂m_t(i) = Σ_c b_c x_{i+o,c}     (normalised: g is divided by s, and Σ_o g_i y_i / s is subtracted)

    All inputs share one dtype (the wrapper casts them); products run in it, sums accumulate in at least fp32."""

    @staticmethod
    def forward(ctx, x, m, weight, bias, dilation: int, normalize: bool, eps: float):
        with no_autocast(x.device.type):
            return _SegAwareConv._forward(ctx, x, m, weight, bias, dilation, normalize, eps)

    @staticmethod
    def _forward(ctx, x, m, weight, bias, dilation, normalize, eps):
        O, C, kh, kw = weight.shape
        H, W = x.shape[-2:]
        acc = at_least_fp32(x.dtype)
        y = x.new_zeros(x.shape[0], O, H, W, dtype=acc)
        for t, (dy, dx) in enumerate(window_offsets(kh, dilation)):
            (ry, ny), (rx, nx) = overlap(H, dy), overlap(W, dx)
            if ry.start == ry.stop or rx.start == rx.stop:
                continue                                                  # the tap is outside for every output
            z = F.conv2d(x, weight[:, :, t // kw, t % kw, None, None])   # (B, O, H, W): W_t x everywhere
            y[:, :, ry, rx].addcmul_(z[:, :, ny, nx], m[:, t:t + 1, ry, rx])
            del z
        s = m.sum(1, keepdim=True, dtype=acc) + eps if normalize else None   # (B, 1, H, W)
        if normalize:
            y.div_(s)
        y = y.to(x.dtype)
        ctx.save_for_backward(x, m, weight, y if normalize else None, s)
        ctx.dilation, ctx.normalize, ctx.has_bias = dilation, normalize, bias is not None
        return y if bias is None else y + bias.view(1, -1, 1, 1)

    @staticmethod
    def backward(ctx, g):
        with no_autocast(g.device.type):      # backward() may be called inside an autocast block
            return _SegAwareConv._backward(ctx, g)

    @staticmethod
    def _backward(ctx, g):
        x, m, weight, y, s = ctx.saved_tensors
        O, C, kh, kw = weight.shape
        H, W = x.shape[-2:]
        dt, acc = x.dtype, at_least_fp32(x.dtype)
        gz = (g.to(acc) / s).to(dt) if ctx.normalize else g.to(dt)        # (B, O, H, W)
        gx, gm, gw = (torch.zeros_like(t, dtype=acc) for t in (x, m, weight))
        for t, (dy, dx) in enumerate(window_offsets(kh, ctx.dilation)):
            (ry, ny), (rx, nx) = overlap(H, dy), overlap(W, dx)
            if ry.start == ry.stop or rx.start == rx.stop:
                continue
            wt = weight[:, :, t // kw, t % kw]                            # (O, C)
            g_i = gz[:, :, ry, rx]                                        # (B, O, h, w): outputs with tap inside
            x_o = x[:, :, ny, nx]                                         # (B, C, h, w): what they read
            mt = m[:, t:t + 1, ry, rx]                                    # (B, 1, h, w)
            u = g_i * mt                                                  # (B, O, h, w)
            gw[:, :, t // kw, t % kw] = torch.einsum("bohw,bchw->oc", u, x_o)
            del u
            back = F.conv2d(g_i, wt.t()[:, :, None, None])                # (B, C, h, w): W_tᵀ g
            gm[:, t, ry, rx] = torch.linalg.vecdot(back, x_o, dim=1)      # Σ_c (W_tᵀ g)_c x_{i+o,c}
            gx[:, :, ny, nx].addcmul_(back, mt)                           # W_tᵀ (g m_t) read x at i + o
            del back
        if ctx.normalize:                                                 # y = z / s, s = sum_k m_k + eps
            gm -= torch.linalg.vecdot(g.to(acc), y.to(acc), dim=1).unsqueeze(1) / s
        gb = g.sum((0, 2, 3), dtype=acc).to(dt) if ctx.has_bias else None
        return gx.to(dt), gm.to(dt), gw.to(dt), gb, None, None, None


def segaware_conv2d(x: torch.Tensor, m: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                    dilation: int = 1, normalize: bool = False, eps: float = 1e-6) -> torch.Tensor:
    """x (B, C, H, W), m (B, k², H, W), weight (O, C, k, k) odd k -> (B, O, H, W); see the module docstring.
    The result has autocast's dtype under autocast, else the inputs' promoted dtype."""
    O, C, kh, kw = weight.shape
    if kh != kw or kh % 2 != 1:
        raise ValueError(f"segmentation-aware convolution takes square odd kernels, not {kh}x{kw}")
    if x.shape[1] != C:
        raise ValueError(f"input has {x.shape[1]} channels, the filter {C}")
    if m.shape != (x.shape[0], kh * kw, *x.shape[-2:]):
        raise ValueError(f"mask of shape {tuple(m.shape)} does not fit a {kh}x{kw} window over input "
                         f"{tuple(x.shape)}: expected {(x.shape[0], kh * kw, *x.shape[-2:])}")
    dt = lower_precision_dtype(x, m, weight, bias)
    args = (cast(x, dt), cast(m, dt), cast(weight, dt), cast(bias, dt), dilation, normalize, eps)
    if is_exporting():   # plain ops, no Python slice bounds from the (symbolic) size; the same numbers
        with no_autocast(x.device.type):
            return segaware_conv2d_plain(*args)
    return _SegAwareConv.apply(*args)


def segaware_conv2d_plain(x: torch.Tensor, m: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                          dilation: int = 1, normalize: bool = False, eps: float = 1e-6) -> torch.Tensor:
    """``_SegAwareConv``'s forward with shape-agnostic ops, for export: tap t's 1x1 convolution W_t is applied to
    the view of one zero-padded copy of x that the tap reads (x_{i+o}, zeros outside, where W_t gives 0 as the
    Function's "leave it out" does), times the mask, summed in the same order. Same inputs (one dtype) and
    (B, O, H, W) result as the Function."""
    O, C, kh, kw = weight.shape
    H, W = x.shape[-2:]
    p = dilation * (kh // 2)
    acc = at_least_fp32(x.dtype)
    xp = F.pad(x, (p, p, p, p))                                          # (B, C, H + 2p, W + 2p)
    y = x.new_zeros(x.shape[0], O, H, W, dtype=acc)
    taps = weight.permute(2, 3, 0, 1).reshape(kh * kw, O, C, 1, 1).unbind(0)   # k² x (O, C, 1, 1), raster order
    for (dy, dx), wt, mt in zip(window_offsets(kh, dilation), taps, m.split(1, 1)):
        z = F.conv2d(xp.narrow(2, p + dy, H).narrow(3, p + dx, W), wt)   # (B, O, H, W): W_t x_{i+o}
        y = torch.addcmul(y, z, mt)                                      # times m_t(i) (B, 1, H, W)
    if normalize:
        y = y / (m.sum(1, keepdim=True, dtype=acc) + eps)                # (B, 1, H, W)
    y = y.to(x.dtype)
    return y if bias is None else y + bias.view(1, -1, 1, 1)


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
