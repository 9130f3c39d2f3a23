"""Instance-aware Semantic Segmentation via Multi-task Network Cascades (MNC), and the SDS-style two-step ablation.

Dai, He, Sun, CVPR 2016, https://arxiv.org/abs/1512.04412; official code https://github.com/daijifeng001/MNC
(Caffe on py-faster-rcnn). The proposal pipeline it makes end-to-end: Hariharan, Arbeláez, Girshick, Malik,
"Simultaneous Detection and Segmentation" (SDS), ECCV 2014, https://arxiv.org/abs/1407.1808, code
https://github.com/bharath272/sds_eccv2014. Spec: METHODS.md §5.8.

Three stages on one shared feature map (``mnc_parts``):

1. **boxes** (§3.1): a region proposal network, 3x3 conv → per anchor an objectness logit and box deltas; loss
   L₁(B) = binary cross-entropy on 256 sampled anchors + smooth L1 on the positives (Faster R-CNN);
2. **masks** (§3.2): the proposals' features cut out and warped to S x S (14) by the *differentiable RoI warping*
   layer (``nn.roi_warp``: bilinear sampling, with gradients with respect to the box coordinates), max-pooled 2x2
   to 7 x 7 (the warp followed by max pooling is the paper's differentiable form of RoI pooling), FC 256, FC m²
   (28 x 28) logistic outputs; loss L₂(M | B) = per-pixel binary cross-entropy against the matched ground truth
   mask warped into the box, on foreground regions;
3. **categories** (§3.3): *mask pooling* (the warped features times the predicted mask resized to S x S,
   ``nn.roi_warp.mask_pool``, then max-pooled) and the box features, each through 2 FC, concatenated → (K+1)-way
   softmax and class-wise box deltas; loss L₃(C | M, B) = cross-entropy (+ smooth L1 on the deltas of foreground
   regions).

L = L₁ + L₂ + L₃ with equal weights (Eq. 5), trained end to end: the regions of stages 2-3 are stage 1's regressed
boxes, and the warping layer passes the gradients of L₂ and L₃ back into those boxes (Eq. 4's ∂L/∂B terms).

Inference (§3.4) is the **5-stage cascade**: stages 2-3 run on the proposals, the boxes are regressed by stage 3's
deltas (the top class's), and stages 2-3 run again on the new boxes (stages 4-5); the candidates of stages 3 and 5
are merged (600 per image with 300 proposals) and suppressed by per-class box NMS (``group``). ``cascade_stages=3``
gives the 3-stage model. Candidates below ``score_threshold`` are dropped, the ``detections`` best are pasted into
the image (``nn.roi_warp.paste_masks``), painted in score order (``data.instances.from_masks``).

``end_to_end=False`` is the SDS-style two-step variant that MNC improves on: the regions and the masks reach the
category stage with their gradients stopped, so each stage learns from its own loss only, as when proposals,
segments and the region classifier are trained in separate steps (SDS uses MCG proposals and an R-CNN classifier on
box and foreground crops; here all stages share one network so that the comparison isolates the gradient paths).

Paper vs code, and attnseg's choices (each an option):
- backbone: the paper's VGG-16 (conv5_3, stride 16) is replaced by ResNet-18/50 trained from scratch (no ImageNet
  weights can be downloaded here); ``neck="c4"`` uses conv4 (stride 16) as MNC's ResNet-101 entry, ``neck="fpn"``
  merges a small pyramid into one stride-8 level for objects of a few tens of pixels.
- the FC layers of stage 3 are ``hidden`` (512) wide, not 4096; GroupNorm replaces frozen ImageNet batch norm.
- objectness is one logistic output per anchor instead of the code's 2-way softmax (the same model).
- the paper's mask voting at inference is not implemented; NMS is on boxes (``nms_threshold``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..nn.boxes import (
    anchor_grid,
    anchors_per_location,
    batched_nms,
    clip_boxes,
    decode_boxes,
    encode_boxes,
    nms,
    remove_small_boxes,
)
from ..nn.roi_warp import mask_pool, paste_masks, roi_warp
from .instance_base import InstanceModel
from .mnc_parts import CategoryStage, MaskStage, Neck, RPNHead, instance_targets, roi_targets, rpn_loss

#: Fast R-CNN's weights of the stage-3 box deltas (``BBOX_NORMALIZE_STDS`` 0.1, 0.1, 0.2, 0.2)
STAGE3_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


class MultiTaskNetworkCascade(InstanceModel):
    uses_targets = True
    uses_classes = True

    def __init__(self, num_classes: int = 1, depth: int = 18, neck: str = "c4", channels: int = 256,
                 norm: str = "group", anchor_sizes=(32, 64, 128), anchor_ratios=(0.5, 1.0, 2.0), roi_size: int = 14,
                 mask_size: int = 28, mask_hidden: int = 256, hidden: int = 512, sampling_ratio: int = 1,
                 cascade_stages: int = 5, end_to_end: bool = True, rpn_pre_nms: int = 2000, rpn_post_nms: int = 300,
                 rpn_nms_threshold: float = 0.7, rpn_batch: int = 256, roi_batch: int = 64,
                 foreground_fraction: float = 0.25, min_box: float = 2.0, score_threshold: float = 0.5,
                 nms_threshold: float = 0.5, mask_threshold: float = 0.5, detections: int = 200, min_size: int = 4):
        super().__init__()
        if cascade_stages not in (3, 5):
            raise ValueError(f"cascade_stages must be 3 or 5 (MNC's two cascades), not {cascade_stages}")
        self.num_classes = num_classes
        self.neck = Neck(depth, neck, channels, norm)
        self.stride = self.neck.stride
        self.anchor_sizes, self.anchor_ratios = tuple(anchor_sizes), tuple(anchor_ratios)
        self.rpn = RPNHead(channels, anchors_per_location(self.anchor_sizes, self.anchor_ratios))
        if roi_size % 2:
            raise ValueError(f"roi_size must be even (the warped features are max-pooled 2x2), not {roi_size}")
        self.mask_stage = MaskStage(channels, roi_size // 2, mask_size, mask_hidden)
        self.category_stage = CategoryStage(channels, roi_size // 2, num_classes, hidden)
        self.roi_size, self.mask_size, self.sampling_ratio = roi_size, mask_size, sampling_ratio
        self.cascade_stages, self.end_to_end = cascade_stages, end_to_end
        self.rpn_pre_nms, self.rpn_post_nms, self.rpn_nms_threshold = rpn_pre_nms, rpn_post_nms, rpn_nms_threshold
        self.rpn_batch, self.roi_batch, self.foreground_fraction = rpn_batch, roi_batch, foreground_fraction
        self.min_box = min_box
        self.post = {"score_threshold": score_threshold, "nms_threshold": nms_threshold,
                     "mask_threshold": mask_threshold, "detections": detections, "min_size": min_size}

    # -- stage 1 ---------------------------------------------------------------------------------------------------
    def proposals(self, boxes: Tensor, logits: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """boxes (B, M, 4) decoded anchors (with their gradient), logits (B, M) -> per image the ``rpn_post_nms``
        best boxes after NMS at ``rpn_nms_threshold`` (the gradient kept) and their objectness in [0, 1]. The
        ranking and NMS see detached values (py-faster-rcnn's ``proposal_layer``)."""
        out_boxes, out_scores = [], []
        for b in range(boxes.shape[0]):
            s = logits[b].detach().float()
            top = torch.topk(s, min(self.rpn_pre_nms, len(s))).indices
            keep = remove_small_boxes(boxes[b, top].detach(), self.min_box)
            top = top[keep]
            keep = nms(boxes[b, top].detach(), s[top], self.rpn_nms_threshold)[:self.rpn_post_nms]
            out_boxes.append(boxes[b, top[keep]])
            out_scores.append(torch.sigmoid(s[top[keep]]))
        return out_boxes, out_scores

    # -- stages 2 and 3 --------------------------------------------------------------------------------------------
    def stages_2_3(self, f: Tensor, rois: Tensor, batch_index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """RoIs (R, 4) of the images ``batch_index`` (R,) -> (mask logits (R, m, m), class logits (R, K+1), class-wise
        deltas (R, K+1, 4)). With ``end_to_end=False`` the regions and the masks are seen without their gradient."""
        if not self.end_to_end:
            rois = rois.detach()
        feats = roi_warp(f, rois, batch_index, (self.roi_size, self.roi_size), 1.0 / self.stride,
                         self.sampling_ratio).to(f.dtype)                                    # (R, C, S, S)
        pooled = F.max_pool2d(feats, 2)                                                       # (R, C, S/2, S/2)
        mask_logits = self.mask_stage(pooled)                                                 # (R, m, m)
        probs = torch.sigmoid(mask_logits.float())
        if not self.end_to_end:
            probs = probs.detach()
        masked = F.max_pool2d(mask_pool(feats, probs).to(f.dtype), 2)                         # (R, C, S/2, S/2)
        cls_logits, deltas = self.category_stage(masked, pooled)
        return mask_logits, cls_logits, deltas

    def forward(self, images: Tensor, targets: Tensor | None = None, classes: Tensor | None = None) -> dict:
        """images (B, 3, H, W) -> in evaluation the cascade's candidates, per image ``rounds x rpn_post_nms`` of
        them (padding has score 0): {"boxes": (B, N, 4) xyxy input pixels, "scores": (B, N) the top foreground
        class's probability, "labels": (B, N) int64 1..K, "masks": (B, N, m, m) mask probabilities in each box's
        frame, "stage": (B, N) 3 or 5, "proposals": (B, P, 4) and "proposal_scores": (B, P) (stage 1),
        "objectness": (B, 1, h, w) the highest anchor objectness per location}. In training with ``targets``
        (B, H, W) instance ids (and ``classes`` (B, H, W) their class, else all class 1) -> {"losses": {name:
        scalar}}."""
        B, _, H, W = images.shape
        f = self.neck(images)                                                                  # (B, C, h, w)
        logits, deltas = self.rpn(f)                                                           # (B, M), (B, M, 4)
        anchors = anchor_grid(f.shape[-2:], self.stride, self.anchor_sizes, self.anchor_ratios, device=f.device)
        M = len(anchors)
        boxes = decode_boxes(deltas.float().reshape(B * M, 4), anchors.repeat(B, 1))          # (B·M, 4)
        boxes = clip_boxes(boxes, (H, W)).view(B, M, 4)
        props, prop_scores = self.proposals(boxes, logits)
        if self.training and targets is not None:
            return {"losses": self._losses(f, logits, deltas, anchors, props, targets, classes)}
        return self._cascade(f, logits, props, prop_scores, (H, W))

    def _losses(self, f, logits, deltas, anchors, props, targets, classes) -> dict:
        B = f.shape[0]
        gts = [instance_targets(targets[b], None if classes is None else classes[b]) for b in range(B)]
        l_rpn_cls, l_rpn_box = rpn_loss(logits, deltas, anchors, [g[0] for g in gts], batch=self.rpn_batch)
        rois, index, labels, box_t, mask_t = [], [], [], [], []
        for b, (gt_boxes, gt_labels, gt_masks) in enumerate(gts):
            idx, lab, match = roi_targets(props[b], gt_boxes, gt_labels, self.roi_batch, self.foreground_fraction)
            r = torch.cat([props[b], gt_boxes], 0)[idx]                                         # (R_b, 4)
            rois.append(r)
            index.append(torch.full((len(idx),), b, dtype=torch.int64, device=f.device))
            labels.append(lab)
            if len(gt_boxes):
                box_t.append(encode_boxes(gt_boxes[match], r.detach(), STAGE3_WEIGHTS))
                warped = roi_warp(gt_masks[:, None], r.detach(), match, (self.mask_size, self.mask_size), 1.0, 2)
                mask_t.append((warped[:, 0] >= 0.5).float())                                   # (R_b, m, m)
            else:
                box_t.append(torch.zeros_like(r))
                mask_t.append(r.new_zeros((len(r), self.mask_size, self.mask_size)))
        rois, index, labels = torch.cat(rois), torch.cat(index), torch.cat(labels)
        box_t, mask_t = torch.cat(box_t), torch.cat(mask_t)
        mask_logits, cls_logits, box_d = self.stages_2_3(f, rois, index)
        fg = labels > 0
        zero = mask_logits.sum() * 0.0
        l_mask = F.binary_cross_entropy_with_logits(mask_logits[fg].float(), mask_t[fg]) if fg.any() else zero
        l_cls = F.cross_entropy(cls_logits.float(), labels)
        l_box = (F.smooth_l1_loss(box_d[fg, labels[fg]].float(), box_t[fg], beta=1.0, reduction="sum")
                 / max(1, len(labels))) if fg.any() else zero
        return {"rpn_cls": l_rpn_cls, "rpn_box": l_rpn_box, "mask": l_mask, "cls": l_cls, "box": l_box}

    @torch.no_grad()
    def _cascade(self, f, logits, props, prop_scores, size) -> dict:
        B = f.shape[0]
        P = self.rpn_post_nms
        rois = torch.cat(props)                                                                  # (R, 4)
        index = torch.cat([torch.full((len(p),), b, dtype=torch.int64, device=f.device) for b, p in enumerate(props)])
        rounds = []
        for stage in range(3, self.cascade_stages + 1, 2):                                       # 3, (5)
            mask_logits, cls_logits, deltas = self.stages_2_3(f, rois, index)
            prob = torch.softmax(cls_logits.float(), 1)                                          # (R, K+1)
            score, label = prob[:, 1:].max(1)
            label = label + 1
            rounds.append((rois, torch.sigmoid(mask_logits.float()), score, label, stage))
            d = deltas[torch.arange(len(label), device=f.device), label].float()                 # the top class's
            rois = clip_boxes(decode_boxes(d, rois, STAGE3_WEIGHTS), size)
        N = P * len(rounds)
        m = self.mask_size
        out = {"boxes": f.new_zeros((B, N, 4), dtype=torch.float32), "scores": f.new_zeros((B, N), dtype=torch.float32),
               "labels": torch.ones((B, N), dtype=torch.int64, device=f.device),
               "masks": f.new_zeros((B, N, m, m), dtype=torch.float32),
               "stage": torch.zeros((B, N), dtype=torch.int64, device=f.device),
               "proposals": f.new_zeros((B, P, 4), dtype=torch.float32),
               "proposal_scores": f.new_zeros((B, P), dtype=torch.float32),
               "objectness": torch.sigmoid(logits.float()).view(B, f.shape[2], f.shape[3], -1).amax(-1)[:, None],
               "image_size": tuple(size)}
        for b in range(B):
            sel = index == b
            n = int(sel.sum())
            out["proposals"][b, :n] = props[b]
            out["proposal_scores"][b, :n] = prop_scores[b]
            for r, (bx, mk, sc, lb, stage) in enumerate(rounds):
                at = slice(r * P, r * P + n)
                out["boxes"][b, at], out["masks"][b, at] = bx[sel], mk[sel]
                out["scores"][b, at], out["labels"][b, at] = sc[sel], lb[sel]
                out["stage"][b, at] = stage
        return out

    def loss(self, out: dict, instances: Tensor) -> tuple[Tensor, dict]:
        """L = L₁(B) + L₂(M | B) + L₃(C | M, B), equal weights (Eq. 5); the parts as computed by ``forward``."""
        parts = out["losses"]
        total = sum(v.float() for v in parts.values())
        return total, {k: v.detach() for k, v in parts.items()}

    # -- post-processing -------------------------------------------------------------------------------------------
    #: why ``attnseg export`` refuses this model (``export.export_onnx`` reads it before tracing)
    not_exportable = ("its outputs are per-region candidates chosen by data-dependent top-k and NMS, not dense maps; "
                      "run it with attnseg predict, attnseg serve or attnseg.load")

    def map_channels(self) -> dict[str, int]:
        raise NotImplementedError(f"MNC cannot be exported to ONNX: {self.not_exportable}")

    def dense(self, out: dict, b: int = 0) -> dict[str, np.ndarray]:
        keys = ("boxes", "scores", "labels", "masks", "stage", "proposals", "proposal_scores")
        maps = {k: out[k][b].detach().cpu().numpy() for k in keys}
        maps["objectness"] = out["objectness"][b, 0].float().cpu().numpy()
        maps["image_size"] = np.array(out.get("image_size", (0, 0)))
        return maps

    def select(self, maps: dict[str, np.ndarray]) -> np.ndarray:
        """The kept candidates, best first: score >= ``score_threshold``, per-class box NMS at ``nms_threshold``,
        at most ``detections``."""
        scores = maps["scores"]
        cand = np.nonzero(scores >= self.post["score_threshold"])[0]
        if not len(cand):
            return cand
        keep = batched_nms(torch.from_numpy(maps["boxes"][cand]), torch.from_numpy(scores[cand]),
                           torch.from_numpy(maps["labels"][cand]), self.post["nms_threshold"]).numpy()
        return cand[keep[:self.post["detections"]]]

    def group(self, maps: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[int, float]]:
        """The kept candidates' masks pasted into the image at ``mask_threshold`` and painted in score order (a
        pixel claimed by two goes to the higher score); id = rank + 1; instances under ``min_size`` px dropped."""
        H, W = (int(v) for v in maps["image_size"])
        ids = np.zeros((H, W), np.int32)
        kept = self.select(maps)
        scores = maps["scores"]
        for rank in range(len(kept) - 1, -1, -1):                           # lowest score first, the best on top
            k = kept[rank]
            pasted = paste_masks(torch.from_numpy(maps["masks"][k][None]), torch.from_numpy(maps["boxes"][k][None]),
                                 (H, W))[0].numpy()
            ids[pasted > self.post["mask_threshold"]] = rank + 1
        count = np.bincount(ids.ravel(), minlength=len(kept) + 1)
        small = np.nonzero((count < self.post["min_size"]) & (np.arange(len(count)) > 0))[0]
        if len(small):
            ids[np.isin(ids, small)] = 0
            count[small] = 0
        return ids, {r + 1: float(scores[kept[r]]) for r in range(len(kept)) if count[r + 1] > 0}

    def instance_classes(self, maps: dict[str, np.ndarray], ids: np.ndarray) -> dict[int, int]:
        """{id: class 1..K} of the instances ``group`` returned."""
        present = set(np.unique(ids).tolist()) - {0}
        kept = self.select(maps)
        return {r + 1: int(maps["labels"][kept[r]]) for r in range(len(kept)) if r + 1 in present}

    def attention_maps(self, maps: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The RPN's objectness (the best anchor per feature cell)."""
        return {"objectness": maps["objectness"]}

    def region_pictures(self, image: np.ndarray, maps: dict[str, np.ndarray], ids: np.ndarray,
                        class_names=()) -> list:
        """Stage 1's 50 best proposals, and the kept instances with their boxes, classes and scores."""
        from ..viz.pictures import Picture
        from ..viz.proposals import detection_picture, proposal_picture
        kept = self.select(maps)
        present = set(np.unique(ids).tolist())
        ranks = [r for r in range(len(kept)) if r + 1 in present]
        k = kept[ranks] if ranks else kept[:0]
        names = [class_names[c - 1] if len(class_names) >= c else f"class {c}" for c in maps["labels"][k]]
        H, W = (int(v) for v in maps["image_size"])                   # the network's input; the image may differ
        to_image = np.array([image.shape[1] / W, image.shape[0] / H] * 2)
        n_prop = int((maps["proposal_scores"] > 0).sum())
        return [Picture("proposals", f"stage 1: the 50 best of {n_prop} proposals", proposal_picture(
                    image, maps["proposals"] * to_image, maps["proposal_scores"])),
                Picture("detections", f"stages 2-{self.cascade_stages}: {len(k)} kept (class, score)",
                        detection_picture(image, ids, np.array(ranks, np.int64) + 1, maps["boxes"][k] * to_image, names,
                                          maps["scores"][k]))]


def mnc(num_classes: int = 1, depth: int = 18, neck: str = "c4", channels: int = 256, norm: str = "group",
        anchor_sizes: tuple | list = (32, 64, 128), anchor_ratios: tuple | list = (0.5, 1.0, 2.0), roi_size: int = 14,
        mask_size: int = 28, mask_hidden: int = 256, hidden: int = 512, sampling_ratio: int = 1,
        cascade_stages: int = 5, end_to_end: bool = True, rpn_pre_nms: int = 2000, rpn_post_nms: int = 300,
        rpn_nms_threshold: float = 0.7, rpn_batch: int = 256, roi_batch: int = 64, foreground_fraction: float = 0.25,
        min_box: float = 2.0, score_threshold: float = 0.5, nms_threshold: float = 0.5, mask_threshold: float = 0.5,
        detections: int = 200, min_size: int = 4) -> MultiTaskNetworkCascade:
    """Multi-task Network Cascades (see the module docstring). ``num_classes``: the instance classes K (the
    category stage is (K+1)-way). ``anchor_sizes`` in input pixels (3 sizes x 3 ratios = 9 anchors per location,
    as the paper; the paper's sizes 128-512 suit VOC, nuclei need 8-32). ``end_to_end=False``: the SDS-style
    two-step ablation. Post-processing (``set_post``): ``score_threshold``, ``nms_threshold``, ``mask_threshold``,
    ``detections``, ``min_size``."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, not {num_classes}")
    if not anchor_sizes or not anchor_ratios or min(anchor_sizes) <= 0 or min(anchor_ratios) <= 0:
        raise ValueError(f"anchor_sizes and anchor_ratios must be non-empty lists of positive numbers, got "
                         f"{anchor_sizes} and {anchor_ratios}")
    return MultiTaskNetworkCascade(num_classes, depth, neck, channels, norm, anchor_sizes, anchor_ratios, roi_size,
                                   mask_size, mask_hidden, hidden, sampling_ratio, cascade_stages, end_to_end,
                                   rpn_pre_nms, rpn_post_nms, rpn_nms_threshold, rpn_batch, roi_batch,
                                   foreground_fraction, min_box, score_threshold, nms_threshold, mask_threshold,
                                   detections, min_size)
