"""DANet: the position attention module (PAM) and the dual attention block (PAM + CAM, each gated by its own gamma).

Fu, Liu, Tian, Li, Bao, Fang, Lu, "Dual Attention Network for Scene Segmentation", CVPR 2019,
https://arxiv.org/abs/1809.02983. Official code: https://github.com/junfu1115/DANet (``PAM_Module``, ``CAM_Module``,
``DANetHead`` in ``encoding/models/sseg/danet.py``).

Position attention (Sec. 3.2):

    x (B, C, H, W)
    q = query(x) (B, C/8, H, W) -> (B, HW, C/8)
    k = key(x)   (B, C/8, h, w) -> (B, C/8, hw)           h, w = H, W, or halved by 2x2 max-pooling (``sub_sample``,
                                                         not in the paper; it divides the attention memory by 4)
    v = value(x) (B, C, h, w)   -> (B, hw, C)
    S = softmax_j(q @ k)        (B, HW, hw)               Eq. 1, fp32
    E = gamma · (S @ v -> (B, C, H, W)) + x               Eq. 2; gamma starts at 0, so E = x at first

The dual block (Sec. 3.4, ``DANetHead`` after its two input convs): each attention module is followed by its own
3x3 conv-BN-ReLU and the two branches are summed,

    y = conv_p(PAM(x)) + conv_c(CAM(x))

so with both gammas at 0 it reduces to ``conv_p(x) + conv_c(x)``. (The official head also reduces the 2048
backbone channels to C/4 in each branch first and has a classifier per branch; those belong to the network, not to
the block. Here the block sits where FLANet's FLA block sits, on 512 channels, for a one-for-one comparison.)
"""

from __future__ import annotations

import torch
from torch import nn

from ..nn.amp import no_autocast
from .channel_attention import ChannelAttention
from .nonlocal_block import attention_memory_bytes


def conv_bn_relu(cin: int, cout: int, norm=nn.BatchNorm2d) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), norm(cout), nn.ReLU(inplace=True))


class PositionAttention(nn.Module):
    """DANet's PAM. ``forward(x, return_attention=False)`` -> y (B, C, H, W) [, {"position": (B, HW, hw)}].

    Args:
        channels: C.
        reduction: query/key channels are C // reduction (8 in DANet).
        sub_sample: 2x2 max-pool the keys and values (see ``attention_memory_bytes``).
    """

    def __init__(self, channels: int, reduction: int = 8, sub_sample: bool = False):
        super().__init__()
        cq = max(1, channels // reduction)
        self.query = nn.Conv2d(channels, cq, 1)
        self.key = nn.Conv2d(channels, cq, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.pool = nn.MaxPool2d(2, ceil_mode=True) if sub_sample else nn.Identity()
        self.gamma = nn.Parameter(torch.zeros(1))
        self.sub_sample = sub_sample

    def memory_bytes(self, batch: int, height: int, width: int, training: bool = True) -> int:
        """Bytes of the fp32 HW x hw attention (energies and softmax) for a (batch, C, height, width) input."""
        return attention_memory_bytes(batch, height, width, self.sub_sample, 4, training)

    def attention(self, x: torch.Tensor, return_maps: bool = False):
        """S @ v without the gamma and the residual: (B, C, H, W) -> (B, C, H, W) [, S (B, HW, hw)]."""
        B, C, H, W = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)          # (B, HW, C/8)
        k = self.pool(self.key(x)).flatten(2)                 # (B, C/8, hw)
        v = self.pool(self.value(x)).flatten(2)               # (B, C, hw)
        with no_autocast(x.device.type):
            dt = torch.float64 if x.dtype == torch.float64 else torch.float32
            s = torch.softmax(q.to(dt) @ k.to(dt), dim=-1)    # (B, HW, hw)  Eq. 1
            y = (v.to(dt) @ s.transpose(1, 2)).reshape(B, C, H, W).to(x.dtype)  # (B, C, HW) -> (B, C, H, W)
        return (y, s) if return_maps else y

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        y, s = self.attention(x, return_maps=True)
        y = self.gamma.to(y.dtype) * y + x                    # Eq. 2
        return (y, {"position": s}) if return_attention else y


class DANetBlock(nn.Module):
    """PAM and CAM in parallel, each followed by a 3x3 conv-BN-ReLU, summed.

    ``forward(x, return_attention=False)`` -> y (B, C, H, W) [, {"position": (B, HW, hw), "channel": (B, C, C)}].
    """

    def __init__(self, channels: int, reduction: int = 8, sub_sample: bool = False, norm=nn.BatchNorm2d):
        super().__init__()
        self.pam = PositionAttention(channels, reduction, sub_sample)
        self.cam = ChannelAttention()
        self.conv_p = conv_bn_relu(channels, channels, norm)
        self.conv_c = conv_bn_relu(channels, channels, norm)

    def memory_bytes(self, batch: int, height: int, width: int, training: bool = True) -> int:
        C = self.conv_c[0].in_channels
        return self.pam.memory_bytes(batch, height, width, training) + self.cam.memory_bytes(batch, C, training)

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        p, att_p = self.pam(x, return_attention=True)
        c, att_c = self.cam(x, return_attention=True)
        y = self.conv_p(p) + self.conv_c(c)
        return (y, {**att_p, **att_c}) if return_attention else y
