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


def _classes_of(classes, what: str, image_id: int) -> dict[int, int]:
    """{id: class} with int keys and classes >= 1 (0 is background, never an instance's class)."""
    try:
        out = {int(k): int(v) for k, v in dict(classes or {}).items()}
    except (TypeError, ValueError):
        raise ValueError(f"image {image_id}: {what} must map instance ids to class indices 1..K, "
                         f"not {classes!r}") from None
    bad = [(k, v) for k, v in out.items() if v < 1]
    if bad:
        raise ValueError(f"image {image_id}: {what} gives instance {bad[0][0]} class {bad[0][1]}; classes are 1..K "
                         "(0 is background)")
    return out


def coco_mask_ap(images, max_dets: int = 1000) -> dict:
    """COCO mask AP, AP50 and AP75 through pycocotools (``iouType="segm"``), class-agnostic and, where the images
    carry classes, class-aware.

    Args:
        images: per image ``(pred_ids, scores, gt_ids)`` or ``(pred_ids, scores, gt_ids, pred_classes,
            gt_classes)``: (H, W) id maps, ``scores`` {pred id: confidence} (a predicted id without a score gets
            1.0) and the classes {id: 1..K} of the predicted and the true instances (an id absent from its mapping,
            and every instance of a 3-tuple, is class 1).
        max_dets: detections kept per image (COCO's default 100 is too few for nuclei fields: DSB2018 images hold
            up to ~400).
    Returns:
        {"AP", "AP50", "AP75"}: every instance one category (classes ignored); when any image is a 5-tuple also
        {"mAP", "mAP50", "mAP75"}: each class its category, a prediction matching only instances of its own class,
        and the AP averaged over the classes that have ground truth (pycocotools' mean over categories: the
        mAP^r of SDS / MNC), and "AP_per_class" {class: AP over IoU 0.50:0.95} (-1 for a class without ground
        truth). All in [0, 1]; -1 where there is no ground truth at all (COCO's convention).
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

    gt_images, gt_anns, dets = [], [], []            # annotations and detections carry their class ("cls")
    with_classes = False
    for image_id, entry in enumerate(images, start=1):
        entry = tuple(entry)
        if len(entry) == 3:
            (pred, scores, gt), pred_cls, gt_cls = entry, {}, {}
        elif len(entry) == 5:
            pred, scores, gt = entry[:3]
            pred_cls = _classes_of(entry[3], "pred_classes", image_id)
            gt_cls = _classes_of(entry[4], "gt_classes", image_id)
            with_classes = True
        else:
            raise ValueError(f"image {image_id} is a {len(entry)}-tuple; give (pred_ids, scores, gt_ids) or "
                             "(pred_ids, scores, gt_ids, pred_classes, gt_classes)")
        pred, gt = _ids(pred), _ids(gt)
        if pred.shape != gt.shape:
            raise ValueError(f"image {image_id}: the prediction is {pred.shape} but the ground truth {gt.shape}")
        gt_images.append({"id": image_id, "height": int(gt.shape[0]), "width": int(gt.shape[1])})
        for k in np.unique(gt):
            if k:
                r = rle(gt == k)
                gt_anns.append({"image_id": image_id, "cls": gt_cls.get(int(k), 1), "segmentation": r, "iscrowd": 0,
                                "area": float(mask_util.area(r)), "bbox": [float(v) for v in mask_util.toBbox(r)]})
        for k in np.unique(pred):
            if k:
                dets.append({"image_id": image_id, "cls": pred_cls.get(int(k), 1), "segmentation": rle(pred == k),
                             "score": float((scores or {}).get(int(k), 1.0))})

    def evaluate(class_aware: bool) -> tuple[list[float], dict[int, float]]:
        """(AP, AP50, AP75) with each class its category (or all category 1) and the AP of each category."""
        cat = (lambda a: a["cls"]) if class_aware else (lambda a: 1)
        cats = sorted({cat(a) for a in gt_anns} | {cat(d) for d in dets})
        if not gt_anns:
            return [-1.0] * 3, dict.fromkeys(cats, -1.0)
        if not dets:
            return [0.0] * 3, {c: (0.0 if any(cat(a) == c for a in gt_anns) else -1.0) for c in cats}
        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt = COCO()
            coco_gt.dataset = {"images": gt_images, "categories": [{"id": c, "name": str(c)} for c in cats],
                               "annotations": [{k: v for k, v in a.items() if k != "cls"}
                                               | {"id": n, "category_id": cat(a)} for n, a in enumerate(gt_anns, 1)]}
            coco_gt.createIndex()
            coco_dt = coco_gt.loadRes([{k: v for k, v in d.items() if k != "cls"} | {"category_id": cat(d)}
                                       for d in dets])
            ev = COCOeval(coco_gt, coco_dt, iouType="segm")
            ev.params.maxDets = [1, 100, max_dets]
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        # precision (T IoUs, R recalls, K categories, A areas, M maxDets), -1 where undefined: area "all", max_dets
        precision = ev.eval["precision"][:, :, :, 0, -1]
        per_class = {}
        for c, p in zip(ev.params.catIds, np.moveaxis(precision, 2, 0)):
            valid = p[p > -1]
            per_class[int(c)] = float(valid.mean()) if valid.size else -1.0
        return [float(v) for v in ev.stats[:3]], per_class

    agnostic, _ = evaluate(False)
    out = dict(zip(("AP", "AP50", "AP75"), agnostic))
    if with_classes:
        aware, per_class = evaluate(True)
        out.update(zip(("mAP", "mAP50", "mAP75"), aware))
        out["AP_per_class"] = per_class
    return out
