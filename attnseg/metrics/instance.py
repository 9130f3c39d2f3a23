"""Instance segmentation metrics on instance id maps (H, W): 0 is background, every other value one instance.

Per image (``image_metrics(pred, gt)``), from one table of pairwise overlaps (``overlaps``):

- **SBD**, symmetric best Dice (CVPPP leaf segmentation; Ren & Zemel 2017 §4.6):
  ``SBD = min(BD(P, G), BD(G, P))``, ``BD(A, B) = (1/|A|) Σ_{a∈A} max_{b∈B} Dice(a, b)``,
  ``Dice(a, b) = 2|a∩b| / (|a| + |b|)``;
- **DiC** = #pred − #GT (difference in count) and **|DiC|**;
- **fg Dice**: Dice of the foregrounds (pred > 0 against GT > 0);
- **MWCov** = Σ_i (|G_i| / Σ_j |G_j|) · max_k IoU(G_i, P_k) and **MUCov** = (1/|G|) Σ_i max_k IoU(G_i, P_k)
  (KITTI instances, Zhang et al. 2016 as used by Ren & Zemel);
- **AvgFP / AvgFN**: the fraction of predicted instances that match no GT instance and of GT instances that no
  prediction matches, a match being IoU ≥ 0.5 (the exact threshold of Zhang et al. is recalled, not read, in
  METHODS.md; at ≥ 0.5 a match is necessarily one-to-one);
- **DSB2018 score**: the mean over IoU thresholds t = 0.50, 0.55, ..., 0.95 of TP / (TP + FP + FN), a TP being a
  prediction-GT pair with IoU > t (Kaggle's rule, one-to-one for t ≥ 0.5);
- **PQ** (panoptic quality, one class): Σ_matched IoU / (TP + FP/2 + FN/2), matches at IoU > 0.5.

Conventions for empty images: with no GT and no prediction, SBD, fg Dice, DSB score and PQ are 1 and the
coverages NaN (undefined, skipped when averaging); with one side empty the scores are 0. Dataset figures
(``InstanceMetrics``) are means over images (NaN skipped); |DiC| is the mean of per-image |DiC|.
"""

from __future__ import annotations

import math

import numpy as np

DSB_THRESHOLDS = tuple(np.round(np.arange(0.5, 0.951, 0.05), 2))
KEYS = ("SBD", "DiC", "|DiC|", "fgDice", "MWCov", "MUCov", "AvgFP", "AvgFN", "DSB", "PQ")


def _ids(a) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"an instance map must be (H, W), got shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.integer) or a.dtype == bool):
        raise ValueError(f"an instance map holds integer ids (0 = background), got dtype {a.dtype}")
    if a.size and a.min() < 0:
        raise ValueError(f"instance ids must be >= 0 (0 = background); this map holds {int(a.min())}")
    return a.astype(np.int64, copy=False)


