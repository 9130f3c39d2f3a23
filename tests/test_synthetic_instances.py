"""Synthetic instance scenes: deterministic by seed, counts within their ranges, ids 1..N each visible, and the
objects touch (what makes instance separation hard)."""

import numpy as np
import pytest
from scipy import ndimage

from attnseg.data.synthetic_instances import leaf_rosette, nuclei_field


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
