"""Synthetic instance scenes: nuclei fields like DSB2018, leaf rosettes like CVPPP and fields of three classes of
shapes, deterministic by seed.

Not from a paper: attnseg's embedded instance data and the controlled benchmark for counting and separation.

- ``nuclei_field``: 1-150 elliptical blobs (radii log-uniform over 3-14 px, any orientation), placed at random so
  that many touch or overlap (a later blob is drawn over an earlier one; a blob cut in two keeps its larger
  piece), each with its own intensity and texture; fluorescence-like (bright nuclei on a dark background) or
  brightfield-like (dark on bright).
- ``leaf_rosette``: 5-20 elongated leaves around a centre, each a pointed ellipse along its own angle and length,
  younger (shorter) leaves drawn over older ones, so neighbours touch and overlap; green hues on a soil background.
- ``shapes_field``: 3-12 objects of three classes, 1 disc, 2 square, 3 triangle (``SHAPE_CLASSES``), told apart by
  their shape only: every class draws its size, rotation and colour from the same distributions (an object's area
  is that of a disc of the drawn diameter, whatever its shape), a third placed against an earlier object so that
  they touch or occlude, on a textured, noisy background. The multi-class set of a proposal-based model (MNC);
  ``write_coco_shapes`` writes it as COCO json + PNGs for the ``coco:`` reader.

``nuclei_field`` and ``leaf_rosette`` return ``(image (H, W, 3) uint8, ids (H, W) int32)``, ``shapes_field`` also
the classes ``{id: 1..3}``: 0 is background, instances are 1..N in drawing order. An instance left with fewer than
``min_pixels`` visible pixels (hidden by later ones) is dropped and the ids are renumbered, so N counts only what
can be seen.
"""

from __future__ import annotations

import math
from pathlib import Path

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


SHAPE_CLASSES = ("disc", "square", "triangle")       # class k is SHAPE_CLASSES[k - 1]


