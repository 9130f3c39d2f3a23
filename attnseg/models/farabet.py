"""Multi-scale convolutional features for scene labelling (Farabet et al.).

Farabet, Couprie, Najman, LeCun, "Learning Hierarchical Features for Scene Labeling", TPAMI 35(8), 2013,
https://doi.org/10.1109/TPAMI.2012.231 (METHODS.md §5.3). Official code: the original was written in Torch7
(Lua) and is not public / not available; this is a reimplementation from the paper and the spec.

Pipeline, shapes for a (B, 3, H, W) input, ``levels = 3``, ``channels = (16, 64, 256)``, K classes:

1. colour: ``rgb_to_yuv``, a fixed 3x3 matrix (BT.601) applied to the input as the data pipeline hands it over
   (ImageNet-normalised RGB) -> (B, 3, H, W). The per-channel offsets of that normalisation vanish in the LCN
   below; its per-channel scales (std 0.229 / 0.224 / 0.225) barely change the mix.
2. pyramid: ``laplacian_pyramid`` -> ``levels`` maps, level s of shape (B, 3, H_s, W_s) with
   H_s = ceil(H / 2^s): band s = g_s − up(g_{s+1}) and the last level is the low-pass g_{L−1} itself
   (``pyramid="gaussian"`` gives the blurred, downscaled images g_s instead, for comparison; the spec asks for
   the Laplacian one). g_{s+1} = [1, 3, 3, 1]/8 binomial blur of g_s (replicate borders) subsampled ×2.
3. ``local_contrast_normalize`` of every level, per channel (Gaussian window 9x9, σ = 9/4 px): subtract the
   local mean, divide by max(local std, mean local std) (Jarrett et al. 2009) -> same shapes.
4. one convnet, the SAME module (shared weights) at every level (``FarabetConvNet``):
   stage 1: 7x7 conv 3 -> 16 (pad 3) -> tanh -> 2x2 max-pool   -> (B, 16, ceil(H_s/2), ceil(W_s/2))
   stage 2: 7x7 conv 16 -> 64 (pad 3) -> tanh -> 2x2 max-pool  -> (B, 64, ceil(H_s/4), ceil(W_s/4))
   stage 3: 7x7 conv 64 -> 256 (pad 3), a linear filter bank   -> (B, 256, h_s, w_s), h_s = ceil(H / 2^(s+2))
   so the features of level s have stride 4 on their level, 4·2^s on the input.
5. every level's features are upsampled bilinearly ×2^s to the level-0 feature grid (B, 256, h_0, w_0) and
   concatenated -> F: (B, 768, h_0, w_0) (``forward_parts()["features"]``).
6. per-pixel classifier on F: a 1x1 conv 768 -> K (linear, ``classifier_hidden=0``) or 1x1 conv 768 -> hidden
   -> tanh -> 1x1 conv hidden -> K -> scores (B, K, h_0, w_0) (``forward_parts()["scores"]``).
7. scores upsampled bilinearly ×4 -> (B, K, H, W) logits (``upsample_scores``).

Grid alignment: every resampling uses the half-pixel convention of ``F.interpolate(align_corners=False)`` with an
exact power-of-two factor followed by a top-left crop, so that nothing drifts on odd sizes. Pyramid pixel i of
level s sits at input position 2^s (i + ½) − ½ (the even [1, 3, 3, 1] kernel centres each output between two
inputs), "same"-padded convs keep positions and 2x2 pools (``ceil_mode``) centre output k at 2k + ½, hence
feature k of level s sits at input position 2^(s+2) (k + ½) − ½: the half-pixel grid of stride 2^(s+2), which
is exactly what ×2^s and ×4 bilinear upsampling with ``align_corners=False`` assumes. Any H, W works (down to
1x1): pools round up and the logits are cropped.

Choices where the paper is ambiguous or which differ from it:

- dense connections in every conv (the paper uses random connection tables: stage 1 has 8 Y + 4 U + 4 V
  filters, stages 2 and 3 connect each output to a subset of the inputs);
- LCN window 9x9 with σ = kernel_size / 4 (Torch7's ``image.gaussian`` default); the paper's exact window
  (recalled as 15x15, unverified) is the ``lcn_kernel`` option. Borders are reflect-padded (replicate when a
  level is too small to reflect), so they are not darkened;
- the Laplacian bands' up operator is bilinear ×2 (a [½, 1, ½] tent on the zero-inserted level), not the
  Burt-Adelson 5-tap kernel; any up operator reconstructs exactly since the same one builds the bands;
- training: the paper trains the features on randomly sampled, class-balanced patches with a linear classifier
  and then (for the 2-layer classifier) trains the MLP on the frozen features; here everything is trained
  end-to-end on full-image crops with the engine's per-pixel loss;
- ``batch_norm`` (not in the paper) adds BN after every conv, with statistics shared across the levels
  (``SharedBatchNorm2d``: one mean / variance over all levels' pixels, like the shared weights), so that train and
  eval normalise alike;
- out of scope: the paper's post-processing (superpixel majority vote, CRF over superpixels, "optimal purity
  cover" on a segmentation tree). The logits are the convnet's dense per-pixel predictions.

Parameters: the convnet 855,680 (2,368 + 50,240 + 803,072) whatever ``levels`` is; the linear classifier
768·K + K (for 11 classes: 8,459), the 2-layer one with 1024 hidden 768·1024 + 1024 + 1024·K + K.

``return_attention=True`` adds ``{"scale_energy": (B, levels, H, W)}``: at each pixel, the share of each level in
the L2 energy of the classifier's input, ‖f_s‖² / Σ_t ‖f_t‖² with f_s the 256-d features of level s on the
level-0 grid (before dropout), bilinearly upsampled like the logits. Non-negative, sums to 1 over the levels.
It says which scale's features are large at a pixel, not how much the classifier relies on them (the
classifier weights are not involved): the model has no learnt attention.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.amp import no_autocast
from .base import Grid, SegmentationModel

# BT.601 RGB -> YUV (rows: Y, U, V)
YUV_MATRIX = ((0.299, 0.587, 0.114),
              (-0.14713, -0.28886, 0.436),
              (0.615, -0.51499, -0.10001))


def rgb_to_yuv(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB -> (B, 3, H, W) YUV by the fixed BT.601 matrix (a linear map; no clipping)."""
    if x.shape[1] != 3:
        raise ValueError(f"rgb_to_yuv needs 3 channels, got {x.shape[1]}")
    m = torch.tensor(YUV_MATRIX, dtype=x.dtype, device=x.device)
    return torch.einsum("oc,bchw->bohw", m, x)


