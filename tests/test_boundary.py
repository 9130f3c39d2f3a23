"""Boundary band (trimap) metrics and the boundary F-score, checked against brute-force definitions."""

import math

import numpy as np
import pytest
import torch

from attnseg.metrics import (
    BoundaryConfusion,
    BoundaryFScore,
    ConfusionMatrix,
    boundary_band,
    boundary_fscore,
    boundary_mask,
    fscore_from_counts,
)

IGNORE = 255
K = 4


def blocky_labels(seed: int, shape=(18, 22), num_classes: int = K, ignore_frac: float = 0.1) -> np.ndarray:
    """Piecewise-constant label map (4x4 blocks, one row and column of noise) with some ignore blocks."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, num_classes, (shape[0] // 4 + 1, shape[1] // 4 + 1))
    coarse[rng.random(coarse.shape) < ignore_frac] = IGNORE
    label = np.kron(coarse, np.ones((4, 4), dtype=np.int64))[: shape[0], : shape[1]]
    label[shape[0] // 2] = rng.integers(0, num_classes, shape[1])
    return label


def perturb(label: np.ndarray, seed: int, num_classes: int = K) -> np.ndarray:
    """A prediction: the labels with ignore filled and some pixels and blocks changed."""
    rng = np.random.default_rng(seed)
    pred = np.where(label == IGNORE, rng.integers(0, num_classes, label.shape), label)
    noisy = rng.random(label.shape) < 0.1
    pred[noisy] = rng.integers(0, num_classes, noisy.sum())
    return pred


def ref_edges(label: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Pixel loops: valid pixels with a valid 4-neighbour of another label."""
    H, W = label.shape
    out = np.zeros((H, W), dtype=bool)
    for y in range(H):
        for x in range(W):
            for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
                v, u = y + dy, x + dx
                if 0 <= v < H and 0 <= u < W and valid[y, x] and valid[v, u] and label[v, u] != label[y, x]:
                    out[y, x] = True
    return out


