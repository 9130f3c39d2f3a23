"""DeepLab-LargeFOV: VGG-16 with atrous convolution, output stride 8.

Chen, Papandreou, Kokkinos, Murphy, Yuille, "Semantic Image Segmentation with Deep Convolutional Nets and
Fully Connected CRFs", ICLR 2015, https://arxiv.org/abs/1412.7062. Official code: the DeepLab Caffe fork,
https://bitbucket.org/deeplab/deeplab-public (``DeepLab-LargeFOV/train.prototxt``); the same layout is the
VGG config of https://github.com/aharley/segaware (METHODS.md §1.7(a)).

Network (``attnseg.nn.vgg.vgg16_largefov``), shapes for a 513x513 input:

- VGG-16 convs; pool1-3: 3x3 max, pad 1, stride 2 (513 -> 257 -> 129 -> 65); pool4-5: 3x3 max, pad 1, stride 1;
  conv5_x dilated by 2; pool5a: 3x3 average pool, pad 1, stride 1;
- fc6: 3x3 conv, dilation 12, 1024 channels; fc7: 1x1 conv, 1024; both ReLU + dropout 0.5;
- fc8: 1x1 conv to the classes, weights Gaussian std 0.01, bias 0 -> (B, K, 65, 65);
- the scores are upsampled ×8 bilinearly to the input.

Upsampling: feature i sits exactly on input pixel 8·i (every layer is "same"-padded around its centre and the
pools round up as Caffe does), so the scores are interpolated with corner alignment to 8·(h − 1) + 1 pixels
and cropped to (H, W). For H = 8k + 1 (513) this is DeepLab's Caffe ``Interp`` (zoom 8) exactly; for other
sizes it keeps the alignment. DeepLab trains on labels shrunk ×8 rather than on upsampled scores; here the loss
sees the full-resolution logits like every other model (the engine may subsample instead).

Parameters: width 1.0 20.5M for 21 classes (the paper's "20.5M"); ``width=0.5`` 5.1M. ``pretrained``: a local
torchvision ``vgg16`` state dict; fc6 / fc7 are decimated from the classifier (``vgg16_classifier_to_conv``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.vgg import load_vgg16_pretrained, vgg16_largefov
from .base import Grid, SegmentationModel, crop_to


def upsample_aligned(score: torch.Tensor, factor: int, size) -> torch.Tensor:
    """(B, K, h, w) scores whose index i sits on input pixel factor·i -> (B, K, H, W)."""
    h, w = score.shape[-2:]
    full = (factor * (h - 1) + 1, factor * (w - 1) + 1)
    if full[0] < size[0] or full[1] < size[1]:
        raise ValueError(f"{h}x{w} scores at stride {factor} do not cover a {size[0]}x{size[1]} input")
    return crop_to(F.interpolate(score, size=full, mode="bilinear", align_corners=True), size)


class DeepLabLargeFOV(SegmentationModel):
    """Args:
        num_classes: K.
        width: channel multiplier (1.0 = paper, 20.5M parameters).
        dropout: after fc6 and fc7 (0.5 in the prototxt).
        pretrained: local torchvision ``vgg16`` state dict (width 1.0 only).
        batch_norm: BN after every conv and fc6 / fc7 (not in the paper; trains from scratch far better).
        in_channels: input channels (3; more when a wrapper feeds extra planes).

    ``forward(images (B, 3, H, W))`` -> ``{"logits": (B, K, H, W), "aux": {}}``; ``return_attention=True`` adds
    an empty ``"attention"`` dict (the model has no attention). ``forward_parts`` gives fc8 and fc7 at stride 8
    (attention to scale reads fc7, as in Chen et al. 2016).
    """

    def __init__(self, num_classes: int, width: float = 1.0, dropout: float = 0.5, pretrained: str | None = None,
                 batch_norm: bool = False, in_channels: int = 3):
        super().__init__()
        self.num_classes = num_classes
        self.backbone = vgg16_largefov(width, dropout=dropout, batch_norm=batch_norm, in_channels=in_channels)
        if pretrained:
            load_vgg16_pretrained(self.backbone, pretrained)
        assert self.backbone.out_origins["fc7"] == 0 and self.backbone.out_strides["fc7"] == 8
        self.fc8 = nn.Conv2d(self.backbone.fc_channels, num_classes, 1)
        nn.init.normal_(self.fc8.weight, std=0.01)
        nn.init.zeros_(self.fc8.bias)

    def forward_parts(self, images: torch.Tensor) -> dict:
        fc7 = self.backbone(images)["fc7"]     # (B, 1024, ceil-ish H/8, W/8)
        return {"scores": self.fc8(fc7), "features": fc7}  # scores (B, K, h, w), index i at input pixel 8i

    def upsample_scores(self, scores: torch.Tensor, size) -> torch.Tensor:
        return upsample_aligned(scores, 8, tuple(size))  # (B, K, H, W)

    def score_grid(self) -> Grid:
        return Grid(8, 0.0)    # fc8 (and fc7) index i on input pixel 8i: corner-aligned, as upsample_aligned

    def forward(self, images: torch.Tensor, return_attention: bool = False) -> dict:
        logits = self.upsample_scores(self.forward_parts(images)["scores"], images.shape[-2:])
        return self.output(logits, return_attention=return_attention)


def deeplab_largefov_vgg16(num_classes: int, width: float = 1.0, pretrained: str | None = None,
                           **kwargs) -> DeepLabLargeFOV:
    return DeepLabLargeFOV(num_classes, width=width, pretrained=pretrained, **kwargs)
