"""Instance metrics: a case computed by hand, and random maps against a brute-force implementation written from
the definitions (boolean masks, explicit loops, explicit one-to-one matching)."""

import math

import numpy as np
import pytest

from attnseg.metrics.instance import DSB_THRESHOLDS, InstanceMetrics, image_metrics, overlaps


def brute(pred, gt) -> dict:
    P = [pred == i for i in np.unique(pred) if i]
    G = [gt == i for i in np.unique(gt) if i]

    def dice(a, b):
        return 2 * (a & b).sum() / (a.sum() + b.sum())

    def iou(a, b):
        return (a & b).sum() / (a | b).sum()

    def bd(A, B):
        return sum(max(dice(a, b) for b in B) for a in A) / len(A) if A and B else 0.0

    out = {"DiC": len(P) - len(G), "|DiC|": abs(len(P) - len(G))}
    if not P and not G:
        return {**out, "SBD": 1.0, "fgDice": 1.0, "DSB": 1.0, "PQ": 1.0}
    out["SBD"] = min(bd(P, G), bd(G, P))
    out["fgDice"] = dice(pred > 0, gt > 0)
    if G:
        best = [max((iou(g, p) for p in P), default=0.0) for g in G]
        total = sum(g.sum() for g in G)
        out["MWCov"] = sum(g.sum() / total * b for g, b in zip(G, best))
        out["MUCov"] = sum(best) / len(G)
        out["AvgFN"] = sum(b < 0.5 for b in best) / len(G)
    if P:
        out["AvgFP"] = sum(max((iou(p, g) for g in G), default=0.0) < 0.5 for p in P) / len(P)
    scores = []
    for t in DSB_THRESHOLDS:
        used, tp = set(), 0
        for p in P:  # greedy one-to-one matching
            for j, g in enumerate(G):
                if j not in used and iou(p, g) > t:
                    used.add(j)
                    tp += 1
                    break
        scores.append(tp / (len(P) + len(G) - tp))
    out["DSB"] = float(np.mean(scores))
    pairs = [(iou(p, g)) for p in P for g in G if iou(p, g) > 0.5]
    out["PQ"] = sum(pairs) / (len(pairs) + 0.5 * (len(P) - len(pairs)) + 0.5 * (len(G) - len(pairs)))
    return out


def test_a_case_computed_by_hand():
    gt = np.zeros((4, 6), int)
    gt[:, :3] = 1          # 12 px
    gt[:, 3:] = 2          # 12 px
    pred = np.zeros((4, 6), int)
    pred[:, :3] = 5        # exactly GT 1
    pred[:2, 3:] = 7       # top half of GT 2: 6 px
    m = image_metrics(pred, gt)
    # Dice: (5,1) = 1, (7,2) = 2*6/18 = 2/3; BD(P,G) = BD(G,P) = (1 + 2/3)/2 = 5/6
    assert m["SBD"] == pytest.approx(5 / 6)
    assert (m["DiC"], m["|DiC|"]) == (0, 0)
    assert m["fgDice"] == pytest.approx(2 * 18 / (18 + 24))
    # IoU: 1 and 6/12 = 0.5 -> MWCov = 0.5*1 + 0.5*0.5, MUCov the same (equal sizes)
    assert m["MWCov"] == pytest.approx(0.75) and m["MUCov"] == pytest.approx(0.75)
    assert m["AvgFP"] == 0 and m["AvgFN"] == 0            # IoU 0.5 matches (>= 0.5)
    # DSB: the pair of IoU 1 is a TP at every threshold; IoU 0.5 at none (> t): 1 / (1 + 1 + 1) each
    assert m["DSB"] == pytest.approx(1 / 3)
    # PQ: one match (IoU 1 > 0.5), one FP, one FN: 1 / (1 + 0.5 + 0.5)
    assert m["PQ"] == pytest.approx(0.5)


@pytest.mark.parametrize("seed", range(12))
def test_random_maps_match_the_brute_force_definitions(seed):
    rng = np.random.default_rng(seed)
    H, W = 24, 32
    gt = np.zeros((H, W), int)
    for k in range(1, rng.integers(0, 7) + 1):                  # rectangles painted over each other
        y, x = rng.integers(0, H - 4), rng.integers(0, W - 4)
        gt[y:y + rng.integers(3, 12), x:x + rng.integers(3, 14)] = k * 3
    pred = gt.copy()
    pred[rng.random((H, W)) < 0.15] = 0
    shift = rng.integers(-2, 3)
    pred = np.roll(pred, shift, axis=1)
    if seed % 3 == 0:
        pred[rng.integers(0, H - 5):, :5] = 99                   # a spurious instance
    m, ref = image_metrics(pred, gt), brute(pred, gt)
    for key, value in ref.items():
        assert m[key] == pytest.approx(value, abs=1e-12), key


