"""Synthetic instance scenes: nuclei fields like DSB2018 and leaf rosettes like CVPPP, deterministic by seed.

Not from a paper: attnseg's embedded instance data and the controlled benchmark for counting and separation.

- ``nuclei_field``: 1-150 elliptical blobs (radii log-uniform over 3-14 px, any orientation), placed at random so
  that many touch or overlap (a later blob is drawn over an earlier one), each with its own intensity and
  texture; fluorescence-like (bright nuclei on a dark background) or brightfield-like (dark on bright).
- ``leaf_rosette``: 5-20 elongated leaves around a centre, each a pointed ellipse along its own angle and length,
  younger (shorter) leaves drawn over older ones, so neighbours touch and overlap; green hues on a soil background.

Both return ``(image (H, W, 3) uint8, ids (H, W) int32)``: 0 is background, instances are 1..N in drawing order.
An instance left with fewer than ``min_pixels`` visible pixels (hidden by later ones) is dropped and the ids are
renumbered, so N counts only what can be seen.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw


def _ellipse(cx: float, cy: float, rx: float, ry: float, angle: float, n: int = 48, tip: float = 1.0):
    """Polygon of an ellipse (``tip`` > 1 sharpens the end along +x into a leaf point)."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x = rx * np.cos(t)
    x = np.where(x > 0, x * (1 + (tip - 1) * np.cos(t) ** 8), x)
    y = ry * np.sin(t) * np.where(x > 0, 1 - 0.35 * (tip - 1) * np.cos(t) ** 2, 1.0)
    ca, sa = math.cos(angle), math.sin(angle)
    return list(zip((cx + ca * x - sa * y).tolist(), (cy + sa * x + ca * y).tolist()))


def _renumber(ids: np.ndarray, min_pixels: int) -> np.ndarray:
    """Drop instances with fewer than ``min_pixels`` pixels; ids become 1..N in their old order."""
    counts = np.bincount(ids.ravel())
    keep = np.nonzero(counts >= min_pixels)[0]
    keep = keep[keep != 0]
    table = np.zeros(len(counts), np.int32)
    table[keep] = np.arange(1, len(keep) + 1, dtype=np.int32)
    return table[ids]


def _draw(size, shapes) -> np.ndarray:
    """Paint polygons with ids 1..len(shapes) (later over earlier) on a 32-bit canvas."""
    canvas = Image.new("I", (size[1], size[0]), 0)
    draw = ImageDraw.Draw(canvas)
    for k, polygon in enumerate(shapes, start=1):
        draw.polygon(polygon, fill=k)
    return np.asarray(canvas).astype(np.int32)


def nuclei_field(seed: int, size: tuple[int, int] = (256, 256), count: tuple[int, int] = (1, 150),
                 min_pixels: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """A DSB2018-like field of nuclei (see the module docstring). ``count``: inclusive range of blobs drawn."""
    rng = np.random.default_rng(seed)
    H, W = size
    n = int(rng.integers(count[0], count[1] + 1))
    shapes = []
    for _ in range(n):
        r = math.exp(rng.uniform(math.log(3), math.log(14)))
        shapes.append(_ellipse(rng.uniform(0, W), rng.uniform(0, H), r, r * rng.uniform(0.55, 1.0),
                               rng.uniform(0, np.pi)))
    ids = _renumber(_draw(size, shapes), min_pixels)
    bright = rng.random() < 0.7                                          # fluorescence-like
    base = rng.uniform(5, 35) if bright else rng.uniform(190, 235)
    image = np.full((H, W), base, np.float64)
    level = np.concatenate([[0.0], rng.uniform(60, 200, ids.max()) * (1 if bright else -0.6)])
    grain = rng.normal(0, 1, (H, W))
    image += level[ids] * (1 + 0.15 * grain * (ids > 0))                # per-nucleus intensity and texture
    image += rng.normal(0, 4, (H, W))
    grey = np.clip(image, 0, 255)
    tint = np.array([1.0, 1.0, 1.0]) if rng.random() < 0.6 else rng.uniform(0.7, 1.0, 3)
    return np.rint(grey[..., None] * tint).clip(0, 255).astype(np.uint8), ids


def leaf_rosette(seed: int, size: tuple[int, int] = (224, 224), leaves: tuple[int, int] = (5, 20),
                 min_pixels: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """A CVPPP-like rosette (see the module docstring). ``leaves``: inclusive range of leaves drawn."""
    rng = np.random.default_rng(seed)
    H, W = size
    n = int(rng.integers(leaves[0], leaves[1] + 1))
    cx, cy = W / 2 + rng.normal(0, W / 20), H / 2 + rng.normal(0, H / 20)
    reach = 0.42 * min(H, W)
    golden = math.pi * (3 - math.sqrt(5))
    start = rng.uniform(0, 2 * np.pi)
    shapes = []
    for k in range(n):                                   # oldest (longest) first, younger ones drawn over them
        age = 1 - k / max(n, 1)
        length = reach * (0.35 + 0.65 * age) * rng.uniform(0.85, 1.1)
        angle = start + k * golden + rng.normal(0, 0.15)
        width = length * rng.uniform(0.22, 0.34)
        mx, my = cx + math.cos(angle) * length / 2, cy + math.sin(angle) * length / 2
        shapes.append(_ellipse(mx, my, length / 2, width / 2, angle, tip=1.25))
    ids = _renumber(_draw(size, shapes), min_pixels)
    soil = np.array([rng.uniform(70, 110), rng.uniform(50, 80), rng.uniform(30, 55)])
    image = soil + rng.normal(0, 10, (H, W, 1)) * np.array([1.0, 0.9, 0.8])
    greens = np.stack([rng.uniform(40, 90, ids.max() + 1), rng.uniform(120, 190, ids.max() + 1),
                       rng.uniform(30, 70, ids.max() + 1)], 1)
    shade = 1 + 0.08 * rng.normal(0, 1, (H, W, 1))
    image = np.where(ids[..., None] > 0, greens[ids] * shade, image)
    return np.rint(image).clip(0, 255).astype(np.uint8), ids
