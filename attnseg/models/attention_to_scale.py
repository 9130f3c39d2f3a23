"""Attention to Scale: one network shared across input scales, fused by learned per-pixel scale weights.

Chen, Yang, Wang, Xu, Yuille, "Attention to Scale: Scale-aware Semantic Image Segmentation", CVPR 2016,
https://arxiv.org/abs/1511.03339. Official code: Caffe inside the DeepLab-v2 fork (``Interp`` and
``SpatialProduct`` layers, https://bitbucket.org/aquariusjay/deeplab-public-ver2); no prototxt of the attention
model was published, so the head below follows the paper's text (METHODS.md §3.2).

For every scale s in S (default {1, 0.75, 0.5}) the *same* base network (shared weights) sees the image resized
by s and returns, on its score grid, class scores f^s (B, K, h_s, w_s) and the features F^s (B, C, h'_s, w'_s)
its classifier read (DeepLab-LargeFOV: fc8 and fc7 at stride 8; FCN: the fused stride-8 scores and the top
stride-32 features). Everything is resampled bilinearly onto the scale-1 grids with the base's own geometry
(``score_grid`` / ``feature_grid``, see "Grid alignment" below), then

- ``attention`` (the paper's model): h = Conv1x1_S(Dropout(ReLU(Conv3x3_512(concat_s F^s))))   (B, S, h', w');
  w^s = exp(h^s) / sum_t exp(h^t), a softmax over scales per pixel shared by all classes            (Eq. 2);
  g_c = sum_s w^s f^s_c                                                                           (Eq. 1);
- ``avg``: w^s = 1/S;  ``max``: g_c = max_s f^s_c per class and pixel (the gradient reaches the argmax scale).

The fused scores g are upsampled to the input by the base's own final upsampling. Extra supervision (E-Supv):
the loss is CE(g) + sum_s CE(f^s), all weights 1, each f^s taken on the scale-1 grid as the shared classifier
saw it after resizing, then upsampled like g.

Grid alignment: each scale's maps are laid onto the scale-1 grid where they sit on the image, not by resizing
one array to the other's shape. Entry i of a base's map sits at input position o + σ·i (``Grid(σ, o)``, declared
by the base: DeepLab-LargeFOV (8, 0), corner-aligned; FCN-8s ResNet (8, 0), FCN-8s VGG (8, −23.5); Farabet's
half-pixel (4, 1.5); full-resolution logits (1, 0)); the scale-s input of size N_s is the image resized with
``align_corners=False``, so scale-1 entry j reads the scale-s map at index
((o + σ·j + ½)·N_s/N − ½ − o)/σ. A plain ``F.interpolate(align_corners=False)`` of the arrays would assume a
half-pixel grid: on LargeFOV at 321 px it misplaces the 0.75 scale by up to 1.1 px and the 0.5 scale by 3.4 px.
Positions outside a map read its border value (as ``F.interpolate``). The head's energies go from the feature
grid to the score grid the same way.

Choices where the paper is silent (METHODS.md §3.5):
- the head reads the features at the scale-1 *feature* grid; when that grid is coarser than the score grid
  (FCN: stride 32 vs 8) its weights are resampled bilinearly, which keeps them a convex combination;
- the head's last conv starts at zero, so training starts from average pooling (w^s = 1/S);
- energies and the softmax are computed in fp32;
- images are downscaled with antialiased bilinear interpolation; sizes round to the nearest pixel;
- the loss compares full-resolution logits with full-resolution labels (the paper downsamples the labels ×8);
- a base without features (``forward_parts`` default) feeds its score maps to the head instead.

Seen in training (docs/RESULTS.md): on CamVid the learned weights favour scale 1 for thin and distant objects and
scale 0.5 for the near road, as in the paper; on small synthetic scenes (96x128, where one scale sufficed) the
energies grew to about ±40 and the softmax saturated onto a single scale for every pixel.

Shapes for a 360x480 input and the FCN-8s ResNet-18 base, S = 3:
    scale 1: scores (B, K, 45, 60), features (B, 512, 12, 15)
    scale 0.75 (270x360): scores (B, K, 34, 45) -> (B, K, 45, 60), features (B, 512, 9, 12) -> (12, 15)
    scale 0.5 (180x240): scores (B, K, 23, 30) -> (B, K, 45, 60), features (B, 512, 6, 8) -> (12, 15)
    head input (B, 1536, 12, 15) -> h (B, 3, 12, 15) -> w (B, 3, 45, 60); g (B, K, 45, 60) -> (B, K, 360, 480).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import Grid, SegmentationModel, resample

FUSIONS = ("attention", "max", "avg")


class ScaleAttentionHead(nn.Module):
    """The attention model: concat_s F^s (B, S·C, h, w) -> scale energies h (B, S, h, w)."""

    def __init__(self, in_channels: int, num_scales: int, hidden: int = 512, dropout: float = 0.5):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(hidden, num_scales, 1)
        nn.init.zeros_(self.conv2.weight)  # w^s = 1/S at the start: training begins from average pooling
        nn.init.zeros_(self.conv2.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.dropout(self.relu(self.conv1(features))))


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float64 else x.float()


def scale_weights(energies: torch.Tensor) -> torch.Tensor:
    """Eq. 2: (B, S, h, w) energies -> per-pixel softmax over scales, in fp32 (or fp64)."""
    return torch.softmax(at_least_fp32(energies), dim=1)


def fuse(stack: torch.Tensor, fusion: str, weights: torch.Tensor | None = None) -> torch.Tensor:
    """(B, S, K, h, w) per-scale scores -> (B, K, h, w): Eq. 1 with ``weights`` (B, S, h, w), or max / avg."""
    if fusion == "avg":
        return stack.mean(1)
    if fusion == "max":
        return stack.amax(1)
    return (weights.unsqueeze(2) * at_least_fp32(stack)).sum(1).to(stack.dtype)  # sum_s w^s f^s_c


def rescale(images: torch.Tensor, scale: float) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, round(sH), round(sW)), antialiased when shrinking."""
    if scale == 1:
        return images
    H, W = images.shape[-2:]
    # math.floor, not int(): the same number for these positive sizes, but a symbolic size stays symbolic under
    # torch.export (int() would fix the exported graph to the example's size)
    size = (torch.sym_max(1, math.floor(H * scale + 0.5)), torch.sym_max(1, math.floor(W * scale + 0.5)))
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=scale < 1)


