"""Overlays, panels, legends, palette PNGs, heat maps and learning curves."""

import json

import numpy as np
import pytest
from PIL import Image

from attnseg.data import LabelSpec, read_label
from attnseg.viz import (
    blend_heatmap,
    error_map,
    heatmap,
    legend,
    overlay,
    plot_learning_curve,
    save_label_png,
    side_by_side,
)
from attnseg.viz.curves import read_log, split_records
from attnseg.viz.overlay import ERROR_COLORS, PANEL_GAP, TITLE_HEIGHT, colormap_table, fallback_table

SPEC = LabelSpec(names=["bg", "cat", "dog"], palette=[(0, 0, 0), (200, 40, 0), (10, 250, 90)], ignore_index=255)


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)
    label = rng.integers(0, 3, (6, 10)).astype(np.uint8)
    label[0, :4] = 255  # ignore
    label[1, 0] = 7  # not a class: treated like ignore
    return image, label


def test_overlay_keeps_ignored_pixels(pair):
    image, label = pair
    out = overlay(image, label, SPEC, alpha=0.7)
    np.testing.assert_array_equal(out[0, :4], image[0, :4])
    np.testing.assert_array_equal(out[1, 0], image[1, 0])
    assert out.dtype == np.uint8 and out.shape == image.shape


def test_overlay_mixes_with_alpha_exactly():
    image = np.array([[[100, 0, 255], [10, 20, 30]]], np.uint8)
    label = np.array([[1, 2]])
    out = overlay(image, label, SPEC, alpha=0.25)
    # 0.75 * image + 0.25 * colour, rounded: (75+50, 0+10, 191.25+0) and (7.5+2.5, 15+62.5, 22.5+22.5)
    np.testing.assert_array_equal(out, [[[125, 10, 191], [10, 78, 45]]])
    np.testing.assert_array_equal(overlay(image, label, SPEC, alpha=0.0), image)
    np.testing.assert_array_equal(overlay(image, label, SPEC, alpha=1.0), SPEC.colorize(label))


def test_overlay_rejects_mismatched_sizes(pair):
    image, label = pair
    with pytest.raises(ValueError, match="must match"):
        overlay(image, label[:, :5], SPEC)


def test_save_label_png_reads_back_as_ids(tmp_path, pair):
    _, label = pair
    label = label.copy()
    label[label == 7] = 2
    path = save_label_png(tmp_path / "sub" / "mask.png", label, SPEC)
    with Image.open(path) as im:
        assert im.mode == "P"
        np.testing.assert_array_equal(np.asarray(im), label)
        palette = im.getpalette()
    assert palette[:9] == [0, 0, 0, 200, 40, 0, 10, 250, 90]
    np.testing.assert_array_equal(read_label(path), label)
    with pytest.raises(ValueError, match="0..255"):
        save_label_png(tmp_path / "big.png", np.full((2, 2), 300), SPEC)


def test_error_map_colours():
    gt = np.array([[1, 2, 255]])
    pred = np.array([[1, 1, 0]])
    out = error_map(gt, pred, SPEC)
    assert [tuple(c) for c in out[0]] == [ERROR_COLORS["correct"], ERROR_COLORS["wrong"], ERROR_COLORS["ignored"]]


def test_side_by_side_layout(pair):
    image, gt = pair
    h, w = image.shape[:2]
    pred = np.where(gt == 255, 0, gt)
    panel = side_by_side(image, gt, pred, SPEC)
    assert panel.mode == "RGB" and panel.size == (4 * w + 3 * PANEL_GAP, h + TITLE_HEIGHT)
    a = np.asarray(panel)
    np.testing.assert_array_equal(a[TITLE_HEIGHT:, :w], image)
    np.testing.assert_array_equal(a[TITLE_HEIGHT:, w + PANEL_GAP:2 * w + PANEL_GAP], SPEC.colorize(gt))
    x = 2 * (w + PANEL_GAP)
    np.testing.assert_array_equal(a[TITLE_HEIGHT:, x:x + w], overlay(image, pred, SPEC))
    x = 3 * (w + PANEL_GAP)
    np.testing.assert_array_equal(a[TITLE_HEIGHT:, x:x + w], error_map(gt, pred, SPEC))
    assert side_by_side(image, None, pred, SPEC).size == (2 * w + PANEL_GAP, h + TITLE_HEIGHT)


