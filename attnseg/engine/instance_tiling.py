"""Instance inference on images too large for one pass: overlapping tiles, each predicted alone, merged into one
id map in bounded memory (a 2000x2000 slide with a thousand nuclei).

Merging rule: the tiles' *cores* partition the image (each core is its tile minus half the overlap on every side
that has a neighbour), and an instance predicted in a tile is kept only if its centroid lies in that tile's core.
So an object is taken from the one tile where it is most central, whole, provided the overlap is at least the
diameter of the largest object (then every object whose centroid is in a core lies entirely inside that tile).
Pixels claimed by two kept instances (touching objects from neighbouring tiles) go to the one kept first.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage


def tile_starts(n: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` px with at least ``overlap`` px shared, covering 0..n (the last tile is
    flush with the end)."""
    if tile <= overlap:
        raise ValueError(f"the tile ({tile} px) must be larger than the overlap ({overlap} px)")
    if n <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, n - tile, step)) + [n - tile]
    return sorted(set(starts))


def _core(starts: list[int], i: int, tile: int, n: int) -> tuple[int, int]:
    """The core [lo, hi) of tile i along one axis: halfway into the overlap with each neighbour."""
    lo = 0 if i == 0 else (starts[i] + starts[i - 1] + tile) // 2
    hi = n if i == len(starts) - 1 else (starts[i + 1] + starts[i] + tile) // 2
    return lo, hi


def tiled_instances(image: np.ndarray, predict: Callable[[np.ndarray], np.ndarray], tile: tuple[int, int] = (512, 512),
                    overlap: int = 64) -> np.ndarray:
    """image (H, W, C) -> (H, W) int32 id map, ``predict(tile_image) -> (h, w) ids`` called once per tile."""
    return tiled_instances_scored(image, lambda t: (predict(t), {}), tile, overlap)[0]


def tiled_instances_scored(image: np.ndarray, predict: Callable, tile: tuple[int, int] = (512, 512),
                           overlap: int = 64) -> tuple[np.ndarray, dict[int, float]]:
    """As ``tiled_instances`` with ``predict(tile_image) -> ((h, w) ids, {id: score})``; returns the merged id map
    and the kept instances' scores under their new ids (1.0 where the tile gave none)."""
    H, W = image.shape[:2]
    th, tw = min(tile[0], H), min(tile[1], W)
    ys, xs = tile_starts(H, th, overlap), tile_starts(W, tw, overlap)
    out = np.zeros((H, W), np.int32)
    merged_scores: dict[int, float] = {}
    next_id = 1
    for i, y0 in enumerate(ys):
        cy = _core(ys, i, th, H)
        for j, x0 in enumerate(xs):
            cx = _core(xs, j, tw, W)
            ids, scores = predict(image[y0:y0 + th, x0:x0 + tw])
            ids = np.asarray(ids)
            if ids.shape != (th, tw):
                raise ValueError(f"the tile predictor returned {ids.shape} for a {th}x{tw} tile")
            labels = np.unique(ids)
            labels = labels[labels != 0]
            if not len(labels):
                continue
            flat = ids.ravel()
            yy, xx = np.divmod(np.arange(flat.size), tw)
            count = np.bincount(flat, minlength=labels.max() + 1)
            my = np.bincount(flat, weights=yy, minlength=len(count)) / np.maximum(count, 1) + y0
            mx = np.bincount(flat, weights=xx, minlength=len(count)) / np.maximum(count, 1) + x0
            region = out[y0:y0 + th, x0:x0 + tw]
            boxes = ndimage.find_objects(ids)                 # paint each kept instance within its own box
            for k in labels:
                if cy[0] <= my[k] < cy[1] and cx[0] <= mx[k] < cx[1]:
                    sl = boxes[k - 1]
                    sub = region[sl]
                    sub[(ids[sl] == k) & (sub == 0)] = next_id
                    merged_scores[next_id] = float(scores.get(int(k), 1.0))
                    next_id += 1
    return out, merged_scores
