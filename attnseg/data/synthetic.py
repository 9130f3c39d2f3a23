"""Synthetic semantic scenes: objects across a wide range of scales, thin strokes and texture-only regions.

Not from a paper: this is attnseg's embedded default dataset (``attnseg demo``) and its controlled benchmark,
where a method's claim can be measured in isolation: attention to scale (object radii span more than 8x),
thin classes (1-3 px strokes), and context (a region that differs from the background by texture alone).

Classes (``SYNTHETIC``)::

    0 background   smooth colour gradient, low-frequency blotches, pixel noise
    1 disc         filled circle
    2 box          filled square, rotated
    3 triangle     filled triangle, rotated, jittered vertices
    4 line         straight or curved stroke, 1-3 px wide
    5 texture      irregular blob with the background's mean colour and stripes, checkerboard or block noise
    6 ring         circle outline, 2 px to 45% of the radius thick

Object colours come from class-dependent hue distributions that overlap, so colour alone does not give the
class. Objects are several per image, may overlap (the later one is drawn on top; textures first, then by
decreasing area, so that small objects stay visible) and may leave the frame. Every scene is a pure function
of (scene seed, split, index): the splits draw from disjoint seed streams.

``build`` takes an option string as its root, e.g. ``synthetic:`` or ``synthetic:n=200,size=96x128,seed=3``.
"""

from __future__ import annotations

import colorsys
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
from numpy.random import Generator
from PIL import Image, ImageDraw, ImageFilter
from PIL.ImageDraw import ImageDraw as Draw

from .dataset import SegmentationDataset
from .io import DataError
from .labels import LabelSpec

