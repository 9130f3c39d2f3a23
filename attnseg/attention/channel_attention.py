"""Channel attention module (CAM) of DANet.

Fu, Liu, Tian, Li, Bao, Fang, Lu, "Dual Attention Network for Scene Segmentation", CVPR 2019,
https://arxiv.org/abs/1809.02983. Official code: https://github.com/junfu1115/DANet (``CAM_Module``).

    x (B, C, H, W) -> X (B, C, HW)
    E = X @ X^T                    (B, C, C)             Eq. 3 energies, fp32
    E' = max_c' E - E              (B, C, C)             the official code's form: softmax(max E - E) is
                                                         softmax(-E), so dissimilar channels weigh most (kept)
    A = softmax_c'(E')             (B, C, C)
    y = gamma · (A @ X -> (B, C, H, W)) + x              Eq. 4; gamma starts at 0, so y = x at first
"""

from __future__ import annotations

import torch
from torch import nn

from ..nn.amp import no_autocast


class ChannelAttention(nn.Module):
    """``forward(x (B, C, H, W), return_attention=False)`` -> y [, {"channel": (B, C, C)}] (rows sum to 1)."""

    def __init__(self):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))

    @staticmethod
    def memory_bytes(batch: int, channels: int, training: bool = True) -> int:
        """Bytes of the fp32 C×C map (energies and softmax in training)."""
        return batch * channels * channels * 4 * (2 if training else 1)

    @staticmethod
    def attention(x: torch.Tensor, return_maps: bool = False):
        B, C, H, W = x.shape
        with no_autocast(x.device.type):
            f = x.flatten(2).to(torch.float64 if x.dtype == torch.float64 else torch.float32)  # (B, C, HW)
            e = f @ f.transpose(1, 2)                                                        # (B, C, C)
            a = torch.softmax(e.amax(-1, keepdim=True) - e, dim=-1)
            y = (a @ f).reshape(B, C, H, W).to(x.dtype)
        return (y, a) if return_maps else y

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        y, a = self.attention(x, return_maps=True)
        y = self.gamma.to(x.dtype) * y + x
        return (y, {"channel": a}) if return_attention else y
