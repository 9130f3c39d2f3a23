"""One pixel's attention: the query's slice of hand-made FLANet-family attention maps, and its figure."""

import numpy as np
import pytest
import torch
from PIL import Image

from attnseg.viz import query_attention_figure, query_attention_maps
from attnseg.viz.attention_maps import MIN_PANEL, cross_step, feature_query, map_name
from attnseg.viz.overlay import PANEL_GAP, TITLE_HEIGHT


def grid(h, w, batch=1):
    return torch.tensor([[h, w]] * batch)


def by_name(maps):
    return {map_name(title): (kind, values) for title, kind, values in maps}


def image_size(h, w):
    """An image on which feature cell i lies exactly on pixel 8i (align_corners): (8(h-1)+1, 8(w-1)+1)."""
    return 8 * (h - 1) + 1, 8 * (w - 1) + 1


def random_cross(rng, R, H, W, h, w):
    """(1, R, H, W, h + w) criss-cross weights: positive, the own (pooled) row of the column part masked to 0,
    each pixel's h + w entries summing to 1."""
    a = rng.random((1, R, H, W, h + w)) + 0.1
    stride = 2 if (h, w) != (H, W) else 1
    for y in range(H):
        a[:, :, y, :, y // stride] = 0.0
    return torch.from_numpy(a / a.sum(-1, keepdims=True))


def dense(a, H, W):
    """The H'W' x H'W' matrix that (H, W, H + W) cross weights stand for (not sub-sampled), entry by entry."""
    m = np.zeros((H * W, H * W))
    for y in range(H):
        for x in range(W):
            for i in range(H):
                m[y * W + x, i * W + x] += a[y, x, i]
            for j in range(W):
                m[y * W + x, y * W + j] += a[y, x, H + j]
    return m


@pytest.mark.parametrize("sub_sample", [False, True])
def test_nonlocal_picks_the_query_row(sub_sample):
    H, W = 5, 7
    h, w = ((H + 1) // 2, (W + 1) // 2) if sub_sample else (H, W)
    a = torch.zeros(1, H * W, h * w)
    for k in range(H * W):                         # query k attends only to key (k * 3) mod hw
        a[0, k, (k * 3) % (h * w)] = 1.0
    for name in ("nonlocal", "position"):
        yq, xq = 3, 5
        maps = by_name(query_attention_maps({"grid": grid(H, W), name: a}, (8 * yq, 8 * xq), image_size(H, W)))
        kind, values = maps[name]
        assert kind == "spatial" and values.shape == (h, w)
        expect = np.zeros(h * w)
        expect[((yq * W + xq) * 3) % (h * w)] = 1.0
        np.testing.assert_array_equal(values.ravel(), expect)


def test_nonlocal_key_count_must_fit_the_grid():
    with pytest.raises(ValueError, match="keys per query"):
        query_attention_maps({"grid": grid(4, 4), "nonlocal": torch.zeros(1, 16, 5)}, (0, 0), (32, 32))


def test_criss_cross_places_column_and_row():
    H, W = 4, 6
    a = random_cross(np.random.default_rng(0), 2, H, W, H, W)
    yq, xq = 2, 1
    maps = by_name(query_attention_maps({"grid": grid(H, W), "criss_cross": a}, (8 * yq, 8 * xq),
                                        image_size(H, W)))
    kind, cross = maps["criss_cross_r1"]
    w = a[0, 0, yq, xq].numpy()
    assert kind == "spatial" and cross.shape == (H, W)
    np.testing.assert_allclose(cross[:, xq][np.arange(H) != yq], w[:H][np.arange(H) != yq])
    np.testing.assert_allclose(cross[yq, :], w[H:])          # the own pixel: its row weight (column one masked)
    off = np.ones((H, W), bool)
    off[:, xq] = off[yq, :] = False
    assert not cross[off].any()
    assert cross.sum() == pytest.approx(1.0)


def test_criss_cross_sub_sampled_uses_the_pooled_column_and_row():
    H, W = 5, 7                                    # odd: pooled grid (3, 4)
    h, w = 3, 4
    a = random_cross(np.random.default_rng(1), 2, H, W, h, w)
    yq, xq = 3, 5                                  # pooled column 2, pooled row 1
    maps = by_name(query_attention_maps({"grid": grid(H, W), "criss_cross": a}, (8 * yq, 8 * xq),
                                        image_size(H, W)))
    assert "criss_cross_composed" not in maps      # only without sub-sampling
    kind, cross = maps["criss_cross_r1"]
    wts = a[0, 0, yq, xq].numpy()
    assert kind == "spatial" and cross.shape == (h, w)
    np.testing.assert_allclose(cross[[0, 2], 2], wts[[0, 2]])
    np.testing.assert_allclose(cross[1, :], wts[h:])
    assert cross[1, 2] == pytest.approx(wts[h + 2])  # own pooled row in the column part is masked (0)
    off = np.ones((h, w), bool)
    off[:, 2] = off[1, :] = False
    assert not cross[off].any()


def test_composed_criss_cross_equals_dense_product():
    H, W = 3, 5
    a = random_cross(np.random.default_rng(2), 2, H, W, H, W)
    A1, A2 = dense(a[0, 0].numpy(), H, W), dense(a[0, 1].numpy(), H, W)
    M = A2 @ A1                                    # M(p -> r) = sum_q A2[p, q] A1[q, r]
    for yq in range(H):
        for xq in range(W):
            maps = by_name(query_attention_maps({"grid": grid(H, W), "criss_cross": a}, (8 * yq, 8 * xq),
                                                image_size(H, W)))
            kind, comp = maps["criss_cross_composed"]
            assert kind == "spatial"
            np.testing.assert_allclose(comp.ravel(), M[yq * W + xq], atol=1e-12)
            assert comp.sum() == pytest.approx(1.0)  # row-stochastic steps compose to a row-stochastic map


def test_cross_step_is_the_dense_vector_product():
    H, W = 4, 3
    a = random_cross(np.random.default_rng(3), 1, H, W, H, W)[0, 0].numpy()
    v = np.random.default_rng(4).random((H, W))
    np.testing.assert_allclose(cross_step(v, a).ravel(), v.ravel() @ dense(a, H, W), atol=1e-12)


def test_fla_and_channel_maps_follow_the_query():
    H, W, C = 4, 6, 3
    col = torch.arange(W, dtype=torch.float32)[None, :, None, None].expand(1, W, C, C).clone()   # map x' = x'
    row = 10 + torch.arange(H, dtype=torch.float32)[None, :, None, None].expand(1, H, C, C).clone()
    chan = torch.eye(C)[None]
    att = {"grid": grid(H, W), "fla_column": col, "fla_row": row, "channel": chan}
    yq, xq = 1, 4
    maps = query_attention_maps(att, (8 * yq, 8 * xq), image_size(H, W))
    named = by_name(maps)
    assert set(named) == {f"fla_column_x{xq}", f"fla_row_y{yq}", "channel"}
    assert all(kind == "matrix" and v.shape == (C, C) for kind, v in named.values())
    np.testing.assert_array_equal(named[f"fla_column_x{xq}"][1], np.full((C, C), xq))
    np.testing.assert_array_equal(named[f"fla_row_y{yq}"][1], np.full((C, C), 10 + yq))
    np.testing.assert_array_equal(named["channel"][1], np.eye(C))


def test_batch_index_selects_the_image():
    chan = torch.stack([torch.zeros(2, 2), torch.ones(2, 2)])
    maps = query_attention_maps({"grid": grid(2, 2, 2), "channel": chan}, (0, 0), (9, 9), batch_index=1)
    np.testing.assert_array_equal(maps[0][2], np.ones((2, 2)))


def test_query_mapping_align_corners_and_odd_sizes():
    # align_corners=True: first and last pixels land on the first and last feature cells
    assert feature_query((0, 0), (360, 480), (45, 60)) == (0, 0)
    assert feature_query((359, 479), (360, 480), (45, 60)) == (44, 59)
    # odd sizes: 97x33 image on a 13x5 grid, y' = floor(y * 12 / 96 + 1/2), x' = floor(x * 4 / 32 + 1/2)
    assert feature_query((48, 16), (97, 33), (13, 5)) == (6, 2)
    assert feature_query((4, 4), (97, 33), (13, 5)) == (1, 1)  # 0.5 rounds up
    assert feature_query((3, 3), (97, 33), (13, 5)) == (0, 0)
    assert feature_query((96, 32), (97, 33), (13, 5)) == (12, 4)
    assert feature_query((0, 5), (1, 33), (1, 5)) == (0, 1)    # one image row


@pytest.mark.parametrize("query", [(400, 10), (-1, 0), (0, 480)])
def test_query_outside_the_image_is_refused(query):
    att = {"grid": grid(45, 60), "channel": torch.eye(2)[None]}
    with pytest.raises(ValueError, match=r"outside the 360x480 image; give --query Y,X with 0 <= Y < 360"):
        query_attention_maps(att, query, (360, 480))


def test_maps_need_the_grid():
    with pytest.raises(ValueError, match="grid"):
        query_attention_maps({"channel": torch.eye(2)[None]}, (0, 0), (8, 8))


def test_figure_has_the_image_the_spatial_maps_and_the_matrices():
    H, W, C = 3, 5, 4
    image = np.random.default_rng(5).integers(0, 256, (20, 36, 3), dtype=np.uint8)
    att = {"grid": grid(H, W), "criss_cross": random_cross(np.random.default_rng(6), 2, H, W, H, W),
           "nonlocal": torch.softmax(torch.randn(1, H * W, H * W), -1),
           "fla_column": torch.softmax(torch.randn(1, W, C, C), -1),
           "fla_row": torch.softmax(torch.randn(1, H, C, C), -1)}
    query = (10, 30)
    maps = query_attention_maps(att, query, image.shape[:2])
    assert [k for _, k, _ in maps].count("spatial") == 3 and [k for _, k, _ in maps].count("matrix") == 2
    fig = query_attention_figure(image, maps, query)
    assert isinstance(fig, Image.Image) and fig.mode == "RGB"
    scale = -(-MIN_PANEL // 20)                     # 20 px high image: panels upscaled to >= 256 px
    ph, pw = 20 * scale, 36 * scale
    assert fig.size == (4 * pw + 3 * PANEL_GAP, 2 * (ph + TITLE_HEIGHT) + PANEL_GAP)  # image + 3 maps; 2 matrices
    # the query is marked in the first panel: the image there is not the plain upscaled image
    first = np.asarray(fig)[TITLE_HEIGHT:TITLE_HEIGHT + ph, :pw]
    plain = np.repeat(np.repeat(image, scale, 0), scale, 1)
    changed = np.argwhere((first != plain).any(-1))
    assert len(changed) and np.abs(changed.mean(0) - [query[0] * scale, query[1] * scale]).max() < 2 * scale
