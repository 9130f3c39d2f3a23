"""FCN-32s / FCN-16s / FCN-8s.

Long, Shelhamer, Darrell, "Fully Convolutional Networks for Semantic Segmentation", CVPR 2015 / TPAMI 2017,
https://arxiv.org/abs/1411.4038. Official code: https://github.com/shelhamer/fcn.berkeleyvision.org
(``voc-fcn8s/net.py``, ``surgery.py``).

What is kept from the paper and its reference code (METHODS.md §5.1):
- score layers are 1x1 convolutions; the skip score layers (``score_pool4``, ``score_pool3``) start at zero,
  so FCN-16s/8s begin as exactly the coarser net;
- every upsampling is a transposed convolution of kernel 2f, stride f, initialised to bilinear interpolation
  (``surgery.interp``); the ×2 steps learn, the final ×32/×16/×8 step stays fixed as in the reference
  (``learn_final_upsample=True`` frees it);
- outputs are aligned by cropping (Caffe ``Crop``), with offsets derived from the backbone's geometry: a stride-s
  feature i sits at input position origin + s·i, and FCN's even bilinear kernel (2f) puts its input i at output
  f·i + f − ½, so the crop offset is (a_fine − a_coarse)/s_fine + f − ½. That is an integer for VGG with the
  reference's 100-px padding (origins at half pixels; offsets 5, 9, 31 as in Caffe). For zero-padded backbones
  (ResNet: origins 0) it is f − ½, and rounding it would shift FCN-8s by 12.5 px, so there the kernel is odd
  (2f − 1, the same bilinear interpolation centred on a tap) and the exact offset f − 1 is used.

The backbone is any module returning a dict of features with ``out_channels``, ``out_strides`` and
``out_origins``; ``skips`` names the stride-8, stride-16 and stride-32 features.
"""

from __future__ import annotations

import torch
from torch import nn

from ..nn.resnet import ResNet
from .base import BilinearUpsample, Grid, SegmentationModel, crop_to

VARIANTS = {"32s": 1, "16s": 2, "8s": 3}


def aligned_upsample(channels: int, origin_coarse: float, origin_fine: float, stride_fine: float, factor: int,
                     fixed: bool = False) -> tuple[BilinearUpsample, int]:
    """The bilinear transposed conv of ``factor`` and the crop offset that align coarse onto fine exactly."""
    exact = (origin_fine - origin_coarse) / stride_fine + factor - 0.5   # even kernel 2f
    if abs(exact - round(exact)) < 1e-6:
        return BilinearUpsample(channels, factor, fixed), int(round(exact))
    exact -= 0.5                                                          # odd kernel 2f - 1
    if abs(exact - round(exact)) > 1e-6:
        raise ValueError(f"cannot align features with origins {origin_coarse} and {origin_fine} by cropping")
    return BilinearUpsample(channels, factor, fixed, kernel_size=2 * factor - 1), int(round(exact))