SYNTHETIC = LabelSpec(
    names=["background", "disc", "box", "triangle", "line", "texture", "ring"],
    palette=[(0, 0, 0), (230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (145, 30, 180),
             (245, 130, 48)],
    ignore_index=255,
)
BACKGROUND, DISC, BOX, TRIANGLE, LINE, TEXTURE, RING = range(7)
OBJECT_CLASSES = (DISC, BOX, TRIANGLE, LINE, TEXTURE, RING)

# Centre of each class's hue distribution; the spread (HUE_SPREAD) makes neighbours overlap.
CLASS_HUE = {DISC: 0.0, BOX: 0.33, TRIANGLE: 0.6, LINE: 0.15, RING: 0.8}
HUE_SPREAD = 0.12
TEXTURE_KINDS = ("stripes", "checker", "blocks")

SPLITS = ("train", "val", "test")
DEFAULT_COUNTS = {"train": 300, "val": 60, "test": 60}


@dataclass(frozen=True)
class SceneConfig:
    """What a scene looks like. Sizes are in pixels of the generated image.

    Args:
        size: (height, width) of the image.
        objects: inclusive range of the number of objects per image.
        radius: range of object radii (distance from centre to the farthest point: circle radius, polygon
            circumradius), drawn log-uniformly so that every scale is equally common. A line's radius (its
            half-length) is twice such a draw, at least 8 px; texture regions draw from
            ``(max(12, lo), max(12, 1.5 * hi))``: a texture needs room to show.
        line_width: inclusive range of the stroke width of lines, in pixels.
        blur: probability that the image (not the label) is blurred by a Gaussian of sigma 0.4-1.2 px.
        noise: standard deviation of the per-pixel noise, in grey levels.
    """

    size: tuple[int, int] = (128, 160)
    objects: tuple[int, int] = (4, 10)
    radius: tuple[float, float] = (3.0, 32.0)
    line_width: tuple[int, int] = (1, 3)
    blur: float = 0.3
    noise: float = 6.0

    def __post_init__(self):
        h, w = self.size
        if h < 16 or w < 16:
            raise ValueError(f"synthetic scene size {h}x{w} is too small; use at least 16x16")
        if not 1 <= self.objects[0] <= self.objects[1] <= 250:
            raise ValueError(f"objects range {self.objects} must satisfy 1 <= lo <= hi <= 250")
        if not 2 <= self.radius[0] <= self.radius[1]:
            raise ValueError(f"radius range {self.radius} must satisfy 2 <= lo <= hi")
        if not 1 <= self.line_width[0] <= self.line_width[1]:
            raise ValueError(f"line_width range {self.line_width} must satisfy 1 <= lo <= hi")
        if not 0.0 <= self.blur <= 1.0:
            raise ValueError(f"blur is a probability; got {self.blur}")


@dataclass
class Scene:
    """One generated scene.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        label: (H, W) uint8 class ids of ``SYNTHETIC``.
        instance_map: (H, W) int32; 0 is background, k > 0 is ``instances[k - 1]``.
        instances: one dict per drawn object, in drawing order, with keys ``id``, ``class_id``, ``class_name``,
            ``center`` [x, y], ``radius`` (px, see SceneConfig), ``width`` (stroke width of lines and rings,
            else None), ``texture`` (texture kind, else None), ``area`` (visible pixels after occlusion) and
            ``bbox`` [x0, y0, x1, y1] of the visible pixels (exclusive end; None when fully hidden).
    """

    image: np.ndarray
    label: np.ndarray
    instance_map: np.ndarray
    instances: list[dict]


def scene_seed_of(seed: int, split: str, index: int) -> int:
    """A 63-bit seed that depends on (seed, split, index) only; different splits give disjoint streams."""
    h = hashlib.blake2b(f"synthetic/{seed}/{split}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


# ----------------------------------------------------------------------------------------------- shapes

def _log_uniform(rng: Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _polygon(cx: float, cy: float, radii: np.ndarray, angles: np.ndarray) -> list[tuple[float, float]]:
    return list(zip((cx + radii * np.cos(angles)).tolist(), (cy + radii * np.sin(angles)).tolist()))


def _draw_disc(draw: Draw, rng: Generator, cx: float, cy: float, r: float, fill: int) -> dict:
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    return {}


def _draw_box(draw: Draw, rng: Generator, cx: float, cy: float, r: float, fill: int) -> dict:
    angles = rng.uniform(0, np.pi / 2) + np.arange(4) * np.pi / 2
    draw.polygon(_polygon(cx, cy, np.full(4, r), angles), fill=fill)
    return {}


def _draw_triangle(draw: Draw, rng: Generator, cx: float, cy: float, r: float, fill: int) -> dict:
    angles = rng.uniform(0, 2 * np.pi) + np.arange(3) * 2 * np.pi / 3 + rng.uniform(-0.25, 0.25, 3)
    draw.polygon(_polygon(cx, cy, r * rng.uniform(0.8, 1.0, 3), angles), fill=fill)
    return {}


def _draw_ring(draw: Draw, rng: Generator, cx: float, cy: float, r: float, fill: int) -> dict:
    r = max(r, 4.0)
    width = max(2, int(round(r * rng.uniform(0.2, 0.45))))
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=width)
    return {"radius": r, "width": width}


def _draw_line(draw: Draw, rng: Generator, cx: float, cy: float, r: float, fill: int,
               widths: tuple[int, int] = (1, 3)) -> dict:
    """A straight stroke, or (half the time) a quadratic Bezier curve, of half-length ``r``."""
    r = max(2.0 * r, 8.0)  # strokes are long and thin: twice the sampled radius, at least 8 px
    width = int(rng.integers(widths[0], widths[1] + 1))
    theta = rng.uniform(0, np.pi)
    d = np.array([np.cos(theta), np.sin(theta)])
    p0, p2 = np.array([cx, cy]) - r * d, np.array([cx, cy]) + r * d
    bend = rng.uniform(-0.6, 0.6) * r if rng.random() < 0.5 else 0.0
    p1 = np.array([cx, cy]) + bend * np.array([-d[1], d[0]])
    t = np.linspace(0.0, 1.0, 24 if bend else 2)[:, None]
    points = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2  # (n, 2) quadratic Bezier
    draw.line([tuple(p) for p in points.tolist()], fill=fill, width=width, joint="curve")
    return {"radius": r, "width": width}


def _draw_texture(draw: Draw, rng: Generator, cx: float, cy: float, r: float, fill: int) -> dict:
    """An irregular blob: 16 vertices whose radii vary smoothly around the centre."""
    k = np.arange(16)
    wobble = sum(rng.uniform(-0.15, 0.15) * np.cos(f * 2 * np.pi * k / 16 + rng.uniform(0, 2 * np.pi))
                 for f in (2, 3))
    draw.polygon(_polygon(cx, cy, r * (0.85 + wobble), 2 * np.pi * k / 16), fill=fill)
    return {"texture": TEXTURE_KINDS[int(rng.integers(len(TEXTURE_KINDS)))]}


DRAW: dict[int, Callable[..., dict]] = {DISC: _draw_disc, BOX: _draw_box, TRIANGLE: _draw_triangle,
                                        LINE: _draw_line, TEXTURE: _draw_texture, RING: _draw_ring}


def _approx_area(class_id: int, r: float) -> float:
    """Rough area used for the drawing order (larger first); lines count as thin."""
    return {DISC: np.pi * r * r, BOX: 2 * r * r, TRIANGLE: 1.2 * r * r, LINE: 8 * r, RING: 2 * r * r,
            TEXTURE: np.inf}[class_id]


def _plan_objects(rng: Generator, cfg: SceneConfig) -> list[dict]:
    """Class, centre and radius of every object, sorted into drawing order."""
    (h, w), (lo, hi) = cfg.size, cfg.radius
    n = int(rng.integers(cfg.objects[0], cfg.objects[1] + 1))
    plan = []
    for class_id in rng.choice(OBJECT_CLASSES, size=n).tolist():
        r = _log_uniform(rng, max(12.0, lo), max(12.0, 1.5 * hi)) if class_id == TEXTURE else _log_uniform(rng, lo, hi)
        plan.append({"class_id": class_id, "center": [float(rng.uniform(0, w)), float(rng.uniform(0, h))],
                     "radius": r})
    plan.sort(key=lambda o: -_approx_area(o["class_id"], o["radius"]))
    return plan


def _draw_instances(rng: Generator, cfg: SceneConfig, plan: list[dict]) -> tuple[np.ndarray, list[dict]]:
    """Rasterise the plan into an (H, W) instance map (id k = plan[k - 1]); returns it and the metadata."""
    h, w = cfg.size
    canvas = Image.new("I", (w, h), 0)  # 32-bit ints: no limit on the number of instances
    draw = ImageDraw.Draw(canvas)
    instances = []
    for k, obj in enumerate(plan, 1):
        cx, cy = obj["center"]
        kwargs = {"widths": cfg.line_width} if obj["class_id"] == LINE else {}
        extra = DRAW[obj["class_id"]](draw, rng, cx, cy, obj["radius"], k, **kwargs)
        instances.append({"id": k, "class_id": obj["class_id"], "class_name": SYNTHETIC.names[obj["class_id"]],
                          "center": obj["center"], "radius": obj["radius"], "width": None, "texture": None,
                          **extra})
    return np.asarray(canvas, dtype=np.int32), instances


def _add_visibility(instances: list[dict], instance_map: np.ndarray) -> None:
    """Fill in ``area`` and ``bbox`` of the visible part of each instance."""
    areas = np.bincount(instance_map.ravel(), minlength=len(instances) + 1)
    rows_any = np.zeros((len(instances) + 1, instance_map.shape[0]), bool)
    cols_any = np.zeros((len(instances) + 1, instance_map.shape[1]), bool)
    ys, xs = np.nonzero(instance_map)
    ids = instance_map[ys, xs]
    rows_any[ids, ys] = True
    cols_any[ids, xs] = True
    for inst in instances:
        k = inst["id"]
        inst["area"] = int(areas[k])
        inst["radius"] = float(inst["radius"])
        if areas[k] == 0:
            inst["bbox"] = None
            continue
        y = np.flatnonzero(rows_any[k])
        x = np.flatnonzero(cols_any[k])
        inst["bbox"] = [int(x[0]), int(y[0]), int(x[-1]) + 1, int(y[-1]) + 1]


# ---------------------------------------------------------------------------------------------- colours

def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), np.float32) * 255


