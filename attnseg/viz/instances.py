"""Pictures of instance id maps: one distinct colour per instance, outlines, and the RLE/JSON form of the masks.

``instance_colours`` spreads hues by the golden angle (neighbouring ids get far-apart hues) at fixed saturation and
value, deterministic by id, so the same id has the same colour in every picture of a run.
"""

from __future__ import annotations

import colorsys

import numpy as np

GOLDEN = 0.618033988749895


def instance_colours(n: int) -> np.ndarray:
    """(n + 1, 3) uint8: row 0 black (background), row k the colour of instance k."""
    out = np.zeros((n + 1, 3), np.uint8)
    for k in range(1, n + 1):
        h = (k * GOLDEN) % 1.0
        s, v = (0.65, 0.95) if k % 2 else (0.9, 0.8)
        out[k] = np.rint(np.array(colorsys.hsv_to_rgb(h, s, v)) * 255)
    return out


def outlines(ids: np.ndarray) -> np.ndarray:
    """(H, W) bool: instance pixels with a 4-neighbour of another id (or the image border)."""
    ids = np.asarray(ids)
    pad = np.pad(ids, 1, mode="constant", constant_values=-1)
    edge = np.zeros(ids.shape, bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        edge |= pad[dy:dy + ids.shape[0], dx:dx + ids.shape[1]] != ids
    return edge & (ids > 0)


def instance_overlay(image: np.ndarray, ids: np.ndarray, alpha: float = 0.45, outline: bool = True,
                     outline_colour=(255, 255, 255)) -> np.ndarray:
    """(H, W, 3) uint8: the image with each instance tinted in its colour and (``outline``) its boundary drawn."""
    image, ids = np.asarray(image), np.asarray(ids)
    if image.shape[:2] != ids.shape:
        raise ValueError(f"the image is {image.shape[1]}x{image.shape[0]} but the instance map "
                         f"{ids.shape[1]}x{ids.shape[0]}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], not {alpha}")
    colours = instance_colours(int(ids.max(initial=0)))
    fg = ids > 0
    out = image.astype(np.float32).copy()
    out[fg] = (1 - alpha) * out[fg] + alpha * colours[ids[fg]]
    if outline:
        out[outlines(ids)] = outline_colour
    return np.rint(out).clip(0, 255).astype(np.uint8)


def instance_picture(ids: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: the id map in its instance colours on black."""
    return instance_colours(int(np.asarray(ids).max(initial=0)))[np.asarray(ids)]


def rle_encode(mask: np.ndarray, offset: tuple[int, int] = (0, 0), size: tuple[int, int] | None = None) -> dict:
    """COCO's uncompressed RLE of a bool mask: ``{"size": [H, W], "counts": [...]}``, run lengths in column-major
    (Fortran) order, starting with a run of zeros (possibly empty). ``mask`` may be the crop of an (H, W) = ``size``
    mask at ``offset`` (y0, x0) whose pixels outside the crop are all 0 (an instance's box): the cost is the crop's
    area, not the image's."""
    mask = np.asarray(mask, bool)
    if mask.ndim != 2:
        raise ValueError(f"a mask must be (H, W), got shape {mask.shape}")
    H, W = mask.shape if size is None else size
    y0, x0 = offset
    # column-major positions of the set pixels in the full image, increasing (the crop's columns in order)
    cols, rows = np.nonzero(mask.T)
    pos = (cols + x0).astype(np.int64) * H + (rows + y0)
    if not len(pos):
        return {"size": [int(H), int(W)], "counts": [int(H * W)]}
    breaks = np.flatnonzero(np.diff(pos) != 1) + 1
    starts = pos[np.concatenate([[0], breaks])]
    ends = pos[np.concatenate([breaks - 1, [len(pos) - 1]])] + 1      # exclusive
    zeros = starts - np.concatenate([[0], ends[:-1]])                  # the zero run before each run of ones
    counts = np.empty(2 * len(starts), np.int64)
    counts[0::2], counts[1::2] = zeros, ends - starts
    tail = H * W - ends[-1]
    out = counts.tolist() + ([int(tail)] if tail else [])
    return {"size": [int(H), int(W)], "counts": [int(c) for c in out]}


def rle_decode(rle: dict) -> np.ndarray:
    """The inverse of ``rle_encode``."""
    H, W = rle["size"]
    counts = np.asarray(rle["counts"], np.int64)
    if counts.sum() != H * W:
        raise ValueError(f"RLE counts sum to {int(counts.sum())}, not H*W = {H * W}")
    values = np.arange(len(counts)) % 2
    return np.repeat(values, counts).astype(bool).reshape((W, H)).T


def comparison_panel(image: np.ndarray, gt: np.ndarray, pred: np.ndarray, gap: int = 4) -> np.ndarray:
    """(H, 3W + 2 gap, 3) uint8: the image, the ground truth and the prediction, each as colours with outlines."""
    parts = [np.asarray(image, np.uint8), instance_overlay(image, gt), instance_overlay(image, pred)]
    H = parts[0].shape[0]
    spacer = np.full((H, gap, 3), 255, np.uint8)
    return np.concatenate([parts[0], spacer, parts[1], spacer, parts[2]], 1)
