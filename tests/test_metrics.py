"""Confusion-matrix metrics and the report, checked against independent set-logic computations."""

import csv
import json
import math

import numpy as np
import pytest
import torch

from attnseg.metrics import ConfusionMatrix, format_table, metrics_from_confusion, render_table, save_metrics

IGNORE = 255


def reference_metrics(pred: np.ndarray, target: np.ndarray, num_classes: int) -> dict:
    """Per-class loops over pixel sets: the definitions, written without a confusion matrix."""
    pred, target = pred.ravel(), target.ravel()
    labelled = (target >= 0) & (target < num_classes)
    iou, acc = [], []
    for c in range(num_classes):
        gt_c = set(np.flatnonzero(labelled & (target == c)))
        pred_c = set(np.flatnonzero(labelled & (pred == c)))
        union = gt_c | pred_c
        iou.append(len(gt_c & pred_c) / len(union) if union else math.nan)
        acc.append(len(gt_c & pred_c) / len(gt_c) if gt_c else math.nan)
    present = [v for v in iou if not math.isnan(v)]
    present_acc = [v for v in acc if not math.isnan(v)]
    n = labelled.sum()
    return {
        "aAcc": (pred[labelled] == target[labelled]).sum() / n if n else math.nan,
        "mIoU": sum(present) / len(present) if present else math.nan,
        "mAcc": sum(present_acc) / len(present_acc) if present_acc else math.nan,
        "IoU": iou,
        "Acc": acc,
    }


def assert_metrics_equal(got: dict, want: dict) -> None:
    for key in ("aAcc", "mIoU", "mAcc"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-12, err_msg=key)
    for key in ("IoU", "Acc"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-12, err_msg=key)  # NaN == NaN here


def random_case(seed: int, num_classes: int = 5, shape=(2, 17, 23)) -> tuple[np.ndarray, np.ndarray]:
    """Random predictions and labels with ignore pixels, out-of-range labels and a class never used."""
    rng = np.random.default_rng(seed)
    target = rng.integers(0, num_classes - 1, shape)  # the last class never appears in the labels
    target[rng.random(shape) < 0.15] = IGNORE
    target[rng.random(shape) < 0.03] = num_classes + 3  # out of range: skipped like ignore
    pred = np.where(rng.random(shape) < 0.6, target, rng.integers(0, num_classes, shape))
    pred = np.where((pred >= 0) & (pred < num_classes), pred, rng.integers(0, num_classes, shape))
    return pred, target


@pytest.mark.parametrize("seed", range(6))
def test_random_cases_match_reference(seed):
    pred, target = random_case(seed)
    cm = ConfusionMatrix(5, IGNORE)
    cm.update(torch.from_numpy(pred), torch.from_numpy(target).to(torch.uint8))
    assert_metrics_equal(cm.compute(), reference_metrics(pred, target, 5))


def test_numpy_inputs_and_negative_ignore_index():
    pred, target = random_case(7)
    target = np.where(target == IGNORE, -1, target)
    cm = ConfusionMatrix(5, ignore_index=-1)
    cm.update(pred, target)
    assert_metrics_equal(cm.compute(), reference_metrics(pred, target, 5))


def test_class_absent_from_gt_and_prediction_is_nan_and_excluded():
    target = np.array([[0, 0, 1, 1]])
    pred = np.array([[0, 0, 1, 0]])
    m = metrics_from_confusion(_matrix(pred, target, 3))
    assert math.isnan(m["IoU"][2]) and math.isnan(m["Acc"][2])
    assert m["IoU"][:2] == [2 / 3, 1 / 2]
    assert m["mIoU"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert m["mAcc"] == pytest.approx((1 + 1 / 2) / 2)
    assert m["aAcc"] == pytest.approx(3 / 4)


def test_class_predicted_but_absent_from_gt_counts_as_zero():
    target = np.array([[0, 0, 0, 0]])
    pred = np.array([[0, 0, 0, 1]])
    m = metrics_from_confusion(_matrix(pred, target, 2))
    assert m["IoU"] == [0.75, 0.0]
    assert m["mIoU"] == pytest.approx(0.375)
    assert math.isnan(m["Acc"][1]) and m["mAcc"] == 0.75


def test_all_ignore_image_changes_nothing():
    cm = ConfusionMatrix(3, IGNORE)
    cm.update(np.array([[0, 1], [2, 0]]), np.array([[0, 1], [2, 2]]))
    before = cm.mat.clone()
    cm.update(np.array([[1, 1], [1, 1]]), np.full((2, 2), IGNORE))
    assert torch.equal(cm.mat, before)


def test_empty_matrix_gives_nan_without_warnings():
    with np.testing.assert_no_warnings():
        m = ConfusionMatrix(3).compute()
    assert all(math.isnan(m[k]) for k in ("aAcc", "mIoU", "mAcc"))


def test_perfect_prediction_scores_one():
    _, target = random_case(3)
    pred = np.where((target >= 0) & (target < 5), target, 0)
    m = metrics_from_confusion(_matrix(pred, target, 5))
    assert m["aAcc"] == m["mIoU"] == m["mAcc"] == 1.0
    assert math.isnan(m["IoU"][4])  # the unused class stays out of the mean


def test_merge_equals_one_big_update():
    a, b = random_case(11), random_case(12)
    whole = ConfusionMatrix(5, IGNORE)
    whole.update(np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]]))
    left, right = ConfusionMatrix(5, IGNORE), ConfusionMatrix(5, IGNORE)
    left.update(*a)
    right.update(*b)
    left.merge(right)
    assert torch.equal(left.mat, whole.mat)
    raw = ConfusionMatrix(5, IGNORE)
    raw.merge(left.mat.numpy())  # a bare count matrix, as an all-reduce hands back
    assert torch.equal(raw.mat, whole.mat)
    with pytest.raises(ValueError, match="merge"):
        left.merge(ConfusionMatrix(4))