def _background_colour(rng: Generator) -> np.ndarray:
    return _hsv(rng.uniform(0, 1), rng.uniform(0.05, 0.35), rng.uniform(0.35, 0.75))


def _object_colour(rng: Generator, class_id: int, avoid: np.ndarray) -> np.ndarray:
    """A colour from the class's hue distribution, redrawn (up to 4 times) when too close to ``avoid``."""
    for _ in range(4):
        c = _hsv(CLASS_HUE[class_id] + rng.normal(0, HUE_SPREAD), rng.uniform(0.3, 0.9), rng.uniform(0.3, 1.0))
        if np.abs(c - avoid).sum() >= 90:
            break
    return c


def _smooth_noise(rng: Generator, size: tuple[int, int], cells: tuple[int, int]) -> np.ndarray:
    """(H, W) float32 noise in about [-1, 1], smooth over H/cells pixels (bilinear upsampling of a coarse grid)."""
    coarse = rng.uniform(-1, 1, cells).astype(np.float32)
    return np.asarray(Image.fromarray(coarse).resize(size[::-1], Image.BILINEAR))


def _background(rng: Generator, cfg: SceneConfig, colour: np.ndarray) -> np.ndarray:
    """(H, W, 3) float32: base colour + linear gradient + low-frequency blotches."""
    h, w = cfg.size
    theta = rng.uniform(0, 2 * np.pi)
    ys, xs = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]
    ramp = (xs * np.cos(theta) + ys * np.sin(theta)) / max(h, w)  # (H, W), about [-1.4, 1.4]
    shade = rng.uniform(10, 30) * ramp + rng.uniform(5, 15) * _smooth_noise(rng, cfg.size, (4, 5))
    tint = rng.uniform(0.6, 1.0, 3).astype(np.float32)
    return colour + shade[..., None] * tint


