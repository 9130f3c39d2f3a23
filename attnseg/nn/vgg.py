"""VGG-16 feature extractors for FCN, DeconvNet and DeepLab-LargeFOV.

Simonyan, Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition", ICLR 2015,
https://arxiv.org/abs/1409.1556. Parameter names follow torchvision (``features.0``, ``features.2``, ... for
``vgg16``; ``features.0``, ``features.1`` (BN), ``features.3``, ... for ``vgg16_bn``), so the ``features.*`` of a
torchvision state dict load with ``load_pretrained``. torchvision's classifier is ``Linear(25088, 4096)`` and
``Linear(4096, 4096)``; ``vgg16_classifier_to_conv`` reshapes them into the 7x7 / 1x1 convolutions ``fc6`` /
``fc7`` (FCN's "net surgery", ``surgery.transplant`` in https://github.com/shelhamer/fcn.berkeleyvision.org), or
decimates them into DeepLab-LargeFOV's 3x3 (dilation 12) / 1x1 layers with 1024 channels.

Three layouts, one class, a builder each:

- ``vgg16_fcn``: Caffe FCN reference (``voc-fcn*/net.py``): conv1_1 padded by 100 so that any input size gives
  a non-empty fc6, 2x2 max-pools with Caffe's ceil rounding, fc6 = 7x7 conv 4096 + ReLU + dropout 0.5, fc7 = 1x1
  conv 4096 + ReLU + dropout 0.5. It also returns the skip features ``pool4c`` / ``pool3c``: pool4 / pool3 cropped
  as Caffe crops ``score_pool4`` / ``score_pool3`` (offsets 5 and 9, derived from the geometry below), see
  ``VGG16._crop_skips``.
- ``vgg16_bn_deconvnet``: DeconvNet's encoder: BN after every conv and after fc6 / fc7, no dropout, 2x2 max-pools
  returning their switch indices, conv1_1 padded by 1.
- ``vgg16_largefov``: DeepLab-LargeFOV (METHODS §1.7(a)): 3x3 max-pools with pad 1, stride 2 for pool1-3 and
  stride 1 for pool4-5 (Caffe ceil rounding), conv5 dilated by 2, a 3x3 average pool ``pool5a``, fc6 = 3x3 conv
  with dilation 12 and 1024 channels, fc7 = 1x1 conv 1024, both with ReLU + dropout 0.5; output stride 8.

``width`` scales every channel count (1.0 = VGG-16), so that CPU-sized variants exist.

Geometry: ``out_origins[name]`` is the input pixel on which feature index 0 is centred and ``out_strides[name]``
the step between features, so feature i sits at ``origin + stride * i``. Every convolution or pooling of kernel
k, dilation d, padding p and stride s moves the origin by ``stride_in * ((k - 1) * d / 2 - p)``; the values are
derived from the layers, not written by hand (FCN layout: pool3 -95.5, pool4 -91.5, fc7 12.5).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from .pretrained import LoadReport, load_pretrained, read_state_dict

log = logging.getLogger(__name__)

# torchvision's configuration "D": channels of each 3x3 conv, "M" for a max-pool
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


def _advance(origin: float, stride: int, layer: nn.Module) -> tuple[float, int]:
    """Origin and stride (in input pixels) after a convolution or pooling layer."""
    k, s, p = (_pair(layer.kernel_size)[0], _pair(layer.stride)[0], _pair(layer.padding)[0])
    d = _pair(getattr(layer, "dilation", 1))[0]
    return origin + stride * ((k - 1) * d / 2 - p), stride * s


class VGG16(nn.Module):
    """VGG-16 feature extractor (use the builders below rather than these flags).

    Args:
        width: channel multiplier (1.0 = VGG-16: 64-128-256-512-512, fc 4096 or 1024).
        batch_norm: conv -> BN -> ReLU in the 13 convs and BN after fc6 / fc7 (torchvision ``vgg16_bn`` names).
        largefov: DeepLab-LargeFOV layout (see the module docstring).
        first_padding: padding of conv1_1 (FCN's Caffe reference: 100).
        ceil_mode: Caffe's rounding of pooled sizes (FCN, DeepLab).
        fc_channels: channels of fc6 / fc7 before ``width``; default 4096, or 1024 for ``largefov``; 0 for none.
        dropout: element-wise dropout after fc6 and fc7 (Caffe ``Dropout``).
        return_indices: the max-pools also return their switches, as ``pool{i}_indices`` (DeconvNet).
        fcn_skip_crop: add FCN's cropped skips ``pool4c`` and ``pool3c`` to the output.
        in_channels: input channels.

    ``forward(x)`` with x (B, C_in, H, W) returns a dict: ``conv{i}`` (the last activation of stage i, before its
    pool), ``pool{i}`` for i = 1..5, ``pool5a`` (largefov), ``fc7`` (unless ``fc_channels=0``), ``pool{i}_indices``
    (``return_indices``) and ``pool4c``, ``pool3c`` (``fcn_skip_crop``). ``out_channels``, ``out_strides`` and
    ``out_origins`` describe every feature.
    """

    def __init__(self, width: float = 1.0, batch_norm: bool = False, largefov: bool = False,
                 first_padding: int = 1, ceil_mode: bool = False, fc_channels: int | None = None,
                 dropout: float = 0.5, return_indices: bool = False, fcn_skip_crop: bool = False,
                 in_channels: int = 3):
        super().__init__()
        self.width, self.batch_norm, self.largefov = width, batch_norm, largefov
        layers, cin, stage, first = [], in_channels, 1, True
        stage_channels = {}
        for v in VGG16_CFG:
            if v == "M":
                if largefov:  # 3x3 pad 1; stride 2 for pool1-3, 1 for pool4-5
                    layers.append(nn.MaxPool2d(3, 2 if stage <= 3 else 1, 1, ceil_mode=True,
                                               return_indices=return_indices))
                else:
                    layers.append(nn.MaxPool2d(2, 2, ceil_mode=ceil_mode, return_indices=return_indices))
                stage_channels[stage] = cin
                stage += 1
                continue
            cout = scaled(v, width)
            dilation = 2 if largefov and stage == 5 else 1
            padding = first_padding if first else dilation
            layers.append(nn.Conv2d(cin, cout, 3, padding=padding, dilation=dilation))
            if batch_norm:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.ReLU(inplace=True))
            cin, first = cout, False
        self.features = nn.Sequential(*layers)
        self.pool5a = nn.AvgPool2d(3, 1, 1) if largefov else None  # Caffe AVE pooling counts the padding here

        fc = (1024 if largefov else 4096) if fc_channels is None else fc_channels
        self.fc_channels = scaled(fc, width) if fc else 0
        if self.fc_channels:
            c = self.fc_channels
            if largefov:
                self.fc6 = nn.Conv2d(cin, c, 3, padding=12, dilation=12)  # (B, 1024, H/8, W/8)
            else:
                self.fc6 = nn.Conv2d(cin, c, 7)  # valid 7x7: (B, 4096, h5 - 6, w5 - 6)
            self.fc6_bn = nn.BatchNorm2d(c) if batch_norm else nn.Identity()
            self.relu6 = nn.ReLU(inplace=True)
            self.drop6 = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
            self.fc7 = nn.Conv2d(c, c, 1)
            self.fc7_bn = nn.BatchNorm2d(c) if batch_norm else nn.Identity()
            self.relu7 = nn.ReLU(inplace=True)
            self.drop7 = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        else:
            self.fc6 = self.fc7 = None

        self._init_weights()
        self._describe(stage_channels, cin)
        self.fcn_skip_crop = fcn_skip_crop
        if fcn_skip_crop:
            self._plan_skip_crops()

    def _init_weights(self):
        for m in self.modules():  # torchvision's VGG initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _describe(self, stage_channels: dict[int, int], c_last: int):
        """Fill out_channels / out_strides / out_origins by walking the layers."""
        self.out_channels, self.out_strides, self.out_origins = {}, {}, {}
        origin, stride, stage = 0.0, 1, 1

        def record(name, channels):
            self.out_channels[name], self.out_strides[name], self.out_origins[name] = channels, stride, origin

        for layer in self.features:
            if isinstance(layer, nn.MaxPool2d):
                record(f"conv{stage}", stage_channels[stage])
            if isinstance(layer, (nn.Conv2d, nn.MaxPool2d)):
                origin, stride = _advance(origin, stride, layer)
            if isinstance(layer, nn.MaxPool2d):
                record(f"pool{stage}", stage_channels[stage])
                stage += 1
        if self.pool5a is not None:
            origin, stride = _advance(origin, stride, self.pool5a)
            record("pool5a", c_last)
        if self.fc6 is not None:
            origin, stride = _advance(origin, stride, self.fc6)
            record("fc7", self.fc_channels)  # fc7 is 1x1: same geometry as fc6

    def _plan_skip_crops(self):
        """FCN's Caffe reference crops the skip scores to the ×2-upsampled coarser scores (``score_pool4c``,
        ``score_pool3c``); the pad-100 geometry makes the skip maps the larger ones. A 1x1 score conv commutes with
        cropping, so the crop is done here on pool4 / pool3 and the cropped maps carry their own origin: FCN's
        generic crop of the upsampled map then has offset 0 and its final crop the reference 19 / 27 / 31.

        An even bilinear kernel of factor f puts coarse index j at upsampled index f·j + f − ½, so the fine map
        is cropped at ``(a_coarse − a_fine) / s_fine − f + ½`` (5 for pool4, 9 for pool3 with the FCN layout)."""
        if self.fc6 is None:
            raise ValueError("fcn_skip_crop needs fc6/fc7")
        self.skip_crops, self.skip_factors = {}, {}
        a_c, s_c = self.out_origins["fc7"], self.out_strides["fc7"]
        for fine in ("pool4", "pool3"):
            a_f, s_f = self.out_origins[fine], self.out_strides[fine]
            f = s_c // s_f
            offset = (a_c - a_f) / s_f - f + 0.5
            if offset != int(offset) or offset < 0:
                raise ValueError(f"{fine}: crop offset {offset} is not a non-negative integer; fcn_skip_crop needs "
                                 "the FCN layout (vgg16_fcn)")
            self.skip_crops[fine], self.skip_factors[fine] = int(offset), f
            a_c, s_c = a_f + s_f * offset, s_f
            self.out_channels[fine + "c"] = self.out_channels[fine]
            self.out_strides[fine + "c"], self.out_origins[fine + "c"] = s_c, a_c

    def _crop_skips(self, feats: dict[str, torch.Tensor]):
        h, w = feats["fc7"].shape[-2:]
        for fine in ("pool4", "pool3"):
            f, o = self.skip_factors[fine], self.skip_crops[fine]
            h, w = f * h + f, f * w + f  # size of a ×f transposed conv (kernel 2f, stride f) of the coarser map
            feats[fine + "c"] = feats[fine][..., o:o + h, o:o + w]  # (B, C, h, w)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats, stage = {}, 1
        for layer in self.features:
            if isinstance(layer, nn.MaxPool2d):
                feats[f"conv{stage}"] = x  # (B, C_i, h_i, w_i) before the pool; its size is the unpooling size
                if layer.return_indices:
                    x, feats[f"pool{stage}_indices"] = layer(x)  # switches: flat argmax positions in conv{i}
                else:
                    x = layer(x)
                feats[f"pool{stage}"] = x
                stage += 1
            else:
                x = layer(x)
        if self.pool5a is not None:
            x = feats["pool5a"] = self.pool5a(x)
        if self.fc6 is not None:
            x = self.drop6(self.relu6(self.fc6_bn(self.fc6(x))))  # (B, fc, h6, w6)
            x = self.drop7(self.relu7(self.fc7_bn(self.fc7(x))))
            feats["fc7"] = x
            if self.fcn_skip_crop:
                self._crop_skips(feats)
        return feats


def vgg16_fcn(width: float = 1.0, dropout: float = 0.5, **kwargs) -> VGG16:
    """FCN's VGG-16 (Caffe reference): pad 100, ceil pools, fc6 7x7 4096, fc7 1x1 4096, dropout 0.5."""
    return VGG16(width, first_padding=100, ceil_mode=True, dropout=dropout, fcn_skip_crop=True, **kwargs)


