"""The embedding network of segmentation-aware networks: a hypercolumn of the image and early VGG features, resized
to full resolution, and a 1x1 convolution to a D-dimensional per-pixel embedding.

Harley, Derpanis, Kokkinos, "Segmentation-Aware Convolutional Networks Using Local Attention Masks", ICCV 2017,
https://arxiv.org/abs/1708.04607. Official code (Caffe): https://github.com/aharley/segaware
(``config/vgg/train.prototxt``, ``config/res/train.prototxt``: taps rgb, conv1_2, conv2_2, conv3_3).

    x (B, 3, H, W)                          the normalised image (the code taps the mean-subtracted image / 255)
    conv1_1, conv1_2 (64)  -> c1 (B, 64, H, W)
    maxpool 3x3/2 pad 1, conv2_1, conv2_2 (128) -> c2 (B, 128, H/2, W/2)
    maxpool 3x3/2 pad 1, conv3_1..conv3_3 (256) -> c3 (B, 256, H/4, W/4)
    e = conv1x1(cat[x, c1, up(c2), up(c3)])  (B, D, H, W), D = 64, no nonlinearity   (bilinear "Interp" upsampling)

The convolutions are ``features.0, 2, 5, 7, 10, 12, 14`` as in torchvision's ``vgg16``, so ImageNet VGG-16
conv1-conv3 weights load from a local torchvision state dict with ``load_pretrained`` (the paper's embedding net
is built from VGG layers; METHODS.md §1.3 recommends that initialisation). ``width`` scales the channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class EmbeddingHead(nn.Module):
    """``forward(x (B, 3, H, W))`` -> e (B, dim, H, W). ``taps``: which of "rgb", "conv1", "conv2", "conv3" make the
    hypercolumn (all four by default)."""

    TAPS = ("rgb", "conv1", "conv2", "conv3")

    def __init__(self, dim: int = 64, width: float = 1.0, in_channels: int = 3, taps=TAPS):
        super().__init__()
        unknown = [t for t in taps if t not in self.TAPS]
        if unknown or not taps:
            raise ValueError(f"unknown or no hypercolumn taps {list(taps)}; choose from {', '.join(self.TAPS)}")
        c1, c2, c3 = (max(1, round(c * width)) for c in (64, 128, 256))

        def conv(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True)]

        pool = nn.MaxPool2d(3, 2, 1)
        self.features = nn.Sequential(*conv(in_channels, c1), *conv(c1, c1), pool,             # 0-3, 4
                                      *conv(c1, c2), *conv(c2, c2), nn.MaxPool2d(3, 2, 1),     # 5-8, 9
                                      *conv(c2, c3), *conv(c3, c3), *conv(c3, c3))             # 10-15
        self.taps = tuple(taps)
        cin = {"rgb": in_channels, "conv1": c1, "conv2": c2, "conv3": c3}
        self.project = nn.Conv2d(sum(cin[t] for t in self.taps), dim, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)   # the code's xavier
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        feats = {"rgb": x}
        h = x
        ends = {3: "conv1", 8: "conv2", 15: "conv3"}     # after conv1_2, conv2_2, conv3_3 (their ReLUs)
        last = max((i for i, name in ends.items() if name in self.taps), default=-1)   # no deeper layer runs
        for i, layer in enumerate(self.features[:last + 1]):
            h = layer(h)
            if i in ends:
                feats[ends[i]] = h
        cols = [F.interpolate(feats[t], size=size, mode="bilinear", align_corners=False)
                if feats[t].shape[-2:] != size else feats[t] for t in self.taps]
        return self.project(torch.cat(cols, 1))        # (B, sum of tap channels, H, W) -> (B, dim, H, W)
