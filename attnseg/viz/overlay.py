"""Pictures of label maps: colour overlays, side-by-side panels, legends, palette PNGs and heat maps.

Images are (H, W, 3) uint8 RGB arrays and label maps (H, W) integer class ids, as the datasets return them
(numpy arrays or CPU tensors). Colours come from the ``LabelSpec`` palette; pixels holding the ignore index
(or any id outside the classes) are drawn as "no label": the image shows through.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..data.labels import LabelSpec

PANEL_GAP = 4  # pixels between panels of side_by_side
TITLE_HEIGHT = 16  # pixels of the title strip above each panel
BACKGROUND = (255, 255, 255)
ERROR_COLORS = {"correct": (40, 160, 60), "wrong": (220, 40, 40), "ignored": (0, 0, 0)}

# viridis sampled at 0, 1/16, ..., 1 (matplotlib's table): the fallback when matplotlib is missing
_VIRIDIS = np.array([[68, 1, 84], [72, 24, 106], [71, 45, 123], [66, 64, 134], [59, 82, 139], [51, 99, 141],
                     [44, 114, 142], [38, 130, 142], [33, 145, 140], [31, 160, 136], [40, 174, 128],
                     [63, 188, 115], [94, 201, 98], [132, 212, 75], [173, 220, 48], [216, 226, 25],
                     [253, 231, 37]], np.float64)
_FALLBACK_CMAPS = {"viridis": _VIRIDIS, "gray": np.array([[0, 0, 0], [255, 255, 255]], np.float64)}


def _valid(label: np.ndarray, spec: LabelSpec) -> np.ndarray:
    """(H, W) bool: pixels that hold a class id (not ignore, not out of range)."""
    return (label >= 0) & (label < spec.num_classes)


def _check_pair(image: np.ndarray, label: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if label.shape != image.shape[:2]:
        raise ValueError(f"label map is {label.shape} but the image is {image.shape[:2]}; they must match")


def mix(image: np.ndarray, colour: np.ndarray, alpha: float) -> np.ndarray:
    """round((1 - alpha) * image + alpha * colour) as uint8; both (..., 3)."""
    out = (1.0 - alpha) * image.astype(np.float64) + alpha * colour.astype(np.float64)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def overlay(image: np.ndarray, label: np.ndarray, spec: LabelSpec, alpha: float = 0.5) -> np.ndarray:
    """Tint each labelled pixel with its class colour.

    Args:
        image: (H, W, 3) uint8.
        label: (H, W) class ids; ignore and out-of-range pixels keep the image unchanged.
        alpha: weight of the class colour (0 = image, 1 = colour).
    Returns:
        (H, W, 3) uint8, ``round((1 - alpha) * image + alpha * palette[label])`` on labelled pixels.
    """
    image, label = np.asarray(image), np.asarray(label)
    _check_pair(image, label)
    valid = _valid(label, spec)
    out = image.copy()
    out[valid] = mix(image[valid], np.asarray(spec.palette, np.uint8)[label[valid]], alpha)
    return out


def error_map(gt: np.ndarray, pred: np.ndarray, spec: LabelSpec) -> np.ndarray:
    """(H, W, 3) uint8: ERROR_COLORS correct / wrong / ignored (ground truth not a class) per pixel."""
    gt, pred = np.asarray(gt), np.asarray(pred)
    out = np.empty(gt.shape + (3,), np.uint8)
    out[:] = ERROR_COLORS["wrong"]
    out[gt == pred] = ERROR_COLORS["correct"]
    out[~_valid(gt, spec)] = ERROR_COLORS["ignored"]
    return out


def _font(size: int = 11) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def side_by_side(image: np.ndarray, gt: np.ndarray | None, pred: np.ndarray, spec: LabelSpec,
                 titles: tuple[str, ...] = ("image", "ground truth", "prediction", "errors"),
                 alpha: float = 0.5) -> Image.Image:
    """Panels in a row, each under its title: image, ground truth colours, prediction overlay, error map.

    Without ground truth (``gt=None``) only the image and the prediction are shown (titles 0 and 2).
    Returns:
        RGB PIL image of size (n * W + (n - 1) * PANEL_GAP, H + TITLE_HEIGHT) for n panels.
    """
    image, pred = np.asarray(image), np.asarray(pred)
    _check_pair(image, pred)
    panels = [(titles[0], image)]
    if gt is not None:
        gt = np.asarray(gt)
        _check_pair(image, gt)
        panels.append((titles[1], spec.colorize(gt)))
    panels.append((titles[2], overlay(image, pred, spec, alpha)))
    if gt is not None:
        panels.append((titles[3], error_map(gt, pred, spec)))
    return panel_grid([panels])


def panel_grid(rows: list[list[tuple[str, np.ndarray]]]) -> Image.Image:
    """Rows of titled (H, W, 3) uint8 panels of one size -> one RGB picture (rows may differ in length)."""
    h, w = rows[0][0][1].shape[:2]
    n = max(len(r) for r in rows)
    canvas = Image.new("RGB", (n * w + (n - 1) * PANEL_GAP, len(rows) * (h + TITLE_HEIGHT) + (len(rows) - 1)
                               * PANEL_GAP), BACKGROUND)
    draw, font = ImageDraw.Draw(canvas), _font()
    for r, row in enumerate(rows):
        y = r * (h + TITLE_HEIGHT + PANEL_GAP)
        for i, (title, panel) in enumerate(row):
            if panel.shape[:2] != (h, w):
                raise ValueError(f"panel {title!r} is {panel.shape[:2]}, the others {(h, w)}")
            x = i * (w + PANEL_GAP)
            canvas.paste(Image.fromarray(panel), (x, y + TITLE_HEIGHT))
            draw.text((x + 2, y + 2), title, fill=(0, 0, 0), font=font)
    return canvas


def scale_attention_figure(image: np.ndarray, pred: np.ndarray, weights: np.ndarray, scale_preds: np.ndarray,
                           spec: LabelSpec, scales, alpha: float = 0.5) -> Image.Image:
    """Attention to scale's figure: the image and the fused prediction; then, per scale s, the weight map w^s
    (viridis, 0 to 1) and the prediction of that scale alone.

    Args:
        image: (H, W, 3) uint8; pred: (H, W) ids; weights: (S, H, W) in [0, 1]; scale_preds: (S, H, W) ids.
    """
    rows = [[("image", np.asarray(image)), ("fused prediction", overlay(image, pred, spec, alpha))],
            [(f"scale {s:g} weight", blend_heatmap(image, wmap, 0.75, vmin=0.0, vmax=1.0))
             for s, wmap in zip(scales, weights)],
            [(f"scale {s:g} alone", overlay(image, p, spec, alpha)) for s, p in zip(scales, scale_preds)]]
    return panel_grid(rows)


def legend(spec: LabelSpec, swatch: int = 14, pad: int = 4) -> Image.Image:
    """One row per class: a colour swatch and the class name (id order). Returns an RGB PIL image."""
    font = _font()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    labels = [f"{i} {name}" for i, name in enumerate(spec.names)]
    text_w = max(int(np.ceil(probe.textlength(t, font=font))) for t in labels)
    row = swatch + pad
    canvas = Image.new("RGB", (pad + swatch + pad + text_w + pad, pad + row * len(labels)), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for i, (text, colour) in enumerate(zip(labels, spec.palette)):
        y = pad + i * row
        draw.rectangle([pad, y, pad + swatch - 1, y + swatch - 1], fill=colour, outline=(0, 0, 0))
        draw.text((2 * pad + swatch, y + 1), text, fill=(0, 0, 0), font=font)
    return canvas


def save_label_png(path: str | Path, ids: np.ndarray, spec: LabelSpec,
                   ignore_color: tuple[int, int, int] = (0, 0, 0)) -> Path:
    """Write (H, W) class ids as a palette ("P") PNG: pixel index = class id, colours from the spec.

    The file reads back as ids (``np.asarray(Image.open(path))`` or ``attnseg.data.read_label``) and looks
    right in any image viewer. The ignore index gets ``ignore_color``. Ids must lie in 0..255.
    """
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(f"label map must be (H, W), got shape {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() > 255):
        raise ValueError(f"palette PNGs hold ids 0..255; this map holds {int(ids.min())}..{int(ids.max())}")
    palette = np.zeros((256, 3), np.uint8)
    if 0 <= spec.ignore_index < 256:
        palette[spec.ignore_index] = ignore_color
    palette[: spec.num_classes] = np.asarray(spec.palette, np.uint8)
    h, w = ids.shape
    image = Image.frombytes("P", (w, h), np.ascontiguousarray(ids, dtype=np.uint8).tobytes())
    image.putpalette(palette.ravel().tolist())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


@functools.lru_cache(maxsize=16)
def colormap_table(cmap: str = "viridis", n: int = 256) -> np.ndarray:
    """(n, 3) uint8 colour table of a matplotlib colormap; without matplotlib, the built-in
    ``viridis`` or ``gray`` (linear interpolation of 17 samples of viridis: within 5 grey levels)."""
    try:
        import matplotlib
    except ImportError:
        table = fallback_table(cmap, n)
    else:
        table = np.rint(matplotlib.colormaps[cmap](np.linspace(0.0, 1.0, n))[:, :3] * 255).astype(np.uint8)
    table.flags.writeable = False  # shared by the cache
    return table


def fallback_table(cmap: str, n: int = 256) -> np.ndarray:
    """(n, 3) uint8 table of a built-in colormap, used when matplotlib is missing."""
    if cmap not in _FALLBACK_CMAPS:
        raise ValueError(f"colormap {cmap!r} needs matplotlib (pip install matplotlib); without it only "
                         f"{', '.join(_FALLBACK_CMAPS)} are available")
    anchors = _FALLBACK_CMAPS[cmap]
    t, at = np.linspace(0.0, 1.0, n), np.linspace(0.0, 1.0, len(anchors))
    return np.rint(np.stack([np.interp(t, at, anchors[:, c]) for c in range(3)], -1)).astype(np.uint8)


def heatmap(values: np.ndarray, cmap: str = "viridis", vmin: float | None = None,
            vmax: float | None = None) -> np.ndarray:
    """(H, W) floats -> (H, W, 3) uint8 colours. Values are scaled from [vmin, vmax] (default: their min and
    max; a constant map gives the lowest colour) to the colormap; NaN counts as vmin."""
    values = np.asarray(values, np.float64)
    if values.ndim != 2:
        raise ValueError(f"heatmap takes an (H, W) map, got shape {values.shape}")
    finite = values[np.isfinite(values)]
    lo = vmin if vmin is not None else (float(finite.min()) if finite.size else 0.0)
    hi = vmax if vmax is not None else (float(finite.max()) if finite.size else 1.0)
    scaled = np.nan_to_num((values - lo) / (hi - lo) if hi > lo else np.zeros_like(values), nan=0.0)
    table = colormap_table(cmap)
    return table[np.rint(np.clip(scaled, 0.0, 1.0) * (len(table) - 1)).astype(np.int64)]


def blend_heatmap(image: np.ndarray, values: np.ndarray, alpha: float = 0.5, cmap: str = "viridis",
                  vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """Overlay a heat map (an attention map, say) on an image.

    Args:
        image: (H, W, 3) uint8.
        values: (h, w) floats at any resolution (e.g. stride 8); resized bilinearly to (H, W).
        alpha: weight of the heat-map colour.
    Returns:
        (H, W, 3) uint8 ``round((1 - alpha) * image + alpha * heatmap(values))``.
    """
    image, values = np.asarray(image), np.asarray(values, np.float32)
    h, w = image.shape[:2]
    if values.shape != (h, w):
        values = np.asarray(Image.fromarray(values).resize((w, h), Image.BILINEAR))
    return mix(image, heatmap(values, cmap, vmin, vmax), alpha)
