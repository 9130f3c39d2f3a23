"""Max-unpooling as a scatter into zeros: the inverse of a max-pool that kept its switches (DeconvNet).

``torch.nn.functional.max_unpool2d`` puts every value back at the position its max-pool switch names and zeros
elsewhere. Here the same is a ``scatter`` of the (B, C, h·w) values into a (B, C, H·W) zero map at the flat switch
indices: the same values and the same gradient (the backward of a scatter is the gather of the incoming gradient
at the switches, which is max_unpool2d's backward), but built from ops every exporter knows (ONNX
``ScatterElements``), with symbolic H and W; PyTorch's ``max_unpool2d`` does not export to ONNX with dynamic
sizes. The switches must be distinct within a plane, as those of non-overlapping pools (kernel <= stride) are.
"""

from __future__ import annotations

import torch
from torch import nn


def unpooled_size(pooled, kernel_size: int, stride: int, padding: int = 0) -> tuple[int, int]:
    """max_unpool2d's default output size ``(h - 1)·stride − 2·padding + kernel`` per axis."""
    return tuple((n - 1) * stride - 2 * padding + kernel_size for n in pooled)


def max_unpool2d(x: torch.Tensor, indices: torch.Tensor, output_size=None, kernel_size: int = 2,
                 stride: int | None = None, padding: int = 0) -> torch.Tensor:
    """(B, C, h, w) values and their (B, C, h, w) int64 switches (flat positions in an (H, W) plane, as
    ``max_pool2d(return_indices=True)`` gives them) -> (B, C, H, W) with the values at the switches, zeros elsewhere.

    Args:
        x: (B, C, h, w) values.
        indices: (B, C, h, w) flat switch indices in [0, H·W).
        output_size: (H, W) (or (B, C, H, W)), as ``F.max_unpool2d``'s; default from kernel, stride and padding.
        kernel_size, stride, padding: of the max-pool being inverted (stride defaults to the kernel size); only
            used for the default ``output_size``.

    Returns:
        (B, C, H, W) tensor in x's dtype.
    """
    if indices.shape != x.shape:
        raise ValueError(f"max-unpooling needs one switch per value: indices {tuple(indices.shape)} differ from the "
                         f"input {tuple(x.shape)}")
    B, C = x.shape[:2]
    if output_size is None:
        H, W = unpooled_size(x.shape[-2:], kernel_size, stride or kernel_size, padding)
    else:
        H, W = tuple(output_size)[-2:]
    out = x.new_zeros(B, C, H * W)                                       # (B, C, H·W)
    out = out.scatter(2, indices.flatten(2), x.flatten(2))              # value k goes to position indices[k]
    return out.view(B, C, H, W)


class MaxUnpool2d(nn.Module):
    """``nn.MaxUnpool2d`` by :func:`max_unpool2d`: ``forward(x, indices, output_size=None)``."""

    def __init__(self, kernel_size: int, stride: int | None = None, padding: int = 0):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride or kernel_size, padding

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"

    def forward(self, x: torch.Tensor, indices: torch.Tensor, output_size=None) -> torch.Tensor:
        return max_unpool2d(x, indices, output_size, self.kernel_size, self.stride, self.padding)
