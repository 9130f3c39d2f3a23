"""CCNet's criss-cross attention, applied recurrently (RCCA).

Huang, Wang, Huang, Huang, Wei, Liu, "CCNet: Criss-Cross Attention for Semantic Segmentation", ICCV 2019 / TPAMI
2020, https://arxiv.org/abs/1811.11721. Official code: https://github.com/speedinghzl/CCNet (``cc_attention``,
``RCCAModule`` in ``networks/ccnet.py``).

Every pixel u attends to the pixels of its own row and column (H + W − 1 of them; u itself is counted once, in the
row):

    x (B, C, H, W)
    q = query(x) (B, C/8, H, W),  k = key(x) (B, C/8, H, W),  v = value(x) (B, C, H, W)
    column energies  e_H[b, h, w, h'] = q[b, :, h, w] · k[b, :, h', w]     (B, H, W, H), −inf where h' = h
    row energies     e_W[b, h, w, w'] = q[b, :, h, w] · k[b, :, h, w']     (B, H, W, W)
    A = softmax over the H + W entries of [e_H, e_W]                        Eq. 1 (affinity + softmax), fp32
    y = gamma · (sum_h' A_H v[:, :, h', w] + sum_w' A_W v[:, :, h, w']) + x  Eq. 2; gamma starts at 0

Applied R = 2 times with shared weights (Sec. 3.3), information reaches every pixel from every other.

``sub_sample`` (not in the paper) takes keys and values from a 2x2 max-pooled map: pixel (h, w) attends to the
pooled column w // 2 and the pooled row h // 2, ⌈H/2⌉ + ⌈W/2⌉ − 1 entries; it halves the attention memory.
Memory: the (B, H, W, h + w) energies and their softmax per recurrence, see ``criss_cross_memory_bytes``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..nn.amp import no_autocast


def criss_cross_memory_bytes(batch: int, height: int, width: int, recurrence: int = 2, sub_sample: bool = False,
                             bytes_per_element: int = 4, training: bool = True) -> int:
    """Bytes the fp32 criss-cross attention holds for a (batch, C, height, width) input: energies and softmax of
    every recurrence in training (kept for backward), one recurrence at a time in inference."""
    h, w = ((height + 1) // 2, (width + 1) // 2) if sub_sample else (height, width)
    per = batch * height * width * (h + w) * bytes_per_element
    return per * 2 * recurrence if training else per


def criss_cross(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sub_sample: bool = False):
    """The criss-cross aggregation of v for queries q against keys k; k and v may be 2x2-pooled (``sub_sample``).

    q (B, Cq, H, W), k (B, Cq, h, w), v (B, C, h, w) -> out (B, C, H, W), A (B, H, W, h + w) with A[..., :h] the
    column part (over pooled rows h') and A[..., h:] the row part (over pooled columns w'). Computed in q's dtype."""
    B, _, H, W = q.shape
    h, w = k.shape[-2:]
    stride = 2 if sub_sample else 1
    rows = torch.arange(H, device=q.device) // stride             # the (pooled) row of each query row
    cols = torch.arange(W, device=q.device) // stride
    if sub_sample:
        kc, vc = k[..., cols], v[..., cols]                        # (B, Cq, h, W), (B, C, h, W): each query column's
        kr, vr = k[:, :, rows], v[:, :, rows]                      # (B, Cq, H, w), (B, C, H, w): ... and row's keys
    else:
        kc, vc, kr, vr = k, v, k, v
    e_h = q.permute(0, 3, 2, 1) @ kc.permute(0, 3, 1, 2)           # (B, W, H, Cq) @ (B, W, Cq, h) = (B, W, H, h)
    e_h = e_h.permute(0, 2, 1, 3)                                  # (B, H, W, h)
    e_w = q.permute(0, 2, 3, 1) @ kr.permute(0, 2, 1, 3)           # (B, H, W, Cq) @ (B, H, Cq, w) = (B, H, W, w)
    self_mask = rows[:, None] == torch.arange(h, device=q.device)[None]   # (H, h): u itself, counted in the row
    e_h = e_h.masked_fill(self_mask[:, None, :], float("-inf"))
    a = torch.softmax(torch.cat([e_h, e_w], dim=-1), dim=-1)       # (B, H, W, h + w)
    a_h, a_w = a[..., :h], a[..., h:]
    out_h = vc.permute(0, 3, 1, 2) @ a_h.permute(0, 2, 3, 1)       # (B, W, C, h) @ (B, W, h, H) = (B, W, C, H)
    out_w = vr.permute(0, 2, 1, 3) @ a_w.transpose(-1, -2)         # (B, H, C, w) @ (B, H, w, W) = (B, H, C, W)
    out = out_h.permute(0, 2, 3, 1) + out_w.permute(0, 2, 1, 3)    # (B, C, H, W)
    return out, a


class CrissCrossAttention(nn.Module):
    """One criss-cross attention module, applied ``recurrence`` times with shared weights (RCCA).

    ``forward(x, return_attention=False)`` -> y (B, C, H, W) [, {"criss_cross": (B, R, H, W, h + w)}]: the map of
    every recurrence; entries ``[..., :h]`` are the pixel's column (rows h'), ``[..., h:]`` its row (columns w').
    """

    def __init__(self, channels: int, reduction: int = 8, recurrence: int = 2, sub_sample: bool = False):
        super().__init__()
        if recurrence < 1:
            raise ValueError(f"recurrence must be at least 1, not {recurrence}")
        cq = max(1, channels // reduction)
        self.query = nn.Conv2d(channels, cq, 1)
        self.key = nn.Conv2d(channels, cq, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.pool = nn.MaxPool2d(2, ceil_mode=True) if sub_sample else nn.Identity()
        self.gamma = nn.Parameter(torch.zeros(1))
        self.recurrence, self.sub_sample = recurrence, sub_sample

    def memory_bytes(self, batch: int, height: int, width: int, training: bool = True) -> int:
        return criss_cross_memory_bytes(batch, height, width, self.recurrence, self.sub_sample, 4, training)

    def attention(self, x: torch.Tensor, return_maps: bool = False):
        """One criss-cross aggregation without gamma and residual: (B, C, H, W) -> (B, C, H, W) [, A]."""
        q, k, v = self.query(x), self.pool(self.key(x)), self.pool(self.value(x))
        with no_autocast(x.device.type):
            dt = torch.float64 if x.dtype == torch.float64 else torch.float32
            y, a = criss_cross(q.to(dt), k.to(dt), v.to(dt), self.sub_sample)
        y = y.to(x.dtype)
        return (y, a) if return_maps else y

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        maps = []
        for _ in range(self.recurrence):
            y, a = self.attention(x, return_maps=True)
            x = self.gamma.to(y.dtype) * y + x                     # Eq. 2
            maps.append(a)
        return (x, {"criss_cross": torch.stack(maps, 1)}) if return_attention else x
