"""ResNet backbones with output stride 32, 16 or 8 (dilation instead of stride in the last stages).

He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016, https://arxiv.org/abs/1512.03385.
Dilated variant as in DeepLab (Chen et al., https://arxiv.org/abs/1606.00915) and "Dilated Residual Networks"
(Yu, Koltun, Funkhouser, https://arxiv.org/abs/1705.09914). Parameter names follow torchvision
(``conv1, bn1, layer1..layer4``) so that a torchvision state dict loads with ``load_pretrained``.

Geometry: every stride-2 operator is "same"-padded, so feature index i at stride s sits at input pixel s·i.
"""

from __future__ import annotations

import torch
from torch import nn

from .pretrained import load_pretrained  # noqa: F401  (re-exported)


def conv3x3(cin, cout, stride=1, dilation=1):
    return nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride=1, dilation=1, downsample=None, norm=nn.BatchNorm2d):
        super().__init__()
        self.conv1 = conv3x3(cin, planes, stride, dilation)
        self.bn1 = norm(planes)
        self.conv2 = conv3x3(planes, planes, 1, dilation)
        self.bn2 = norm(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride=1, dilation=1, downsample=None, norm=nn.BatchNorm2d):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = conv3x3(planes, planes, stride, dilation)  # stride on the 3x3 (torchvision "v1.5")
        self.bn2 = norm(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = norm(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


SPECS = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
}


class ResNet(nn.Module):
    """ResNet feature extractor.

    Args:
        depth: 18, 34, 50 or 101.
        output_stride: 32 (plain), 16 (layer4 dilated 2) or 8 (layer3 dilated 2, layer4 dilated 4).
        in_channels: input channels.
        zero_init_residual: zero the last BN gamma of each block (helps from-scratch training).
        deep_stem: replace the 7x7 stem conv by three 3x3 convs (3->64 s2, 64->64, 64->128; "ResNet-C" of Bag of
            Tricks, used by PSPNet/CCNet/FLANet). ``conv1`` is then a Sequential whose indices 0, 1, 3, 4, 6 are
            the convs and BNs, and ``bn1`` normalises 128 channels, as in FLANet's ``resnet101-deep.pth``.
        full_dilation: the first block of a dilated stage uses the stage's whole dilation (FLANet/CCNet code);
            by default it uses half of it (DeepLab).
    forward(x) returns {'stem': s4, 'layer1': s4, 'layer2': s8, 'layer3': s16|8, 'layer4': s32|16|8}.
    """

    def __init__(self, depth: int = 18, output_stride: int = 32, in_channels: int = 3,
                 zero_init_residual: bool = True, norm=nn.BatchNorm2d, deep_stem: bool = False,
                 full_dilation: bool = False):
        super().__init__()
        name = f"resnet{depth}"
        if name not in SPECS:
            raise ValueError(f"ResNet depth {depth} is not available; choose one of 18, 34, 50, 101")
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, not {output_stride}")
        block, layers = SPECS[name]
        self.depth, self.output_stride = depth, output_stride
        strides = {32: (1, 2, 2, 2), 16: (1, 2, 2, 1), 8: (1, 2, 1, 1)}[output_stride]
        dilations = {32: (1, 1, 1, 1), 16: (1, 1, 1, 2), 8: (1, 1, 2, 4)}[output_stride]
        self.full_dilation = full_dilation
        stem = 128 if deep_stem else 64
        if deep_stem:
            self.conv1 = nn.Sequential(conv3x3(in_channels, 64, 2), norm(64), nn.ReLU(inplace=True),
                                       conv3x3(64, 64), norm(64), nn.ReLU(inplace=True), conv3x3(64, 128))
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = norm(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.inplanes = stem
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
            setattr(self, f"layer{i + 1}", self._make_layer(block, planes, n, strides[i], dilations[i], norm))
        e = block.expansion
        self.out_channels = {"stem": stem, "layer1": 64 * e, "layer2": 128 * e, "layer3": 256 * e, "layer4": 512 * e}
        s3 = 16 if output_stride >= 16 else 8
        self.out_strides = {"stem": 4, "layer1": 4, "layer2": 8, "layer3": s3, "layer4": output_stride}
        self.out_origins = {k: 0.0 for k in self.out_strides}  # feature i sits at input pixel stride * i
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _make_layer(self, block, planes, n, stride, dilation, norm):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                                       norm(planes * block.expansion))
        # the first block of a dilated stage uses half the dilation (DeepLab's multi-grid-free convention)
        first_dilation = dilation if self.full_dilation else max(1, dilation // 2)
        blocks = [block(self.inplanes, planes, stride, first_dilation, downsample, norm)]
        self.inplanes = planes * block.expansion
        blocks += [block(self.inplanes, planes, 1, dilation, None, norm) for _ in range(1, n)]
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        feats = {"stem": x}
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
            feats[name] = x
        return feats
