"""Pictures of instance maps (``attnseg.viz.instances``): distinct colours, outlines against a pixel loop, the
overlay's exact mixing and its refusals, and COCO RLE against pycocotools."""

import colorsys

import numpy as np
import pytest

from attnseg.viz.instances import (
    comparison_panel,
    instance_colours,
    instance_overlay,
    instance_picture,
    outlines,
    rle_decode,
    rle_encode,
)


def random_ids(seed, H=13, W=17, n=6):
    rng = np.random.default_rng(seed)
    ids = np.zeros((H, W), np.int32)
    for k in range(1, n + 1):
        y, x = rng.integers(0, H), rng.integers(0, W)
        ids[y:y + rng.integers(1, 7), x:x + rng.integers(1, 7)] = k
    return ids


def test_colours_are_distinct_deterministic_and_stable_by_id():
    c = instance_colours(50)
    assert c.shape == (51, 3) and c.dtype == np.uint8
    assert c[0].tolist() == [0, 0, 0]
    rows = {tuple(r) for r in c[1:].tolist()}
    assert len(rows) == 50 and (0, 0, 0) not in rows
    np.testing.assert_array_equal(instance_colours(10), c[:11])          # id k's colour does not depend on n
    np.testing.assert_array_equal(instance_colours(50), c)
    assert instance_colours(0).shape == (1, 3)
    # id 1: hue = golden ratio fraction, s = 0.65, v = 0.95 (odd ids); id 2: s = 0.9, v = 0.8 (even ids)
    for k, (s, v) in ((1, (0.65, 0.95)), (2, (0.9, 0.8))):
        h = (k * 0.618033988749895) % 1.0
        assert c[k].tolist() == np.rint(np.array(colorsys.hsv_to_rgb(h, s, v)) * 255).astype(int).tolist()


def brute_outlines(ids):
    H, W = ids.shape
    out = np.zeros((H, W), bool)
    for y in range(H):
        for x in range(W):
            if ids[y, x] == 0:
                continue
            for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                yy, xx = y + dy, x + dx
                if not (0 <= yy < H and 0 <= xx < W) or ids[yy, xx] != ids[y, x]:
                    out[y, x] = True
    return out


@pytest.mark.parametrize("seed", range(6))
def test_outlines_match_the_pixel_loop(seed):
    ids = random_ids(seed)
    np.testing.assert_array_equal(outlines(ids), brute_outlines(ids))


def test_outlines_by_hand():
    ids = np.array([[0, 0, 0, 0],
                    [0, 1, 1, 0],
                    [0, 1, 1, 2],
                    [0, 1, 1, 2]])
    # 4-neighbours only; the image border counts as another id
    np.testing.assert_array_equal(outlines(ids), ids > 0)
    full = np.full((4, 5), 3)
    expected = np.ones((4, 5), bool)
    expected[1:3, 1:4] = False
    np.testing.assert_array_equal(outlines(full), expected)


def test_overlay_mixes_exactly_and_leaves_the_background():
    rng = np.random.default_rng(0)
    ids = random_ids(1)
    image = rng.integers(0, 256, (*ids.shape, 3), dtype=np.uint8)
    alpha = 0.3
    out = instance_overlay(image, ids, alpha, outline=False)
    assert out.shape == image.shape and out.dtype == np.uint8
    bg = ids == 0
    assert bg.any() and (~bg).any()
    np.testing.assert_array_equal(out[bg], image[bg])
    colours = instance_colours(int(ids.max()))
    for y, x in zip(*np.nonzero(~bg)):
        want = np.rint((1 - alpha) * image[y, x].astype(np.float32) + alpha * colours[ids[y, x]].astype(np.float32))
        np.testing.assert_array_equal(out[y, x], want.astype(np.uint8))
    with_lines = instance_overlay(image, ids, alpha, outline=True, outline_colour=(1, 2, 3))
    edge = outlines(ids)
    assert (with_lines[edge] == [1, 2, 3]).all()
    np.testing.assert_array_equal(with_lines[~edge], out[~edge])
    np.testing.assert_array_equal(instance_overlay(image, ids, 0.0, outline=False), image)
    np.testing.assert_array_equal(instance_overlay(image, ids, 1.0, outline=False)[~bg], colours[ids[~bg]])


@pytest.mark.parametrize("image_shape, ids_shape, alpha, needle", [
    ((4, 5, 3), (4, 6), 0.5, r"the image is 5x4 but the instance map 6x4"),
    ((4, 5, 3), (5, 5), 0.5, r"the image is 5x4 but the instance map 5x5"),
    ((4, 5, 3), (4, 5), 1.5, r"alpha must be in \[0, 1\], not 1.5"),
    ((4, 5, 3), (4, 5), -0.1, r"alpha must be in \[0, 1\], not -0.1"),
])
def test_overlay_refuses_bad_inputs(image_shape, ids_shape, alpha, needle):
    with pytest.raises(ValueError, match=needle):
        instance_overlay(np.zeros(image_shape, np.uint8), np.zeros(ids_shape, np.int32), alpha)