class FCN(SegmentationModel):
    """Args:
        backbone: feature extractor (see module docstring).
        num_classes: K.
        variant: '32s', '16s' or '8s'.
        skips: feature names at strides 8, 16, 32 (coarsest last).
        head: optional module applied to the coarsest feature before ``score_fr`` (VGG's fc6/fc7 live in
            the backbone; ResNet uses dropout only).
        learn_final_upsample: let the last (×8/×16/×32) bilinear upsampling learn (reference: fixed).
    """

    def __init__(self, backbone: nn.Module, num_classes: int, variant: str = "8s",
                 skips=("layer2", "layer3", "layer4"), head: nn.Module | None = None, head_channels: int | None = None,
                 dropout: float = 0.1, learn_final_upsample: bool = False):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"FCN variant {variant!r} unknown; choose one of {', '.join(VARIANTS)}")
        self.backbone, self.num_classes, self.variant = backbone, num_classes, variant
        self.skips = tuple(skips)
        s8, s16, s32 = self.skips
        ch, st, org = backbone.out_channels, backbone.out_strides, backbone.out_origins
        self.head = head if head is not None else nn.Dropout2d(dropout)
        c_top = head_channels or ch[s32]
        self.score_fr = nn.Conv2d(c_top, num_classes, 1)
        n = VARIANTS[variant]
        used = [s32, s16, s8][:n]  # coarse to fine
        self.score_pool = nn.ModuleDict()
        self.up = nn.ModuleDict()
        self.offsets = {}
        for coarse, fine in zip(used[:-1], used[1:]):
            f = st[coarse] // st[fine]
            score = nn.Conv2d(ch[fine], num_classes, 1)
            nn.init.zeros_(score.weight)  # zero-initialised skip scores: the net starts as the coarser one
            nn.init.zeros_(score.bias)
            self.score_pool[fine] = score
            self.up[fine], self.offsets[fine] = aligned_upsample(num_classes, self._origin(coarse), org[fine],
                                                                 st[fine], f)
        finest = used[-1]
        self.final_factor = st[finest]
        self.up_final, self.final_offset = aligned_upsample(num_classes, self._origin(finest), 0.0, 1.0,
                                                            self.final_factor, fixed=not learn_final_upsample)

    def _origin(self, name: str) -> float:
        """Input position of feature index 0; the top feature's may move through a head (VGG's 7x7 fc6)."""
        if name == self.skips[2]:
            return getattr(self.backbone, "top_origin", self.backbone.out_origins[name])
        return self.backbone.out_origins[name]

    def forward_parts(self, images: torch.Tensor) -> dict:
        """Scores on the finest fused grid (stride 32/16/8 for 32s/16s/8s) and the top features (stride 32)."""
        feats = self.backbone(images)
        s8, s16, s32 = self.skips
        top = self.head(feats[s32])
        score = self.score_fr(top)
        for fine in self.score_pool:   # coarse-to-fine skip fusion, FCN Fig. 3
            skip = self.score_pool[fine](feats[fine])
            up = self.up[fine](score)
            score = crop_to(up, skip.shape[-2:], self.offsets[fine]) + skip
        return {"scores": score, "features": top}

    def upsample_scores(self, scores: torch.Tensor, size) -> torch.Tensor:
        return crop_to(self.up_final(scores), tuple(size), self.final_offset)

    def score_grid(self) -> Grid:
        """The final upsampling puts score i at output f·i + (k − 1)/2 (kernel k, stride f), then crops."""
        k = self.up_final.kernel_size[0]
        return Grid(self.final_factor, (k - 1) / 2 - self.final_offset)

    def feature_grid(self) -> Grid:
        s32 = self.skips[2]
        return Grid(self.backbone.out_strides[s32], self._origin(s32))   # the top features

    def forward(self, images: torch.Tensor, return_attention: bool = False) -> dict:
        logits = self.upsample_scores(self.forward_parts(images)["scores"], images.shape[-2:])
        return self.output(logits, return_attention=return_attention)


def fcn_resnet(num_classes: int, variant: str = "8s", depth: int = 18, pretrained: str | None = None,
               in_channels: int = 3, **kwargs) -> FCN:
    backbone = ResNet(depth, output_stride=32, in_channels=in_channels)
    if pretrained:
        from ..nn.pretrained import load_pretrained
        load_pretrained(backbone, pretrained)
    return FCN(backbone, num_classes, variant, **kwargs)


def fcn_vgg16(num_classes: int, variant: str = "8s", pretrained: str | None = None, width: float = 1.0,
              in_channels: int = 3, **kwargs) -> FCN:
    """FCN-32s/16s/8s on VGG-16 as in the paper's Caffe reference (``voc-fcn*s/net.py``).

    The backbone (``attnseg.nn.vgg.vgg16_fcn``) pads conv1_1 by 100, has fc6 (7x7, 4096) and fc7 (1x1, 4096)
    with ReLU + dropout 0.5, and returns the skips ``pool4c`` / ``pool3c`` already cropped as Caffe crops
    ``score_pool4`` (offset 5) and ``score_pool3`` (offset 9); the crops of the upsampled maps are then 0, 0 and
    the final crops 19 (32s), 27 (16s), 31 (8s), as in the reference. ``pretrained``: a local torchvision
    ``vgg16`` state dict; its classifier becomes fc6/fc7 by net surgery. ``width`` scales every channel
    (1.0 = the paper's net, about 134M parameters).
    """
    from ..nn.vgg import load_vgg16_pretrained, vgg16_fcn

    backbone = vgg16_fcn(width, in_channels=in_channels)
    if pretrained:
        load_vgg16_pretrained(backbone, pretrained)
    kwargs.setdefault("dropout", 0.0)  # the dropout of FCN-VGG lives in fc6 / fc7
    return FCN(backbone, num_classes, variant, skips=("pool3c", "pool4c", "fc7"), **kwargs)
