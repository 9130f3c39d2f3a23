"""attnseg.viz.glimpses: the step-by-step glimpse pictures (where each kind is drawn, the strip, the names)."""

import numpy as np
import pytest

from attnseg.viz.glimpses import STEP_COLOURS, glimpse_panels, glimpse_pictures, glimpse_strip

IMAGE = np.zeros((20, 30), np.uint8)


def test_boxes_are_drawn_where_they_are_in_the_current_steps_colour():
    steps = [{"step": 0, "kind": "boxes", "boxes": np.array([[2, 3, 10, 11]])},
             {"step": 1, "kind": "boxes", "boxes": np.array([[12, 4, 20, 12]])}]
    panels = glimpse_panels(IMAGE, steps, scale=4)
    assert len(panels) == 2 and panels[0].shape == (80, 120, 3)
    # the left edge of step 1's box at x = 12 px -> canvas column 48, row between its top and bottom
    assert tuple(panels[1][30, 48]) == STEP_COLOURS[1]
    assert tuple(panels[1][30, 8]) == tuple(c // 2 for c in STEP_COLOURS[0])   # step 0 faded
    assert tuple(panels[0][30, 48]) == (0, 0, 0)                               # not drawn before its step


def test_grid_and_sampling_grid_and_the_warped_patch():
    pts = np.stack(np.meshgrid(np.arange(5, 10), np.arange(3, 8)), -1).astype(np.float32)   # (5, 5, 2) (x, y)
    grid = {"step": 0, "kind": "grid", "points": pts, "sigma": 1.0}
    sgrid = {"step": 0, "kind": "sampling_grid", "points": pts + 0.5, "patch": np.ones((5, 5), np.float32)}
    g = glimpse_panels(IMAGE, [grid], scale=4)[0]
    assert tuple(g[int((3 + 0.5) * 4), int((5 + 0.5) * 4)]) == STEP_COLOURS[0]   # a filter mean (pixel centre)
    panels = glimpse_panels(IMAGE, [sgrid], scale=4)
    assert len(panels) == 2 and panels[1].min() == 255                          # the transformer's output
    pics, notes = glimpse_pictures(IMAGE, [sgrid])
    assert [p.name for p in pics] == ["glimpses", "glimpse_1", "st_patch"] and not notes


def test_strip_and_what_a_plain_cnn_gets():
    steps = [{"step": t, "kind": "boxes", "boxes": np.array([[0, 0, 4, 4]])} for t in range(3)]
    strip = glimpse_strip(IMAGE, steps, "title", scale=2)
    assert strip.shape == (16 + 40, 3 * 60 + 2 * 4, 3)
    pics, notes = glimpse_pictures(IMAGE, [])
    assert pics == [] and "no glimpses" in notes[0]
    with pytest.raises(ValueError, match="unknown glimpse kind 'cloud'"):
        glimpse_panels(IMAGE, [{"step": 0, "kind": "cloud"}])
