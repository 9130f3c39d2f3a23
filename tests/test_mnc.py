"""Multi-task Network Cascades (``models.mnc``) and the SDS-style ablation: output shapes at any size, the
training targets against hand-worked cases, the three losses and where their gradients go (end to end through the
RoI warp into the boxes; stopped in the SDS variant), the 3- and 5-stage cascades, the post-processing
(thresholds, NMS, painting order, classes), bf16, learning on one image, pictures, and the refusals."""

import numpy as np
import pytest
import torch

from attnseg.models import create_model
from attnseg.models.mnc_parts import anchor_targets, instance_targets, roi_targets, sample_labels

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = dict(channels=32, hidden=64, mask_hidden=32, mask_size=14, rpn_pre_nms=200, rpn_post_nms=20, roi_batch=16,
             rpn_batch=64)


def tiny(name="mnc_resnet18_fpn", **kw):
    torch.manual_seed(0)
    return create_model(name, num_classes=kw.pop("num_classes", 1), **{**SMALL, **kw})


def scene(H=64, W=64):
    """Two squares (classes 1 and 2) and a disc (class 2) on an (H, W) id map."""
    ids = torch.zeros(H, W, dtype=torch.int64)
    ids[4:20, 6:26] = 1
    ids[30:50, 30:44] = 2
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    ids[((yy - 16) ** 2 + (xx - 48) ** 2) < 64] = 5
    classes = torch.zeros_like(ids)
    classes[ids == 1] = 1
    classes[(ids == 2) | (ids == 5)] = 2
    return ids, classes


def test_instance_targets_are_tight_boxes_labels_and_masks():
    ids, classes = scene()
    boxes, labels, masks = instance_targets(ids, classes)
    assert boxes.tolist() == [[6, 4, 26, 20], [30, 30, 44, 50], [41, 9, 56, 24]]
    assert labels.tolist() == [1, 2, 2]
    assert masks.shape == (3, 64, 64) and masks.sum((1, 2)).tolist() == [320, 280, int((ids == 5).sum())]
    assert instance_targets(ids, None)[1].tolist() == [1, 1, 1]
    empty = instance_targets(torch.zeros(8, 8, dtype=torch.int64), None)
    assert empty[0].shape == (0, 4) and empty[1].shape == (0,) and empty[2].shape == (0, 8, 8)


def test_anchor_labels_follow_faster_rcnn_rules():
    gt = torch.tensor([[0.0, 0, 10, 10]])
    anchors = torch.tensor([[0.0, 0, 10, 10],      # IoU 1: positive
                            [0.0, 0, 10, 12],      # IoU 0.833: positive
                            [0.0, 0, 10, 20],      # IoU 0.5: ignored (between 0.3 and 0.7)
                            [20.0, 20, 30, 30],    # IoU 0: negative
                            [5.0, 0, 15, 10]])     # IoU 1/3: ignored
    labels, match = anchor_targets(anchors, gt, batch=100)
    assert labels.tolist() == [1, 1, -1, 0, -1] and match.tolist() == [0] * 5
    # a ground truth box no anchor reaches 0.7 with still gets its best anchor(s)
    far = torch.tensor([[0.0, 0, 10, 30]])
    labels, _ = anchor_targets(anchors, far, batch=100)
    assert labels[2] == 1 and labels[3] == 0
    none, _ = anchor_targets(anchors, torch.zeros(0, 4), batch=100)
    assert (none == 0).all()


def test_sampling_caps_positives_and_total():
    torch.manual_seed(3)
    labels = torch.tensor([1] * 50 + [0] * 500 + [-1] * 10)
    s = sample_labels(labels, 64, 0.25)
    assert (s == 1).sum() == 16 and (s == 0).sum() == 48 and (s[-10:] == -1).all()
    assert ((s == 1) <= (labels == 1)).all() and ((s == 0) <= (labels == 0)).all()
    few = sample_labels(torch.tensor([1, 1, 0, 0, 0]), 64, 0.5)
    assert (few == 1).sum() == 2 and (few == 0).sum() == 3          # all of both when fewer than the caps


