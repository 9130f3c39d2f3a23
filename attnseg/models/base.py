"""The forward contract every semantic model follows.

``model(images, return_attention=False)`` takes (B, 3, H, W) float images of any H, W and returns a dict:

- ``logits``: (B, K, H, W) class scores at input resolution;
- ``aux``: name -> (B, K, H, W) logits for deep supervision (only in training mode, empty otherwise);
- ``aux_weights`` (optional): name -> loss weight of that aux term, overriding the engine's ``aux_weight``;
- ``attention``: name -> tensor (documented by the model), only when ``return_attention=True``.

``model.predict(images)`` returns (B, H, W) int64 class ids.

Wrappers that run a model several times (attention to scale) use more methods: ``forward_parts(images)``
gives the class scores on the model's own score grid before the final upsampling, plus the features that
produced them, and ``upsample_scores(scores, size)`` finishes the job; ``score_grid()`` and ``feature_grid()``
declare where those maps' entries sit on the input (a ``Grid``), so that maps of differently resized inputs can
be laid on one another (``resample``). The defaults treat the full-resolution logits as the score grid
(``Grid(1, 0)``) and have no features; models with a coarse score grid override all four.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.amp import no_autocast


def resize_to(x: torch.Tensor, size, mode: str = "bilinear") -> torch.Tensor:
    """Resize (B, C, h, w) to ``size`` (H, W); a no-op when already there."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode in ("nearest", "nearest-exact", "area"):
        return F.interpolate(x, size=tuple(size), mode=mode)
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=False)


@dataclass(frozen=True)
class Grid:
    """Where a map's entries sit on its network's input, the same along both axes: index i at input position
    ``origin + stride * i``, in pixels whose centres are the integers (so the input's own pixels are ``Grid(1, 0)``).
    DeepLab-LargeFOV's scores: ``Grid(8, 0)`` (corner-aligned); a half-pixel (``align_corners=False``) map of
    stride s: ``Grid(s, (s - 1) / 2)``."""

    stride: float = 1.0
    origin: float = 0.0

    def position(self, index):
        """Input pixel position of (fractional) map index ``index``."""
        return self.origin + self.stride * index

    def index(self, position):
        """(Fractional) map index at input pixel position ``position``."""
        return (position - self.origin) / self.stride


def interpolation_matrix(index: torch.Tensor, n: int, mode: str = "bilinear") -> torch.Tensor:
    """(len(index), n) weights that read a length-n signal at fractional indices ``index`` (clamped to [0, n − 1],
    the border value beyond, as ``F.interpolate``): linear between the two neighbours, or the nearest entry."""
    index = index.clamp(0, n - 1)
    rows = torch.arange(index.shape[0], device=index.device)
    mat = index.new_zeros(index.shape[0], n)
    if mode == "nearest":
        mat[rows, index.round().long()] = 1.0
        return mat
    lo = index.floor().long().clamp(max=max(n - 2, 0))
    t = index - lo
    mat.index_put_((rows, lo), 1 - t, accumulate=True)
    mat.index_put_((rows, (lo + 1).clamp(max=n - 1)), t, accumulate=True)
    return mat


def resample(x: torch.Tensor, src: Grid, src_input, dst: Grid, dst_input, size, mode: str = "bilinear"):
    """Read (B, C, h, w) map ``x`` (grid ``src`` of an (H_s, W_s) = ``src_input`` input) at the entries of grid
    ``dst`` of an (H, W) = ``dst_input`` input showing the same image -> (B, C, *size).

    The two inputs are resizes of one another with ``F.interpolate(align_corners=False)``, so pixel p of the
    (H, W) one is at (p + ½)·H_s/H − ½ on the other; dst entry j thus reads src index
    src.index((dst.position(j) + ½)·H_s/H − ½), bilinearly (or the nearest entry), per axis. Runs in at least fp32,
    returns x's dtype; a no-op when grids, inputs and sizes agree."""
    if src == dst and tuple(src_input) == tuple(dst_input) and tuple(x.shape[-2:]) == tuple(size):
        return x
    dt = torch.promote_types(x.dtype, torch.float32)
    mats = []
    for axis in (0, 1):
        j = torch.arange(size[axis], dtype=torch.float64, device=x.device)
        p = (dst.position(j) + 0.5) * src_input[axis] / dst_input[axis] - 0.5     # on the src input
        mats.append(interpolation_matrix(src.index(p), x.shape[-2 + axis], mode).to(dt))
    with no_autocast(x.device.type):
        out = torch.einsum("ih,bchw,jw->bcij", mats[0], x.to(dt), mats[1])          # (B, C, *size)
    return out.to(x.dtype)


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

    def score_grid(self) -> Grid:
        """Where ``forward_parts()["scores"]`` sits on the input (default: the logits, on the input's pixels)."""
        return Grid(1.0, 0.0)

    def feature_grid(self) -> Grid:
        """Where ``forward_parts()["features"]`` sits on the input (default: the score grid)."""
        return self.score_grid()

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