def overlaps(pred, gt) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairwise intersections of the instances of two id maps of one size.

    Returns:
        (inter (P, G) pixel counts, pred sizes (P,), gt sizes (G,)), instances in increasing id order
        (background excluded).
    """
    pred, gt = _ids(pred), _ids(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"the prediction is {pred.shape} but the ground truth {gt.shape}; they must match")
    p_ids, p_idx = np.unique(pred, return_inverse=True)       # index 0 may be background
    g_ids, g_idx = np.unique(gt, return_inverse=True)
    table = np.bincount(p_idx.ravel() * len(g_ids) + g_idx.ravel(),
                        minlength=len(p_ids) * len(g_ids)).reshape(len(p_ids), len(g_ids))  # (P+bg, G+bg)
    p_keep, g_keep = p_ids != 0, g_ids != 0
    return table[np.ix_(p_keep, g_keep)], table.sum(1)[p_keep], table.sum(0)[g_keep]


def _dice_iou(inter, p_size, g_size):
    union = p_size[:, None] + g_size[None, :] - inter
    dice = 2 * inter / np.maximum(p_size[:, None] + g_size[None, :], 1)
    iou = inter / np.maximum(union, 1)
    return dice, iou


def image_metrics(pred, gt) -> dict:
    """Every metric of the module docstring for one image (plus the counts)."""
    inter, p_size, g_size = overlaps(pred, gt)
    P, G = len(p_size), len(g_size)
    dice, iou = _dice_iou(inter.astype(np.float64), p_size.astype(np.float64), g_size.astype(np.float64))
    out = {"n_pred": P, "n_gt": G, "DiC": P - G, "|DiC|": abs(P - G)}
    if P == 0 and G == 0:
        out.update(SBD=1.0, fgDice=1.0, MWCov=math.nan, MUCov=math.nan, AvgFP=math.nan, AvgFN=math.nan, DSB=1.0,
                   PQ=1.0)
        return out
    bd_pg = float(dice.max(1).mean()) if P and G else 0.0
    bd_gp = float(dice.max(0).mean()) if P and G else 0.0
    out["SBD"] = min(bd_pg, bd_gp)
    fg_inter = float((np.asarray(pred) > 0)[np.asarray(gt) > 0].sum())
    out["fgDice"] = 2 * fg_inter / (p_size.sum() + g_size.sum())
    if G:
        best = iou.max(0) if P else np.zeros(G)
        out["MWCov"] = float((g_size / g_size.sum() * best).sum())
        out["MUCov"] = float(best.mean())
        out["AvgFN"] = float((best < 0.5).mean())
    else:
        out.update(MWCov=math.nan, MUCov=math.nan, AvgFN=math.nan)
    out["AvgFP"] = float(((iou.max(1) if G else np.zeros(P)) < 0.5).mean()) if P else math.nan
    scores = []
    for t in DSB_THRESHOLDS:
        tp = int((iou > t).sum())  # one-to-one: IoU > 0.5 with two disjoint instances is impossible
        scores.append(tp / (tp + (P - tp) + (G - tp)))
    out["DSB"] = float(np.mean(scores))
    matched = iou > 0.5
    tp = int(matched.sum())
    out["PQ"] = float(iou[matched].sum() / (tp + 0.5 * (P - tp) + 0.5 * (G - tp)))
    return out


class InstanceMetrics:
    """Per-image metrics of a stream of (prediction, ground truth) id maps and their means."""

    def __init__(self):
        self.rows: list[dict] = []

    def update(self, pred, gt, name: str | None = None) -> dict:
        row = image_metrics(pred, gt)
        row["image"] = name if name is not None else str(len(self.rows))
        self.rows.append(row)
        return row

    def compute(self) -> dict:
        """Means over images of every metric (NaN skipped), and the image count."""
        out = {"images": len(self.rows)}
        for key in KEYS:
            values = [r[key] for r in self.rows if not (isinstance(r[key], float) and math.isnan(r[key]))]
            out[key] = float(np.mean(values)) if values else math.nan
        return out


def coco_mask_ap(images, max_dets: int = 1000) -> dict:
    """COCO mask AP, AP50 and AP75 through pycocotools (one class, ``iouType="segm"``).

    Args:
        images: per image ``(pred_ids, scores, gt_ids)``: (H, W) id maps and ``scores`` {pred id: confidence} (a
            predicted id without a score gets 1.0).
        max_dets: detections kept per image (COCO's default 100 is too few for nuclei fields: DSB2018 images hold
            up to ~400).
    Returns:
        {"AP", "AP50", "AP75"} in [0, 1]; -1 where there is no ground truth at all (COCO's convention).
    """
    import contextlib
    import io

    try:
        from pycocotools import mask as mask_util
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise ValueError("COCO mask AP needs pycocotools: pip install -e '.[instances]'") from None

    def rle(mask: np.ndarray) -> dict:
        r = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        r["counts"] = r["counts"].decode("ascii")
        return r

    gt_json = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "object"}]}
    dets = []
    for image_id, (pred, scores, gt) in enumerate(images, start=1):
        pred, gt = _ids(pred), _ids(gt)
        if pred.shape != gt.shape:
            raise ValueError(f"image {image_id}: the prediction is {pred.shape} but the ground truth {gt.shape}")
        gt_json["images"].append({"id": image_id, "height": int(gt.shape[0]), "width": int(gt.shape[1])})
        for k in np.unique(gt):
            if k:
                r = rle(gt == k)
                gt_json["annotations"].append({"id": len(gt_json["annotations"]) + 1, "image_id": image_id,
                                               "category_id": 1, "segmentation": r, "iscrowd": 0,
                                               "area": float(mask_util.area(r)),
                                               "bbox": [float(v) for v in mask_util.toBbox(r)]})
        for k in np.unique(pred):
            if k:
                dets.append({"image_id": image_id, "category_id": 1, "segmentation": rle(pred == k),
                             "score": float((scores or {}).get(int(k), 1.0))})
    if not gt_json["annotations"]:
        return {"AP": -1.0, "AP50": -1.0, "AP75": -1.0}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt_json
        coco_gt.createIndex()
        if not dets:
            return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
        coco_dt = coco_gt.loadRes(dets)
        ev = COCOeval(coco_gt, coco_dt, iouType="segm")
        ev.params.maxDets = [1, 100, max_dets]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"AP": float(ev.stats[0]), "AP50": float(ev.stats[1]), "AP75": float(ev.stats[2])}