def test_instance_picture_and_comparison_panel():
    ids = random_ids(2)
    np.testing.assert_array_equal(instance_picture(ids), instance_colours(int(ids.max()))[ids])
    image = np.full((*ids.shape, 3), 90, np.uint8)
    panel = comparison_panel(image, ids, np.zeros_like(ids))
    H, W = ids.shape
    assert panel.shape == (H, 3 * W + 8, 3)
    np.testing.assert_array_equal(panel[:, :W], image)
    assert (panel[:, W:W + 4] == 255).all()
    np.testing.assert_array_equal(panel[:, W + 4:2 * W + 4], instance_overlay(image, ids))
    np.testing.assert_array_equal(panel[:, 2 * W + 8:], image)              # an empty prediction: the image


# -- RLE -----------------------------------------------------------------------------------------------------------

def masks_to_try():
    rng = np.random.default_rng(3)
    out = [rng.random((9, 7)) < p for p in (0.2, 0.5, 0.8)]
    out += [np.zeros((6, 4), bool), np.ones((6, 4), bool), np.ones((1, 1), bool), np.zeros((1, 1), bool)]
    corner = np.zeros((5, 5), bool)
    corner[0, 0] = True                                                  # starts with a one: an empty first run
    last = np.zeros((5, 5), bool)
    last[-1, -1] = True
    return out + [corner, last, random_ids(4) == 3]


@pytest.mark.parametrize("n", range(len(masks_to_try())))
def test_rle_matches_pycocotools(n):
    mask_util = pytest.importorskip("pycocotools.mask")
    m = masks_to_try()[n]
    H, W = m.shape
    rle = rle_encode(m)
    assert rle["size"] == [H, W] and sum(rle["counts"]) == H * W
    assert all(isinstance(c, int) for c in rle["counts"])
    assert all(c > 0 for c in rle["counts"][1:])                         # only the first run may be empty
    theirs = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
    ours = mask_util.frPyObjects(rle, H, W)                               # our counts, compressed by pycocotools
    assert ours["counts"] == theirs["counts"] and list(ours["size"]) == [H, W]
    np.testing.assert_array_equal(mask_util.decode(ours).astype(bool), m)
    np.testing.assert_array_equal(rle_decode(rle), m)
    assert int(mask_util.area(ours)) == int(m.sum())


def test_rle_by_hand():
    m = np.array([[0, 1],
                  [1, 1],
                  [0, 0]], bool)
    # column-major: 0 1 0 | 1 1 0 -> runs: one 0, one 1, one 0, two 1s, one 0
    assert rle_encode(m) == {"size": [3, 2], "counts": [1, 1, 1, 2, 1]}
    assert rle_encode(np.zeros((2, 3), bool)) == {"size": [2, 3], "counts": [6]}
    assert rle_encode(np.ones((2, 3), bool)) == {"size": [2, 3], "counts": [0, 6]}


def test_rle_refuses_bad_inputs():
    with pytest.raises(ValueError, match=r"a mask must be \(H, W\), got shape \(2, 3, 4\)"):
        rle_encode(np.zeros((2, 3, 4), bool))
    with pytest.raises(ValueError, match=r"RLE counts sum to 5, not H\*W = 6"):
        rle_decode({"size": [2, 3], "counts": [2, 3]})


def test_rle_of_a_box_crop_equals_the_rle_of_the_full_mask():
    from attnseg.viz.instances import rle_encode
    rng = np.random.default_rng(3)
    for _ in range(30):
        H, W = int(rng.integers(1, 12)), int(rng.integers(1, 12))
        y0, x0 = int(rng.integers(0, H)), int(rng.integers(0, W))
        y1, x1 = int(rng.integers(y0 + 1, H + 1)), int(rng.integers(x0 + 1, W + 1))
        full = np.zeros((H, W), bool)
        full[y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) > 0.5
        assert rle_encode(full[y0:y1, x0:x1], (y0, x0), (H, W)) == rle_encode(full)


def test_instance_boxes_against_a_brute_force_scan():
    from attnseg.data.instances import instance_boxes
    rng = np.random.default_rng(4)
    ids = rng.integers(0, 6, (13, 17)) * (rng.random((13, 17)) > 0.4)
    ids[ids == 3] = 0                                        # an id absent in the middle
    keys, slices, areas = instance_boxes(ids)
    expect = [k for k in range(1, 6) if (ids == k).any()]
    assert keys.tolist() == expect
    for k, (sy, sx), a in zip(keys, slices, areas):
        ys, xs = np.nonzero(ids == k)
        assert (sy.start, sy.stop, sx.start, sx.stop) == (ys.min(), ys.max() + 1, xs.min(), xs.max() + 1)
        assert a == len(ys)
    with pytest.raises(ValueError, match="must be \\(H, W\\)"):
        instance_boxes(np.zeros(3))
