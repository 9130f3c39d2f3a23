"""The parts of Multi-task Network Cascades (``models.mnc``): the feature neck, the region proposal network, the
mask and category stages, and the sampling of training targets for each stage.

Dai, He, Sun, "Instance-aware Semantic Segmentation via Multi-task Network Cascades", CVPR 2016,
https://arxiv.org/abs/1512.04412; official code https://github.com/daijifeng001/MNC (Caffe, py-faster-rcnn based).
The RPN and its anchor targets are those of Faster R-CNN (Ren, He, Girshick, Sun, NIPS 2015,
https://arxiv.org/abs/1506.01497, code https://github.com/rbgirshick/py-faster-rcnn, ``anchor_target_layer.py``,
``proposal_target_layer.py``).

Boxes are (x0, y0, x1, y1) in input pixel edge coordinates (``nn.boxes``). Batches of regions carry a
``batch_index`` (R,) saying which image each region belongs to.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.boxes import box_iou, encode_boxes
from ..nn.instance_matching import mask_boxes
from ..nn.resnet import ResNet

NORMS = ("group", "batch")


def norm_layer(kind: str):
    """GroupNorm (up to 32 groups; the instance models' default, see ``models.unet``) or BatchNorm."""
    if kind not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, not {kind!r}")
    return (lambda c: nn.GroupNorm(min(32, c // 4), c)) if kind == "group" else nn.BatchNorm2d


class Neck(nn.Module):
    """One feature level for the cascade. ``"c4"``: ResNet's conv4 (layer3, stride 16), as MNC's ResNet version,
    reduced to ``channels`` by a 1x1 conv; ``"fpn"``: a small feature pyramid merged into one stride-8 level
    (1x1 laterals on layer2..layer4, top-down nearest upsampling and sums, one 3x3 conv; Lin et al. 2017 without the
    multi-level heads), for objects of a few tens of pixels (nuclei)."""

    def __init__(self, depth: int = 18, kind: str = "c4", channels: int = 256, norm: str = "group"):
        super().__init__()
        if kind not in ("c4", "fpn"):
            raise ValueError(f"neck must be 'c4' or 'fpn', not {kind!r}")
        self.kind, self.channels = kind, channels
        self.body = ResNet(depth, norm=norm_layer(norm))
        oc = self.body.out_channels
        if kind == "c4":
            self.stride = 16
            self.reduce = nn.Sequential(nn.Conv2d(oc["layer3"], channels, 1), nn.ReLU(inplace=True))
        else:
            self.stride = 8
            self.lateral = nn.ModuleDict({k: nn.Conv2d(oc[k], channels, 1) for k in ("layer2", "layer3", "layer4")})
            self.smooth = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True))

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, channels, ceil(H / stride), ceil(W / stride))."""
        f = self.body(x)
        if self.kind == "c4":
            return self.reduce(f["layer3"])
        top = self.lateral["layer4"](f["layer4"])
        for k in ("layer3", "layer2"):
            lat = self.lateral[k](f[k])
            top = lat + F.interpolate(top, size=lat.shape[-2:], mode="nearest")
        return self.smooth(top)


class RPNHead(nn.Module):
    """Faster R-CNN's region proposal network: a 3x3 conv, then per anchor an objectness logit and 4 box deltas."""

    def __init__(self, channels: int, anchors: int):
        super().__init__()
        self.anchors = anchors
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.objectness = nn.Conv2d(channels, anchors, 1)
        self.deltas = nn.Conv2d(channels, 4 * anchors, 1)
        for m in (self.conv, self.objectness, self.deltas):   # py-faster-rcnn: N(0, 0.01), bias 0
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)

    def forward(self, f: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C, h, w) -> (objectness (B, h·w·A) logits, deltas (B, h·w·A, 4)), position-major then anchor, the
        order of ``nn.boxes.anchor_grid``."""
        t = F.relu(self.conv(f))
        B, _, h, w = t.shape
        A = self.anchors
        logits = self.objectness(t).permute(0, 2, 3, 1).reshape(B, h * w * A)              # (B, A, h, w) -> (B, hwA)
        deltas = self.deltas(t).view(B, A, 4, h, w).permute(0, 3, 4, 1, 2).reshape(B, h * w * A, 4)
        return logits, deltas


class MaskStage(nn.Module):
    """MNC stage 2 (§3.2): the warped, pooled RoI features (R, C, S, S) -> FC ``hidden`` (256) -> FC m² logistic
    outputs."""

    def __init__(self, channels: int, roi_size: int, mask_size: int, hidden: int = 256):
        super().__init__()
        self.mask_size = mask_size
        self.fc = nn.Linear(channels * roi_size * roi_size, hidden)
        self.out = nn.Linear(hidden, mask_size * mask_size)
        nn.init.normal_(self.out.weight, std=0.001)
        nn.init.zeros_(self.out.bias)

    def forward(self, roi_features: Tensor) -> Tensor:
        """(R, C, S, S) -> (R, m, m) mask logits in the box's frame."""
        m = self.mask_size
        return self.out(F.relu(self.fc(roi_features.flatten(1)))).view(-1, m, m)


