"""Pictures of a proposal model's regions (MNC): the RPN's proposals, and the kept boxes with their class, score
and mask outline, drawn on the image."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .instances import instance_colours, outlines
from .overlay import _font


def _upscale_for(image: np.ndarray, min_side: int = 384) -> int:
    """An integer magnification so that thin boxes stay visible on small images."""
    return max(1, int(np.ceil(min_side / max(1, min(image.shape[:2])))))


def draw_boxes(image: np.ndarray, boxes: np.ndarray, colours: np.ndarray, texts: list[str] | None = None,
               width: int = 1) -> np.ndarray:
    """(H, W, 3) uint8 image, (N, 4) xyxy boxes in its pixels, (N, 3) colours -> an (kH, kW, 3) picture (k an
    integer magnification for small images), each box outlined and, with ``texts``, labelled at its corner."""
    k = _upscale_for(image)
    canvas = Image.fromarray(np.asarray(image, np.uint8)).resize((image.shape[1] * k, image.shape[0] * k),
                                                                 Image.NEAREST)
    draw = ImageDraw.Draw(canvas)
    font = _font(11)
    for n, (x0, y0, x1, y1) in enumerate(np.asarray(boxes, np.float64).reshape(-1, 4)):
        colour = tuple(int(c) for c in colours[n % len(colours)])
        draw.rectangle([x0 * k, y0 * k, max(x0 * k, x1 * k - 1), max(y0 * k, y1 * k - 1)], outline=colour,
                       width=width)
        if texts:
            draw.text((x0 * k + 2, y0 * k + 1), texts[n], fill=colour, font=font)
    return np.asarray(canvas)


def proposal_picture(image: np.ndarray, proposals: np.ndarray, scores: np.ndarray, top: int = 50) -> np.ndarray:
    """The ``top`` proposals by objectness, brighter for higher objectness."""
    order = np.argsort(-scores, kind="stable")[:top]
    order = order[scores[order] > 0]
    shade = (80 + 175 * scores[order]).astype(np.uint8) if len(order) else np.zeros(0, np.uint8)
    colours = np.stack([shade, shade, np.full_like(shade, 40)], 1) if len(order) else np.zeros((1, 3), np.uint8)
    return draw_boxes(image, proposals[order], colours)


def detection_picture(image: np.ndarray, ids: np.ndarray, box_ids: np.ndarray, boxes: np.ndarray,
                      labels: list[str], scores: np.ndarray) -> np.ndarray:
    """The kept instances: each mask's outline (``ids``) and its box (the instance ``box_ids``) in the instance's
    colour, labelled "class score"."""
    colours = instance_colours(int(max(ids.max(initial=0), max(box_ids, default=0))))
    base = np.asarray(image, np.uint8).copy()
    edge = outlines(ids)
    base[edge] = colours[ids[edge]]
    texts = [f"{c} {s:.2f}" for c, s in zip(labels, scores)]
    return draw_boxes(base, boxes, colours[np.asarray(box_ids, np.int64)], texts)
