"""DeconvNet: a VGG-16 encoder mirrored by a decoder of unpooling (with max-pool switches) and deconvolution.

Noh, Hong, Han, "Learning Deconvolution Network for Semantic Segmentation", ICCV 2015,
https://arxiv.org/abs/1505.04366. Official code (Caffe): https://github.com/HyeonwooNoh/DeconvNet
(``model/DeconvNet/DeconvNet_inference_deploy.prototxt``).

Layout (METHODS.md §5.4 and the deploy prototxt), shapes for a 224x224 input:

- encoder: the 13 VGG-16 convs, each conv -> BN -> ReLU; 2x2 max-pools that keep their switches
  (224 -> 112 -> 56 -> 28 -> 14 -> 7); fc6 = 7x7 valid conv 4096 (-> 1x1) and fc7 = 1x1 conv 4096, each with
  BN + ReLU (no dropout: BN replaced it);
- decoder: fc6-deconv = 7x7 transposed conv 4096 -> 512 (1x1 -> 7x7) + BN + ReLU, then per stage 5..1
  max-unpooling with the stored switches (the value goes back where the max came from, zeros elsewhere) and
  3x3 transposed convs (pad 1) + BN + ReLU with channels 512-512-512 | 512-512-256 | 256-256-128 | 128-64 | 64-64;
- ``score``: 1x1 conv to the classes ("seg-score"), at input resolution.

Init as the prototxt: decoder and score weights Gaussian std 0.01, biases 0; every BN has scale 1 and shift
0.001. Encoder convs: torchvision's VGG init (or ``pretrained``: a torchvision ``vgg16_bn`` state dict, whose
classifier becomes fc6 / fc7 by FCN's net surgery, as DeconvNet starts from the convolutionalised VGG-16).

Any input size: fc6 is a 7x7 valid conv, so pool5 must be at least 7x7 and the switches must invert the pools
exactly. The input is therefore padded (centred; zeros by default, ``pad_mode``) to a multiple of 32 that is at
least ``min_size`` = 224, and the logits are cropped back to (H, W). The paper instead runs the network on
object proposals resized to 224x224 and aggregates them (pixel-wise max); that inference mode lives outside
this module. Note that BN in training needs more than one value per channel: at batch 1 the input must pad to
more than 224 (e.g. H, W > 224) so that fc6 is larger than 1x1.

Parameters (21 classes): width 1.0 (the paper's "252M") 251.8M = encoder 134.3M (fc6 alone 102.8M) +
fc6-deconv 102.8M + decoder 3x3 deconvs 14.8M; ``width=0.25`` 15.7M.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.tracing import is_exporting
from ..nn.unpool import MaxUnpool2d
from ..nn.vgg import load_vgg16_pretrained, scaled, vgg16_bn_deconvnet
from .base import SegmentationModel

# decoder stages, coarse to fine: output channels of each 3x3 transposed conv (the encoder mirrored)
DECODER_CFG = {5: (512, 512, 512), 4: (512, 512, 256), 3: (256, 256, 128), 2: (128, 64), 1: (64, 64)}


def deconv_bn_relu(cin: int, cout: int, kernel_size: int = 3, padding: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, kernel_size, padding=padding), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


def pad_to(images: torch.Tensor, min_size: int, multiple: int, mode: str = "constant"):
    """Centre-pad (B, C, H, W) to a multiple of ``multiple`` that is at least ``min_size``; returns the padded
    batch and the (top, left) of the original."""
    H, W = images.shape[-2:]
    # torch.sym_max: Python's max on a symbolic size would fix an exported graph to one side of min_size
    Ht = torch.sym_max(min_size, -(-H // multiple) * multiple)
    Wt = torch.sym_max(min_size, -(-W // multiple) * multiple)
    top, left = (Ht - H) // 2, (Wt - W) // 2
    if not is_exporting() and (Ht, Wt) == (H, W):   # exported: always pad (by 0 where it fits, the same result)
        return images, (0, 0)
    if mode == "reflect" and (top >= H or Ht - H - top >= H or left >= W or Wt - W - left >= W):
        raise ValueError(f"reflect padding of a {H}x{W} input to {Ht}x{Wt} is impossible (the padding exceeds the "
                         "image); use pad_mode='constant' or 'replicate'")
    return F.pad(images, (left, Wt - W - left, top, Ht - H - top), mode=mode), (top, left)


class DeconvNet(SegmentationModel):
    """Args:
        num_classes: K.
        width: channel multiplier of encoder and decoder (1.0 = paper, 251.8M parameters; 0.25 = 15.7M).
        pretrained: local torchvision ``vgg16_bn`` state dict for the encoder (width 1.0 only).
        min_size: smallest padded side (224: pool5 7x7, fc6 1x1).
        pad_mode: 'constant' (zeros, the mean after normalisation), 'replicate' or 'reflect'.

    ``in_channels``: input channels (3; more when a wrapper feeds extra planes, e.g. recurrent refinement).

    ``forward(images (B, 3, H, W))`` -> ``{"logits": (B, K, H, W), "aux": {}}``; ``return_attention=True`` adds
    ``"attention": {"switches": (B, 1, H, W)}``, the fraction of conv1 channels whose pool1 switch points at each
    pixel (where unpooling puts the decoder's activations back).
    """

    def __init__(self, num_classes: int, width: float = 1.0, pretrained: str | None = None, min_size: int = 224,
                 pad_mode: str = "constant", in_channels: int = 3):
        super().__init__()
        if min_size < 224:
            raise ValueError(f"min_size must be >= 224 so that pool5 is at least 7x7 (fc6 is a 7x7 valid conv), "
                             f"not {min_size}")
        self.num_classes, self.min_size, self.pad_mode = num_classes, min_size, pad_mode
        self.encoder = vgg16_bn_deconvnet(width, in_channels=in_channels)
        if pretrained:
            load_vgg16_pretrained(self.encoder, pretrained)
        c_fc, c5 = self.encoder.fc_channels, self.encoder.out_channels["pool5"]
        self.fc6_deconv = deconv_bn_relu(c_fc, c5, kernel_size=7, padding=0)  # (B, 512, h5, w5)
        self.unpool = MaxUnpool2d(2, 2)   # a scatter into zeros: nn.MaxUnpool2d's numbers, and it exports
        cin = c5
        for stage, channels in DECODER_CFG.items():
            layers = []
            for c in channels:
                layers.append(deconv_bn_relu(cin, scaled(c, width)))
                cin = scaled(c, width)
            setattr(self, f"deconv{stage}", nn.Sequential(*layers))
        self.score = nn.Conv2d(cin, num_classes, 1)  # "seg-score"
        self._init_decoder()

    def _init_decoder(self):
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):  # Caffe BN: scale_filler 1, shift_filler 0.001 (encoder too)
                nn.init.ones_(m.weight)
                nn.init.constant_(m.bias, 0.001)
        decoder = [self.fc6_deconv, self.score] + [getattr(self, f"deconv{s}") for s in DECODER_CFG]
        for part in decoder:
            for m in part.modules():
                if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                    nn.init.normal_(m.weight, std=0.01)
                    nn.init.zeros_(m.bias)

    def forward(self, images: torch.Tensor, return_attention: bool = False) -> dict:
        H, W = images.shape[-2:]
        x, (top, left) = pad_to(images, self.min_size, 32, self.pad_mode)  # (B, 3, Hp, Wp), Hp, Wp = 32k >= 224
        feats = self.encoder(x)                  # fc7: (B, 4096, Hp/32 - 6, Wp/32 - 6)
        y = self.fc6_deconv(feats["fc7"])        # (B, 512, Hp/32, Wp/32)
        for stage in DECODER_CFG:                # 5, 4, 3, 2, 1
            size = feats[f"conv{stage}"].shape[-2:]
            y = self.unpool(y, feats[f"pool{stage}_indices"], output_size=size)  # (B, C, 2h, 2w), zeros off-switch
            y = getattr(self, f"deconv{stage}")(y)
        logits = self.score(y)[..., top:top + H, left:left + W]  # (B, K, H, W)
        attention = None
        if return_attention:
            idx = feats["pool1_indices"]         # (B, C1, Hp/2, Wp/2) flat positions in the (Hp, Wp) map
            hits = torch.zeros(idx.shape[0], idx.shape[1], x.shape[-2] * x.shape[-1], device=idx.device)
            hits.scatter_(2, idx.flatten(2), 1.0)
            switches = hits.view(idx.shape[0], idx.shape[1], *x.shape[-2:]).mean(1, keepdim=True)
            attention = {"switches": switches[..., top:top + H, left:left + W]}  # (B, 1, H, W)
        return self.output(logits, attention=attention, return_attention=return_attention)


def deconvnet_vgg16(num_classes: int, width: float = 1.0, pretrained: str | None = None, **kwargs) -> DeconvNet:
    return DeconvNet(num_classes, width=width, pretrained=pretrained, **kwargs)
