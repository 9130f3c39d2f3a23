"""DRAW-read classifier: a recurrent classifier that reads the image through DRAW's Gaussian filter bank.

Gregor, Danihelka, Graves, Rezende, Wierstra, "DRAW: A Recurrent Neural Network For Image Generation", ICML 2015,
https://arxiv.org/abs/1502.04623, §4.1 "Cluttered MNIST classification": the "differentiable RAM" that replaces
RAM's hard glimpses by the read operation of §3.2 and is trained end to end by backpropagation. No official code
was released (ericjang/draw is the usual TensorFlow re-implementation of the generative model).

Per glimpse t = 1..T:

    (g̃_X, g̃_Y, log σ², log δ̃, log γ) = W(h_{t−1})   eq. 21 (h_0 = 0: the first glimpse is the layer's bias)
    r_t = γ F_Y x F_Xᵀ                                eq. 27, an N×N patch (N = 12 in the paper)
    h_t = LSTM(r_t, h_{t−1})                           256 units
    a = softmax(Lin(h_T))

The attention layer's bias starts at the whole image: g̃ = 0, δ̃ = 1 (the grid spans max(A, B) − 1 pixels, eq. 24)
and σ equal to half the grid's stride, so the first glimpse is a blurred view of everything, as RAM's first
coarse glimpse; the weights start small so later glimpses begin near it and learn where to go.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..nn.amp import no_autocast
from ..nn.gaussian_attention import GaussianAttention, grid_points
from .classifier_base import ClassifierModel


class DRAWClassifier(ClassifierModel):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, glimpses: int = 8, read_size: int = 12,
                 hidden: int = 256, image_size: int = 100):
        super().__init__()
        if glimpses < 1:
            raise ValueError(f"the DRAW classifier needs glimpses >= 1, not {glimpses}")
        self.in_channels, self.T, self.N, self.hidden = in_channels, glimpses, read_size, hidden
        # σ of the first glimpse is set for this size: the trainer checks the data against it
        self.expected_size, self.size_option = (image_size, image_size), f"image_size={image_size}"
        self.attention = GaussianAttention(read_size, parametrisation="draw")
        self.where = nn.Linear(hidden, 5)
        nn.init.normal_(self.where.weight, std=1e-3)
        # σ = half the full-image stride (eq. 24 with δ̃ = 1), in pixels of an image_size x image_size input
        stride = (image_size - 1) / max(read_size - 1, 1)
        with torch.no_grad():
            self.where.bias.copy_(torch.tensor([0.0, 0.0, math.log((stride / 2) ** 2), 0.0, 0.0]))
        self.core = nn.LSTMCell(in_channels * read_size ** 2, hidden)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> dict:
        B = x.shape[0]
        h = x.new_zeros(B, self.hidden, dtype=torch.float32)
        state, raws = (h, h.clone()), []
        for _ in range(self.T):
            with no_autocast(x.device.type):   # the glimpse parameters in fp32 (bf16 moves the centre ~0.2 px)
                raw = self.where(h.float())                                   # (B, 5)   eq. 21
            patch, _ = self.attention.read(x, raw)                            # (B, C, N, N)   eq. 27
            h, c = self.core(patch.flatten(1), state)                         # (B, C·N²) -> (B, hidden)
            state = (h, c)
            raws.append(raw)
        return {"logits": self.classifier(h), "read_params": torch.stack(raws, 1),   # (B, K), (B, T, 5)
                "input_size": torch.tensor(x.shape[-2:])}

    def glimpses(self, out: dict, b: int = 0) -> list[dict]:
        H, W = (int(v) for v in out["input_size"])
        steps = []
        for t in range(out["read_params"].shape[1]):
            p = self.attention.params(out["read_params"][b:b + 1, t].detach().float(), H, W)
            pts = grid_points(p, self.N)[0]                                   # (N, N, 2) pixel (y, x)
            steps.append({"step": t, "kind": "grid", "points": pts.flip(-1).detach().cpu().numpy(),   # (x, y)
                          "sigma": float(p.sigma2_x[0].sqrt()), "gamma": float(p.gamma[0])})
        return steps


def draw_classifier(num_classes: int = 10, in_channels: int = 1, glimpses: int = 8, read_size: int = 12,
                    hidden: int = 256, image_size: int = 100):
    return DRAWClassifier(num_classes, in_channels, glimpses, read_size, hidden, image_size)