def _texture_pattern(rng: Generator, kind: str, size: tuple[int, int]) -> np.ndarray:
    """(h, w) float32 zero-mean pattern in [-1, 1]: stripes, checkerboard or block noise."""
    h, w = size
    period = rng.uniform(4, 10)
    theta = rng.uniform(0, np.pi)
    ys, xs = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]
    u = (xs * np.cos(theta) + ys * np.sin(theta)) * (2 * np.pi / period)
    if kind == "stripes":
        return np.sin(u)
    if kind == "checker":
        v = (ys * np.cos(theta) - xs * np.sin(theta)) * (2 * np.pi / period)
        return np.sign(np.sin(u) * np.sin(v)).astype(np.float32)
    cell = int(rng.integers(3, 6))
    coarse = rng.uniform(-1, 1, (h // cell + 1, w // cell + 1)).astype(np.float32)
    return np.repeat(np.repeat(coarse, cell, 0), cell, 1)[:h, :w]


def _add_textures(rng: Generator, image: np.ndarray, instance_map: np.ndarray,
                  instances: list[dict]) -> None:
    """Add a zero-mean pattern to the (background-coloured) pixels of each texture region, in place."""
    for inst in instances:
        if inst["class_id"] != TEXTURE or inst["bbox"] is None:
            continue
        x0, y0, x1, y1 = inst["bbox"]
        m = instance_map[y0:y1, x0:x1] == inst["id"]
        pattern = rng.uniform(25, 45) * _texture_pattern(rng, inst["texture"], (y1 - y0, x1 - x0))
        image[y0:y1, x0:x1][m] += pattern[m, None]


def _paint(rng: Generator, cfg: SceneConfig, instance_map: np.ndarray, instances: list[dict]) -> np.ndarray:
    """The RGB image of an instance map: background, flat object colours, textures, noise, optional blur."""
    bg_colour = _background_colour(rng)
    image = _background(rng, cfg, bg_colour)
    # the background's colour plus a pattern: only the texture tells a texture region apart
    _add_textures(rng, image, instance_map, instances)
    colours = np.zeros((len(instances) + 1, 3), np.float32)
    is_object = np.zeros(len(instances) + 1, bool)
    for inst in instances:
        if inst["class_id"] != TEXTURE:
            colours[inst["id"]] = _object_colour(rng, inst["class_id"], bg_colour)
            is_object[inst["id"]] = True
    image = np.where(is_object[instance_map][..., None], np.take(colours, instance_map, axis=0), image)
    image += rng.standard_normal(image.shape, dtype=np.float32) * cfg.noise
    out = np.clip(image, 0, 255).astype(np.uint8)
    if rng.random() < cfg.blur:
        out = np.asarray(Image.fromarray(out).filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.2))))
    return out