def vgg16_bn_deconvnet(width: float = 1.0, **kwargs) -> VGG16:
    """DeconvNet's encoder: VGG-16 with BN (also after fc6 / fc7), no dropout, max-pool switches."""
    return VGG16(width, batch_norm=True, dropout=0.0, return_indices=True, **kwargs)


def vgg16_largefov(width: float = 1.0, dropout: float = 0.5, **kwargs) -> VGG16:
    """DeepLab-LargeFOV's VGG-16 (output stride 8, fc6 3x3 dilation 12, 1024 channels)."""
    return VGG16(width, largefov=True, dropout=dropout, **kwargs)


def vgg16_classifier_to_conv(state_dict: dict[str, torch.Tensor], largefov: bool = False,
                             in_channels: int | None = None) -> dict[str, torch.Tensor]:
    """Net surgery: torchvision's ``classifier.0`` (Linear 25088 -> 4096) and ``classifier.3`` (Linear 4096 ->
    4096) become ``fc6`` (4096, 512, 7, 7) and ``fc7`` (4096, 4096, 1, 1); every other tensor
    (``features.*``, ``classifier.6`` = the ImageNet scores) passes through, so a loader reports it as unused.

    torchvision flattens pool5 (B, 512, 7, 7) channel-major, so the weight reshapes as (out, 512, 7, 7) exactly.
    With ``largefov`` the weights are decimated as DeepLab-LargeFOV's initialisation was: every 4th filter
    (4096 -> 1024) and every 3rd tap of the 7x7 (-> 3x3); fc7 keeps every 4th row and column. DeepLab's exact
    choice of filters is not published; decimation is our reading of the paper's "subsampling".
    """
    out = {k: v for k, v in state_dict.items() if not k.startswith(("classifier.0.", "classifier.3."))}
    keep = slice(None, None, 4) if largefov else slice(None)  # filters kept: every 4th for LargeFOV
    if "classifier.0.weight" in state_dict:
        w6 = state_dict["classifier.0.weight"]  # (4096, 512 * 7 * 7)
        w6 = w6.reshape(w6.shape[0], in_channels or w6.shape[1] // 49, 7, 7)  # (4096, 512, 7, 7)
        out["fc6.weight"] = (w6[keep, :, ::3, ::3] if largefov else w6).contiguous()  # LargeFOV: (1024, 512, 3, 3)
    if "classifier.3.weight" in state_dict:
        w7 = state_dict["classifier.3.weight"]  # (4096, 4096)
        out["fc7.weight"] = w7[keep, keep][:, :, None, None].contiguous()  # (4096, 4096, 1, 1)
    for src, dst in (("classifier.0.bias", "fc6.bias"), ("classifier.3.bias", "fc7.bias")):
        if src in state_dict:
            out[dst] = state_dict[src][keep].contiguous()
    return out


def load_vgg16_pretrained(vgg: VGG16, path: str | Path) -> LoadReport:
    """Load a local torchvision ``vgg16`` / ``vgg16_bn`` state dict (.pth or .safetensors) into ``vgg``,
    converting the classifier into fc6 / fc7 (decimated for the LargeFOV layout)."""
    sd = read_state_dict(path)
    cin = vgg.fc6.in_channels if vgg.fc6 is not None else None
    return load_pretrained(vgg, vgg16_classifier_to_conv(sd, largefov=vgg.largefov, in_channels=cin))