def test_legend_has_a_swatch_per_class():
    im = legend(SPEC, swatch=14, pad=4)
    a = np.asarray(im)
    assert a.shape[0] == 4 + 18 * SPEC.num_classes
    for i, colour in enumerate(SPEC.palette):
        assert tuple(a[4 + 18 * i + 7, 4 + 7]) == colour  # centre of swatch i
    assert a.shape[1] > 14 + 8 + 20  # room for the names


def test_heatmap_spans_the_colormap():
    values = np.array([[0.0, 0.5], [1.0, np.nan]])
    out = heatmap(values)
    table = colormap_table("viridis")
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    assert tuple(out[0, 0]) == tuple(table[0]) and tuple(out[1, 0]) == tuple(table[-1])
    assert tuple(out[1, 1]) == tuple(table[0])  # NaN counts as the minimum
    assert (heatmap(np.full((3, 3), 2.0)) == table[0]).all()
    assert tuple(heatmap(values, vmin=0.0, vmax=2.0)[1, 0]) == tuple(table[128])


def test_fallback_viridis_matches_matplotlib():
    pytest.importorskip("matplotlib")
    diff = np.abs(fallback_table("viridis").astype(int) - colormap_table("viridis").astype(int))
    assert diff.max() <= 5 and diff.mean() <= 1
    with pytest.raises(ValueError, match="needs matplotlib"):
        fallback_table("magma")


def test_blend_heatmap_resizes_low_resolution_maps(pair):
    image, _ = pair
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = blend_heatmap(image, values, alpha=0.5)
    assert out.shape == image.shape and out.dtype == np.uint8
    full = np.zeros(image.shape[:2], np.float32)
    np.testing.assert_array_equal(blend_heatmap(image, full, alpha=0.0), image)
    np.testing.assert_array_equal(blend_heatmap(image, full, alpha=1.0), np.broadcast_to(heatmap(full), image.shape))


def train_records(n: int = 30) -> list[dict]:
    return [{"step": 10 * i, "epoch": i / 10, "loss": 2.0 / (1 + i), "lr": 0.01, "elapsed": 6.0 * i}
            for i in range(n)]


def write_log(path, records, extra_lines=()):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + "".join(extra_lines))
    return path


def assert_png(path):
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (1000, 360)


def test_learning_curve_with_validation(tmp_path):
    records = train_records()
    records += [{"kind": "val", "step": 100, "elapsed": 65.0, "mIoU": 0.31, "aAcc": 0.8},
                {"kind": "val", "step": 200, "elapsed": 125.0, "mIoU": 0.42, "aAcc": 0.85},
                {"kind": "config", "lr": 0.01}, {"kind": "checkpoint", "step": 200, "elapsed": 126.0}]
    log = write_log(tmp_path / "log.jsonl", records, extra_lines=['{"step": 300, "los'])  # half-written line
    assert len(read_log(log)) == len(records)
    train, val = split_records(read_log(log))
    assert len(train) == 30 and [v["mIoU"] for v in val] == [0.31, 0.42]
    out = plot_learning_curve(log, tmp_path / "plots" / "curve.png")
    assert out == tmp_path / "plots" / "curve.png"
    assert_png(out)


def test_learning_curve_without_validation(tmp_path):
    out = plot_learning_curve(train_records(5), tmp_path / "curve.png")
    assert_png(out)
    assert_png(plot_learning_curve([], tmp_path / "empty.png"))