def test_out_of_range_labels_are_skipped():
    target = np.array([[0, 1, 7, -3, IGNORE]])
    pred = np.array([[0, 1, 1, 0, 1]])
    mat = _matrix(pred, target, 2)
    assert mat.tolist() == [[1, 0], [0, 1]]


def test_out_of_range_prediction_at_labelled_pixel_raises():
    cm = ConfusionMatrix(3, IGNORE)
    cm.update(np.array([[IGNORE, 2]]), np.array([[IGNORE, 2]]))  # fine where the label is ignore
    with pytest.raises(ValueError, match="outside"):
        cm.update(np.array([[3, 0]]), np.array([[1, 0]]))


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape"):
        ConfusionMatrix(2).update(np.zeros((2, 3), int), np.zeros((3, 2), int))


def test_reset():
    cm = ConfusionMatrix(2)
    cm.update(np.array([0, 1]), np.array([0, 0]))
    cm.reset()
    assert cm.mat.sum() == 0


def _matrix(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    cm = ConfusionMatrix(num_classes, IGNORE)
    cm.update(pred, target)
    return cm.mat.numpy()


# ---------------------------------------------------------------------------------------------------------- report

NAN = float("nan")
HAND_METRICS = {
    "aAcc": 0.95,
    "mIoU": 0.5,
    "mAcc": 0.7777,
    "IoU": [0.9, NAN, 0.123456],
    "Acc": [1.0, NAN, 0.5],
}
HAND_NAMES = ["road", "sky", "a_long_class_name"]

# What mmsegmentation (PrettyTable, np.round(x * 100, 2)) prints for HAND_METRICS.
EXPECTED_TABLE = """\
per class results:
+-------------------+-------+-------+
|       Class       |  IoU  |  Acc  |
+-------------------+-------+-------+
|        road       |  90.0 | 100.0 |
|        sky        |  nan  |  nan  |
| a_long_class_name | 12.35 |  50.0 |
+-------------------+-------+-------+
Summary:
+------+------+-------+
| aAcc | mIoU |  mAcc |
+------+------+-------+
| 95.0 | 50.0 | 77.77 |
+------+------+-------+"""


def test_format_table_matches_mmseg():
    assert format_table(HAND_METRICS, HAND_NAMES) == EXPECTED_TABLE


def test_render_table_centres_like_prettytable():
    # With an odd amount of padding, even-length text gets the extra space on the left, odd-length on the right.
    assert render_table([("Class", ["ab", "abcdefgh"]), ("IoU", ["100.0", "nan"])]) == "\n".join([
        "+----------+-------+",
        "|  Class   |  IoU  |",
        "+----------+-------+",
        "|    ab    | 100.0 |",
        "| abcdefgh |  nan  |",
        "+----------+-------+",
    ])


def test_format_table_checks_class_count():
    with pytest.raises(ValueError, match="class names"):
        format_table(HAND_METRICS, ["road"])


def test_save_metrics_round_trip(tmp_path):
    pred, target = random_case(5, num_classes=3)
    cm = ConfusionMatrix(3, IGNORE)
    cm.update(pred, target)
    metrics = cm.compute()
    metrics["IoU"][2] = NAN  # make sure NaN goes through every file
    names = ["road", "sky, blue", "car"]  # a comma needs quoting in the CSV
    paths = save_metrics(tmp_path / "run" / "eval", metrics, names, cm.mat, extra={"mode": "slide", "step": 7})

    text = paths["json"].read_text()
    assert "NaN" not in text
    doc = json.loads(text)
    assert doc["mode"] == "slide" and doc["step"] == 7
    assert doc["mIoU"] == metrics["mIoU"] and doc["classes"] == names
    assert doc["IoU"][2] is None and doc["per_class"]["car"]["IoU"] is None
    assert doc["per_class"]["sky, blue"] == {"IoU": metrics["IoU"][1], "Acc": metrics["Acc"][1]}
    assert doc["confusion"] == cm.mat.tolist()

    with open(paths["per_class_csv"], newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["class", "IoU", "Acc"]
    assert [r[0] for r in rows[1:]] == names
    np.testing.assert_array_equal([float(r[1]) for r in rows[1:]], metrics["IoU"])
    np.testing.assert_array_equal([float(r[2]) for r in rows[1:]], metrics["Acc"])

    with open(paths["confusion_csv"], newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["gt/pred", *names]
    assert [r[0] for r in rows[1:]] == names
    np.testing.assert_array_equal(np.array([r[1:] for r in rows[1:]], dtype=np.int64), cm.mat.numpy())

    loaded = np.load(paths["confusion_npy"])
    assert loaded.dtype == np.int64
    np.testing.assert_array_equal(loaded, cm.mat.numpy())
    assert sorted(p.name for p in paths["json"].parent.iterdir()) == sorted(p.name for p in paths.values())


def test_save_metrics_overwrites_and_rejects_clashing_extra(tmp_path):
    mat = np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]])
    metrics = metrics_from_confusion(mat)
    save_metrics(tmp_path, HAND_METRICS, HAND_NAMES, mat)
    paths = save_metrics(tmp_path, metrics, HAND_NAMES, mat)
    assert json.loads(paths["json"].read_text())["mIoU"] == metrics["mIoU"]
    with pytest.raises(ValueError, match="overwrite"):
        save_metrics(tmp_path, metrics, HAND_NAMES, mat, extra={"mIoU": 1.0})
    with pytest.raises(ValueError, match="shape"):
        save_metrics(tmp_path, metrics, HAND_NAMES, mat[:2, :2])
    assert not list(tmp_path.glob(".*.tmp"))