class CategoryStage(nn.Module):
    """MNC stage 3 (§3.3): a mask-based pathway (mask-pooled RoI features, 2 FC) and a box-based pathway (the RoI
    features, 2 FC), concatenated, -> (K+1)-way logits and class-wise box deltas (the sibling regression layer
    that the 5-stage cascade of §3.4 uses to refine the boxes). The paper's FC layers are 4096 wide (VGG-16's fc6,
    fc7); ``hidden`` sets the width."""

    def __init__(self, channels: int, roi_size: int, num_classes: int, hidden: int = 512):
        super().__init__()
        d = channels * roi_size * roi_size
        self.mask_path = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, hidden),
                                       nn.ReLU(inplace=True))
        self.box_path = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, hidden),
                                      nn.ReLU(inplace=True))
        self.cls = nn.Linear(2 * hidden, num_classes + 1)
        self.box = nn.Linear(2 * hidden, 4 * (num_classes + 1))
        nn.init.normal_(self.cls.weight, std=0.01)
        nn.init.normal_(self.box.weight, std=0.001)
        nn.init.zeros_(self.cls.bias)
        nn.init.zeros_(self.box.bias)

    def forward(self, masked: Tensor, boxed: Tensor) -> tuple[Tensor, Tensor]:
        """masked, boxed (R, C, S, S) -> (class logits (R, K+1), deltas (R, K+1, 4))."""
        h = torch.cat([self.mask_path(masked.flatten(1)), self.box_path(boxed.flatten(1))], 1)   # (R, 2·hidden)
        return self.cls(h), self.box(h).view(h.shape[0], -1, 4)


