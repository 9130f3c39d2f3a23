"""The fully attentional (FLA) block of FLANet.

Song, Li, Li, Guo, Huang, "Fully Attentional Network for Semantic Segmentation", AAAI 2022,
https://arxiv.org/abs/2112.04108. Official code: https://github.com/maggiesong7/FLANet (``FullyAttentionalBlock``).

Channel attention computed separately for every column and every row slice of the feature map, each slice
attending against a linearly projected strip-pooled global prior of its own coordinate (METHODS.md §2.2):

    x (B, C, H, W)
    Fh = x -> (B, W, C, H) -> (B·W, C, H)                 one C×H matrix per column w
    Fw = x -> (B, H, C, W) -> (B·H, C, W)                 one C×W matrix per row h
    Ph = Linear_1(mean_w x)   (B, H, C)                   one projected C-vector per row h
    Pw = Linear_2(mean_h x)   (B, W, C)                   one per column w
    Eh = Fh @ Ph[b]           (B·W, C, C)   Eh_w[c, c'] = sum_h x[c, h, w] Ph[h, c']
    Ew = Fw @ Pw[b]           (B·H, C, C)
    Ah, Aw = softmax over the last dim (fp32)
    Oh = Ah @ Fh -> (B, C, H, W),   Ow = Aw @ Fw -> (B, C, H, W)
    y = Conv3x3-BN-ReLU(gamma · (Oh + Ow) + x),   gamma initialised to 0

Divergence from the official code, on purpose: there ``encode_h.repeat(width, 1, 1)`` tiles the (B, H, C) priors
so that column slice k (image k div W) meets the prior of image k mod B; for a batch of more than one image most
slices read another image's prior. Here every slice meets its own image's prior (a broadcast batched matmul), so
an image's output does not depend on the rest of the batch. For B = 1 both agree.

Cost for C = 512, H = W = 97: energies + aggregation 4·HW·C² ≈ 9.9 GMACs; (H + W) C×C maps per image
(≈ 203 MB fp32); the trailing 3x3 conv 9·C²·HW ≈ 22 GMACs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.amp import no_autocast
from ..nn.tracing import is_exporting

CHUNK_BYTES = 8 * 2**20  # CPU: energies of this many bytes at a time, so that they stay in the last-level cache


def _slice_attention(f: torch.Tensor, p: torch.Tensor, chunk: int | None, keep_maps: bool):
    """Channel attention of every slice against its image's prior, ``chunk`` slices at a time (None: all at once).

    f (B, S, C, L) slices, p (B, L, C) priors -> out (B, S, C, L), maps (B, S, C, C) or None.
    Per slice: E = f_s @ p (C, C) (Eq. energies), A = softmax over the last dim, out_s = A @ f_s."""
    outs, maps = [], []
    chunks = f.split(chunk, dim=1) if chunk is not None else (f,)
    for fc in chunks:                   # (B, k, C, L); the backward of split is one cat (that of slicing would
        #                                 zero-fill a full-size gradient for every chunk)
        a = torch.softmax(fc @ p[:, None], dim=-1)             # (B, k, C, L) @ (B, 1, L, C) = (B, k, C, C)
        outs.append(a @ fc)                                    # (B, k, C, C) @ (B, k, C, L) = (B, k, C, L)
        if keep_maps:
            maps.append(a)
    cat = (lambda t: t[0] if len(t) == 1 else torch.cat(t, 1))
    return cat(outs), (cat(maps) if keep_maps else None)


def fla_attention(x: torch.Tensor, proj_h: nn.Linear, proj_w: nn.Linear, return_maps: bool = False,
                  chunk_bytes: int | None = None):
    """The attention part of the block: (B, C, H, W) -> Oh + Ow (B, C, H, W) [, (Ah (B, W, C, C), Aw (B, H, C, C))].

    Energies and softmax run in fp32 (also under autocast); the output has x's dtype. On the CPU the slices are
    processed a few at a time (``chunk_bytes`` of energies, default 8 MiB), which keeps the energies, their softmax
    and the aggregation in cache and never holds the energies of all slices at once; elsewhere all at once."""
    B, C, H, W = x.shape
    xf = x if x.dtype == torch.float64 else x.float()                       # fp32 (fp64 stays)
    dt = xf.dtype
    if chunk_bytes is None:
        chunk_bytes = CHUNK_BYTES if x.device.type == "cpu" else 2**62
    # exported (symbolic sizes): all slices at once; a chunk count that depends on the size cannot be traced, and
    # the slices are independent, so the result is the same
    chunk = None if is_exporting() else max(1, chunk_bytes // (B * C * C * xf.element_size()))
    with no_autocast(x.device.type):
        ph = F.linear(xf.mean(3).transpose(1, 2), proj_h.weight.to(dt), proj_h.bias.to(dt))  # (B, H, C) rows
        pw = F.linear(xf.mean(2).transpose(1, 2), proj_w.weight.to(dt), proj_w.bias.to(dt))  # (B, W, C) cols
        fh = xf.permute(0, 3, 1, 2).contiguous()                                # (B, W, C, H) column slices
        fw = xf.permute(0, 2, 1, 3).contiguous()                                # (B, H, C, W) row slices
        oh, ah = _slice_attention(fh, ph, chunk, return_maps)                   # (B, W, C, H), (B, W, C, C)
        ow, aw = _slice_attention(fw, pw, chunk, return_maps)                   # (B, H, C, W), (B, H, C, C)
        out = (oh.permute(0, 2, 3, 1) + ow.permute(0, 2, 1, 3)).to(x.dtype)     # both (B, C, H, W)
    return (out, (ah, aw)) if return_maps else out


class FullyAttentionalBlock(nn.Module):
    """Args:
        channels: C (512 in FLANet).
        norm: normalisation after the trailing 3x3 conv.

    ``forward(x (B, C, H, W), return_attention=False)`` -> y (B, C, H, W); with ``return_attention=True`` also
    ``{"fla_column": (B, W, C, C), "fla_row": (B, H, C, C)}``, the channel-attention map of every column and row
    slice (rows of each map sum to 1). With gamma = 0 (its initial value) y = Conv3x3-BN-ReLU(x).
    """

    def __init__(self, channels: int, norm=nn.BatchNorm2d):
        super().__init__()
        self.proj_h = nn.Linear(channels, channels)   # the official conv1
        self.proj_w = nn.Linear(channels, channels)   # the official conv2
        self.gamma = nn.Parameter(torch.zeros(1))
        self.post = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False), norm(channels),
                                  nn.ReLU(inplace=True))

    def memory_bytes(self, batch: int, height: int, width: int, training: bool = True) -> int:
        """Bytes of the fp32 (H + W) C×C maps of a (batch, C, height, width) input (energies and softmax in
        training, one of them in inference)."""
        C = self.proj_h.in_features
        return batch * (height + width) * C * C * 4 * (2 if training else 1)

    def attention(self, x: torch.Tensor, return_maps: bool = False):
        return fla_attention(x, self.proj_h, self.proj_w, return_maps)

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        out, (ah, aw) = self.attention(x, return_maps=True)
        y = self.post(self.gamma.to(x.dtype) * out + x)
        return (y, {"fla_column": ah, "fla_row": aw}) if return_attention else y
