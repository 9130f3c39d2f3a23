"""Post-processing to instances: watershed splits touching blobs from fg + boundary maps; mean shift groups
embeddings; both against known layouts."""

import numpy as np
import pytest

from attnseg.data.instances import instance_ids
from attnseg.metrics.instance import image_metrics
from attnseg.nn.instance_grouping import cluster_embeddings, watershed_instances


def two_touching_discs(H=40, W=60):
    yy, xx = np.mgrid[:H, :W]
    gt = np.zeros((H, W), np.int32)
    gt[(yy - 20) ** 2 + (xx - 20) ** 2 <= 12 ** 2] = 1
    gt[(yy - 20) ** 2 + (xx - 42) ** 2 <= 12 ** 2] = 2                 # overlaps disc 1 by a sliver: touching
    return gt


def boundary_of(ids):
    b = np.zeros(ids.shape, bool)
    b[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    b[1:] |= ids[1:] != ids[:-1]
    return b


def test_watershed_splits_touching_objects_that_the_foreground_merges():
    gt = two_touching_discs()
    fg = (gt > 0).astype(float)
    bnd = boundary_of(gt).astype(float)
    from scipy import ndimage
    assert ndimage.label(fg > 0.5)[1] == 1                              # one connected foreground blob
    ids = watershed_instances(fg, bnd)
    assert len(instance_ids(ids)) == 2
    assert image_metrics(ids, gt)["SBD"] > 0.9
    assert (watershed_instances(np.zeros((5, 5)), np.zeros((5, 5))) == 0).all()
    with pytest.raises(ValueError, match="one size"):
        watershed_instances(fg, bnd[:5])


def test_mean_shift_groups_embeddings_into_instances():
    gt = two_touching_discs()
    rng = np.random.default_rng(0)
    emb = np.zeros((2, *gt.shape))
    emb[0][gt == 1], emb[1][gt == 2] = 1.0, 1.0                          # two points 1.41 apart
    emb += rng.normal(0, 0.05, emb.shape)
    ids = cluster_embeddings(emb, (gt > 0).astype(float), bandwidth=0.5)
    assert len(instance_ids(ids)) == 2 and image_metrics(ids, gt)["SBD"] > 0.99
    assert (cluster_embeddings(emb, np.zeros(gt.shape)) == 0).all()
    with pytest.raises(ValueError, match="over the"):
        cluster_embeddings(emb[:, :5], gt > 0)


def test_mean_shift_finds_the_centres_scikit_learn_finds():
    """Independent reference: scikit-learn's MeanShift with bin seeding, on separated and on touching clusters."""
    from sklearn.cluster import MeanShift

    from attnseg.nn.instance_grouping import mean_shift
    rng = np.random.default_rng(0)
    for spread in (3.0, 0.9):
        for _ in range(4):
            C = int(rng.integers(2, 10))
            mu = rng.normal(0, spread, (C, 8))
            x = np.concatenate([m + rng.normal(0, 0.12, (int(rng.integers(20, 200)), 8)) for m in mu])
            ours = mean_shift(x, 0.5)
            ref = MeanShift(bandwidth=0.5, bin_seeding=True).fit(x).cluster_centers_
            assert ours.shape == ref.shape
            assert np.allclose(ours, ref, atol=1e-9)            # the same centres in the same (density) order


def test_mean_shift_refuses_bad_input():
    from attnseg.nn.instance_grouping import mean_shift
    with pytest.raises(ValueError, match="points"):
        mean_shift(np.zeros((0, 3)), 0.5)
    with pytest.raises(ValueError, match="bandwidth must be > 0"):
        mean_shift(np.zeros((4, 3)), 0.0)


def test_nearest_centre_in_chunks_equals_brute_force():
    from attnseg.nn.instance_grouping import nearest_centre
    rng = np.random.default_rng(1)
    x, c = rng.normal(size=(1000, 5)), rng.normal(size=(7, 5))
    brute = ((x[:, None] - c[None]) ** 2).sum(-1).argmin(1)
    assert (nearest_centre(x, c, chunk=64) == brute).all()
