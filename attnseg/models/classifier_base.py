"""The contract of the classification models (task ``"classification"``): the attention-over-locations demonstrations.

- ``forward(images (B, C, H, W) float in [0, 1])`` -> dict with ``logits`` (B, K) and, per model, what its loss and
  its pictures need (RAM in training: ``log_pi`` (B, T − 1), one per chosen location, and ``baseline`` (B, T));
- ``loss(out, labels (B,) int64) -> (loss, {name: part})``: the model owns its loss (cross-entropy here; RAM adds
  REINFORCE and its baseline);
- ``glimpses(out, b)`` -> the attention of image b, step by step, for pictures: a list of
  ``{"step": t, "kind": "boxes" | "grid" | "sampling_grid", ...}`` in input pixel coordinates (x, y), drawn by
  ``attnseg.viz.glimpses``;
- ``predict(images)`` -> (B,) class ids.

``forward`` in eval mode is deterministic (RAM follows the mean of its location policy), so it exports to ONNX
(logits only). Inputs are grey images in [0, 1] at the training size; ``in_channels`` says how many channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ClassifierModel(nn.Module):
    task = "classification"
    in_channels = 1

    def loss(self, out: dict, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        ce = F.cross_entropy(out["logits"].float(), labels)
        return ce, {"ce": ce.detach()}

    def glimpses(self, out: dict, b: int = 0) -> list[dict]:
        return []

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        was = self.training
        self.eval()
        try:
            return self(images)["logits"].argmax(1)
        finally:
            self.train(was)


class ConvBody(nn.Module):
    """conv3x3-BN-ReLU-maxpool2 blocks (``widths`` channels), then a global max pool and an MLP head.

    The global max pool makes the body indifferent to where the digit is (the plain CNN baseline needs that on
    60x60 and 100x100 canvases); ``widths`` sets the cost. ``flatten_size=(H, W)`` instead flattens the last
    feature map of an H x W input into the MLP, as the papers' baselines do (position-dependent weights)."""

    def __init__(self, in_channels: int, num_classes: int, widths=(16, 32, 64), hidden: int = 128,
                 flatten_size: tuple[int, int] | None = None):
        super().__init__()
        layers, c = [], in_channels
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            c = w
        self.features = nn.Sequential(*layers)
        self.flatten_size = tuple(flatten_size) if flatten_size else None
        n = c
        if self.flatten_size:
            h, w = self.flatten_size
            for _ in widths:
                h, w = h // 2, w // 2
            n = c * h * w
        self.head = nn.Sequential(nn.Linear(n, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)                                     # (B, C, H / 2^d, W / 2^d)
        if self.flatten_size:
            return self.head(f.flatten(1))                       # (B, C·h·w) -> (B, K)
        return self.head(torch.amax(f, dim=(2, 3)))              # (B, C) -> (B, K)
