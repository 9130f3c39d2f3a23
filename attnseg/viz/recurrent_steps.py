"""Pictures of a recurrent instance model's sequence (Ren & Zemel): for every step the attention box on the image,
the glimpse patch, the mask, the canvas after the step and the score, as one strip (a column per step) and as the
frames of an animated GIF, ending with the instance map, each instance labelled by the step that found it.

Input: the model's maps of one image (``RecurrentAttention.dense``: ``masks`` (T, H, W), ``scores`` (T,), ``boxes``
(T, 4) y0, x0, y1, x1 in image pixels, ``glimpses`` (T, 3, K, K) normalised image values), the image (H, W, 3)
uint8, the id map ``group`` made (id = step + 1) and the number of steps kept. Steps after the first rejected one
are not drawn; the first rejected step is, marked "stop".
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .instances import instance_colours, instance_overlay
from .overlay import blend_heatmap

CELL = 128
CAPTION = 16


def _resize(a: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    return np.asarray(Image.fromarray(a).resize((size[1], size[0]), Image.NEAREST if nearest else Image.BILINEAR))


def _fit(image: np.ndarray, cell: int) -> tuple[np.ndarray, float]:
    """The image scaled so that its longer side is ``cell`` (and the factor)."""
    H, W = image.shape[:2]
    f = cell / max(H, W)
    return _resize(image, (max(1, round(H * f)), max(1, round(W * f)))), f


def _pad(a: np.ndarray, cell: int) -> np.ndarray:
    out = np.full((cell, cell, 3), 255, np.uint8)
    out[:a.shape[0], :a.shape[1]] = a
    return out


def _glimpse_rgb(g: np.ndarray, cell: int) -> np.ndarray:
    """(3, K, K) normalised values -> (cell, cell, 3) uint8, stretched to the glimpse's own range."""
    g = np.asarray(g, np.float32).transpose(1, 2, 0)
    lo, hi = float(g.min()), float(g.max())
    rgb = ((g - lo) / max(hi - lo, 1e-6) * 255).astype(np.uint8)
    return _resize(rgb, (cell, cell), nearest=True)


def _caption(panel: np.ndarray, text: str, colour=(0, 0, 0)) -> np.ndarray:
    out = np.full((panel.shape[0] + CAPTION, panel.shape[1], 3), 255, np.uint8)
    out[CAPTION:] = panel
    im = Image.fromarray(out)
    ImageDraw.Draw(im).text((3, 2), text, fill=colour)
    return np.asarray(im)


def step_cells(image: np.ndarray, maps: dict, kept: int, cell: int = CELL) -> list[list[np.ndarray]]:
    """Per drawn step t: [image with the box, glimpse, mask on the image, canvas after t], each (cell, cell, 3)."""
    masks, boxes = maps["masks"], maps["boxes"]
    T = len(masks)
    shown = min(T, kept + 1)
    small, f = _fit(image, cell)
    rows = []
    canvas = np.zeros(masks.shape[1:], np.float32)
    palette = instance_colours(T + 1)                                 # colour 0 is the background's
    for t in range(shown):
        canvas = np.maximum(canvas, masks[t])
        boxed = Image.fromarray(small.copy())
        y0, x0, y1, x1 = (np.asarray(boxes[t], np.float64) * f).tolist()
        colour = tuple(int(c) for c in palette[t + 1]) if t < kept else (128, 128, 128)
        ImageDraw.Draw(boxed).rectangle([x0, y0, x1 - 1, y1 - 1], outline=colour, width=2)
        glimpse = (_glimpse_rgb(maps["glimpses"][t], cell) if "glimpses" in maps
                   else np.full((cell, cell, 3), 255, np.uint8))
        mask = _fit(blend_heatmap(image, masks[t]), cell)[0]
        canv = _fit(blend_heatmap(image, canvas), cell)[0]
        rows.append([_pad(np.asarray(boxed), cell), glimpse, _pad(mask, cell), _pad(canv, cell)])
    return rows


