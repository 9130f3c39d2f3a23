"""Synthetic instance scenes: deterministic by seed, counts within their ranges, ids 1..N each visible, and the
objects touch (what makes instance separation hard); the shapes field's classes are the drawn shapes (told apart by
their geometry, not their size or colour), every class occurs, and occluded remnants are gone."""

import numpy as np
import pytest
from scipy import ndimage

from attnseg.data.synthetic_instances import SHAPE_CLASSES, leaf_rosette, nuclei_field, shapes_field


def touching_pairs(ids: np.ndarray) -> int:
    """Pairs of distinct instances that share a 4-neighbour edge."""
    pairs = set()
    for a, b in ((ids[:, 1:], ids[:, :-1]), (ids[1:], ids[:-1])):
        m = (a != b) & (a > 0) & (b > 0)
        pairs |= {tuple(sorted(p)) for p in zip(a[m].tolist(), b[m].tolist())}
    return len(pairs)


@pytest.mark.parametrize("make, kwargs, lo, hi", [
    (nuclei_field, {"count": (60, 150)}, 1, 150),
    (leaf_rosette, {"leaves": (5, 20)}, 1, 20),
])
def test_deterministic_counted_and_touching(make, kwargs, lo, hi):
    a, ids_a = make(3, **kwargs)
    b, ids_b = make(3, **kwargs)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ids_a, ids_b)
    assert not np.array_equal(make(4, **kwargs)[1], ids_a)
    n = int(ids_a.max())
    assert lo <= n <= hi and a.dtype == np.uint8 and a.shape == ids_a.shape + (3,)
    assert np.unique(ids_a).tolist() == list(range(n + 1))              # 0 and 1..N, contiguous
    sizes = np.bincount(ids_a.ravel())[1:]
    assert sizes.min() >= 12
    assert touching_pairs(ids_a) >= 2


def test_nuclei_counts_follow_the_range_and_blobs_are_mostly_single_pieces():
    counts = [int(nuclei_field(s, count=(1, 5))[1].max()) for s in range(10)]
    assert min(counts) >= 1 and max(counts) <= 5
    _, ids = nuclei_field(0, count=(40, 40))
    pieces = [ndimage.label(ids == k)[1] for k in range(1, ids.max() + 1)]
    assert np.mean([p == 1 for p in pieces]) > 0.8                       # occlusion splits few nuclei


def test_rosette_leaves_radiate_from_the_centre():
    _, ids = leaf_rosette(1, leaves=(12, 12))
    H, W = ids.shape
    centre = np.array([H / 2, W / 2])
    far = 0
    for k in range(1, ids.max() + 1):
        ys, xs = np.nonzero(ids == k)
        d = np.hypot(ys - centre[0], xs - centre[1])
        far += d.max() > 0.15 * min(H, W)                                 # leaves extend outward
    assert far >= ids.max() - 1
    assert ids[int(H * 0.02), int(W * 0.02)] == 0                          # corners are soil


# -- the shapes field: three classes ----------------------------------------------------------------------------

SHAPES_SMALL = {"size": (80, 96), "count": (4, 8)}


def test_shapes_field_is_deterministic_and_its_classes_cover_its_ids():
    a, ids_a, cls_a = shapes_field(5, **SHAPES_SMALL)
    b, ids_b, cls_b = shapes_field(5, **SHAPES_SMALL)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ids_a, ids_b)
    assert cls_a == cls_b
    other = shapes_field(6, **SHAPES_SMALL)
    assert not np.array_equal(other[0], a)
    assert a.shape == (80, 96, 3) and a.dtype == np.uint8 and ids_a.shape == (80, 96) and ids_a.dtype == np.int32
    n = int(ids_a.max())
    assert 1 <= n <= 8
    assert np.unique(ids_a).tolist() == list(range(n + 1))               # 0 and 1..N, contiguous
    assert sorted(cls_a) == list(range(1, n + 1))                        # one class per id, no other key
    assert set(cls_a.values()) <= {1, 2, 3} and SHAPE_CLASSES == ("disc", "square", "triangle")


def test_shapes_every_class_occurs_objects_touch_and_remnants_are_dropped():
    seen, touching, sizes = set(), 0, []
    for seed in range(12):
        _, ids, classes = shapes_field(seed, **SHAPES_SMALL)
        seen |= set(classes.values())
        touching += touching_pairs(ids)
        sizes += np.bincount(ids.ravel())[1:].tolist()
        for k in range(1, ids.max() + 1):                               # one piece each: no scattered remnant
            assert ndimage.label(ids == k, structure=np.ones((3, 3)))[1] == 1
    assert seen == {1, 2, 3}
    assert touching >= 4                                                   # occlusion and contact happen
    assert min(sizes) >= 40                                                # the default min_pixels
    _, ids, _ = shapes_field(0, **SHAPES_SMALL, min_pixels=300)
    assert ids.max() == 0 or np.bincount(ids.ravel())[1:].min() >= 300


def _spread(mask: np.ndarray) -> float:
    """Farthest pixel from the centroid over sqrt(area): disc 1/sqrt(pi) = 0.56, square 0.71, triangle 0.88
    (continuous shapes, whatever their size and rotation)."""
    ys, xs = np.nonzero(mask)
    return float(np.hypot(ys - ys.mean(), xs - xs.mean()).max() / np.sqrt(mask.sum()))


def test_shapes_classes_are_the_drawn_shapes_not_their_size_or_colour():
    by_class = {1: [], 2: [], 3: []}
    areas, colours = {1: [], 2: [], 3: []}, {1: [], 2: [], 3: []}
    for seed in range(20):
        image, ids, classes = shapes_field(seed, size=(128, 128), count=(3, 8))
        H, W = ids.shape
        for k, c in classes.items():
            m = ids == k
            ys, xs = np.nonzero(m)
            areas[c].append(m.sum())
            colours[c].append(image[m].mean(0))
            grown = ndimage.binary_dilation(m, np.ones((3, 3)))
            isolated = not (ids[grown & ~m] > 0).any() and ys.min() > 0 and xs.min() > 0 and ys.max() < H - 1 \
                and xs.max() < W - 1                                        # whole: nothing cut or covers it
            if isolated:
                by_class[c].append(_spread(m))
    assert all(len(v) >= 5 for v in by_class.values())
    assert max(by_class[1]) < 0.62 < min(by_class[2]) and max(by_class[2]) < 0.76 < min(by_class[3])
    # size and colour do not tell the class: each class spans the same ranges (equal areas by construction)
    for c in (1, 2, 3):
        assert min(areas[c]) < 300 and max(areas[c]) > 600
        assert np.ptp(np.array(colours[c]), axis=0).min() > 100