def test_region_targets_include_the_ground_truth_and_its_classes():
    gt = torch.tensor([[0.0, 0, 10, 10], [20, 20, 40, 40]])
    gt_labels = torch.tensor([3, 2])
    props = torch.tensor([[0.0, 0, 10, 11], [50, 50, 60, 60], [21, 20, 40, 40]])
    idx, labels, match = roi_targets(props, gt, gt_labels, batch=100, foreground_fraction=1.0)
    cand = torch.cat([props, gt])
    chosen = {tuple(cand[i].tolist()): (int(lab), int(m)) for i, lab, m in zip(idx, labels, match)}
    assert chosen[(0.0, 0.0, 10.0, 11.0)] == (3, 0) and chosen[(21.0, 20.0, 40.0, 40.0)] == (2, 1)
    assert chosen[(50.0, 50.0, 60.0, 60.0)][0] == 0                   # background
    assert chosen[(0.0, 0.0, 10.0, 10.0)] == (3, 0) and chosen[(20.0, 20.0, 40.0, 40.0)] == (2, 1)


@pytest.mark.parametrize("size", [(64, 64), (70, 93)])
def test_evaluation_outputs_have_the_documented_shapes(size):
    m = tiny().eval()
    with torch.no_grad():
        out = m(torch.randn(2, 3, *size))
    P = SMALL["rpn_post_nms"]
    N = 2 * P                                                          # stages 3 and 5
    assert out["boxes"].shape == (2, N, 4) and out["scores"].shape == (2, N) and out["labels"].shape == (2, N)
    assert out["masks"].shape == (2, N, 14, 14) and out["proposals"].shape == (2, P, 4)
    assert out["objectness"].shape[:2] == (2, 1) and out["image_size"] == size
    assert set(out["stage"].unique().tolist()) <= {0, 3, 5}
    b = out["boxes"]
    assert (b[..., 0] >= 0).all() and (b[..., 2] <= size[1]).all() and (b[..., 3] <= size[0]).all()
    assert ((out["scores"] >= 0) & (out["scores"] <= 1)).all() and ((out["masks"] >= 0) & (out["masks"] <= 1)).all()
    three = tiny(cascade_stages=3).eval()
    with torch.no_grad():
        assert three(torch.randn(1, 3, *size))["boxes"].shape == (1, P, 4)


def _losses(model, images, ids, classes=None):
    model.train()
    out = model(images, targets=ids, classes=classes)
    return out["losses"]


def test_the_losses_are_the_five_terms_and_finite():
    ids, classes = scene()
    m = tiny(num_classes=2)
    parts = _losses(m, torch.randn(2, 3, 64, 64), torch.stack([ids, ids]), torch.stack([classes, classes]))
    assert set(parts) == {"rpn_cls", "rpn_box", "mask", "cls", "box"}
    assert all(torch.isfinite(v) and v >= 0 for v in parts.values())
    total, logged = m.loss({"losses": parts}, None)
    assert total.item() == pytest.approx(sum(v.item() for v in parts.values()), rel=1e-6)   # equal weights (Eq. 5)
    # an image without instances trains too (every region background)
    empty = _losses(m, torch.randn(1, 3, 64, 64), torch.zeros(1, 64, 64, dtype=torch.int64))
    assert empty["mask"] == 0 and torch.isfinite(empty["cls"])


@pytest.mark.parametrize("name, reaches", [("mnc_resnet18_fpn", True), ("sds_resnet18_fpn", False)])
def test_mask_and_category_gradients_reach_the_box_regression_only_end_to_end(name, reaches):
    """MNC's point (§3.2, Eq. 4): L₂ and L₃ differentiate through the warped boxes into stage 1's box deltas; in the
    SDS-style variant they do not."""
    ids, classes = scene()
    m = tiny(name, num_classes=2)
    torch.manual_seed(1)
    parts = _losses(m, torch.randn(1, 3, 64, 64), ids[None], classes[None])
    m.zero_grad()
    (parts["mask"] + parts["cls"] + parts["box"]).backward()
    g = m.rpn.deltas.weight.grad
    assert (g is not None and g.abs().sum() > 0) == reaches
    m.zero_grad()
    parts = _losses(m, torch.randn(1, 3, 64, 64), ids[None], classes[None])
    parts["cls"].backward()                               # mask pooling: the category loss reaches the mask stage
    g = m.mask_stage.out.weight.grad
    assert (g is not None and g.abs().sum() > 0) == reaches


