"""The sub-networks of Ren & Zemel's recurrent attention model (``models.recurrent_attention``): convolution stacks
whose batch norm keeps one set of statistics and affine parameters per timestep, the transposed-convolution decoder
with optional U-Net skips, and the box network (CNN + glimpse LSTM with soft attention over its feature map).

Ren, Zemel, "End-to-End Instance Segmentation with Recurrent Attention", CVPR 2017, https://arxiv.org/abs/1605.09410,
§3.1-3.3; official code https://github.com/renmengye/rec-attend-public (``nnlib.py``: ``cnn``, ``dcnn``, ``lstm``,
``batch_norm``; the networks are assembled in ``full_model.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PerStepBatchNorm(nn.Module):
    """Batch norm with separate running statistics and affine parameters for each timestep t (the code builds one
    batch-norm per layer per timestep). Timesteps beyond ``steps`` − 1 use the last copy."""

    def __init__(self, channels: int, steps: int):
        super().__init__()
        self.norms = nn.ModuleList(nn.BatchNorm2d(channels) for _ in range(steps))

    def forward(self, x: Tensor, t: int) -> Tensor:
        return self.norms[min(t, len(self.norms) - 1)](x)


class ConvStack(nn.Module):
    """conv 3x3 -> per-step BN -> ReLU -> max-pool (when the layer's pool > 1), layer after layer.

    ``forward(x, t)`` -> (output, [every layer's output]) (the list feeds the decoder's skips)."""

    def __init__(self, in_channels: int, depths: tuple[int, ...], pools: tuple[int, ...], steps: int):
        super().__init__()
        if len(depths) != len(pools):
            raise ValueError(f"one pool per conv layer: {len(depths)} depths but {len(pools)} pools")
        chans = (in_channels, *depths)
        self.convs = nn.ModuleList(nn.Conv2d(chans[i], chans[i + 1], 3, padding=1, bias=False)
                                   for i in range(len(depths)))
        self.norms = nn.ModuleList(PerStepBatchNorm(d, steps) for d in depths)
        self.pools = tuple(pools)
        self.stride = 1
        for p in pools:
            self.stride *= p

    def forward(self, x: Tensor, t: int) -> tuple[Tensor, list[Tensor]]:
        acts = []
        for conv, norm, pool in zip(self.convs, self.norms, self.pools):
            x = F.relu(norm(conv(x), t))
            if pool > 1:
                x = F.max_pool2d(x, pool)                               # (B, C, h, w) -> (B, C, h/p, w/p)
            acts.append(x)
        return x, acts


class DeconvStack(nn.Module):
    """Transposed conv 3x3 (stride = the layer's unpool factor) -> per-step BN -> ReLU, the last layer included
    (as the code: every decoder layer has BN and ReLU, so the output patch is >= 0).

    With ``skips``, the input of decoder layer i > 0 is concatenated with the encoder output of the mirrored layer
    (encoder layer L−1−i, the same resolution), and the last layer's input with the glimpse patch itself."""

    def __init__(self, in_channels: int, depths: tuple[int, ...], unpools: tuple[int, ...], steps: int,
                 skip_channels: tuple[int, ...] | None = None):
        super().__init__()
        if len(depths) != len(unpools):
            raise ValueError(f"one unpool per decoder layer: {len(depths)} depths but {len(unpools)} unpools")
        self.skips = skip_channels is not None
        if self.skips and len(skip_channels) != len(depths):
            raise ValueError(f"one skip width per decoder layer: {len(depths)} layers, {len(skip_channels)} skips")
        extra = skip_channels or (0,) * len(depths)
        ins = (in_channels, *depths[:-1])
        self.deconvs = nn.ModuleList(
            nn.ConvTranspose2d(ins[i] + extra[i], depths[i], 3, stride=u, padding=1, output_padding=u - 1, bias=False)
            for i, u in enumerate(unpools))
        self.norms = nn.ModuleList(PerStepBatchNorm(d, steps) for d in depths)

    def forward(self, x: Tensor, t: int, skips: list[Tensor | None] | None = None) -> Tensor:
        for i, (deconv, norm) in enumerate(zip(self.deconvs, self.norms)):
            if self.skips and skips[i] is not None:
                x = torch.cat([x, skips[i].to(x.dtype)], 1)              # (B, C + C_skip, h, w)
            x = F.relu(norm(deconv(x), t))                               # (B, C', h·u, w·u)
        return x


class BoxNetwork(nn.Module):
    """The controller (§3.2): CNN on [image, canvas] -> feature map u (B, L, h', w'); a glimpse LSTM (hidden 256)
    runs ``iterations`` soft-attention steps over u,

        z_n = Σ_ij α^n_ij u_ij   (α¹ uniform);   h_n = LSTM(z_n, h_{n−1});   α^{n+1} = softmax(MLP(h_n)),

    and a linear layer on h_N emits the 9 box numbers. The LSTM state starts at zero at every outer timestep (the
    code's behaviour: the only memory across objects is the canvas).

    ``feature_size`` (h', w') is fixed by the input size: the MLP emits one logit per feature-map cell."""

    def __init__(self, in_channels: int, depths: tuple[int, ...], pools: tuple[int, ...], steps: int,
                 feature_size: tuple[int, int], iterations: int = 5, hidden: int = 256, mlp_hidden: int = 256,
                 outputs: int = 9):
        super().__init__()
        if iterations < 1:
            raise ValueError(f"the glimpse LSTM needs at least 1 iteration, not {iterations}")
        self.cnn = ConvStack(in_channels, depths, pools, steps)
        self.feature_size = tuple(feature_size)
        cells = feature_size[0] * feature_size[1]
        self.iterations, self.hidden = iterations, hidden
        self.lstm = nn.LSTMCell(depths[-1], hidden)
        self.attend = nn.Sequential(nn.Linear(hidden, mlp_hidden), nn.ReLU(inplace=True), nn.Linear(mlp_hidden, cells))
        self.head = nn.Linear(hidden, outputs)

    def forward(self, x: Tensor, t: int) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, C, H, W) -> (raw (B, 9), h_N (B, hidden), α^N (B, h', w') the last attention over the features)."""
        u, _ = self.cnn(x, t)                                           # (B, L, h', w')
        B, L, h, w = u.shape
        if (h, w) != self.feature_size:
            raise ValueError(f"the box CNN gives a {h}x{w} feature map, the attention MLP was built for "
                             f"{self.feature_size[0]}x{self.feature_size[1]}; feed images of the model's image_size")
        feats = u.flatten(2).float()                                     # (B, L, h'w')
        alpha = feats.new_full((B, h * w), 1.0 / (h * w))               # α¹ uniform
        state = (feats.new_zeros(B, self.hidden), feats.new_zeros(B, self.hidden))   # reset at every timestep
        for n in range(self.iterations):
            z = (feats * alpha[:, None]).sum(-1)                        # z_n = Σ α u, (B, L)
            state = self.lstm(z, state)                                 # h_n, c_n (B, hidden)
            if n < self.iterations - 1:
                alpha = torch.softmax(self.attend(state[0]).float(), -1)  # α^{n+1}, (B, h'w')
        return self.head(state[0]), state[0], alpha.view(B, h, w)
