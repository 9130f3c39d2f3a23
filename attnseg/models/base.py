"""The forward contract every semantic model follows.

``model(images, return_attention=False)`` takes (B, 3, H, W) float images of any H, W and returns a dict:

- ``logits``: (B, K, H, W) class scores at input resolution;
- ``aux``: name -> (B, K, H, W) logits for deep supervision (only in training mode, empty otherwise);
- ``aux_weights`` (optional): name -> loss weight of that aux term, overriding the engine's ``aux_weight``;
- ``attention``: name -> tensor (documented by the model), only when ``return_attention=True``.

``model.predict(images)`` returns (B, H, W) int64 class ids.

Wrappers that run a model several times (attention to scale) use two more methods: ``forward_parts(images)``
gives the class scores on the model's own score grid before the final upsampling, plus the features that
produced them, and ``upsample_scores(scores, size)`` finishes the job. The defaults treat the full-resolution
logits as the score grid and have no features; models with a coarse score grid override both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def resize_to(x: torch.Tensor, size, mode: str = "bilinear") -> torch.Tensor:
    """Resize (B, C, h, w) to ``size`` (H, W); a no-op when already there."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode in ("nearest", "nearest-exact", "area"):
        return F.interpolate(x, size=tuple(size), mode=mode)
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=False)


def crop_to(x: torch.Tensor, size, offset: int | tuple[int, int] = 0) -> torch.Tensor:
    """Crop (B, C, h, w) to (H, W) starting at ``offset`` (FCN's Caffe ``Crop`` layer)."""
    oy, ox = (offset, offset) if isinstance(offset, int) else offset
    H, W = size
    if x.shape[-2] < oy + H or x.shape[-1] < ox + W:
        raise ValueError(f"cannot crop {tuple(x.shape[-2:])} to {(H, W)} at offset {(oy, ox)}")
    return x[..., oy:oy + H, ox:ox + W]


class SegmentationModel(nn.Module):
    """Base class: subclasses implement ``forward`` returning ``self.output(...)``."""

    num_classes: int

    def output(self, logits: torch.Tensor, aux: dict | None = None, attention: dict | None = None,
               return_attention: bool = False, aux_weights: dict | None = None) -> dict:
        out = {"logits": logits, "aux": (aux or {}) if self.training else {}}
        if aux_weights and out["aux"]:
            out["aux_weights"] = aux_weights
        if return_attention:
            out["attention"] = attention or {}
        return out

    def forward_parts(self, images: torch.Tensor) -> dict:
        """``{"scores": (B, K, h, w), "features": (B, C, h', w') or None}``: the class scores on the score grid
        (before ``upsample_scores``) and the features the classifier read (default: the logits, no features)."""
        return {"scores": self(images)["logits"], "features": None}

    def upsample_scores(self, scores: torch.Tensor, size) -> torch.Tensor:
        """(B, K, h, w) scores on the grid of an (H, W) input -> (B, K, H, W) logits."""
        return resize_to(scores, size)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, H, W) int64 class ids (eval mode is the caller's choice)."""
        return self(images)["logits"].argmax(1)


def bilinear_kernel(channels: int, kernel_size: int) -> torch.Tensor:
    """(C, 1, k, k) weights of a per-channel bilinear-interpolation transposed convolution (FCN's
    ``upsample_filt``): the centre of an even kernel sits between two taps."""
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = torch.arange(kernel_size, dtype=torch.float64)
    filt1d = 1 - (og - center).abs() / factor
    filt = filt1d[:, None] * filt1d[None, :]
    return filt.expand(channels, 1, kernel_size, kernel_size).clone().float()


class BilinearUpsample(nn.ConvTranspose2d):
    """Transposed convolution of factor f, initialised to bilinear interpolation, depthwise (groups = channels)
    as in FCN; learnable unless ``fixed``.

    FCN's kernel is 2f (even: input i lands at output f·i + f − ½). ``kernel_size=2f-1`` (odd: input i lands at
    f·i + f − 1) interpolates equally but aligns exactly with backbones whose features sit on integer input
    positions (zero-padded ResNets)."""

    def __init__(self, channels: int, factor: int, fixed: bool = False, kernel_size: int | None = None):
        kernel_size = kernel_size or 2 * factor
        if kernel_size not in (2 * factor, 2 * factor - 1):
            raise ValueError(f"a bilinear kernel of factor {factor} has size {2 * factor} or {2 * factor - 1}")
        super().__init__(channels, channels, kernel_size=kernel_size, stride=factor, groups=channels, bias=False)
        self.factor = factor
        with torch.no_grad():
            self.weight.copy_(bilinear_kernel(channels, kernel_size))
        self.weight.requires_grad_(not fixed)
