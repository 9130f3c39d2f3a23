"""Mean-field CRF whose message passing is segmentation-aware filtering (replaces DenseCRF).

Harley, Derpanis, Kokkinos, "Segmentation-Aware Convolutional Networks Using Local Attention Masks", ICCV 2017,
https://arxiv.org/abs/1708.04607. Official code (Caffe): https://github.com/aharley/segaware
(``norm_conv_meanfield`` layers, ``config/res/train.prototxt``; METHODS.md §1.7(b)).

Per iteration, with unary logits U (B, K, H, W) and embedding e (B, D, H, W):

    Q = softmax_K(current logits)                         (U at the first iteration)
    S = filter_xy(Q)       5x5 window, kernel exp(-½‖0.05·Δp‖²), normalised, centre and out-of-image taps removed
    A = filter_exy(Q)      13x13 window at dilation 9, kernel exp(-½‖[200·Δe, 0.05·Δp]‖²), likewise
    M = W_s S + W_b A      class-to-class 1x1 maps, initialised to the identity
    logits = U - K M       compatibility K (1x1), initialised to -I, so logits = U + M at first

2 iterations by default. The kernels are Eq. 4 filters (``segaware_filter``) with ``LocalAttentionMask`` masks
(½ squared L2, normalised by a max-subtracted softmax over the window, as NormConv: with the embedding scaled by
200 the distances are in the thousands and a plain exp would underflow to 0); everything is differentiable, so the
stage trains end to end on any model's logits.

The whole stage runs in at least float32, also under autocast (the energies need the range; the stage is cheap
beside the network), and returns float32 (float64 for float64 inputs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .amp import at_least_fp32, common_dtype, no_autocast
from .local_attention_mask import LocalAttentionMask
from .segaware_filter import segaware_filter


def pixel_coordinates(batch: int, height: int, width: int, device=None, dtype=None) -> torch.Tensor:
    """(B, 2, H, W): each pixel's (y, x)."""
    ys = torch.arange(height, device=device, dtype=dtype)
    xs = torch.arange(width, device=device, dtype=dtype)
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij"))           # (2, H, W)
    return grid.expand(batch, 2, height, width)


def _identity_1x1(k: int, sign: float = 1.0) -> nn.Conv2d:
    conv = nn.Conv2d(k, k, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(sign * torch.eye(k)[:, :, None, None])
    return conv


def _mix(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A bias-free class-to-class 1x1 map, in x's dtype (the CRF's, whatever the parameters')."""
    return F.conv2d(x, conv.weight.to(x.dtype))


class SegAwareCRF(nn.Module):
    """``forward(unary (B, K, H, W), e (B, D, H, W))`` -> refined logits (B, K, H, W).

    Args:
        num_classes: K.
        iterations: mean-field iterations (2).
        spatial_window, bilateral_window, bilateral_dilation: 5, 13, 9 (the released model's).
        pos_scale, emb_scale: the 0.05 on pixel coordinates and the 200 on the embedding.
        learnable: the compatibility and message weights train (the released scripts freeze them).
        scale: run the mean field on a grid resized by this factor (the released model runs it at half the network
            input's resolution). The result is the full-resolution unary plus the upsampled pairwise term,
            U - up(K M), so the unary's own detail is kept; 1.0 (default) is the exact full-resolution CRF.
    """

    def __init__(self, num_classes: int, iterations: int = 2, spatial_window: int = 5, bilateral_window: int = 13,
                 bilateral_dilation: int = 9, pos_scale: float = 0.05, emb_scale: float = 200.0,
                 learnable: bool = True, scale: float = 1.0):
        super().__init__()
        self.iterations, self.pos_scale, self.emb_scale, self.scale = iterations, pos_scale, emb_scale, scale
        self.spatial_window, self.bilateral_window, self.bilateral_dilation = (spatial_window, bilateral_window,
                                                                               bilateral_dilation)

        def mask(k, d):
            return LocalAttentionMask(k, d, distance="l2", init_lambda=1.0, learn_lambda=False, remove_center=True,
                                      remove_bounds=True, normalize=True)

        self.spatial_mask = mask(spatial_window, 1)
        self.bilateral_mask = mask(bilateral_window, bilateral_dilation)
        self.w_spatial, self.w_bilateral = _identity_1x1(num_classes), _identity_1x1(num_classes)
        self.compat = _identity_1x1(num_classes, -1.0)
        for p in self.parameters():
            p.requires_grad_(learnable)

    def forward(self, unary: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        dt = at_least_fp32(common_dtype(unary, e))
        with no_autocast(unary.device.type):
            return self._forward(unary.to(dt), e.to(dt))

    def _forward(self, unary: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        if self.scale != 1.0:
            size = unary.shape[-2:]
            small = [torch.sym_max(1, round(n * self.scale)) for n in size]   # sym_max: sizes stay symbolic in export
            u = F.interpolate(unary, size=small, mode="bilinear", align_corners=False, antialias=self.scale < 1)
            es = F.interpolate(e, size=small, mode="bilinear", align_corners=False, antialias=self.scale < 1)
            pairwise = self.mean_field(u, es) - u                                       # -K M on the small grid
            return unary + F.interpolate(pairwise, size=size, mode="bilinear", align_corners=False)
        return self.mean_field(unary, e)

    def mean_field(self, unary: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        B, _, H, W = unary.shape
        pos = self.pos_scale * pixel_coordinates(B, H, W, unary.device, unary.dtype)     # (B, 2, H, W)
        m_s = self.spatial_mask(pos)                                                     # (B, 25, H, W)
        m_b = self.bilateral_mask(torch.cat([self.emb_scale * e.to(unary.dtype), pos], 1))   # (B, 169, H, W)
        logits = unary
        for _ in range(self.iterations):
            q = torch.softmax(logits, 1)
            s = segaware_filter(q, m_s, self.spatial_window)
            a = segaware_filter(q, m_b, self.bilateral_window, self.bilateral_dilation)
            logits = unary - _mix(self.compat, _mix(self.w_spatial, s) + _mix(self.w_bilateral, a))
        return logits