def instance_targets(ids: Tensor, classes: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """One image's (H, W) id map (and (H, W) class map, or None: every instance class 1) -> (boxes (N, 4) tight
    xyxy float, labels (N,) int64 in 1..K, masks (N, H, W) float 0/1), instances in increasing id order."""
    keys = torch.unique(ids)
    keys = keys[keys > 0]
    masks = (ids[None] == keys[:, None, None])                                      # (N, H, W) bool
    if len(keys) == 0:
        return (ids.new_zeros((0, 4), dtype=torch.float32), ids.new_zeros(0, dtype=torch.int64),
                masks.float())
    tight = mask_boxes(masks[None].float(), torch.tensor([len(keys)]), pad_ratio=0.0, pad_min=0.0)[0]  # (N, 4) yxyx
    boxes = tight[:, [1, 0, 3, 2]]                                                   # -> (x0, y0, x1, y1)
    if classes is None:
        labels = torch.ones(len(keys), dtype=torch.int64, device=ids.device)
    else:   # the class of an instance is the class map at any of its pixels (they agree)
        flat = torch.where(masks, classes[None], 0).flatten(1)                       # (N, H·W)
        labels = flat.amax(1).clamp(min=1).long()
    return boxes, labels, masks.float()


def sample_labels(labels: Tensor, total: int, positive_fraction: float, generator=None) -> Tensor:
    """Subsample (M,) labels in {1 positive, 0 negative, −1 ignore} to at most ``total`` with at most
    ``positive_fraction`` positives (the rest filled with negatives); the others become −1. Random, from the
    global RNG (seeded by the trainer) unless ``generator``."""
    out = torch.full_like(labels, -1)
    pos = torch.nonzero(labels == 1).flatten()
    neg = torch.nonzero(labels == 0).flatten()
    n_pos = min(len(pos), int(total * positive_fraction))
    n_neg = min(len(neg), total - n_pos)
    pos = pos[torch.randperm(len(pos), generator=generator, device=labels.device)[:n_pos]]
    neg = neg[torch.randperm(len(neg), generator=generator, device=labels.device)[:n_neg]]
    out[pos] = 1
    out[neg] = 0
    return out


def anchor_targets(anchors: Tensor, gt_boxes: Tensor, positive_iou: float = 0.7, negative_iou: float = 0.3,
                   batch: int = 256, positive_fraction: float = 0.5) -> tuple[Tensor, Tensor]:
    """Faster R-CNN's anchor labels (``anchor_target_layer``): positive at IoU >= ``positive_iou`` with some ground
    truth box and every anchor of highest IoU for a ground truth box; negative below ``negative_iou``; then
    ``batch`` sampled, at most half positive. -> (labels (M,) in {1, 0, −1}, matched ground truth index (M,))."""
    M = len(anchors)
    if len(gt_boxes) == 0:
        return sample_labels(torch.zeros(M, dtype=torch.int64, device=anchors.device), batch, positive_fraction), \
            torch.zeros(M, dtype=torch.int64, device=anchors.device)
    iou = box_iou(anchors, gt_boxes)                                                 # (M, N)
    best, match = iou.max(1)
    labels = torch.full((M,), -1, dtype=torch.int64, device=anchors.device)
    labels[best < negative_iou] = 0
    per_gt = iou.max(0).values                                                       # (N,)
    ties = (iou == per_gt[None]) & (per_gt[None] > 0)
    labels[ties.any(1)] = 1
    labels[best >= positive_iou] = 1
    return sample_labels(labels, batch, positive_fraction), match


def rpn_loss(logits: Tensor, deltas: Tensor, anchors: Tensor, gt_boxes: list[Tensor], **target_options
             ) -> tuple[Tensor, Tensor]:
    """L₁(B): binary cross-entropy on the sampled anchors + smooth L1 (β = 1/9, py-faster-rcnn's σ = 3) on the
    positives' deltas, both over the number of sampled anchors. logits (B, M), deltas (B, M, 4)."""
    cls_terms, box_terms = [], []
    for b, gt in enumerate(gt_boxes):
        labels, match = anchor_targets(anchors, gt, **target_options)
        sampled = labels >= 0
        n = sampled.sum().clamp(min=1)
        cls_terms.append(F.binary_cross_entropy_with_logits(logits[b][sampled].float(), labels[sampled].float(),
                                                            reduction="sum") / n)
        pos = labels == 1
        if pos.any():
            target = encode_boxes(gt[match[pos]], anchors[pos])
            box_terms.append(F.smooth_l1_loss(deltas[b][pos].float(), target, beta=1 / 9, reduction="sum") / n)
        else:
            box_terms.append(deltas[b].sum() * 0.0)
    return torch.stack(cls_terms).mean(), torch.stack(box_terms).mean()


def roi_targets(proposals: Tensor, gt_boxes: Tensor, gt_labels: Tensor, batch: int = 64,
                foreground_fraction: float = 0.25, foreground_iou: float = 0.5) -> tuple[Tensor, Tensor, Tensor]:
    """Fast R-CNN's region sampling (``proposal_target_layer``) for one image: the proposals and the ground truth
    boxes themselves; foreground at IoU >= ``foreground_iou``, background below; ``batch`` sampled with at most
    ``foreground_fraction`` foreground. -> (indices into cat(proposals, gt_boxes) (R,), class labels (R,) with 0 =
    background, matched ground truth index (R,))."""
    cand = torch.cat([proposals.detach(), gt_boxes], 0)
    if len(gt_boxes) == 0:
        keep = sample_labels(torch.zeros(len(cand), dtype=torch.int64, device=cand.device), batch, 0.0)
        idx = torch.nonzero(keep >= 0).flatten()
        zeros = torch.zeros(len(idx), dtype=torch.int64, device=cand.device)
        return idx, zeros, zeros
    best, match = box_iou(cand, gt_boxes).max(1)                                     # (P + N,)
    fg = (best >= foreground_iou).long()
    keep = sample_labels(fg, batch, foreground_fraction)
    idx = torch.nonzero(keep >= 0).flatten()
    labels = torch.where(keep[idx] == 1, gt_labels[match[idx]], torch.zeros_like(idx))
    return idx, labels, match[idx]
