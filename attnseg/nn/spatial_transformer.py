"""Spatial transformer: a localisation network predicts an affine θ, which warps the input by bilinear sampling.

Jaderberg, Simonyan, Zisserman, Kavukcuoglu, "Spatial Transformer Networks", NIPS 2015,
https://arxiv.org/abs/1506.02025, §3.1 (localisation network), §3.2 (parameterised sampling grid), §3.3
(differentiable image sampling). No official code was released; the widely used Torch7 module
https://github.com/qassemoquab/stnbhwd (Maxime Oquab) is a third-party implementation.

    (x_s, y_s)ᵀ = A_θ (x_t, y_t, 1)ᵀ                          Eq. 1, A_θ a 2x3 matrix, target grid -> source points
    A_θ = [[s, 0, t_x], [0, s, t_y]]                           Eq. 2, the attention (scale + translation) variant
    V_i = Σ_n Σ_m U_nm max(0, 1 − |x_s − m|) max(0, 1 − |y_s − n|)   Eq. 5, the bilinear kernel

Coordinates: normalised, (x, y) order, as ``F.affine_grid`` / ``F.grid_sample``. With ``align_corners=False`` (the
default) −1 and +1 are the outer EDGES of the corner pixels: pixel j of W spans [2j/W − 1, 2(j+1)/W − 1] and its
centre is (2j + 1)/W − 1. With ``align_corners=True`` −1 and +1 are the CENTRES of the corner pixels: pixel j's centre
is 2j/(W − 1) − 1. Pixel coordinates (:func:`box_theta`, :func:`sampling_grid`) are edge coordinates: pixel j spans
[j, j + 1), its centre is j + 0.5.

Mixed precision: :func:`transform` computes the grid and the sampling in at least float32 with autocast disabled and
returns that dtype (a bf16 input gives a float32 output). In :class:`SpatialTransformer` the localisation network
follows autocast, the final regression layer (θ) runs in its weights' dtype (float32) outside autocast.

Export: affine_grid and grid_sample (ONNX AffineGrid / GridSample) and no data-dependent control flow;
``torch.onnx.export(..., dynamo=True)`` gives the same numbers in onnxruntime.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .amp import compute_dtype, no_autocast

MODES = {"affine": 6, "attention": 3}
PADDING_MODES = ("zeros", "border", "reflection")


def _check_theta(theta: Tensor, what: str) -> None:
    if not isinstance(theta, Tensor) or theta.dim() != 3 or tuple(theta.shape[1:]) != (2, 3):
        shape = tuple(theta.shape) if isinstance(theta, Tensor) else type(theta).__name__
        raise ValueError(f"{what} takes affine matrices θ of shape (B, 2, 3), got {shape}")


def _check_out_size(size, what: str) -> tuple[int, int]:
    ok = isinstance(size, (tuple, list, torch.Size)) and len(size) == 2 and all(
        isinstance(s, (int, torch.SymInt)) and not isinstance(s, bool) and (not isinstance(s, int) or s >= 1)
        for s in size)
    if not ok:
        raise ValueError(f"{what}: the output size must be a pair (h, w) of ints >= 1, not {size!r}")
    return size[0], size[1]


def _check_image_size(height, width, what: str, minimum: int = 1) -> None:
    for name, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, (int, torch.SymInt)) or (isinstance(v, int) and v < minimum):
            raise ValueError(f"{what}: the image {name} must be an int >= {minimum}, not {v!r}"
                             + (" (align_corners=True maps pixel centres, which needs two pixels per axis)"
                                if minimum > 1 else ""))


def identity_theta(batch: int, device=None, dtype=None) -> Tensor:
    """(B, 2, 3) identity transforms [[1, 0, 0], [0, 1, 0]] (float32 unless dtype is given)."""
    if isinstance(batch, bool) or not isinstance(batch, (int, torch.SymInt)) or (isinstance(batch, int) and batch < 0):
        raise ValueError(f"identity_theta: the batch must be an int >= 0, not {batch!r}")
    eye = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], device=device, dtype=dtype or torch.float32)
    return eye.expand(batch, 2, 3).clone()                                        # (2, 3) -> (B, 2, 3)


def attention_theta(params: Tensor) -> Tensor:
    """The attention transform of Eq. 2: isotropic scale and translation (or one scale per axis).

    Args:
        params: (B, 3) (s, t_x, t_y), or (B, 4) (s_x, s_y, t_x, t_y).

    Returns:
        (B, 2, 3) θ = [[s_x, 0, t_x], [0, s_y, t_y]] in params' dtype.

    Raises:
        ValueError: params not (B, 3) or (B, 4).
    """
    if not isinstance(params, Tensor) or params.dim() != 2 or params.shape[-1] not in (3, 4):
        shape = tuple(params.shape) if isinstance(params, Tensor) else type(params).__name__
        raise ValueError(f"attention_theta takes (B, 3) (s, t_x, t_y) or (B, 4) (s_x, s_y, t_x, t_y), got {shape}")
    if params.shape[-1] == 3:
        s, tx, ty = params.unbind(-1)                                              # 3 x (B,)
        sx, sy = s, s
    else:
        sx, sy, tx, ty = params.unbind(-1)                                         # 4 x (B,)
    zero = torch.zeros_like(sx)
    # 6 x (B,) -> (B, 6) -> (B, 2, 3)
    return torch.stack([sx, zero, tx, zero, sy, ty], dim=-1).reshape(-1, 2, 3)


def box_theta(boxes: Tensor, height: int, width: int, align_corners: bool = False) -> Tensor:
    """θ whose output grid covers exactly a pixel box of the input (RoI warping).

    Args:
        boxes: (B, 4) (x0, y0, x1, y1) in pixel edge coordinates (pixel j spans [j, j + 1)): the box covers the
            pixels x0..x1−1, y0..y1−1 when the corners are integers.
        height, width: size of the input image.
        align_corners: the convention the θ will be used with (:func:`transform`):
            False: the output's outer edges land on the box's edges, s_x = (x1 − x0)/W, t_x = (x0 + x1)/W − 1
            (likewise y); an output of (y1 − y0) x (x1 − x0) pixels then samples exactly the box's pixel centres.
            True: the output's corner pixel CENTRES land on the box's corner pixel centres x0 + 1/2 and x1 − 1/2,
            s_x = (x1 − x0 − 1)/(W − 1), t_x = (x0 + x1 − 1)/(W − 1) − 1 (likewise y; needs W, H >= 2); an output of
            the box's size again samples exactly its pixel centres.

    Returns:
        (B, 2, 3) θ in at least float32.

    Raises:
        ValueError: boxes not (B, 4), a size < 1 (< 2 with align_corners=True).
    """
    if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[-1] != 4:
        shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(f"box_theta takes boxes (B, 4) as pixel (x0, y0, x1, y1), got {shape}")
    _check_image_size(height, width, "box_theta", 2 if align_corners else 1)
    b = boxes.to(compute_dtype(boxes))
    x0, y0, x1, y1 = b.unbind(-1)                                                 # 4 x (B,)
    if align_corners:
        sx, tx = (x1 - x0 - 1) / (width - 1), (x0 + x1 - 1) / (width - 1) - 1
        sy, ty = (y1 - y0 - 1) / (height - 1), (y0 + y1 - 1) / (height - 1) - 1
    else:
        sx, tx = (x1 - x0) / width, (x0 + x1) / width - 1
        sy, ty = (y1 - y0) / height, (y0 + y1) / height - 1
    return attention_theta(torch.stack([sx, sy, tx, ty], dim=-1))                # (B, 4) -> (B, 2, 3)


def transform(x: Tensor, theta: Tensor, size: tuple[int, int], align_corners: bool = False,
              padding_mode: str = "zeros") -> Tensor:
    """Warp x by θ: the output grid (Eq. 1) sampled bilinearly (Eq. 5).

    Args:
        x: (B, C, H, W) input.
        theta: (B, 2, 3) affine maps from output to input normalised coordinates.
        size: (h, w) of the output.
        align_corners: see the module docstring.
        padding_mode: "zeros", "border" or "reflection" (``F.grid_sample``) for points outside the input.

    Returns:
        (B, C, h, w) in at least float32 (float64 stays).

    Raises:
        ValueError: wrong ranks, a batch mismatch, a bad size or padding mode.
    """
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(f"transform takes an input (B, C, H, W), got {tuple(getattr(x, 'shape', ()))}")
    _check_theta(theta, "transform")
    if theta.shape[0] != x.shape[0]:
        raise ValueError(f"transform: θ has {theta.shape[0]} matrices for a batch of {x.shape[0]}; give one per image")
    h, w = _check_out_size(size, "transform")
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"unknown padding_mode {padding_mode!r}; choose from {', '.join(PADDING_MODES)}")
    dtype = compute_dtype(x, theta)
    with no_autocast(x.device.type):
        B, C = x.shape[:2]
        grid = F.affine_grid(theta.to(dtype), [B, C, h, w], align_corners=align_corners)      # (B, h, w, 2) Eq. 1
        return F.grid_sample(x.to(dtype), grid, mode="bilinear", padding_mode=padding_mode,   # Eq. 5
                             align_corners=align_corners)                                     # (B, C, h, w)


def sampling_grid(theta: Tensor, size: tuple[int, int], height: int, width: int, align_corners: bool = False) -> Tensor:
    """The source points of the output grid in input pixel (x, y) edge coordinates, for drawing on the image.

    Args:
        theta: (B, 2, 3).
        size: (h, w) of the output.
        height, width: size of the input.
        align_corners: as in :func:`transform`.

    Returns:
        (B, h, w, 2) pixel (x, y); the identity θ at the input's size gives the pixel centres (j + 0.5, i + 0.5).
    """
    _check_theta(theta, "sampling_grid")
    h, w = _check_out_size(size, "sampling_grid")
    _check_image_size(height, width, "sampling_grid")
    dtype = compute_dtype(theta)
    with no_autocast(theta.device.type):
        g = F.affine_grid(theta.to(dtype), [theta.shape[0], 1, h, w], align_corners=align_corners)  # (B, h, w, 2)
        if align_corners:   # −1 .. 1 = pixel centres 0 .. W−1, edge coordinates = index + 0.5
            scale = torch.tensor([width - 1, height - 1], dtype=dtype, device=g.device) / 2
            return (g + 1) * scale + 0.5
        scale = torch.tensor([width, height], dtype=dtype, device=g.device) / 2
        return (g + 1) * scale                                                    # (B, h, w, 2) * (2,)


class SpatialTransformer(nn.Module):
    """Localisation network -> θ -> bilinear warp of the input (§3).

    Args:
        in_channels: channels of the input.
        out_size: (h, w) of the warped output; None for the input's size.
        mode: "affine" (θ of 6 numbers) or "attention" ((s, t_x, t_y), Eq. 2, the scale + translation variant).
        localisation: a module mapping x (B, C, H, W) to features (B, loc_features); None for the default small CNN
            (conv 5x5 in_channels->8 pad 2, maxpool 2, ReLU, conv 5x5 8->10 pad 2, maxpool 2, ReLU, adaptive average
            pool to 3x3, flatten, Linear(90, hidden), ReLU; the max pools round up, so any input size works).
        loc_features: width of ``localisation``'s output (required with a custom localisation).
        hidden: width of the default CNN's hidden layer.
        align_corners: see the module docstring.

    The final regression layer, Linear(loc_features or hidden, 6 or 3), starts with zero weight and the identity as
    its bias ([1, 0, 0, 0, 1, 0] or [1, 0, 0]): the transformer starts as the identity transform, as the paper's
    localisation networks do.
    """

    def __init__(self, in_channels: int, out_size: tuple[int, int] | None = None, mode: str = "affine",
                 localisation: nn.Module | None = None, loc_features: int | None = None, hidden: int = 32,
                 align_corners: bool = False):
        super().__init__()
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels must be an int >= 1, not {in_channels!r}")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose 'affine' (6 parameters) or 'attention' (s, t_x, t_y)")
        if out_size is not None:
            out_size = tuple(_check_out_size(out_size, "SpatialTransformer"))
        if localisation is None:
            if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
                raise ValueError(f"hidden must be an int >= 1, not {hidden!r}")
            if loc_features is not None and loc_features != hidden:
                raise ValueError(f"loc_features={loc_features} describes a custom localisation module; the default "
                                 f"one gives hidden={hidden} features (pass localisation, or leave loc_features out)")
            localisation = nn.Sequential(
                nn.Conv2d(in_channels, 8, 5, padding=2), nn.MaxPool2d(2, ceil_mode=True), nn.ReLU(),
                nn.Conv2d(8, 10, 5, padding=2), nn.MaxPool2d(2, ceil_mode=True), nn.ReLU(),
                nn.AdaptiveAvgPool2d(3), nn.Flatten(), nn.Linear(90, hidden), nn.ReLU())
            loc_features = hidden
        elif isinstance(loc_features, bool) or not isinstance(loc_features, int) or loc_features < 1:
            raise ValueError(f"a custom localisation module needs loc_features, the width of its (B, F) output, as "
                             f"an int >= 1, not {loc_features!r}")
        self.in_channels, self.out_size, self.mode, self.align_corners = in_channels, out_size, mode, align_corners
        self.localisation = localisation
        self.fc = nn.Linear(loc_features, MODES[mode])
        with torch.no_grad():                     # start at the identity
            self.fc.weight.zero_()
            self.fc.bias.copy_(torch.tensor([1.0, 0, 0, 0, 1, 0] if mode == "affine" else [1.0, 0, 0]))

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, out_size={self.out_size}, align_corners={self.align_corners}"

    def theta(self, x: Tensor) -> Tensor:
        """x (B, C, H, W) -> θ (B, 2, 3)."""
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"SpatialTransformer takes (B, {self.in_channels}, H, W), got "
                             f"{tuple(getattr(x, 'shape', ()))}")
        feats = self.localisation(x)
        if feats.dim() != 2 or feats.shape[-1] != self.fc.in_features:
            raise ValueError(f"the localisation module must return (B, {self.fc.in_features}) features, got "
                             f"{tuple(feats.shape)}; set loc_features to its output width")
        with no_autocast(x.device.type):
            t = self.fc(feats.to(self.fc.weight.dtype))                           # (B, 6) or (B, 3)
        if self.mode == "affine":
            return t.reshape(-1, 2, 3)                                            # (B, 6) -> (B, 2, 3)
        return attention_theta(t)                                                 # (B, 3) -> (B, 2, 3)

    def forward(self, x: Tensor, return_theta: bool = False):
        """x (B, C, H, W) -> the warped (B, C, h, w) [, θ (B, 2, 3)]."""
        theta = self.theta(x)
        size = self.out_size if self.out_size is not None else tuple(x.shape[-2:])
        out = transform(x, theta, size, align_corners=self.align_corners)
        return (out, theta) if return_theta else out