def generate_scene(seed: int, cfg: SceneConfig = SceneConfig()) -> Scene:
    """The scene of one seed (use ``scene_seed_of(seed, split, index)``). About 2-3 ms for 128x160."""
    rng = np.random.default_rng(seed)
    plan = _plan_objects(rng, cfg)
    instance_map, instances = _draw_instances(rng, cfg, plan)
    _add_visibility(instances, instance_map)
    class_of = np.array([BACKGROUND] + [inst["class_id"] for inst in instances], np.uint8)
    image = _paint(rng, cfg, instance_map, instances)
    return Scene(image=image, label=class_of[instance_map], instance_map=instance_map, instances=instances)


# ---------------------------------------------------------------------------------------------- dataset

class SyntheticScenes(SegmentationDataset):
    """``n`` generated scenes of one split, with SegmentationDataset's items, transforms and seeding.

    Args:
        split: "train", "val" or "test"; each draws from its own seed stream.
        n: number of scenes (default: 300 train, 60 val, 60 test).
        config: what the scenes look like.
        transform, cache: as for SegmentationDataset (cache keeps generated scenes).
        seed: seed of the augmentation generators, as for every reader.
        scene_seed: selects the scenes, independently of ``seed``, so that runs with different training
            seeds see the same data.
    ``samples`` holds virtual (image, mask) paths: the relative paths that ``write_folder`` writes.
    """

    def __init__(self, split: str = "train", n: int | None = None, config: SceneConfig | None = None,
                 transform: Callable | None = None, cache: bool = False, seed: int = 0, scene_seed: int = 0):
        if split not in SPLITS:
            raise DataError(f"synthetic has no split {split!r}; choose one of {', '.join(SPLITS)}")
        n = DEFAULT_COUNTS[split] if n is None else int(n)
        if n < 1:
            raise DataError(f"synthetic/{split}: n={n}; ask for at least one scene")
        stems = [f"{split}_{i:05d}" for i in range(n)]
        samples = [(Path("images", split, f"{s}.png"), Path("masks", split, f"{s}.png")) for s in stems]
        super().__init__(samples, SYNTHETIC, transform, cache=cache, name=f"synthetic/{split}", seed=seed)
        self.split = split
        self.config = config or SceneConfig()
        self.scene_seed = scene_seed

    def scene(self, index: int) -> Scene:
        """The full scene of ``index``: image, label, instance map and per-object metadata."""
        if not 0 <= index < len(self):
            raise IndexError(f"{self.name} has {len(self)} scenes; index {index} is out of range")
        if self.cache is not None and index in self.cache:
            return self.cache[index]
        scene = generate_scene(scene_seed_of(self.scene_seed, self.split, index), self.config)
        if self.cache is not None:
            self.cache[index] = scene
        return scene

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(image (H, W, 3) uint8, label (H, W) uint8 ids), generated."""
        scene = self.scene(index)
        return scene.image, scene.label

    def instances(self, index: int) -> tuple[list[dict], np.ndarray]:
        """Per-object metadata (see ``Scene.instances``) and the (H, W) int32 instance-id map of ``index``."""
        scene = self.scene(index)
        return scene.instances, scene.instance_map


# ----------------------------------------------------------------------------------------------- options

def _parse_range(text: str, cast: type) -> tuple:
    lo, _, hi = str(text).partition("-")
    return cast(lo), cast(hi or lo)


def _parse_size(text: str) -> tuple[int, int]:
    h, _, w = str(text).lower().partition("x")
    return int(h), int(w or h)


# key -> parser of its string value; n sets every split's count, train/val/test one split's.
OPTIONS: dict[str, Callable] = {
    "n": int, "train": int, "val": int, "test": int, "seed": int, "size": _parse_size,
    "objects": lambda s: _parse_range(s, int), "radius": lambda s: _parse_range(s, float),
    "line_width": lambda s: _parse_range(s, int), "blur": float, "noise": float,
}


def parse_option_string(root: str, options: dict, kind: str, example: str) -> dict:
    """'n=200,size=96x128,seed=3' -> {'n': 200, 'size': (96, 128), 'seed': 3} with ``options`` (key -> parser of its
    string); an unknown key or an unreadable value is refused naming ``kind``, the keys and ``example``. Empty -> {}."""
    out = {}
    for item in filter(None, (part.strip() for part in str(root).split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in options:
            raise DataError(f"{kind} option {item!r} is not key=value with a known key; keys: "
                            f"{', '.join(options)} (e.g. {example})")
        try:
            out[key] = options[key](value.strip())
        except ValueError as e:
            raise DataError(f"{kind} option {item!r}: cannot read {value!r} ({e})") from e
    return out


def parse_options(root: str) -> dict:
    """'n=200,size=96x128,seed=3' -> {'n': 200, 'size': (96, 128), 'seed': 3}. Empty -> {}."""
    return parse_option_string(root, OPTIONS, "synthetic", "synthetic:n=200,size=128x160,seed=3")


def build(root: str = "", split: str = "train", transform: Callable | None = None, cache: bool = False,
          seed: int = 0, **kwargs) -> SyntheticScenes:
    """The synthetic scenes of ``split`` described by the option string ``root``.

    Args:
        root: comma-separated key=value options, all optional:
            ``n`` scenes per split (default train 300, val 60, test 60), ``train``/``val``/``test`` the count of
            one split, ``seed`` the scene seed (default 0, independent of the augmentation ``seed``),
            ``size`` HxW (default 128x160), ``objects`` lo-hi per image (4-10), ``radius`` lo-hi px (3-32),
            ``line_width`` lo-hi px (1-3), ``blur`` probability (0.3), ``noise`` std in grey levels (6).
        split: "train", "val" or "test".
        seed: augmentation seed, as for every reader.
        kwargs: the same options as Python values (they override ``root``); other keywords are ignored, as
            other readers do.
    """
    options = parse_options(root)
    for key, value in kwargs.items():
        if key in OPTIONS and value is not None:
            options[key] = OPTIONS[key](value) if isinstance(value, str) else value
    n = options.get(split, options.get("n"))
    config_keys = {f.name for f in fields(SceneConfig)}
    config = replace(SceneConfig(), **{k: tuple(v) if isinstance(v, list) else v
                                       for k, v in options.items() if k in config_keys})
    return SyntheticScenes(split, n=n, config=config, transform=transform, cache=cache, seed=seed,
                           scene_seed=options.get("seed", 0))


def _palette_png(label: np.ndarray, palette: list[tuple[int, int, int]]) -> Image.Image:
    """(H, W) uint8 ids -> palette ("P") image whose indices are the ids."""
    h, w = label.shape
    image = Image.frombytes("P", (w, h), np.ascontiguousarray(label, dtype=np.uint8).tobytes())
    flat = [v for colour in palette for v in colour]
    image.putpalette(flat + [0] * (768 - len(flat)))
    return image


def write_folder(dataset: SegmentationDataset, out_dir: str | Path, split: str | None = None) -> Path:
    """Write ``dataset`` in the generic folder layout (the ``folder:`` reader reads it back).

    ::

        out_dir/images/<split>/X.png   RGB image
        out_dir/masks/<split>/X.png    palette PNG whose pixel indices are the class ids
        out_dir/classes.txt            one "name R G B" line per class, the class of id 0 first

    Args:
        dataset: any SegmentationDataset with labels (a SyntheticScenes, typically).
        split: folder name (default: ``dataset.split``, else "train").
    Returns:
        out_dir.
    """
    out_dir = Path(out_dir)
    split = split or getattr(dataset, "split", "train")
    image_dir, mask_dir = out_dir / "images" / split, out_dir / "masks" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    spec = dataset.spec
    (out_dir / "classes.txt").write_text(
        "".join(f"{name} {r} {g} {b}\n" for name, (r, g, b) in zip(spec.names, spec.palette)))
    for index in range(len(dataset)):
        image, label = dataset.load(index)
        if label is None:
            raise DataError(f"{dataset.name}: sample {index} has no label; write_folder needs labelled data")
        stem = dataset.sample_name(index)
        Image.fromarray(image).save(image_dir / f"{stem}.png")
        _palette_png(label, spec.palette).save(mask_dir / f"{stem}.png")
    return out_dir
