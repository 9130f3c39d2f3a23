"""The plain convolutional baseline of the attention-over-locations table.

The baseline of Mnih, Heess, Graves, Kavukcuoglu, "Recurrent Models of Visual Attention", NIPS 2014,
https://arxiv.org/abs/1406.6247: §4.1 compares RAM with fully connected and convolutional networks that see the
whole image; Jaderberg et al. 2015 compare the ST-CNN with the same CNN without the
transformer. This is that CNN: three blocks of conv3x3-BN-ReLU and a max pool (16, 32, 64 channels), a global
max pool and a 128-unit MLP (``models.classifier_base.ConvBody``); ``flatten_size`` replaces the global pool by a
flattened feature map, the position-dependent head of the papers' baselines. No official code: it is our baseline,
sized so that a training step costs about what ST-CNN's and RAM's do (``benchmarks/glimpse_table.py`` reports the
measured step times beside the errors).
"""

from __future__ import annotations

import torch

from .classifier_base import ClassifierModel, ConvBody


class CNNClassifier(ClassifierModel):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, widths=(16, 32, 64), hidden: int = 128,
                 flatten_size=None):
        super().__init__()
        self.in_channels = in_channels
        self.body = ConvBody(in_channels, num_classes, tuple(widths), hidden, flatten_size)
        # the flattened head takes one input size: the trainer checks the data against it
        self.expected_size = tuple(flatten_size) if flatten_size else None
        self.size_option = f"flatten_size={list(flatten_size)}" if flatten_size else ""

    def forward(self, x: torch.Tensor) -> dict:
        return {"logits": self.body(x)}                          # (B, K)


def cnn_classifier(num_classes: int = 10, in_channels: int = 1, widths=(16, 32, 64), hidden: int = 128,
                   flatten_size=None):
    """``flatten_size=[H, W]``: flatten the last feature map of H x W inputs instead of the global max pool (the
    papers' position-dependent baselines; the model then takes that size only)."""
    return CNNClassifier(num_classes, in_channels, widths, hidden, flatten_size)
