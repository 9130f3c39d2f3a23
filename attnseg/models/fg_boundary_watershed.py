"""Foreground + boundary with watershed: the recipe of the DSB2018 winners, as a proposal-free instance baseline.

Seferbekov, Durnov and others (team [ods.ai] topcoders), "Data Science Bowl 2018, 1st place solution", Kaggle,
https://www.kaggle.com/c/data-science-bowl-2018/discussion/54741 (write-up); official code
https://github.com/selimsef/dsb2018_topcoders; the competition and its winners: Caicedo et al., "Nucleus
segmentation across imaging experiments: the 2018 Data Science Bowl", Nature Methods 2019. Their networks (U-Nets
on ImageNet encoders, a 32-model ensemble, stage-2 score 0.6316) predict three channels: the nucleus masks, their
borders, and the gaps between touching nuclei; seeds are where the mask is confident and the border is not, grown
back by watershed.

Here, a single U-Net written in attnseg (``models.unet``, no pretrained encoder, no ensemble) predicts two
channels: ``fg`` (nucleus or not) and ``boundary``, whose target joins the winners' border and gap channels
(``instance_base.boundary_target``: instance pixels with another id or the background in their 3x3
neighbourhood, and background pixels between two instances). Loss: binary cross-entropy + soft Dice on each
channel (the winners' combination), ``boundary_weight`` on the second. Post-processing
(``nn.instance_grouping.watershed_instances``): seeds = connected regions of fg > ``seed_threshold`` and boundary <
``boundary_threshold``; watershed of −fg from the seeds inside fg > ``fg_threshold``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..nn.instance_grouping import watershed_instances
from .instance_base import InstanceModel, boundary_target, instance_scores, soft_dice_loss
from .unet import UNet


class FgBoundaryWatershed(InstanceModel):
    def __init__(self, width: int = 32, depth: int = 4, norm: str = "group", boundary_weight: float = 1.0,
                 fg_threshold: float = 0.5,
                 seed_threshold: float = 0.7, boundary_threshold: float = 0.3, min_size: int = 8, min_seed: int = 4):
        super().__init__()
        self.net = UNet(3, width=width, depth=depth, norm=norm, embedding_dim=0)
        self.boundary_weight = boundary_weight
        self.post = {"fg_threshold": fg_threshold, "seed_threshold": seed_threshold,
                     "boundary_threshold": boundary_threshold, "min_size": min_size, "min_seed": min_seed}

    def forward(self, images: torch.Tensor) -> dict:
        """(B, 3, H, W) -> {"fg": (B, 1, H, W), "boundary": (B, 1, H, W)} logits."""
        return self.net(images)

    def map_channels(self) -> dict[str, int]:
        return {"fg": 1, "boundary": 1}

    def loss(self, out: dict, instances: torch.Tensor) -> tuple[torch.Tensor, dict]:
        fg_t = (instances > 0).float()[:, None]                          # (B, 1, H, W)
        bd_t = boundary_target(instances).float()[:, None]               # (B, 1, H, W)
        fg, bd = out["fg"].float(), out["boundary"].float()
        l_fg = F.binary_cross_entropy_with_logits(fg, fg_t) + soft_dice_loss(fg, fg_t)
        l_bd = F.binary_cross_entropy_with_logits(bd, bd_t) + soft_dice_loss(bd, bd_t)
        return l_fg + self.boundary_weight * l_bd, {"fg": l_fg.detach(), "boundary": l_bd.detach()}

    def dense(self, out: dict, b: int = 0) -> dict[str, np.ndarray]:
        return {k: torch.sigmoid(out[k][b, 0].detach().float()).cpu().numpy() for k in ("fg", "boundary")}

    def group(self, maps: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[int, float]]:
        ids = watershed_instances(maps["fg"], maps["boundary"], **self.post)
        return ids, instance_scores(ids, maps["fg"])


def fg_boundary_watershed(num_classes: int = 1, width: int = 32, depth: int = 4, norm: str = "group",
                          boundary_weight: float = 1.0,
                          fg_threshold: float = 0.5, seed_threshold: float = 0.7, boundary_threshold: float = 0.3,
                          min_size: int = 8, min_seed: int = 4) -> FgBoundaryWatershed:
    """``num_classes``: instance classes (one: every instance is an "object"; several are not supported).
    ``norm``: "group" (default) or "batch" (see ``models.unet`` for why batch norm fails on DSB2018)."""
    if num_classes != 1:
        raise ValueError(f"fg_boundary_watershed segments instances of one class; the data has {num_classes} "
                         "instance classes")
    return FgBoundaryWatershed(width, depth, norm, boundary_weight, fg_threshold, seed_threshold, boundary_threshold,
                               min_size, min_seed)