def gaussian_kernel1d(kernel_size: int, sigma: float, dtype=torch.float32, device=None) -> torch.Tensor:
    """(kernel_size,) Gaussian taps centred on the middle tap, summing to 1."""
    t = torch.arange(kernel_size, dtype=torch.float64) - (kernel_size - 1) / 2
    g = torch.exp(-t ** 2 / (2 * sigma ** 2))
    return (g / g.sum()).to(dtype=dtype, device=device)


def _pad(x: torch.Tensor, pad: tuple[int, int, int, int], mode: str) -> torch.Tensor:
    """F.pad (left, right, top, bottom) with ``mode``; reflect falls back to replicate on maps too small for it."""
    if not any(pad):
        return x
    if mode == "reflect" and (max(pad[0], pad[1]) >= x.shape[-1] or max(pad[2], pad[3]) >= x.shape[-2]):
        mode = "replicate"
    return F.pad(x, pad, mode=mode)


def separable_blur(x: torch.Tensor, taps: torch.Tensor, stride: int = 1, pad=None, mode: str = "reflect"):
    """Depthwise separable filtering of (B, C, H, W) with the 1-D ``taps`` along H then W, after padding
    ``pad`` = (left, right, top, bottom) (default: "same" for an odd kernel)."""
    k, C = taps.numel(), x.shape[1]
    if pad is None:
        pad = (k // 2,) * 4
    x = _pad(x, tuple(pad), mode)
    taps = taps.to(dtype=x.dtype, device=x.device)
    x = F.conv2d(x, taps.view(1, 1, k, 1).expand(C, 1, k, 1), stride=(stride, 1), groups=C)
    return F.conv2d(x, taps.view(1, 1, 1, k).expand(C, 1, 1, k), stride=(1, stride), groups=C)


def local_contrast_normalize(x: torch.Tensor, kernel_size: int = 9, sigma: float | None = None,
                             eps: float = 1e-4, padding_mode: str = "reflect") -> torch.Tensor:
    """Local contrast normalisation of (B, C, H, W), per channel (Jarrett et al. 2009; Farabet et al. 2013).

    With w a normalised Gaussian window (``kernel_size``, std ``sigma``, default kernel_size / 4 px):
    subtractive step v = x − w * x; divisive step y = v / max(σ, mean(σ)) where σ = sqrt(w * v² + eps²) is the
    local std and mean(σ) its mean over the map (per image and channel), so flat regions are not blown up.
    Borders are ``padding_mode``-padded (reflect, or replicate on maps too small to reflect). Invariant to
    x -> a·x + b (a > 0, per channel) up to ``eps``.
    """
    sigma = kernel_size / 4 if sigma is None else sigma
    taps = gaussian_kernel1d(kernel_size, sigma, dtype=x.dtype, device=x.device)
    v = x - separable_blur(x, taps, mode=padding_mode)
    std = torch.sqrt(separable_blur(v * v, taps, mode=padding_mode) + eps ** 2)
    return v / torch.maximum(std, std.mean((-2, -1), keepdim=True))


PYRAMID_TAPS = (1 / 8, 3 / 8, 3 / 8, 1 / 8)  # binomial: output i centred at input 2i + 1/2


def pyramid_down(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, ceil(H/2), ceil(W/2)): [1, 3, 3, 1]/8 blur (replicate borders), subsampled ×2;
    output i is centred at input 2i + ½."""
    H, W = x.shape[-2:]
    taps = torch.tensor(PYRAMID_TAPS, dtype=x.dtype, device=x.device)
    return separable_blur(x, taps, stride=2, pad=(1, 1 + W % 2, 1, 1 + H % 2), mode="replicate")


def pyramid_up(x: torch.Tensor, size) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, H, W) with h = ceil(H/2), w = ceil(W/2): bilinear ×2 (half-pixel, the inverse of
    ``pyramid_down``'s geometry), cropped to ``size``."""
    H, W = size
    h, w = x.shape[-2:]
    if (h, w) != (-(-H // 2), -(-W // 2)):
        raise ValueError(f"a {h}x{w} level is not the half of {H}x{W}")
    return upsample_crop(x, 2, size)


def upsample_crop(x: torch.Tensor, factor: int, size) -> torch.Tensor:
    """Bilinear ×``factor`` (half-pixel centres, ``align_corners=False``) of (B, C, h, w), cropped top-left to
    ``size`` (which must fit in factor·h, factor·w)."""
    h, w = x.shape[-2:]
    H, W = size
    if factor * h < H or factor * w < W:
        raise ValueError(f"{h}x{w} ×{factor} does not cover {H}x{W}")
    if factor != 1:
        x = F.interpolate(x, size=(factor * h, factor * w), mode="bilinear", align_corners=False)
    return x[..., :H, :W]


def gaussian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """[g_0 = x, g_1, ..., g_{levels-1}], g_{s+1} = ``pyramid_down(g_s)``: shapes (B, C, ceil(H/2^s), ...)."""
    out = [x]
    for _ in range(levels - 1):
        out.append(pyramid_down(out[-1]))
    return out


def laplacian_pyramid(x: torch.Tensor, levels: int, pyramid: str = "laplacian") -> list[torch.Tensor]:
    """``levels`` maps of shape (B, C, ceil(H/2^s), ceil(W/2^s)), s = 0..levels-1.

    "laplacian": band s = g_s − pyramid_up(g_{s+1}), the last level = g_{levels-1} (the low-pass residual), so
    ``reconstruct_laplacian`` gives x back exactly (up to float error). "gaussian": the g_s themselves."""
    if levels < 1:
        raise ValueError("levels must be >= 1")
    g = gaussian_pyramid(x, levels)
    if pyramid == "gaussian":
        return g
    if pyramid != "laplacian":
        raise ValueError(f"pyramid {pyramid!r} unknown; choose laplacian or gaussian")
    return [g[s] - pyramid_up(g[s + 1], g[s].shape[-2:]) for s in range(levels - 1)] + [g[-1]]


def reconstruct_laplacian(bands: list[torch.Tensor]) -> torch.Tensor:
    """The inverse of ``laplacian_pyramid``: x = band_0 + up(band_1 + up(... + g_last))."""
    x = bands[-1]
    for band in reversed(bands[:-1]):
        x = band + pyramid_up(x, band.shape[-2:])
    return x


class SharedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that can normalise several maps of different sizes (the pyramid levels) with ONE set of
    batch statistics, the mean / variance over all their pixels (``forward_many``), as one big batch would.
    With a single map, or in eval mode, it is plain BatchNorm2d."""

    def forward_many(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(xs) == 1 or not (self.training or not self.track_running_stats):
            return [self(x) for x in xs]
        n = sum(x.numel() // x.shape[1] for x in xs)
        mean = sum(x.float().sum((0, 2, 3)) for x in xs) / n
        var = sum(((x.float() - mean.view(1, -1, 1, 1)) ** 2).sum((0, 2, 3)) for x in xs) / n
        if self.training and self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), m)
                unbiased = var.detach() * (n / max(n - 1, 1))
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), m)
        scale = torch.rsqrt(var + self.eps)
        shift = -mean * scale
        if self.affine:
            scale, shift = scale * self.weight, shift * self.weight + self.bias
        return [x * scale.view(1, -1, 1, 1).to(x.dtype) + shift.view(1, -1, 1, 1).to(x.dtype) for x in xs]


class FarabetStage(nn.Module):
    """kxk conv ("same" padding) -> [BN] -> [tanh -> 2x2 max-pool (ceil mode)]; ``nonlinear=False`` is the
    last, linear stage (conv [+ BN] only)."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 7, nonlinear: bool = True, batch_norm: bool = False):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError("kernel_size must be odd ('same' padding)")
        self.conv = nn.Conv2d(cin, cout, kernel_size, padding=kernel_size // 2, bias=not batch_norm)
        self.bn = SharedBatchNorm2d(cout) if batch_norm else None
        self.nonlinear = nonlinear
        gain = nn.init.calculate_gain("tanh") if nonlinear else 1.0  # LeCun-style fan-in init, tanh gain
        nn.init.normal_(self.conv.weight, std=gain / math.sqrt(cin * kernel_size ** 2))
        if self.conv.bias is not None:
            nn.init.zeros_(self.conv.bias)

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        if self.nonlinear:
            x = F.max_pool2d(torch.tanh(x), 2, ceil_mode=True)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_many([x])[0]

    def forward_many(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """The stage on each map; BN (if any) with statistics shared over the maps."""
        ys = [self.conv(x) for x in xs]
        if self.bn is not None:
            ys = self.bn.forward_many(ys)
        return [self._finish(y) for y in ys]


class FarabetConvNet(nn.Module):
    """The 3-stage (``len(channels)``) convnet applied with the same weights to every pyramid level:
    (B, in, h, w) -> (B, channels[-1], ceil(h / stride), ceil(w / stride)), stride = 2^(stages − 1)."""

    def __init__(self, in_channels: int = 3, channels=(16, 64, 256), kernel_size: int = 7, batch_norm: bool = False):
        super().__init__()
        chans = (in_channels, *channels)
        n = len(channels)
        self.stages = nn.ModuleList(FarabetStage(chans[i], chans[i + 1], kernel_size, nonlinear=i < n - 1,
                                                 batch_norm=batch_norm) for i in range(n))
        self.out_channels = channels[-1]
        self.stride = 2 ** (n - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_many([x])[0]

    def forward_many(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        for stage in self.stages:
            xs = stage.forward_many(xs)
        return xs


class FarabetMultiScale(SegmentationModel):
    """Farabet et al.'s multi-scale convnet with a per-pixel classifier (see the module docstring).

    Args:
        num_classes: K.
        channels: maps of the convnet's stages (16, 64, 256); every stage but the last pools ×2.
        kernel_size: conv size (7).
        levels: pyramid levels (3: scales 1, 1/2, 1/4); the classifier reads levels·channels[-1] features.
        pyramid: "laplacian" (band-pass levels + low-pass residual) or "gaussian" (blurred, downscaled images).
        lcn: local contrast normalisation of every level; ``lcn_kernel`` its window (9).
        yuv: convert the first 3 input channels to YUV first.
        classifier_hidden: 0 = linear per-pixel classifier; > 0 = 1x1 conv to that many units -> tanh -> 1x1 conv.
        batch_norm: BN after every conv, statistics shared over the levels (not in the paper).
        dropout: on the concatenated features, before the classifier.
        in_channels: input channels.

    ``forward(images (B, in, H, W))`` -> ``{"logits": (B, K, H, W), "aux": {}}``, plus ``"attention":
    {"scale_energy": (B, levels, H, W)}`` when ``return_attention``. ``forward_parts``: scores (B, K, h, w) and
    features (B, levels·256, h, w) on the stride-4 grid, h = ceil(H/4).
    """

    def __init__(self, num_classes: int, channels=(16, 64, 256), kernel_size: int = 7, levels: int = 3,
                 pyramid: str = "laplacian", lcn: bool = True, lcn_kernel: int = 9, yuv: bool = True,
                 classifier_hidden: int = 0, batch_norm: bool = False, dropout: float = 0.0, in_channels: int = 3):
        super().__init__()
        if pyramid not in ("laplacian", "gaussian"):
            raise ValueError(f"pyramid {pyramid!r} unknown; choose laplacian or gaussian")
        if levels < 1:
            raise ValueError("levels must be >= 1")
        if yuv and in_channels < 3:
            raise ValueError("yuv needs at least 3 input channels")
        self.num_classes, self.levels, self.pyramid = num_classes, levels, pyramid
        self.lcn, self.lcn_kernel, self.yuv = lcn, lcn_kernel, yuv
        self.convnet = FarabetConvNet(in_channels, tuple(channels), kernel_size, batch_norm)
        self.stride = self.convnet.stride
        width = levels * self.convnet.out_channels
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        if classifier_hidden:
            hidden = nn.Conv2d(width, classifier_hidden, 1)
            nn.init.normal_(hidden.weight, std=nn.init.calculate_gain("tanh") / math.sqrt(width))
            nn.init.zeros_(hidden.bias)
            score = nn.Conv2d(classifier_hidden, num_classes, 1)
            self.classifier = nn.Sequential(hidden, nn.Tanh(), score)
        else:
            score = nn.Conv2d(width, num_classes, 1)
            self.classifier = score
        nn.init.normal_(score.weight, std=0.01)
        nn.init.zeros_(score.bias)

    def preprocess(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(B, C, H, W) -> ``levels`` maps (B, C, ceil(H/2^s), ceil(W/2^s)): YUV, pyramid, LCN. Runs in at least
        float32 even under autocast (cheap, and the local variances need the precision)."""
        with no_autocast(images.device.type):
            x = images if images.dtype == torch.float64 else images.float()
            if self.yuv:
                x = torch.cat([rgb_to_yuv(x[:, :3]), x[:, 3:]], 1) if x.shape[1] > 3 else rgb_to_yuv(x)
            maps = laplacian_pyramid(x, self.levels, self.pyramid)
            if self.lcn:
                maps = [local_contrast_normalize(m, self.lcn_kernel) for m in maps]
        return maps

    def scale_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Per level, the convnet's (B, 256, h, w) features resampled to the level-0 grid, h = ceil(H/4)."""
        feats = self.convnet.forward_many(self.preprocess(images))
        grid = feats[0].shape[-2:]
        return [upsample_crop(f, 2 ** s, grid) for s, f in enumerate(feats)]

    def _parts(self, images: torch.Tensor) -> tuple[dict, list[torch.Tensor]]:
        per_scale = self.scale_features(images)
        features = torch.cat(per_scale, 1)                     # (B, levels·256, h, w)
        scores = self.classifier(self.dropout(features))       # (B, K, h, w)
        return {"scores": scores, "features": features}, per_scale

    def forward_parts(self, images: torch.Tensor) -> dict:
        return self._parts(images)[0]

    def upsample_scores(self, scores: torch.Tensor, size) -> torch.Tensor:
        return upsample_crop(scores, self.stride, tuple(size))  # (B, K, H, W)

    def score_grid(self) -> Grid:
        return Grid(self.stride, (self.stride - 1) / 2)         # half-pixel grid: k at 4k + 1.5

    def forward(self, images: torch.Tensor, return_attention: bool = False) -> dict:
        size = images.shape[-2:]
        parts, per_scale = self._parts(images)
        logits = self.upsample_scores(parts["scores"], size)
        attention = None
        if return_attention:
            energy = torch.stack([f.float().pow(2).sum(1) for f in per_scale], 1)  # (B, levels, h, w)
            share = energy / energy.sum(1, keepdim=True).clamp_min(torch.finfo(energy.dtype).tiny)
            attention = {"scale_energy": upsample_crop(share, self.stride, size)}
        return self.output(logits, attention=attention, return_attention=return_attention)


def farabet(num_classes: int, **kwargs) -> FarabetMultiScale:
    """Farabet et al. 2013 multi-scale convnet (linear classifier; ``classifier_hidden=1024`` for 2 layers)."""
    return FarabetMultiScale(num_classes, **kwargs)
