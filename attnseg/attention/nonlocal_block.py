"""Spatial non-local block, embedded-Gaussian form.

Wang, Girshick, Gupta, He, "Non-local Neural Networks", CVPR 2018, https://arxiv.org/abs/1711.07971. Official
code: Caffe2 in https://github.com/facebookresearch/video-nonlocal-net (``lib/models/nonlocal_helper.py``).

    x (B, C, H, W)
    q = theta(x) (B, C', H, W) -> (B, HW, C')            C' = inter_channels (C/2)
    k = phi(x)   (B, C', h, w) -> (B, C', hw)            h, w = H, W, or halved by a 2x2 max-pool (``sub_sample``)
    v = g(x)     (B, Cv, h, w) -> (B, hw, Cv)            Cv = value_channels (C' in the paper; METHODS.md §2.2's
                                                         cost comparison uses C)
    A = softmax_j(q @ k)       (B, HW, hw)              Eq. 1-2 with f = exp(theta^T phi), fp32
    y = x + W(A @ v -> (B, Cv, H, W))                    Eq. 6; W = 1x1 conv + BN whose scale starts at 0,
                                                         so the block starts as the identity
Memory: the HW x hw attention map (plus its energies for autograd), see ``attention_memory_bytes``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..nn.amp import no_autocast


def attention_memory_bytes(batch: int, height: int, width: int, sub_sample: bool = False,
                           bytes_per_element: int = 4, training: bool = True) -> int:
    """Bytes the HW x hw attention of one non-local block holds for a (batch, C, height, width) input: the fp32
    energies and their softmax (both kept for backward in training, one at a time in inference)."""
    keys = ((height + 1) // 2) * ((width + 1) // 2) if sub_sample else height * width
    return batch * height * width * keys * bytes_per_element * (2 if training else 1)


class NonLocalBlock(nn.Module):
    """Args:
        channels: C.
        inter_channels: C' of the query and key (default C // 2).
        value_channels: Cv of the value (default C').
        sub_sample: 2x2 max-pool the keys and values (4x less attention memory).
        norm: normalisation after the output projection W (its scale is initialised to 0).

    ``forward(x, return_attention=False)`` -> y (B, C, H, W) [, {"nonlocal": (B, HW, hw)}] (rows sum to 1).
    """

    def __init__(self, channels: int, inter_channels: int | None = None, sub_sample: bool = False,
                 norm=nn.BatchNorm2d, value_channels: int | None = None):
        super().__init__()
        ci = inter_channels or max(1, channels // 2)
        cv = value_channels or ci
        self.theta = nn.Conv2d(channels, ci, 1)
        self.phi = nn.Conv2d(channels, ci, 1)
        self.g = nn.Conv2d(channels, cv, 1)
        self.pool = nn.MaxPool2d(2, ceil_mode=True) if sub_sample else nn.Identity()
        self.out = nn.Sequential(nn.Conv2d(cv, channels, 1), norm(channels))
        nn.init.zeros_(self.out[1].weight)  # zero-initialised BN scale: the block starts as the identity
        self.sub_sample = sub_sample

    def memory_bytes(self, batch: int, height: int, width: int, training: bool = True) -> int:
        return attention_memory_bytes(batch, height, width, self.sub_sample, 4, training)

    def attention(self, x: torch.Tensor, return_maps: bool = False):
        """The non-local operation without the output projection: (B, C, H, W) -> (B, Cv, H, W) [, A]."""
        B, _, H, W = x.shape
        q = self.theta(x).flatten(2).transpose(1, 2)          # (B, HW, C')
        k = self.pool(self.phi(x)).flatten(2)                 # (B, C', hw)
        v = self.pool(self.g(x)).flatten(2).transpose(1, 2)   # (B, hw, Cv)
        with no_autocast(x.device.type):
            dt = torch.float64 if x.dtype == torch.float64 else torch.float32
            a = torch.softmax(q.to(dt) @ k.to(dt), dim=-1)    # (B, HW, hw)
            y = (a @ v.to(dt)).transpose(1, 2).reshape(B, -1, H, W).to(x.dtype)  # (B, Cv, H, W)
        return (y, a) if return_maps else y

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        y, a = self.attention(x, return_maps=True)
        y = x + self.out(y)
        return (y, {"nonlocal": a}) if return_attention else y
