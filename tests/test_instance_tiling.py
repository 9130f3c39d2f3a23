"""Tiled instance inference: with an oracle tile predictor, the merged map equals the ground truth (each object
once, whole), for tiles of several sizes and overlaps at least the largest object's diameter."""

import numpy as np
import pytest

from attnseg.data.synthetic_instances import nuclei_field
from attnseg.engine.instance_tiling import tile_starts, tiled_instances
from attnseg.metrics.instance import image_metrics


@pytest.mark.parametrize("tile, overlap", [((96, 96), 32), ((128, 80), 40), ((300, 300), 0)])
def test_tiles_merge_into_the_ground_truth(tile, overlap):
    image, gt = nuclei_field(2, size=(300, 260), count=(120, 120))
    # nuclei radii are at most 14 px: a 32 px overlap exceeds every diameter (28 px)
    packed = np.concatenate([image, gt[..., None]], axis=2)
    calls = []

    def predict(t):
        calls.append(t.shape)
        return t[..., 3].astype(np.int32)
    merged = tiled_instances(packed, predict, tile, overlap)
    m = image_metrics(merged, gt)
    assert m["n_pred"] == m["n_gt"] and m["SBD"] == pytest.approx(1.0) and m["DSB"] == pytest.approx(1.0)
    assert all(s[:2] == (min(tile[0], 300), min(tile[1], 260)) for s in calls)


def test_tile_starts_cover_and_overlap():
    assert tile_starts(100, 100, 10) == [0] and tile_starts(50, 100, 10) == [0]
    s = tile_starts(1000, 256, 64)
    assert s[0] == 0 and s[-1] == 1000 - 256 and all(b - a <= 256 - 64 for a, b in zip(s, s[1:]))
    with pytest.raises(ValueError, match="larger than the overlap"):
        tile_starts(100, 32, 32)