def test_training_under_bf16_autocast():
    ids, classes = scene()
    m = tiny(num_classes=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        parts = _losses(m, torch.randn(2, 3, 64, 64), torch.stack([ids, ids]), torch.stack([classes, classes]))
    total, _ = m.loss({"losses": parts}, None)
    total.backward()
    assert torch.isfinite(total) and all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
    m.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(torch.randn(1, 3, 64, 64))
    assert out["boxes"].dtype == torch.float32 and torch.isfinite(out["masks"]).all()


def candidates(boxes, scores, labels, H=40, W=40, m=8):
    n = len(boxes)
    return {"boxes": np.asarray(boxes, np.float32), "scores": np.asarray(scores, np.float32),
            "labels": np.asarray(labels, np.int64), "masks": np.ones((n, m, m), np.float32),
            "stage": np.full(n, 3), "proposals": np.zeros((4, 4), np.float32),
            "proposal_scores": np.zeros(4, np.float32), "objectness": np.zeros((5, 5), np.float32),
            "image_size": np.array([H, W])}


def test_group_thresholds_suppresses_paints_in_score_order_and_reports_classes():
    m = tiny(num_classes=2)
    m.set_post(score_threshold=0.5, nms_threshold=0.5, min_size=4)
    maps = candidates([[0, 0, 10, 10], [1, 0, 10, 10], [5, 5, 15, 15], [20, 20, 30, 30], [30, 30, 40, 40],
                       [0, 30, 2, 31]],
                      [0.9, 0.8, 0.7, 0.6, 0.3, 0.95],
                      [1, 1, 2, 1, 1, 2])
    ids, scores = m.group(maps)
    # box 1 is suppressed by box 0 (IoU 0.9, same class); box 2 has another class and overlaps box 0: the higher
    # score (box 0) wins the shared pixels; box 4 is below the score threshold; box 5 has 2 px (< min_size)
    kept = m.select(maps)
    assert kept.tolist() == [5, 0, 2, 3]
    assert sorted(scores) == [2, 3, 4] and scores[2] == pytest.approx(0.9) and scores[3] == pytest.approx(0.7)
    assert (ids[0:10, 0:10] == 2).all() and (ids[10:15, 5:15] == 3).all() and (ids[5:10, 10:15] == 3).all()
    assert (ids[20:30, 20:30] == 4).all() and (ids[30:, 30:] == 0).all() and (ids == 1).sum() == 0
    assert m.instance_classes(maps, ids) == {2: 1, 3: 2, 4: 1}
    m.set_post(detections=1)
    ids1, scores1 = m.group(maps)
    assert list(scores1) == [] and (ids1 == 0).all()                 # the one kept is under min_size
    m.set_post(detections=200, nms_threshold=0.95)
    assert 1 in m.select(maps).tolist()                               # a looser NMS keeps the duplicate


def test_predict_instances_carries_the_classes():
    m = tiny(num_classes=2).eval()
    m.set_post(score_threshold=0.0)
    res = m.predict_instances(torch.randn(1, 3, 64, 64))[0]
    assert res["masks"].shape[1:] == (64, 64) and set(res["labels"].tolist()) <= {1, 2}
    assert len(res["boxes"]) == len(res["scores"]) == len(res["labels"])


def test_it_learns_one_scene():
    """A few dozen Adam steps on one image of three objects: the losses fall and the cascade finds the objects."""
    ids, classes = scene()
    img = torch.zeros(1, 3, 64, 64)
    img[0, 0][classes == 1] = 2.0
    img[0, 1][classes == 2] = 2.0
    m = tiny(num_classes=2, anchor_sizes=(8, 16, 24))
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)
    first = None
    for _ in range(60):
        parts = _losses(m, img, ids[None], classes[None])
        total, _ = m.loss({"losses": parts}, None)
        first = first if first is not None else total.item()
        opt.zero_grad()
        total.backward()
        opt.step()
    assert total.item() < 0.5 * first
    m.eval()
    m.set_post(score_threshold=0.3)
    with torch.no_grad():
        maps = m.dense(m(img))
    pred, _ = m.group(maps)
    from attnseg.metrics.instance import image_metrics
    assert image_metrics(pred, ids.numpy())["SBD"] > 0.5


@pytest.mark.parametrize("kw, message", [
    ({"cascade_stages": 4}, "cascade_stages must be 3 or 5"),
    ({"roi_size": 7}, "roi_size must be even"),
    ({"anchor_sizes": []}, "anchor_sizes and anchor_ratios"),
    ({"neck": "c5"}, "neck must be 'c4' or 'fpn'"),
    ({"norm": "layer"}, "norm must be one of group, batch"),
])
def test_bad_options_are_refused(kw, message):
    with pytest.raises(ValueError, match=message):
        create_model("mnc_resnet18", num_classes=1, **kw)


def test_export_is_refused_with_a_reason():
    with pytest.raises(NotImplementedError, match="cannot be exported to ONNX"):
        tiny().map_channels()
