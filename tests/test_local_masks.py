"""Drawing segmentation-aware networks' local attention masks and embeddings (attnseg.viz.local_masks)."""

import numpy as np
import pytest
import torch

from attnseg.models import create_model
from attnseg.viz.local_masks import (
    embedding_pca_colours,
    local_mask_figure,
    local_mask_panel,
    parse_mask_key,
    pick_layers,
    window_taps,
)


def test_parse_mask_key():
    assert parse_mask_key("mask/backbone.features.0/k3_d1") == ("backbone.features.0", 3, 1)
    assert parse_mask_key("mask/base.backbone.fc6/k3_d12") == ("base.backbone.fc6", 3, 12)
    assert parse_mask_key("embedding") is None


def test_pca_colours_separate_two_embedding_clusters():
    e = np.zeros((8, 10, 12))
    e[:, :, 6:] = np.arange(8)[:, None, None] * 0.5        # right half: another embedding
    e += 0.01 * np.random.default_rng(0).standard_normal(e.shape)
    c = embedding_pca_colours(e).astype(int)
    assert c.shape == (10, 12, 3)
    left, right = c[:, :6].reshape(-1, 3), c[:, 6:].reshape(-1, 3)
    gap = np.abs(left.mean(0) - right.mean(0)).max()
    spread = max(np.abs(left - left.mean(0)).max(), np.abs(right - right.mean(0)).max())
    assert gap > 150 and spread < 40         # the noise components stay near grey
    with pytest.raises(ValueError, match="must be"):
        embedding_pca_colours(np.zeros((3, 4)))


def test_window_taps_sit_on_the_layer_grid():
    # a 5x7 grid over a 9x13 image: feature i at image pixel 2i; the query (4, 6) is cell (2, 3)
    taps = window_taps((4, 6), (9, 13), (5, 7), 3, 2)
    assert [(t, y, x) for t, y, x, ok in taps if t in (0, 4, 8)] == [(0, 0.0, 2.0), (4, 4.0, 6.0), (8, 8.0, 10.0)]
    assert all(ok for *_, ok in taps)
    corner = window_taps((0, 0), (9, 13), (5, 7), 3, 1)
    assert [ok for *_, ok in corner] == [False, False, False, False, True, True, False, True, True]


def test_mask_panel_colours_the_window_by_the_mask_values():
    image = np.full((20, 20, 3), 200, np.uint8)
    mask = np.zeros((9, 20, 20))
    mask[:, 10, 10] = [0, 0, 0, 0, 1, 1, 0, 0, 0]             # the query's centre and right taps are on
    panel = local_mask_panel(image, mask, (10, 10), 3, 4)
    yellow, purple = panel[10, 14], panel[6, 6]              # tap 5 (0, +4) and tap 0 (-4, -4)
    assert yellow[0] > 200 and yellow[2] < 100                # viridis(1): yellow
    assert purple[2] > purple[1] and purple[0] < 120          # viridis(0): dark purple
    assert (panel[1, 1] == 90).all()                          # dimmed image elsewhere


def test_figure_from_a_model():
    torch.manual_seed(0)
    net = create_model("segaware_deeplab_largefov_vgg16", 3, base_kwargs={"width": 0.125},
                       embedding_width=0.125, embedding_dim=8).eval()
    with torch.no_grad():
        att = net(torch.randn(1, 3, 40, 48), return_attention=True)["attention"]
    one = {k: v[0] for k, v in att.items()}
    layers = pick_layers([(k, v.shape) for k, v in one.items()])
    assert [parse_mask_key(n)[1:] for n in layers] == [(3, 1)] * 4 + [(3, 2), (3, 12)]   # 4 grids, conv5, fc6
    fig = local_mask_figure(np.zeros((40, 48, 3), np.uint8), one, (20, 24))
    assert fig.width >= 4 * 48 and fig.height >= 2 * 40