def labelled_instances(image: np.ndarray, ids: np.ndarray, cell: int | None = None) -> np.ndarray:
    """The instances in colour on the image, each with its id (the step that found it, 1-based) at its centroid."""
    over = instance_overlay(image, ids)
    f = 1.0
    if cell is not None:
        over, f = _fit(over, cell)
    im = Image.fromarray(over)
    draw = ImageDraw.Draw(im)
    for k in np.unique(ids):
        if k == 0:
            continue
        ys, xs = np.nonzero(ids == k)
        cy, cx = ys.mean() * f, xs.mean() * f
        draw.text((cx - 4, cy - 5), str(int(k)), fill=(255, 255, 255), stroke_width=2, stroke_fill=(0, 0, 0))
    return np.asarray(im)


ROW_TITLES = ("box", "glimpse", "mask", "canvas")


def step_strip(image: np.ndarray, maps: dict, ids: np.ndarray, kept: int, cell: int = CELL,
               rows: list | None = None) -> np.ndarray:
    """One picture: a column per step (box on the image, glimpse, mask, canvas, score above), then the instance map.
    ``rows``: ``step_cells``' output when the caller already has it."""
    rows = step_cells(image, maps, kept, cell) if rows is None else rows
    scores = maps["scores"]
    cols = []
    for t, cells in enumerate(rows):
        col = np.concatenate(cells, 0)                                  # (4·cell, cell, 3)
        stop = t >= kept
        cols.append(_caption(col, f"{t + 1}: s={scores[t]:.2f}" + (" stop" if stop else ""),
                             (160, 0, 0) if stop else (0, 0, 0)))
    final = _pad(labelled_instances(image, ids, cell), cell)
    final = np.concatenate([final, np.full((3 * cell, cell, 3), 255, np.uint8)], 0)
    cols.append(_caption(final, f"{len(np.unique(ids)) - 1} found"))
    gap = np.full((cols[0].shape[0], 4, 3), 255, np.uint8)
    strip = np.concatenate([c for col in cols for c in (col, gap)][:-1], 1)
    labels = np.full((strip.shape[0], 52, 3), 255, np.uint8)
    im = Image.fromarray(labels)
    draw = ImageDraw.Draw(im)
    for i, name in enumerate(ROW_TITLES):
        draw.text((3, CAPTION + i * cell + cell // 2 - 6), name, fill=(0, 0, 0))
    return np.concatenate([np.asarray(im), strip], 1)


def step_frames(image: np.ndarray, maps: dict, ids: np.ndarray, kept: int, cell: int = CELL,
                rows: list | None = None) -> list[np.ndarray]:
    """The frames of the animation: per drawn step [box | glimpse | mask | canvas] captioned with the step and its
    score, then the labelled instance map on a frame of the same size. ``rows`` as in ``step_strip``."""
    rows = step_cells(image, maps, kept, cell) if rows is None else rows
    frames = []
    scores = maps["scores"]
    for t, cells in enumerate(rows):
        stop = t >= kept
        frames.append(_caption(np.concatenate(cells, 1), f"step {t + 1}: score {scores[t]:.2f}"
                               + (" < threshold: stop" if stop else ""), (160, 0, 0) if stop else (0, 0, 0)))
    final = np.full((cell, 4 * cell, 3), 255, np.uint8)
    final[:, :cell] = _pad(labelled_instances(image, ids, cell), cell)
    frames.append(_caption(final, f"{len(np.unique(ids)) - 1} instances, each labelled by its step"))
    return frames


def step_pictures(image: np.ndarray, maps: dict, ids: np.ndarray, kept: int) -> tuple[np.ndarray, bytes]:
    """(the strip, the animated GIF), the per-step cells drawn once for both."""
    rows = step_cells(image, maps, kept)
    return (step_strip(image, maps, ids, kept, rows=rows),
            gif_bytes(step_frames(image, maps, ids, kept, rows=rows)))


def gif_bytes(frames: list[np.ndarray], ms: int = 700) -> bytes:
    """Frames (h, w, 3) uint8 of one size -> an animated GIF (the last frame held three times as long)."""
    import io
    ims = [Image.fromarray(f).convert("P", palette=Image.ADAPTIVE, colors=255) for f in frames]
    buf = io.BytesIO()
    durations = [ms] * (len(ims) - 1) + [ms * 3]
    ims[0].save(buf, format="GIF", save_all=True, append_images=ims[1:], duration=durations, loop=0)
    return buf.getvalue()