def test_empty_images_and_one_sided_ones():
    empty = np.zeros((5, 5), int)
    one = empty.copy()
    one[1:3, 1:3] = 4
    m = image_metrics(empty, empty)
    assert (m["SBD"], m["DSB"], m["PQ"], m["fgDice"]) == (1.0, 1.0, 1.0, 1.0) and math.isnan(m["MWCov"])
    m = image_metrics(empty, one)
    assert (m["SBD"], m["DSB"], m["DiC"], m["MUCov"], m["AvgFN"]) == (0.0, 0.0, -1, 0.0, 1.0)
    m = image_metrics(one, empty)
    assert (m["SBD"], m["DSB"], m["DiC"], m["AvgFP"]) == (0.0, 0.0, 1, 1.0) and math.isnan(m["MWCov"])


def test_overlap_table_and_dataset_means():
    gt = np.array([[1, 1, 2], [0, 2, 2]])
    pred = np.array([[3, 0, 3], [3, 3, 3]])
    inter, ps, gs = overlaps(pred, gt)
    assert inter.tolist() == [[1, 3]] and ps.tolist() == [5] and gs.tolist() == [2, 3]
    acc = InstanceMetrics()
    a = acc.update(pred, gt, "a")
    b = acc.update(np.zeros((2, 3), int), np.zeros((2, 3), int), "b")
    out = acc.compute()
    assert out["images"] == 2 and out["SBD"] == pytest.approx((a["SBD"] + b["SBD"]) / 2)
    assert out["MWCov"] == pytest.approx(a["MWCov"])             # NaN of the empty image skipped
    assert out["|DiC|"] == pytest.approx(0.5)


@pytest.mark.parametrize("pred, gt, needle", [
    (np.zeros((2, 2)), np.zeros((2, 2), int), "integer ids"),
    (np.zeros((2, 2), int), np.zeros((3, 2), int), "they must match"),
    (np.full((2, 2), -1), np.zeros((2, 2), int), "must be >= 0"),
    (np.zeros((2, 2, 2), int), np.zeros((2, 2), int), "must be (H, W)"),
])
def test_bad_maps_are_named(pred, gt, needle):
    with pytest.raises(ValueError) as e:
        image_metrics(pred, gt)
    assert needle in str(e.value)


def test_coco_mask_ap_perfect_partial_and_ranked():
    pytest.importorskip("pycocotools")
    from attnseg.metrics.instance import coco_mask_ap
    gt = np.zeros((20, 20), int)
    gt[2:8, 2:8], gt[10:18, 10:18] = 1, 2
    assert coco_mask_ap([(gt, {}, gt)]) == pytest.approx({"AP": 1.0, "AP50": 1.0, "AP75": 1.0})
    half = gt.copy()
    half[10:18, 14:18] = 0                     # instance 2 at IoU 0.5: a TP at 0.50 only
    out = coco_mask_ap([(half, {}, gt)])
    assert out["AP50"] == pytest.approx(1.0) and out["AP75"] < 0.6 and out["AP"] < out["AP50"]
    spurious = gt.copy()
    spurious[0:2, 15:20] = 9
    # a false positive ranked below both TPs costs nothing at any recall; ranked first it lowers the precision
    assert coco_mask_ap([(spurious, {1: 0.9, 2: 0.8, 9: 0.1}, gt)])["AP"] == pytest.approx(1.0)
    assert coco_mask_ap([(spurious, {1: 0.5, 2: 0.4, 9: 0.9}, gt)])["AP"] < 0.9
    assert coco_mask_ap([(np.zeros_like(gt), {}, gt)])["AP"] == 0.0
    assert coco_mask_ap([(gt, {}, np.zeros_like(gt))])["AP"] == -1.0


