"""FLANet: deep-stem dilated ResNet (output stride 8), the FLA head and two auxiliary heads; the peer attention
blocks (non-local, DANet, CCNet, channel) as drop-in replacements of the FLA block on the same network.

Song, Li, Li, Guo, Huang, "Fully Attentional Network for Semantic Segmentation", AAAI 2022,
https://arxiv.org/abs/2112.04108. Official code: https://github.com/maggiesong7/FullyAttentional (``model.py``:
``FLANet``, ``FLANetOutput``, ``ResNet`` with ``deep_stem=True``, ``dilated=True``).

    x (B, 3, H, W) -> deep-stem ResNet, layer3 dilation 2, layer4 dilation 4 (full dilation in every block)
    x1 = layer2 (B, 128e, H/8, W/8),  x2 = layer3 (B, 256e, H/8, W/8),  x3 = layer4 (B, 512e, H/8, W/8)
    f = conv3x3-BN-ReLU(512e -> C), conv3x3-BN-ReLU(C -> C)         C = ``channels`` (512)
    f = block(f)                                                     FLA (with its trailing conv3x3-BN-ReLU), or
                                                                     a peer followed by the same conv3x3-BN-ReLU
    main = Out(cat[x3, f])     (B, K, H/4, W/4)                      Out = ×2 nearest upsample, conv3x3-BN-ReLU to
    aux1 = Out(x1), aux2 = Out(x2)  (mid 64)                         ``mid``, Dropout2d(0.1), conv1x1 to K classes
    logits = bilinear(main, (H, W), align_corners=True)              as the official code (also the aux heads)

Blocks (``attention=``): ``fla`` (the paper), ``none`` (only the trailing conv3x3-BN-ReLU: the base network),
``nonlocal`` (embedded Gaussian), ``danet`` (PAM + CAM, each with its own conv3x3-BN-ReLU, summed), ``ccnet``
(criss-cross attention, 2 recurrences) and ``channel`` (DANet's CAM alone). Every variant has the same backbone,
input convs, output module and aux heads, so a comparison between them is one for one.

Aux loss weights are not in the official repository; 0.4 each (the engine's ``aux_weight``) is the common choice.
Initialisation: the head's convs use ``kaiming_normal_(a=1)`` as the official code; the backbone keeps its own
(from-scratch) initialisation unless ``pretrained`` names a local checkpoint (a deep-stem ``resnet101-deep.pth``
or torchvision-format state dict; with a torchvision 7x7 stem use ``deep_stem=False``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import ChannelAttention, FullyAttentionalBlock, NonLocalBlock
from ..attention.criss_cross import CrissCrossAttention
from ..attention.danet import DANetBlock, conv_bn_relu
from ..nn.resnet import ResNet
from .base import SegmentationModel

ATTENTION_BLOCKS = ("fla", "none", "nonlocal", "danet", "ccnet", "channel")


class FLANetOutput(nn.Sequential):
    """×2 nearest upsample, conv3x3-BN-ReLU (in -> mid), Dropout2d(0.1), conv1x1 (mid -> classes)."""

    def __init__(self, cin: int, mid: int, num_classes: int, dropout: float = 0.1):
        super().__init__(nn.Upsample(scale_factor=2, mode="nearest"), conv_bn_relu(cin, mid), nn.Dropout2d(dropout),
                         nn.Conv2d(mid, num_classes, 1))


class AttentionThenConv(nn.Module):
    """A peer attention module followed by the conv3x3-BN-ReLU that the FLA block ends with."""

    def __init__(self, attention: nn.Module | None, channels: int):
        super().__init__()
        self.attention = attention
        self.post = conv_bn_relu(channels, channels)   # named as the FLA block's, so their state dicts line up

    def memory_bytes(self, batch: int, height: int, width: int, training: bool = True) -> int:
        if self.attention is None:
            return 0
        if isinstance(self.attention, ChannelAttention):
            return self.attention.memory_bytes(batch, self.post[0].in_channels, training)
        return self.attention.memory_bytes(batch, height, width, training)

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        maps = {}
        if self.attention is not None:
            x, maps = self.attention(x, return_attention=True) if return_attention else (self.attention(x), {})
        y = self.post(x)
        return (y, maps) if return_attention else y


def build_block(attention: str, channels: int, sub_sample: bool = False, recurrence: int = 2) -> nn.Module:
    """The attention block of the head, ``forward(x, return_attention)``; see the module docstring."""
    if attention == "fla":
        return FullyAttentionalBlock(channels)
    if attention == "danet":
        return DANetBlock(channels, sub_sample=sub_sample)
    peers = {
        "none": lambda: None,
        "nonlocal": lambda: NonLocalBlock(channels, sub_sample=sub_sample),
        "ccnet": lambda: CrissCrossAttention(channels, recurrence=recurrence, sub_sample=sub_sample),
        "channel": lambda: ChannelAttention(),
    }
    if attention not in peers:
        raise ValueError(f"unknown attention block {attention!r}; choose one of {', '.join(ATTENTION_BLOCKS)}")
    return AttentionThenConv(peers[attention](), channels)


class FLANet(SegmentationModel):
    """Args:
        num_classes: K.
        depth: backbone ResNet depth (18, 34, 50, 101; the paper uses 101).
        attention: the head's block (``ATTENTION_BLOCKS``).
        channels: C, the head's width (512 in the paper; smaller is cheaper for CPU budgets).
        mid_channels: the main output module's width (512); aux_mid: the aux heads' (64).
        sub_sample: key/value 2x2 sub-sampling of the spatial blocks (non-local, PAM, criss-cross).
        recurrence: criss-cross recurrences (2).
        deep_stem, output_stride: backbone options (True, 8).
        pretrained: local backbone checkpoint.

    ``forward(images, return_attention=False)``: logits (B, K, H, W); in training ``aux`` = {"layer2", "layer3"};
    ``attention``: the block's maps (``fla_column`` (B, W', C, C), ``fla_row`` (B, H', C, C), ``nonlocal`` /
    ``position`` (B, H'W', h'w'), ``criss_cross`` (B, R, H', W', h' + w'), ``channel`` (B, C, C)) and ``grid``
    (B, 2): the feature grid (H', W') they live on.
    """

    def __init__(self, num_classes: int, depth: int = 101, attention: str = "fla", channels: int = 512,
                 mid_channels: int = 512, aux_mid: int = 64, sub_sample: bool = False, recurrence: int = 2,
                 deep_stem: bool = True, output_stride: int = 8, in_channels: int = 3, pretrained: str | None = None):
        super().__init__()
        self.num_classes, self.attention_name = num_classes, attention
        self.backbone = ResNet(depth, output_stride, in_channels, deep_stem=deep_stem, full_dilation=True)
        if pretrained:
            from ..nn.pretrained import load_pretrained
            load_pretrained(self.backbone, pretrained)
        c2, c3, c4 = (self.backbone.out_channels[k] for k in ("layer2", "layer3", "layer4"))
        self.conv = nn.Sequential(conv_bn_relu(c4, channels), conv_bn_relu(channels, channels))
        self.block = build_block(attention, channels, sub_sample, recurrence)
        self.out_main = FLANetOutput(c4 + channels, mid_channels, num_classes)
        self.out_aux1 = FLANetOutput(c2, aux_mid, num_classes)
        self.out_aux2 = FLANetOutput(c3, aux_mid, num_classes)
        for name, m in self.named_modules():
            if isinstance(m, nn.Conv2d) and not name.startswith("backbone"):
                nn.init.kaiming_normal_(m.weight, a=1)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def feature_size(self, height: int, width: int) -> tuple[int, int]:
        """The (H', W') grid of the head for an (height, width) input: every stride-2 step rounds up."""
        for _ in range({8: 3, 16: 4, 32: 5}[self.backbone.output_stride]):
            height, width = (height + 1) // 2, (width + 1) // 2
        return height, width

    def attention_memory_bytes(self, batch: int, height: int, width: int, training: bool = True) -> int:
        """Estimated bytes of the head block's attention maps for a (batch, 3, height, width) input, before
        running it (fp32 energies and softmax; see each block's ``memory_bytes``)."""
        return self.block.memory_bytes(batch, *self.feature_size(height, width), training=training)

    def _up(self, x: torch.Tensor, size) -> torch.Tensor:
        return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)

    def forward(self, images: torch.Tensor, return_attention: bool = False) -> dict:
        size = images.shape[-2:]
        feats = self.backbone(images)
        x3 = feats["layer4"]                                       # (B, 512e, H/8, W/8)
        f = self.conv(x3)                                          # (B, C, H/8, W/8)
        f, maps = self.block(f, return_attention=True) if return_attention else (self.block(f), {})
        logits = self._up(self.out_main(torch.cat([x3, f], 1)), size)  # (B, 512e + C, .) -> (B, K, H/4, W/4) -> full
        aux = {}
        if self.training:
            aux = {"layer2": self._up(self.out_aux1(feats["layer2"]), size),
                   "layer3": self._up(self.out_aux2(feats["layer3"]), size)}
        if return_attention:
            maps = dict(maps)
            maps["grid"] = torch.tensor([list(f.shape[-2:])] * f.shape[0], device=f.device)
        return self.output(logits, aux, maps, return_attention)


def flanet(num_classes: int, **kwargs) -> FLANet:
    return FLANet(num_classes, **kwargs)