class AttentionToScale(SegmentationModel):
    """Args:
        base: a ``SegmentationModel`` (its weights are shared by every scale).
        num_classes: K (the base's).
        scales: input scales; must contain 1 (the grid everything is fused on). Paper: (1, 0.75, 0.5).
        fusion: 'attention' (the paper), 'max' or 'avg' (its baselines).
        extra_supervision: add one loss per scale (E-Supv) to the loss on the fused output.
        head_channels: filters of the attention head's 3x3 conv (paper: 512).
        head_dropout: dropout in the head.

    ``forward(images (B, 3, H, W), return_attention=False)`` -> ``{"logits": (B, K, H, W), "aux": {...}}``;
    in training with E-Supv, ``aux`` holds ``scale_<s>`` (B, K, H, W) per scale with loss weight 1.
    ``return_attention=True`` adds ``"attention": {"scale_weights": (B, S, H, W), "scale_logits":
    (B, S, K, H, W)}``: the per-pixel weight of each scale (softmax for 'attention', 1/S for 'avg', for 'max' 1
    where that scale gave the winning score of the predicted class) and each scale's own class scores.
    """

    def __init__(self, base: SegmentationModel, num_classes: int, scales=(1.0, 0.75, 0.5), fusion: str = "attention",
                 extra_supervision: bool = True, head_channels: int = 512, head_dropout: float = 0.5):
        super().__init__()
        scales = tuple(float(s) for s in scales)
        if fusion not in FUSIONS:
            raise ValueError(f"fusion {fusion!r} unknown; choose one of {', '.join(FUSIONS)}")
        if 1.0 not in scales:
            raise ValueError(f"scales {scales} must include 1.0: the scale-1 score grid is where scales are fused")
        if len(set(scales)) != len(scales) or min(scales) <= 0:
            raise ValueError(f"scales {scales} must be distinct and positive")
        if len(scales) < 2:
            raise ValueError("attention to scale needs at least two scales; use the base model for one")
        self.base, self.num_classes, self.scales = base, num_classes, scales
        self.fusion, self.extra_supervision = fusion, extra_supervision
        self.ref = scales.index(1.0)
        self.head = None
        if fusion == "attention":
            self.head = ScaleAttentionHead(len(scales) * self._feature_channels(), len(scales), head_channels,
                                           head_dropout)

    def _feature_channels(self) -> int:
        """Channels of the base's features (or scores, when it exposes none), from a small dry run."""
        p = next(self.base.parameters())
        was_training = self.base.training
        self.base.eval()
        with torch.no_grad():
            parts = self.base.forward_parts(torch.zeros(1, 3, 65, 65, dtype=p.dtype, device=p.device))
        self.base.train(was_training)
        f = parts["features"] if parts.get("features") is not None else parts["scores"]
        return f.shape[1]

    def forward(self, images: torch.Tensor, return_attention: bool = False) -> dict:
        H, W = images.shape[-2:]
        inputs = [rescale(images, s) for s in self.scales]
        parts = [self.base.forward_parts(x) for x in inputs]                       # shared weights
        sgrid = self.base.score_grid()
        size = parts[self.ref]["scores"].shape[-2:]                                 # scale-1 score grid (h, w)
        scores = [resample(p["scores"], sgrid, x.shape[-2:], sgrid, (H, W), size)    # S x (B, K, h, w)
                  for p, x in zip(parts, inputs)]
        stack = torch.stack(scores, 1)                                              # (B, S, K, h, w)
        weights = None
        if self.fusion == "attention":
            has = parts[self.ref].get("features") is not None
            fgrid = self.base.feature_grid() if has else sgrid
            feats = [p["features"] if has else p["scores"] for p in parts]          # S x (B, C, h'_s, w'_s)
            fsize = feats[self.ref].shape[-2:]
            feats = [resample(f, fgrid, x.shape[-2:], fgrid, (H, W), fsize) for f, x in zip(feats, inputs)]
            energies = self.head(torch.cat(feats, 1))                               # (B, S·C, h', w') -> (B, S, h', w')
            weights = resample(scale_weights(energies), fgrid, (H, W), sgrid, (H, W), size)   # (B, S, h, w)
        fused = fuse(stack, self.fusion, weights)                                     # (B, K, h, w)
        logits = self.base.upsample_scores(fused, (H, W))                             # (B, K, H, W)

        esupv = self.training and self.extra_supervision
        per_scale = [self.base.upsample_scores(sc, (H, W)) for sc in scores] if esupv or return_attention else []
        aux = {f"scale_{s:g}": p for s, p in zip(self.scales, per_scale)} if esupv else {}
        aux_weights = dict.fromkeys(aux, 1.0)                                         # E-Supv: equal weights
        attention = None
        if return_attention:
            mode = "nearest" if self.fusion == "max" else "bilinear"  # max: one-hot winners stay one-hot
            shown = resample(self._display_weights(stack, fused, weights), sgrid, (H, W), Grid(), (H, W), (H, W),
                             mode)                                                    # (B, S, H, W)
            attention = {"scale_weights": shown, "scale_logits": torch.stack(per_scale, 1)}   # (B, S, K, H, W)
        return self.output(logits, aux, attention, return_attention, aux_weights)

    def _display_weights(self, stack: torch.Tensor, fused: torch.Tensor, weights: torch.Tensor | None):
        """(B, S, h, w) weight of each scale per pixel, for every fusion."""
        B, S, K, h, w = stack.shape
        if weights is not None:
            return weights
        if self.fusion == "avg":
            return stack.new_full((B, S, h, w), 1.0 / S, dtype=torch.float32)
        pred = fused.argmax(1)                                                     # (B, h, w)
        winning = stack.gather(2, pred[:, None, None].expand(B, S, 1, h, w))[:, :, 0]  # (B, S, h, w)
        return F.one_hot(winning.argmax(1), S).permute(0, 3, 1, 2).float()


def attention_to_scale(num_classes: int, base: str = "fcn8s_resnet18", scales=(1.0, 0.75, 0.5),
                       fusion: str = "attention", extra_supervision: bool = True, head_channels: int = 512,
                       head_dropout: float = 0.5, base_kwargs: dict | None = None) -> AttentionToScale:
    """Wrap the registry model ``base`` (built with ``base_kwargs``); the paper's base is
    ``deeplab_largefov_vgg16`` (registered as ``attention_to_scale_largefov``)."""
    from . import create_model

    if base.startswith("attention_to_scale"):
        raise ValueError(f"base {base!r} is itself multi-scale; choose a single-scale model")
    net = create_model(base, num_classes, **(base_kwargs or {}))
    return AttentionToScale(net, num_classes, scales, fusion, extra_supervision, head_channels, head_dropout)