def test_coco_mask_ap_class_aware_against_hand_computed_values():
    pytest.importorskip("pycocotools")
    from attnseg.metrics.instance import coco_mask_ap
    gt = np.zeros((30, 30), int)
    gt[2:8, 2:8], gt[10:18, 10:18], gt[20:28, 2:10] = 1, 2, 3
    gt_classes = {1: 1, 2: 1, 3: 2}
    # 3-tuples: unchanged, no class-aware keys
    assert set(coco_mask_ap([(gt, {}, gt)])) == {"AP", "AP50", "AP75"}
    # right masks, right classes: 1 everywhere
    out = coco_mask_ap([(gt, {}, gt, gt_classes, gt_classes)])
    assert out["mAP"] == pytest.approx(1.0) and out["AP_per_class"] == pytest.approx({1: 1.0, 2: 1.0})
    # right masks, instance 3 called class 1: class-agnostic AP 1, but class 2 has no detection (AP 0) and class 1's
    # false positive ranks below its two true ones (AP 1): mAP = (1 + 0) / 2
    wrong = {1: 1, 2: 1, 3: 1}
    out = coco_mask_ap([(gt, {1: 0.9, 2: 0.8, 3: 0.7}, gt, wrong, gt_classes)])
    assert out["AP"] == pytest.approx(1.0) and out["AP50"] == pytest.approx(1.0)
    assert out["AP_per_class"] == pytest.approx({1: 1.0, 2: 0.0})
    assert [out[k] for k in ("mAP", "mAP50", "mAP75")] == pytest.approx([0.5] * 3)
    # one instance, one class, predicted as the other: AP 1, mAP 0 (a class with detections only does not count)
    one = (gt == 3).astype(int)
    out = coco_mask_ap([(one, {}, one, {1: 1}, {1: 2})])
    assert out["AP"] == pytest.approx(1.0) and out["mAP"] == 0.0 and out["AP_per_class"] == {1: -1.0, 2: 0.0}
    # by hand: a false positive (score 0.9, class 1) over nothing, then the three instances in their classes (0.8,
    # 0.7 class 1; 0.6 class 2). Class 1: precision 1/2 at recall 1/2, 2/3 at recall 1: interpolated, 2/3 at every
    # recall, AP = 2/3; class 2: AP 1; mAP = (2/3 + 1) / 2 = 5/6. Class-agnostic: precision 1/2, 2/3, 3/4 at recall
    # 1/3, 2/3, 1: AP = 3/4. The masks are exact: the same at every IoU threshold.
    pred = gt.copy()
    pred[0:2, 20:28] = 9
    out = coco_mask_ap([(pred, {9: 0.9, 1: 0.8, 2: 0.7, 3: 0.6}, gt, {9: 1, 1: 1, 2: 1, 3: 2}, gt_classes)])
    assert [out[k] for k in ("AP", "AP50", "AP75")] == pytest.approx([0.75] * 3)
    assert out["AP_per_class"] == pytest.approx({1: 2 / 3, 2: 1.0})
    assert [out[k] for k in ("mAP", "mAP50", "mAP75")] == pytest.approx([5 / 6] * 3)
    # class 2 holds instances 2 and 3, instance 2 is called class 1: class 2 reaches recall 1/2 at precision 1, AP =
    # 51/101 (COCO's 101-point recall grid 0, 0.01, ..., 1: the points up to 0.5); class 1: a TP over a lower FP, 1
    half = coco_mask_ap([(gt, {1: 0.9, 2: 0.5, 3: 0.8}, gt, {1: 1, 2: 1, 3: 2}, {1: 1, 2: 2, 3: 2})])
    assert half["AP_per_class"] == pytest.approx({1: 1.0, 2: 51 / 101})
    assert half["mAP"] == pytest.approx((1 + 51 / 101) / 2) and half["AP"] == pytest.approx(1.0)
    # a mix of 3- and 5-tuples: the 3-tuple's instances are class 1
    mixed = coco_mask_ap([(gt, {}, gt), (gt, {}, gt, {3: 2}, {3: 2})])
    assert mixed["mAP"] == pytest.approx(1.0)
    assert coco_mask_ap([(np.zeros_like(gt), {}, gt, {}, gt_classes)])["mAP"] == 0.0
    assert coco_mask_ap([(gt, {}, np.zeros_like(gt), gt_classes, {})])["mAP"] == -1.0


@pytest.mark.parametrize("entry, needle", [
    ((np.zeros((2, 2), int),) * 2, "image 1 is a 2-tuple; give (pred_ids, scores, gt_ids) or"),
    ((np.zeros((2, 2), int), {}, np.zeros((2, 2), int), {}), "is a 4-tuple"),
    ((np.ones((2, 2), int), {}, np.ones((2, 2), int), {1: 0}, {}), "pred_classes gives instance 1 class 0"),
    ((np.ones((2, 2), int), {}, np.ones((2, 2), int), {}, {1: "cat"}), "gt_classes must map instance ids to class"),
])
def test_coco_mask_ap_refuses_malformed_images(entry, needle):
    pytest.importorskip("pycocotools")
    from attnseg.metrics.instance import coco_mask_ap
    with pytest.raises(ValueError) as e:
        coco_mask_ap([entry])
    assert needle in str(e.value)


def test_instance_table_json_and_per_image_csv(tmp_path):
    import csv
    import json

    from attnseg.metrics.report import format_instance_table, save_instance_metrics
    gt = np.zeros((4, 6), int)
    gt[:, :3], gt[:, 3:] = 1, 2
    pred = np.zeros((4, 6), int)
    pred[:, :3], pred[:2, 3:] = 5, 7
    acc = InstanceMetrics()
    acc.update(pred, gt, "img_a")
    acc.update(np.zeros((4, 6), int), np.zeros((4, 6), int), "img_b")
    summary = acc.compute()
    text = format_instance_table(summary)
    assert "2 images" in text and "SBD" in text and "91.67" in text      # (5/6 + 1) / 2
    assert "75.0" in text and "nan" not in text                        # MWCov: the empty image's NaN skipped
    assert "|  -  |" in format_instance_table({"images": 0, "SBD": float("nan")})
    out = save_instance_metrics(tmp_path / "m", summary, acc.rows, extra={"data": "x"})
    record = json.loads((out / "metrics.json").read_text())
    assert record["task"] == "instances" and record["SBD"] == pytest.approx(11 / 12) and record["data"] == "x"
    rows = list(csv.reader((out / "per_image.csv").open()))
    assert rows[0][:3] == ["image", "n_pred", "n_gt"] and [r[0] for r in rows[1:]] == ["img_a", "img_b"]
    sbd = rows[0].index("SBD")
    assert float(rows[1][sbd]) == pytest.approx(5 / 6) and rows[2][rows[0].index("MWCov")] == ""