def _shape_polygon(cls: int, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """The polygon of class ``cls`` (1 disc, 2 square, 3 triangle) of area pi r^2 (a disc of radius r), centred at
    (cx, cy) and turned by ``angle``: equal areas, so that an object's size says nothing of its class."""
    if cls == 1:
        return _ellipse(cx, cy, r, r, angle)
    n = 4 if cls == 2 else 3
    circum = r * math.sqrt(2 * math.pi / (n * math.sin(2 * math.pi / n)))   # regular n-gon of area pi r^2
    t = angle + 2 * np.pi * np.arange(n) / n
    return list(zip((cx + circum * np.cos(t)).tolist(), (cy + circum * np.sin(t)).tolist()))


def _polygon_area(polygon) -> float:
    """Shoelace area of a polygon, the part outside the image included."""
    x, y = np.asarray(polygon, np.float64).T
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _smooth_noise(rng: np.random.Generator, H: int, W: int, cell: int, channels: int = 1) -> np.ndarray:
    """(H, W, channels) noise of unit scale varying over ~``cell`` px (bilinear upsampling of a coarse grid)."""
    from scipy import ndimage
    coarse = rng.normal(0, 1, (H // cell + 2, W // cell + 2, channels))
    return ndimage.zoom(coarse, (cell, cell, 1), order=1)[:H, :W]


def _touching(ids: np.ndarray) -> set[tuple[int, int]]:
    """Pairs (a < b) of instances that share an 8-neighbour edge."""
    pairs = set()
    for a, b in ((ids[:, 1:], ids[:, :-1]), (ids[1:], ids[:-1]), (ids[1:, 1:], ids[:-1, :-1]),
                 (ids[1:, :-1], ids[:-1, 1:])):
        m = (a != b) & (a > 0) & (b > 0)
        if m.any():
            pairs |= set(map(tuple, np.unique(np.sort(np.stack([a[m], b[m]], 1), axis=1), axis=0).tolist()))
    return pairs


def shapes_field(seed: int, size: tuple[int, int] = (192, 192), count: tuple[int, int] = (3, 12),
                 extent: tuple[float, float] = (10, 40), min_pixels: int = 40,
                 min_visible: float = 0.5) -> tuple[np.ndarray, np.ndarray, dict[int, int]]:
    """A field of discs, squares and triangles (see the module docstring).

    Args:
        seed: the scene; the same seed gives the same scene.
        size: (H, W) of the image.
        count: inclusive range of the objects drawn (fewer may remain visible).
        extent: range of the objects' size in px, the diameter of the disc of equal area (uniform; its upper end
            capped at a third of the shorter side so that a small image is not one object).
        min_pixels, min_visible: an object with fewer visible pixels, or less than this fraction of itself visible
            (hidden by later objects or cut by the border), is removed from the scene (not drawn at all, so no
            unlabelled remnant is left on the image and every object keeps enough of its shape to be told apart).
    Returns:
        (image (H, W, 3) uint8, ids (H, W) int32: 0 background and 1..N in drawing order, classes {id: 1..3}: class
        k is ``SHAPE_CLASSES[k - 1]``, one entry for every id of the map).
    """
    rng = np.random.default_rng(seed)
    H, W = size
    hi = max(min(float(extent[1]), min(H, W) / 3), 1.0)
    lo = min(float(extent[0]), hi)
    n = int(rng.integers(count[0], count[1] + 1))
    objects = []                                               # (class, cx, cy, r, angle)
    for _ in range(n):
        cls = int(rng.integers(1, 4))
        r = rng.uniform(lo, hi) / 2
        angle = rng.uniform(0, 2 * np.pi)
        if objects and rng.random() < 0.35:                    # against an earlier object: touching or occluding
            _, px, py, pr, _ = objects[int(rng.integers(len(objects)))]
            d, a = (pr + r) * rng.uniform(0.6, 1.1), rng.uniform(0, 2 * np.pi)
            cx, cy = px + d * math.cos(a), py + d * math.sin(a)
        else:
            cx, cy = rng.uniform(0, W), rng.uniform(0, H)
        objects.append((cls, cx, cy, r, angle))
    polygons = [_shape_polygon(*o) for o in objects]
    keep = list(range(n))
    while True:                                 # removing an object only uncovers others: this ends in <= n rounds
        ids = _largest_pieces(_draw(size, [polygons[j] for j in keep]))
        visible = np.bincount(ids.ravel(), minlength=len(keep) + 1)[1:]
        full = np.array([_polygon_area(polygons[j]) for j in keep])
        ok = (visible >= min_pixels) & (visible >= min_visible * full)
        if ok.all():
            break
        keep = [j for j, good in zip(keep, ok) if good]
    ids = ids.astype(np.int32)
    classes = {k: objects[j][0] for k, j in enumerate(keep, start=1)}
    N = len(keep)

    base = rng.uniform(40, 215, 3)                             # background: a colour, blotches and grain
    image = base + 22 * _smooth_noise(rng, H, W, 24) * rng.uniform(0.6, 1.0, 3) + rng.normal(0, 7, (H, W, 3))
    neighbours = _touching(ids)
    colours = np.zeros((N + 1, 3))
    for k in range(1, N + 1):                                  # far from the background and from touching objects
        near = [colours[a if b == k else b] for a, b in neighbours if k in (a, b) and min(a, b) < k]
        for _ in range(30):
            c = rng.uniform(0, 255, 3)
            if np.linalg.norm(c - base) > 70 and all(np.linalg.norm(c - q) > 50 for q in near):
                break
        colours[k] = c
    shade = 1 + 0.1 * _smooth_noise(rng, H, W, 12)
    objects_image = colours[ids] * shade + rng.normal(0, 5, (H, W, 3))
    image = np.where(ids[..., None] > 0, objects_image, image)
    return np.rint(image).clip(0, 255).astype(np.uint8), ids, classes


# -- readers: ``nuclei:OPTIONS``, ``rosettes:OPTIONS`` and ``shapes:OPTIONS`` ------------------------------------

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
    ``scene_seed_of(scene_seed, split, i)``, so train, val and test never share a scene. ``shapes`` scenes hold
    three classes (``instance_classes``, kept from each scene's generation); the others one."""

    def __init__(self, kind: str, split: str, n: int, size: tuple[int, int], count: tuple[int, int],
                 scene_seed: int = 0, transform=None):
        self.kind, self.split, self.size, self.count, self.scene_seed = kind, split, size, count, scene_seed
        samples = [(f"{kind}_{split}_{i:04d}", None, None) for i in range(n)]
        super().__init__(samples, name=f"{kind} [{split}]", transform=transform, class_names=GENERATORS[kind][1])
        self._classes: dict[int, dict[int, int]] = {}        # scene -> {id: class}, filled by load (a few ints)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        seed = scene_seed_of(self.scene_seed, self.split, i)
        out = GENERATORS[self.kind][0](seed, self.size, self.count)
        if len(out) == 3:
            self._classes[i] = out[2]
        return out[0], out[1]

    def instance_classes(self, i: int) -> dict[int, int]:
        if self.kind != "shapes":
            return {}
        if i not in self._classes:                             # not generated in this process yet
            self.load(i)
        return dict(self._classes[i])


# kind -> (generator, class names)
GENERATORS = {"nuclei": (nuclei_field, ["nucleus"]), "rosettes": (leaf_rosette, ["leaf"]),
              "shapes": (shapes_field, list(SHAPE_CLASSES))}


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


def build_shapes(root: str = "", split: str = "train", transform=None):
    """``shapes:n=..,size=HxW,count=lo-hi,seed=..``: fields of discs, squares and triangles, three instance classes
    (default 192x192, 3-12 objects drawn; 400 train, 50 val, 50 test scenes). ``shapes:seed=S,size=HxW`` holds the
    scenes that ``write_coco_shapes(..., seed=S, size=(H, W))`` writes, scene for scene."""
    return _build("shapes", root, split, transform, {"size": (192, 192), "count": (3, 12)})


# -- the shapes set as COCO json + PNGs (``attnseg data coco-shapes``) ------------------------------------------

def _coco_json(split: str, n: int, seed: int, size: tuple[int, int], count: tuple[int, int], images: Path,
               mask_util) -> dict:
    """Generate the ``n`` scenes of ``split``, write their PNGs into ``images`` and return their COCO json."""
    out = {"info": {"description": f"attnseg synthetic shapes, {split}", "seed": seed, "size": list(size),
                    "count": list(count)},
           "images": [], "annotations": [],
           "categories": [{"id": k, "name": name, "supercategory": "shape"}
                          for k, name in enumerate(SHAPE_CLASSES, start=1)]}
    H, W = size
    for i in range(n):
        image, ids, classes = shapes_field(scene_seed_of(seed, split, i), size, count)
        name = f"{split}_{i:04d}.png"
        Image.fromarray(image).save(images / name)
        out["images"].append({"id": i + 1, "file_name": name, "height": H, "width": W})
        for k in range(1, int(ids.max()) + 1):               # annotation order = id order: the reader's ids are these
            rle = mask_util.encode(np.asfortranarray((ids == k).astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            out["annotations"].append({"id": len(out["annotations"]) + 1, "image_id": i + 1,
                                       "category_id": int(classes[k]), "segmentation": rle, "iscrowd": 0,
                                       "area": int(mask_util.area(rle)),
                                       "bbox": [float(v) for v in mask_util.toBbox(rle)]})
    return out


def write_coco_shapes(out_dir, n_train: int = 200, n_val: int = 50, seed: int = 0,
                      size: tuple[int, int] = (192, 192), count: tuple[int, int] = (3, 12)) -> dict[str, Path]:
    """Write ``shapes_field`` scenes as a COCO instance set that ``coco:`` reads back.

    ``out_dir/images/{train,val}_NNNN.png`` and ``out_dir/train.json``, ``out_dir/val.json`` (COCO instance json:
    images, annotations with an RLE segmentation (pycocotools, counts as str), bbox, area, iscrowd 0 and
    category_id 1..3; categories 1 disc, 2 square, 3 triangle). Scene i of a split is the generator at
    ``scene_seed_of(seed, split, i)``, so train and val never share a scene and the set equals the ``shapes:`` reader's
    (``shapes:seed=S,size=HxW``, ids included). Idempotent: writing again rewrites the same files and removes the
    ``train_*.png`` / ``val_*.png`` of an earlier, larger set (nothing else in ``out_dir`` is touched).

    Returns:
        {"root": out_dir, "images": the image folder, "train": train.json, "val": val.json}.
    Raises:
        DataError: counts below 1, a size below 32x32, an ``out_dir`` that cannot be written, no pycocotools.
    """
    import json
    import os
    root = Path(out_dir)
    if n_train < 1 or n_val < 1:
        raise DataError(f"coco shapes: {n_train} train and {n_val} val scenes asked for; give at least 1 of each")
    if min(size) < 32:
        raise DataError(f"coco shapes: size {size[0]}x{size[1]} is too small; use at least 32x32")
    if not 1 <= count[0] <= count[1]:
        raise DataError(f"coco shapes: count {count[0]}-{count[1]}: give lo-hi with 1 <= lo <= hi")
    try:
        from pycocotools import mask as mask_util
    except ImportError:
        raise DataError("coco shapes need pycocotools: pip install -e '.[instances]'") from None
    images = root / "images"
    paths = {"root": root, "images": images, "train": root / "train.json", "val": root / "val.json"}
    try:
        images.mkdir(parents=True, exist_ok=True)
        for split, n in (("train", n_train), ("val", n_val)):
            for stale in images.glob(f"{split}_*.png"):
                if not (stale.stem[len(split) + 1:].isdigit() and int(stale.stem[len(split) + 1:]) < n):
                    stale.unlink()
            record = _coco_json(split, n, seed, tuple(size), tuple(count), images, mask_util)
            tmp = paths[split].with_name(f".{paths[split].name}.tmp")
            tmp.write_text(json.dumps(record))
            os.replace(tmp, paths[split])
    except OSError as e:
        where = e.filename or root
        raise DataError(f"coco shapes: cannot write {where} ({e.strerror or type(e).__name__}); choose a folder you "
                        "can write") from None
    return paths
