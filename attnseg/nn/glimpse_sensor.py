"""Glimpse sensor: k square patches of growing size around a location, each reduced to one small resolution.

Mnih, Heess, Graves, Kavukcuoglu, "Recurrent Models of Visual Attention", NIPS 2014, https://arxiv.org/abs/1406.6247,
§3.1 "Sensor" (the retina-like representation ρ(x_t, l_{t−1})) and §4 (k patches centred at l, the first g_w x g_w,
each next one twice as wide, all resized to g_w x g_w). No official code was released.

    c = (l + 1)/2 · (W, H)                         the location l ∈ [−1, 1]² ((x, y), (−1, −1) the top-left corner)
    s_i = size · factor^i,  i = 0..scales−1        the side of patch i
    (x0, y0)_i = floor(c − s_i/2 + 0.5)            its top-left pixel (round half up); box [x0, x0+s_i) x [y0, y0+s_i)
    ρ_i = mean of each factor^i x factor^i block   of the patch (pixels outside the image are 0): size x size

The resampling is exact area averaging (no interpolation), and l is clamped to [−1, 1].

Gradients: the output is differentiable w.r.t. the image only. The location is not differentiated (RAM trains it by
REINFORCE): it is detached, so ``loc.grad`` stays None.

Mixed precision: computed in at least float32 with autocast disabled, and returned in that dtype (a bf16 image gives
a float32 glimpse; float64 stays float64).

Export: per scale, the patch's integer pixel indices are built from l with tensor ops and read with
``F.grid_sample(mode="nearest", padding_mode="zeros", align_corners=False)`` at the exact pixel centres
((2j + 1)/W − 1), then ``F.avg_pool2d`` averages the blocks: no data-dependent Python control flow, so
``torch.onnx.export(..., dynamo=True)`` gives the same numbers in onnxruntime (GridSample, AveragePool).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .amp import at_least_fp32, no_autocast


def _check_int(v, what: str, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"the glimpse {what} must be an int >= {minimum}, not {v!r}")
    return v


def _check_sizes(height, width) -> None:
    for name, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, (int, torch.SymInt)) or (isinstance(v, int) and v < 1):
            raise ValueError(f"the image {name} must be an int >= 1, not {v!r}")


def _check_loc(loc: Tensor, batch=None) -> None:
    if not isinstance(loc, Tensor) or loc.dim() != 2 or loc.shape[-1] != 2:
        shape = tuple(loc.shape) if isinstance(loc, Tensor) else type(loc).__name__
        raise ValueError(f"the glimpse location must be (B, 2) (x, y) in [-1, 1], got {shape}")
    if batch is not None and loc.shape[0] != batch:
        raise ValueError(f"{loc.shape[0]} glimpse locations for a batch of {batch} images; give one (x, y) per image")


def glimpse_boxes(loc: Tensor, height: int, width: int, size: int, scales: int, factor: int = 2) -> Tensor:
    """The pixel boxes of the glimpse's patches.

    Args:
        loc: (B, 2) location (x, y) in [−1, 1] (clamped), as ``grid_sample``: (−1, −1) is the top-left corner of the
            image, (1, 1) the bottom-right one.
        height, width: size of the image.
        size: side of the smallest patch (and of every output patch).
        scales: number of patches k.
        factor: growth of the side from one patch to the next.

    Returns:
        (B, scales, 4) boxes (x0, y0, x0 + s_i, y0 + s_i) in pixel edge coordinates (pixel j spans [j, j + 1)),
        integer-valued, in loc's float dtype (at least float32); they may reach outside the image.

    Raises:
        ValueError: loc not (B, 2), a size, scales or factor < 1.
    """
    _check_loc(loc)
    _check_sizes(height, width)
    _check_int(size, "size")
    _check_int(scales, "scales")
    _check_int(factor, "factor")
    dtype = at_least_fp32(loc.dtype) if loc.is_floating_point() else torch.float32
    with no_autocast(loc.device.type):
        l = loc.detach().to(dtype).clamp(-1, 1)                                   # (B, 2) (x, y)
        cx, cy = (l[:, 0] + 1) / 2 * width, (l[:, 1] + 1) / 2 * height            # (B,) edge coordinates
        boxes = []
        for i in range(scales):
            s = size * factor ** i
            x0 = torch.floor(cx - s / 2 + 0.5)                                    # round half up, (B,)
            y0 = torch.floor(cy - s / 2 + 0.5)
            boxes.append(torch.stack([x0, y0, x0 + s, y0 + s], dim=-1))          # (B, 4)
        return torch.stack(boxes, dim=1)                                          # scales x (B, 4) -> (B, scales, 4)


def glimpse_sensor(x: Tensor, loc: Tensor, size: int, scales: int, factor: int = 2) -> Tensor:
    """RAM's retina ρ(x, l): ``scales`` concentric patches, each area-averaged down to size x size.

    Args:
        x: (B, C, H, W) image.
        loc: (B, 2) location (x, y) in [−1, 1] (clamped; not differentiated).
        size: output side g_w (the side of the first patch).
        scales: number of patches k.
        factor: side ratio of consecutive patches (RAM: 2).

    Returns:
        (B, scales, C, size, size); patch i is the box of :func:`glimpse_boxes` (zeros outside the image) averaged
        over factor^i x factor^i blocks. In at least float32.

    Raises:
        ValueError: x not (B, C, H, W), loc not (B, 2) of the same B, a size, scales or factor < 1.
    """
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(f"the glimpse sensor takes an image (B, C, H, W), got {tuple(getattr(x, 'shape', ()))}")
    _check_loc(loc, x.shape[0])
    B, C, H, W = x.shape
    boxes = glimpse_boxes(loc, H, W, size, scales, factor)                        # (B, scales, 4)
    dtype = at_least_fp32(x.dtype)
    with no_autocast(x.device.type):
        img = x.to(dtype)
        boxes = boxes.to(dtype)
        out = []
        for i in range(scales):
            s, k = size * factor ** i, factor ** i
            r = torch.arange(s, device=x.device, dtype=dtype)                     # (s,)
            jx = boxes[:, i, 0:1] + r                                              # (B, 1) + (s,) -> (B, s) columns
            jy = boxes[:, i, 1:2] + r                                              # (B, s) rows
            gx = (2 * jx + 1) / W - 1                                              # pixel centres, normalised
            gy = (2 * jy + 1) / H - 1
            # (B, 1, s) and (B, s, 1) -> (B, s, s) each -> (B, s, s, 2) in (x, y) order
            grid = torch.stack([gx[:, None, :].expand(B, s, s), gy[:, :, None].expand(B, s, s)], dim=-1)
            patch = F.grid_sample(img, grid, mode="nearest", padding_mode="zeros", align_corners=False)  # (B, C, s, s)
            if k > 1:
                patch = F.avg_pool2d(patch, k)                                     # (B, C, size, size)
            out.append(patch)
        return torch.stack(out, dim=1)                                            # (B, scales, C, size, size)


class GlimpseSensor(nn.Module):
    """:func:`glimpse_sensor` as a module (no weights).

    Args:
        size: output side g_w.
        scales: number of patches k.
        factor: side ratio of consecutive patches.
    """

    def __init__(self, size: int, scales: int = 1, factor: int = 2):
        super().__init__()
        self.size, self.scales, self.factor = _check_int(size, "size"), _check_int(scales, "scales"), \
            _check_int(factor, "factor")

    def extra_repr(self) -> str:
        return f"size={self.size}, scales={self.scales}, factor={self.factor}"

    def forward(self, x: Tensor, loc: Tensor) -> Tensor:
        """x (B, C, H, W), loc (B, 2) -> (B, scales, C, size, size)."""
        return glimpse_sensor(x, loc, self.size, self.scales, self.factor)

    def boxes(self, loc: Tensor, height: int, width: int) -> Tensor:
        """loc (B, 2) -> (B, scales, 4) pixel xyxy boxes."""
        return glimpse_boxes(loc, height, width, self.size, self.scales, self.factor)
