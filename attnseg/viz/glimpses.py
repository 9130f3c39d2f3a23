"""Glimpses drawn on the image, step by step: what ``attnseg predict --attention``, the web page and a training
run's ``pictures/`` show for the attention-over-locations classifiers.

A model's ``glimpses(out, b)`` lists its steps, each ``{"step": t, "kind": ...}`` in input pixel coordinates
(x, y, edge convention: pixel j spans [j, j + 1)):

- ``"boxes"`` (RAM): ``boxes`` (k, 4) xyxy, one per scale of the glimpse sensor, and ``location`` l_t in [−1, 1]²;
- ``"grid"`` (DRAW read): ``points`` (N, N, 2) the filter means (pixel centres), ``sigma`` the Gaussians' σ;
- ``"sampling_grid"`` (spatial transformer): ``points`` (h, w, 2) the source points, and ``patch`` the warped
  input (h, w) the CNN sees.

``glimpse_panels`` draws one panel per step (the steps so far faded, the current one bright), ``glimpse_strip``
puts them in a row under a title; ``glimpse_pictures`` returns them as named ``Picture`` objects.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

#: one colour per step (cycled), bright on a dark digit canvas
STEP_COLOURS = [(255, 80, 80), (255, 170, 40), (240, 230, 60), (80, 220, 90), (60, 200, 230), (90, 120, 255),
                (200, 90, 255), (255, 110, 200)]


def _canvas(image: np.ndarray, scale: int) -> Image.Image:
    a = np.asarray(image)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, 2)
    if a.dtype != np.uint8:
        a = (np.clip(a, 0, 1) * 255).astype(np.uint8)
    return Image.fromarray(a[..., :3]).resize((a.shape[1] * scale, a.shape[0] * scale), Image.NEAREST)


def _draw_step(draw: ImageDraw.ImageDraw, step: dict, scale: int, colour, current: bool) -> None:
    width = 2 if current else 1
    if step["kind"] == "boxes":
        for x0, y0, x1, y1 in np.asarray(step["boxes"], np.float64):
            draw.rectangle([x0 * scale, y0 * scale, x1 * scale - 1, y1 * scale - 1], outline=colour, width=width)
    elif step["kind"] == "grid":
        pts = np.asarray(step["points"], np.float64)                     # (N, N, 2) pixel-centre (x, y)
        px = (pts + 0.5) * scale
        r = max(1.0, 0.6 * scale) if current else max(1.0, 0.35 * scale)
        for x, y in px.reshape(-1, 2):
            draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
        corners = px[[0, 0, -1, -1], [0, -1, -1, 0]]
        s = step.get("sigma", 0.0) * scale
        draw.polygon([tuple(c) for c in corners], outline=colour)
        if current and s > 0:  # one σ around the grid: how far the Gaussians reach beyond their means
            (x0, y0), (x1, y1) = px[0, 0], px[-1, -1]
            draw.rectangle([min(x0, x1) - s, min(y0, y1) - s, max(x0, x1) + s, max(y0, y1) + s], outline=colour)
    elif step["kind"] == "sampling_grid":
        pts = np.asarray(step["points"], np.float64) * scale             # (h, w, 2) edge coordinates (x, y)
        h, w = pts.shape[:2]
        outline = [pts[0, 0], pts[0, -1], pts[-1, -1], pts[-1, 0]]
        draw.polygon([tuple(p) for p in outline], outline=colour, width=width)
        every = max(1, h // 8)
        for i in range(0, h, every):
            for j in range(0, w, every):
                x, y = pts[i, j]
                draw.rectangle([x - 1, y - 1, x + 1, y + 1], fill=colour)
    else:
        raise ValueError(f"unknown glimpse kind {step['kind']!r}; expected boxes, grid or sampling_grid")


def glimpse_panels(image: np.ndarray, steps: list[dict], scale: int | None = None) -> list[np.ndarray]:
    """One (H·s, W·s, 3) uint8 panel per step: the steps before it thin, the step itself thick; a transformer's
    panel is followed by the warped patch it hands to the CNN."""
    H = np.asarray(image).shape[0]
    scale = scale or max(1, round(240 / H))
    panels = []
    for t, step in enumerate(steps):
        canvas = _canvas(image, scale)
        draw = ImageDraw.Draw(canvas)
        for prev in steps[:t]:
            _draw_step(draw, prev, scale, tuple(c // 2 for c in STEP_COLOURS[prev["step"] % 8]), False)
        _draw_step(draw, step, scale, STEP_COLOURS[step["step"] % 8], True)
        if step["kind"] == "boxes":  # the centre of the glimpse
            x0, y0, x1, y1 = np.asarray(step["boxes"][0], np.float64) * scale
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            draw.line([cx - 4, cy, cx + 4, cy], fill=(255, 255, 255))
            draw.line([cx, cy - 4, cx, cy + 4], fill=(255, 255, 255))
        draw.text((4, 2), f"{step['step'] + 1}", fill=STEP_COLOURS[step["step"] % 8])
        panels.append(np.asarray(canvas))
        if step["kind"] == "sampling_grid" and "patch" in step:
            patch = np.asarray(step["patch"], np.float32)
            side = panels[-1].shape[0]
            p = (np.clip(patch, 0, 1) * 255).astype(np.uint8)
            panels.append(np.asarray(Image.fromarray(p).convert("RGB").resize((side, side), Image.NEAREST)))
    return panels


def glimpse_strip(image: np.ndarray, steps: list[dict], title: str = "", scale: int | None = None) -> np.ndarray:
    """The panels in a row (4 px apart) under a title line: (h, w, 3) uint8."""
    panels = glimpse_panels(image, steps, scale) or [np.asarray(_canvas(image, scale or 1))]
    h = max(p.shape[0] for p in panels)
    gap = np.full((h, 4, 3), 40, np.uint8)
    row = np.concatenate([x for p in panels for x in (np.pad(p, ((0, h - p.shape[0]), (0, 0), (0, 0))), gap)][:-1],
                         1)
    head = Image.new("RGB", (row.shape[1], 16), (20, 20, 20))
    ImageDraw.Draw(head).text((4, 2), title, fill=(235, 235, 235))
    return np.concatenate([np.asarray(head), row], 0)


def glimpse_pictures(image: np.ndarray, steps: list[dict], title: str = ""):
    """``(list of Picture, notes)``: the strip ``glimpses`` and each step ``glimpse_<t>`` (the transformer's warped
    input as ``st_patch``)."""
    from .pictures import Picture
    if not steps:
        return [], ["this model has no glimpses (a plain CNN sees the whole image at once)"]
    pics = [Picture("glimpses", title or f"{len(steps)} glimpses, step by step", glimpse_strip(image, steps, title))]
    panels = glimpse_panels(image, steps)
    names = []
    for step in steps:
        names.append((f"glimpse_{step['step'] + 1}", f"glimpse {step['step'] + 1} of {len(steps)}"))
        if step["kind"] == "sampling_grid" and "patch" in step:
            names.append(("st_patch", "what the CNN sees (the transformed input)"))
    pics += [Picture(n, t, p) for (n, t), p in zip(names, panels)]
    return pics, []