def ref_distance(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance from every pixel to the nearest True pixel of ``mask`` (inf when there is none)."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return np.full(mask.shape, np.inf)
    gy, gx = np.indices(mask.shape)
    d2 = (gy[..., None] - ys) ** 2 + (gx[..., None] - xs) ** 2
    return np.sqrt(d2.min(-1))


def ref_fscore_counts(pred: np.ndarray, target: np.ndarray, width: float) -> np.ndarray:
    valid = (target != IGNORE) & (target < K)
    gt_e, pr_e = ref_edges(target, valid), ref_edges(pred, valid)
    counts = np.zeros((K, 4), dtype=np.int64)
    for c in range(K):
        g, p = gt_e & (target == c), pr_e & (pred == c)
        counts[c] = [p.sum(), (p & (ref_distance(g) <= width)).sum(), g.sum(), (g & (ref_distance(p) <= width)).sum()]
    return counts


def assert_same_metrics(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-12, err_msg=key)  # NaN matches NaN


# ------------------------------------------------------------------------------------------------ boundary and band


def test_vertical_edge_band_has_expected_width():
    label = np.zeros((10, 30), dtype=np.int64)
    label[:, 12:] = 1
    assert np.array_equal(np.nonzero(boundary_mask(label).any(0))[0], [11, 12])
    for w in (0, 1, 2.5, 5):
        band = boundary_band(label, w)
        cols = np.nonzero(band.any(0))[0]
        n = int(w) + 1  # whole pixels within w of the boundary column, on each side
        assert np.array_equal(cols, np.arange(12 - n, 12 + n)), w
        assert band.sum() == 10 * 2 * n
        assert band[:, cols].all()  # full height: the band is a straight strip


def test_band_is_euclidean_not_chebyshev():
    label = np.zeros((15, 15), dtype=np.int64)
    label[7, 7] = 1  # a single-pixel object: its boundary is the pixel and its four neighbours
    band = boundary_band(label, 2)
    assert band[7, 4] and band[5, 6]
    assert not band[5, 5]  # sqrt(5) px from (6, 7): inside a Chebyshev band of 2, outside the Euclidean one
    np.testing.assert_array_equal(band, ref_distance(ref_edges(label, np.ones_like(band))) <= 2)


@pytest.mark.parametrize("seed", range(4))
def test_band_matches_brute_force(seed):
    label = blocky_labels(seed)
    edges = ref_edges(label, label != IGNORE)
    np.testing.assert_array_equal(boundary_mask(label, IGNORE), edges)
    for w in (0, 1.5, 3):
        np.testing.assert_array_equal(boundary_band(torch.from_numpy(label), w, IGNORE), ref_distance(edges) <= w)


def test_ignore_makes_no_boundary_unless_bridged():
    label = np.zeros((6, 12), dtype=np.int64)
    label[:, 5:7] = IGNORE  # a void stripe between class 0 and class 1, as VOC draws around objects
    label[:, 7:] = 1
    assert not boundary_mask(label).any()
    assert not boundary_band(label, 100).any()
    bridged = boundary_mask(label, bridge_ignore=True)
    assert np.array_equal(np.nonzero(bridged.any(0))[0], [5, 6])  # the edge runs in the middle of the void
    all_ignore = np.full((4, 4), IGNORE)
    assert not boundary_mask(all_ignore, bridge_ignore=True).any()


def test_bridged_void_outline_is_evaluated():
    target = np.zeros((20, 20), dtype=np.int64)
    target[6:14, 6:14] = IGNORE  # an object with a 2 px void outline, as in PASCAL VOC
    target[8:12, 8:12] = 1
    pred = np.where(target == IGNORE, 0, target)
    pred[7:13, 7:13] = 1  # the object edge predicted in the middle of the void
    plain = BoundaryConfusion(2, IGNORE, width=3)
    plain.update(pred, target)
    assert plain.mat.sum() == 0  # the void hides every edge
    bridged = BoundaryConfusion(2, IGNORE, width=3, bridge_ignore=True)
    bridged.update(pred, target)
    assert bridged.compute()["mIoU"] == 1.0 and bridged.mat.sum() > 0
    assert boundary_fscore(pred, target, 2, width=0, bridge_ignore=True)["mBF"] == 1.0
    assert math.isnan(boundary_fscore(pred, target, 2, width=0)["mBF"])


def test_labels_outside_num_classes_are_ignore():
    label = np.zeros((4, 8), dtype=np.int64)
    label[:, 4:] = 9
    assert boundary_mask(label).any()
    assert not boundary_mask(label, num_classes=4).any()


# ------------------------------------------------------------------------------------------------ trimap confusion


@pytest.mark.parametrize("seed", range(4))
def test_band_confusion_matches_masked_confusion(seed):
    target = np.stack([blocky_labels(seed), blocky_labels(seed + 50)])
    pred = perturb(target, seed)
    bc = BoundaryConfusion(K, IGNORE, width=2)
    bc.update(torch.from_numpy(pred), torch.from_numpy(target))
    ref = ConfusionMatrix(K, IGNORE)
    for p, t in zip(pred, target, strict=True):
        band = ref_distance(ref_edges(t, t != IGNORE)) <= 2
        ref.update(p, np.where(band, t, IGNORE))
    assert torch.equal(bc.mat, ref.mat)
    assert_same_metrics(bc.compute(), ref.compute())


@pytest.mark.parametrize("seed", range(3))
def test_band_wider_than_image_equals_full_metric(seed):
    target = blocky_labels(seed)
    pred = perturb(target, seed)
    bc, full = BoundaryConfusion(K, IGNORE, width=max(target.shape)), ConfusionMatrix(K, IGNORE)
    bc.update(pred, target)
    full.update(pred, target)
    assert torch.equal(bc.mat, full.mat)
    assert_same_metrics(bc.compute(), full.compute())


def test_band_metric_sees_only_the_boundary_region():
    target = np.zeros((20, 40), dtype=np.int64)
    target[:, 20:] = 1
    pred = target.copy()
    pred[:, :5] = 1  # wrong far from the edge
    bc, full = BoundaryConfusion(2, IGNORE, width=3), ConfusionMatrix(2, IGNORE)
    bc.update(pred, target)
    full.update(pred, target)
    assert bc.compute()["mIoU"] == 1.0 and full.compute()["mIoU"] < 1.0
    pred[:, 17:19] = 1  # wrong near the edge: the band metric drops
    bc.reset()
    bc.update(pred, target)
    assert bc.compute()["mIoU"] < 1.0


def test_image_without_boundary_adds_nothing():
    bc = BoundaryConfusion(3, IGNORE, width=50)
    bc.update(np.ones((8, 8), dtype=np.int64), np.zeros((8, 8), dtype=np.int64))
    assert bc.mat.sum() == 0


# ---------------------------------------------------------------------------------------------- boundary F-score


def test_fscore_perfect_prediction_is_one():
    target = blocky_labels(1, ignore_frac=0.0)
    m = boundary_fscore(target, target, K, width=0)
    assert m["mBF"] == m["aBF"] == 1.0
    assert all(f == 1.0 or math.isnan(f) for f in m["BF"])


@pytest.mark.parametrize("width", [1, 2, 3])
def test_fscore_of_shifted_edge(width):
    target = np.zeros((16, 32), dtype=np.int64)
    target[:, 16:] = 1
    for shift in range(0, 6):
        pred = np.zeros_like(target)
        pred[:, 16 + shift:] = 1
        m = boundary_fscore(pred, torch.from_numpy(target), 2, width)
        if shift <= width:
            assert m["mBF"] == m["aBF"] == 1.0, shift
        else:  # each class's predicted edge lies `shift` px from its true edge
            assert m["mBF"] == m["aBF"] == 0.0, shift


@pytest.mark.parametrize("seed", range(4))
def test_fscore_matches_brute_force(seed):
    target = blocky_labels(seed)
    pred = perturb(target, seed + 100)
    acc = BoundaryFScore(K, IGNORE, width=1.5)
    acc.update(pred, target)
    np.testing.assert_array_equal(acc.counts, ref_fscore_counts(pred, target, 1.5))
    assert_same_metrics(boundary_fscore(pred, target, K, 1.5), acc.compute())


def test_fscore_accumulates_and_merges():
    targets = np.stack([blocky_labels(s) for s in range(3)])
    preds = np.stack([perturb(t, s) for s, t in enumerate(targets)])
    batch = BoundaryFScore(K, IGNORE, width=2)
    batch.update(torch.from_numpy(preds), torch.from_numpy(targets))
    first, rest = BoundaryFScore(K, IGNORE, width=2), BoundaryFScore(K, IGNORE, width=2)
    first.update(preds[0], targets[0])
    rest.update(preds[1:], targets[1:])
    first.merge(rest)
    np.testing.assert_array_equal(first.counts, batch.counts)
    expected = sum(ref_fscore_counts(p, t, 2) for p, t in zip(preds, targets, strict=True))
    np.testing.assert_array_equal(batch.counts, expected)


def test_fscore_counts_to_scores():
    counts = np.array([
        [10, 8, 10, 6],  # P = 0.8, R = 0.6
        [4, 0, 0, 0],    # predicted only: F = 0
        [0, 0, 0, 0],    # absent: NaN, out of the mean
        [0, 0, 5, 0],    # missed entirely: F = 0
    ])
    m = fscore_from_counts(counts)
    f0 = 2 * 0.8 * 0.6 / 1.4
    assert m["BF"][0] == pytest.approx(f0) and m["BF"][1] == 0.0 and m["BF"][3] == 0.0
    assert math.isnan(m["BF"][2]) and math.isnan(m["BPrecision"][3]) and math.isnan(m["BRecall"][1])
    assert m["mBF"] == pytest.approx(f0 / 3)
    p_all, r_all = 8 / 14, 6 / 15
    assert m["aBF"] == pytest.approx(2 * p_all * r_all / (p_all + r_all))


def test_predicted_boundaries_inside_ignore_regions_are_not_counted():
    target = np.zeros((10, 20), dtype=np.int64)
    target[:, 10:] = IGNORE
    pred = np.zeros_like(target)
    pred[:, 14:] = 1  # an edge the ground truth cannot judge
    m = boundary_fscore(pred, target, 2, width=1)
    assert math.isnan(m["mBF"]) and math.isnan(m["aBF"])


def test_fscore_rejects_out_of_range_prediction():
    target = np.zeros((4, 4), dtype=np.int64)
    with pytest.raises(ValueError, match="outside"):
        boundary_fscore(np.full((4, 4), 7), target, 2, width=1)
