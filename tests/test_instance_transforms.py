"""Instance transforms keep ids: the D4 group, nearest scaling, crops that drop only cut-off slivers."""

import numpy as np
import pytest

from attnseg.data.instance_transforms import Compose, Photometric, RandomCrop, RandomD4, RandomScale, d4


def test_d4_is_the_group_of_the_square():
    a = np.arange(12).reshape(3, 4)
    outs = [d4(a, k) for k in range(8)]
    assert len({o.tobytes() + bytes(o.shape) for o in outs}) == 8               # eight distinct symmetries
    assert np.array_equal(outs[1], np.rot90(a)) and np.array_equal(outs[4], a.T)
    for k in range(8):                                                          # each has an inverse among them
        assert any(np.array_equal(d4(outs[k], j), a) for j in range(8))
    rgb = np.stack([a, a + 100, a + 200], -1)
    assert np.array_equal(d4(rgb, 5)[..., 1], d4(a, 5) + 100)
    with pytest.raises(ValueError, match="0..7"):
        d4(a, 8)


def test_random_transforms_keep_the_ids():
    rng = np.random.default_rng(0)
    ids = np.zeros((40, 50), np.int32)
    ids[2:20, 3:30], ids[25:38, 10:45], ids[30:32, 0:2] = 4, 9, 17
    image = np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    for _ in range(10):
        im2, ids2 = Compose([RandomD4(), RandomScale(0.5, 1.5), Photometric()])(image, ids, rng)
        assert set(np.unique(ids2)) <= {0, 4, 9, 17} and im2.shape[:2] == ids2.shape
        assert {4, 9} <= set(np.unique(ids2))                                    # large instances survive


def test_crop_drops_slivers_only():
    ids = np.zeros((20, 20), np.int32)
    ids[0:10, 0:10] = 1                                                          # 100 px
    ids[15:20, 15:20] = 2                                                        # 25 px
    image = np.zeros((20, 20, 3), np.uint8)

    class Fixed:                                                                 # a crop at (y, x) = (0, 0)
        def integers(self, n):
            return 0
    _, out = RandomCrop((16, 16), min_pixels=8)(image, ids, Fixed())
    assert (out == 1).sum() == 100 and (out == 2).sum() == 0                     # 2 keeps 1 px: dropped
    _, out = RandomCrop((17, 17), min_pixels=1)(image, ids, Fixed())
    assert (out == 2).sum() == 4                                                 # kept: >= min_pixels
    im, out = RandomCrop((24, 26))(image, ids, np.random.default_rng(0))         # larger than the image: padded
    assert out.shape == (24, 26) and im.shape == (24, 26, 3) and (out == 1).sum() == 100
