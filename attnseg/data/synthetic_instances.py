"""Synthetic instance scenes: nuclei fields like DSB2018 and leaf rosettes like CVPPP, deterministic by seed.

Not from a paper: attnseg's embedded instance data and the controlled benchmark for counting and separation.

- ``nuclei_field``: 1-150 elliptical blobs (radii log-uniform over 3-14 px, any orientation), placed at random so
  that many touch or overlap (a later blob is drawn over an earlier one; a blob cut in two keeps its larger
  piece), each with its own intensity and texture; fluorescence-like (bright nuclei on a dark background) or
  brightfield-like (dark on bright).
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

from .instances import InstanceDataset
from .io import DataError
from .synthetic import parse_option_string, scene_seed_of


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


def _largest_pieces(ids: np.ndarray) -> np.ndarray:
    """Each id keeps only its largest 8-connected piece (a nucleus cut in two by one drawn over it would otherwise
    be one id in two places, which no nucleus annotation has); the rest becomes background."""
    from scipy import ndimage
    out = ids.copy()
    for k, sl in enumerate(ndimage.find_objects(ids), start=1):
        if sl is None:
            continue
        pieces, n = ndimage.label(ids[sl] == k, structure=np.ones((3, 3)))
        if n > 1:
            sizes = np.bincount(pieces.ravel())[1:]
            drop = (pieces > 0) & (pieces != 1 + int(np.argmax(sizes)))
            out[sl][drop] = 0
    return out


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
    ids = _renumber(_largest_pieces(_draw(size, shapes)), min_pixels)
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


# -- readers: ``nuclei:OPTIONS`` and ``rosettes:OPTIONS`` --------------------------------------------------------

DEFAULT_COUNTS = {"train": 400, "val": 50, "test": 50}


def _parse_pair(text: str, cast):
    lo, _, hi = str(text).partition("-")
    return cast(lo), cast(hi or lo)


def _parse_hw(text: str) -> tuple[int, int]:
    h, _, w = str(text).lower().partition("x")
    return int(h), int(w or h)


OPTIONS = {"n": int, "train": int, "val": int, "test": int, "seed": int, "size": _parse_hw,
           "count": lambda s: _parse_pair(s, int)}


def parse_instance_options(kind: str, root: str) -> dict:
    """'n=200,size=256x256,count=1-150,seed=3' -> a dict; unknown keys are refused with the list of keys."""
    out = parse_option_string(root, OPTIONS, kind, f"{kind}:n=200,size=256x256,count=1-150,seed=3")
    if "size" in out and min(out["size"]) < 16:
        raise DataError(f"{kind} option size={out['size'][0]}x{out['size'][1]} is too small; use at least 16x16")
    if "count" in out and not 1 <= out["count"][0] <= out["count"][1]:
        raise DataError(f"{kind} option count={root.split('count=')[1].split(',')[0]}: give lo-hi with 1 <= lo <= hi")
    return out


class SyntheticInstances(InstanceDataset):
    """Scenes generated on demand (nothing on disk): scene i of a split is the generator at
    ``scene_seed_of(scene_seed, split, i)``, so train, val and test never share a scene."""

    def __init__(self, kind: str, split: str, n: int, size: tuple[int, int], count: tuple[int, int],
                 scene_seed: int = 0, transform=None):
        self.kind, self.split, self.size, self.count, self.scene_seed = kind, split, size, count, scene_seed
        samples = [(f"{kind}_{split}_{i:04d}", None, None) for i in range(n)]
        super().__init__(samples, name=f"{kind} [{split}]", transform=transform,
                         class_names=["nucleus"] if kind == "nuclei" else ["leaf"])

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        seed = scene_seed_of(self.scene_seed, self.split, i)
        make = nuclei_field if self.kind == "nuclei" else leaf_rosette
        return make(seed, self.size, self.count)


def _build(kind: str, root: str, split: str, transform, defaults: dict):
    options = {**defaults, **parse_instance_options(kind, root)}
    if split not in DEFAULT_COUNTS:
        raise DataError(f"{kind}: split {split!r} unknown; choose train, val or test")
    n = options.get(split, options.get("n", DEFAULT_COUNTS[split]))
    if n < 1:
        raise DataError(f"{kind}: split {split} would hold {n} scenes; give n >= 1")
    return SyntheticInstances(kind, split, n, options["size"], options["count"], options.get("seed", 0), transform)


def build_nuclei(root: str = "", split: str = "train", transform=None):
    """``nuclei:n=..,size=HxW,count=lo-hi,seed=..``: DSB2018-like fields (default 256x256, 1-150 nuclei; 400 train,
    50 val, 50 test scenes)."""
    return _build("nuclei", root, split, transform, {"size": (256, 256), "count": (1, 150)})


def build_rosettes(root: str = "", split: str = "train", transform=None):
    """``rosettes:n=..,size=HxW,count=lo-hi,seed=..``: CVPPP-like rosettes (default 224x224, 5-20 leaves; 400 train,
    50 val, 50 test scenes)."""
    return _build("rosettes", root, split, transform, {"size": (224, 224), "count": (5, 20)})
