"""A U-Net for proposal-free instance segmentation: per-pixel foreground, boundary and embedding heads.

Ronneberger, Fischer, Brox, "U-Net: Convolutional Networks for Biomedical Image Segmentation", MICCAI 2015,
https://arxiv.org/abs/1505.04597 (official code: Caffe, https://lmb.informatik.uni-freiburg.de/people/ronneber/u-net/).
Differences from the paper, for modern training on a CPU: "same" padding (the output has the input's size, no
overlap-tile cropping), a normalisation after each conv (``norm``: "batch" or "group", GroupNorm of Wu & He 2018
with up to 8 groups), bilinear upsampling + 3x3 conv instead of up-convolution, and a width option (the paper: 64
channels at the top, doubling to 1024).

Why "group" is the instance models' default: DSB2018 mixes dark fluorescence and bright histology images, so the
batch statistics of one training batch differ widely from those of the next, and batch norm's running averages fit
no image. Measured (width 16, 800 steps, whole training images): foreground Dice 0.37 / 0.08 / 0.43 with the running
statistics (eval mode) against 0.89 / 0.96 / 0.75 with each image's own batch statistics. GroupNorm normalises
within each image, the same in training and inference.

Heads (1x1 convs on the top decoder features) serve attnseg's two baselines:
- ``fg`` and ``boundary`` logits (B, 1, H, W) each: the DSB2018 winners' masks-and-borders recipe, turned into
  instances by ``attnseg.nn.instance_grouping.watershed_instances``;
- ``embedding`` (B, D, H, W): De Brabandere et al. 2017's pixel embedding, trained with
  ``attnseg.nn.discriminative_loss`` and grouped by ``cluster_embeddings``.

Any H, W: the input is padded to a multiple of 2^depth and the outputs cropped back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("batch", "group")


def _norm(kind: str, c: int) -> nn.Module:
    return nn.BatchNorm2d(c) if kind == "batch" else nn.GroupNorm(min(8, c), c)


def _block(cin: int, cout: int, norm: str = "batch") -> nn.Sequential:
    """Two 3x3 conv - norm - ReLU (the paper's double convolution, padded)."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), _norm(norm, cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), _norm(norm, cout), nn.ReLU(inplace=True))


class UNet(nn.Module):
    """``forward(images (B, C, H, W))`` -> {"fg": (B, 1, H, W), "boundary": (B, 1, H, W), "embedding":
    (B, D, H, W)} (logits for fg and boundary; ``embedding_dim=0`` leaves the embedding out)."""

    def __init__(self, in_channels: int = 3, width: int = 32, depth: int = 4, embedding_dim: int = 8,
                 norm: str = "batch"):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm {norm!r} unknown; choose one of {', '.join(NORMS)}")
        chans = [width * 2 ** i for i in range(depth + 1)]            # e.g. 32, 64, 128, 256, 512
        self.depth = depth
        self.down = nn.ModuleList([_block(in_channels, chans[0], norm)] +
                                  [_block(chans[i], chans[i + 1], norm) for i in range(depth)])
        self.reduce = nn.ModuleList([nn.Conv2d(chans[i + 1], chans[i], 3, padding=1) for i in range(depth)])
        self.up = nn.ModuleList([_block(2 * chans[i], chans[i], norm) for i in range(depth)])
        self.fg = nn.Conv2d(chans[0], 1, 1)
        self.boundary = nn.Conv2d(chans[0], 1, 1)
        self.embedding = nn.Conv2d(chans[0], embedding_dim, 1) if embedding_dim else None

    def forward(self, images: torch.Tensor) -> dict:
        H, W = images.shape[-2:]
        m = 2 ** self.depth
        x = F.pad(images, (0, (-W) % m, 0, (-H) % m))                   # (B, C, H', W'), multiples of 2^depth
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)                                             # (B, chans[i], H'/2^i, W'/2^i)
        for i in reversed(range(self.depth)):
            x = F.interpolate(x, size=skips[i].shape[-2:], mode="bilinear", align_corners=False)
            x = self.up[i](torch.cat([skips[i], self.reduce[i](x)], 1))  # (B, chans[i], ...)
        x = x[..., :H, :W]
        out = {"fg": self.fg(x), "boundary": self.boundary(x)}
        if self.embedding is not None:
            out["embedding"] = self.embedding(x)
        return out
