"""What one pixel attends to: the query's slice of every attention map of a FLANet-family model, and its figure.

The maps are the tensors of ``model(x, return_attention=True)["attention"]`` (torch tensors or numpy arrays;
nothing here imports a model). All spatial maps live on one feature grid (H', W'), given by ``att["grid"]``
((B, 2), stride 8 of the input):

- ``nonlocal`` / ``position`` (B, H'W', h'w'), row-stochastic: the query's row ``y'·W' + x'`` is the weights with
  which the query pixel gathers the keys. Keys lie on (H', W'), or with ``sub_sample`` on the 2x2-max-pooled grid
  (⌈H'/2⌉, ⌈W'/2⌉); the key count tells which.
- ``criss_cross`` (B, R, H', W', h' + w'): per recurrence, the weights over the query's column (``[:h']``, its own
  row masked to 0) and its row (``[h':]``). With ``sub_sample`` the keys are the pooled column x'//2 and the pooled
  row y'//2 of the (h', w') = (⌈H'/2⌉, ⌈W'/2⌉) grid. Shown: the first recurrence's cross, and (without sub-sampling)
  the recurrences composed, M = A_R ··· A_1 (for R = 2, ``M(p→r) = Σ_q A2[p, q] · A1[q, r]``): how much of pixel
  r's value reaches p through the chain of attention weights alone, *ignoring the value projections, gamma and the
  residual connections* between the recurrences (so it is the flow of the attention, not an exact influence).
- ``fla_column`` (B, W', C, C) / ``fla_row`` (B, H', C, C): FLA's channel-attention map of every column / row
  slice; the query's column x' and row y' are picked. ``channel`` (B, C, C): DANet's CAM, one map per image. These
  are not spatial: they are drawn as C×C heat maps (row c: the weights channel c gathers the channels with).

Query geometry: a query is an image pixel (y, x) of the full-resolution (H, W) input. FLANet upsamples its output
with ``align_corners=True``, i.e. the first and last feature rows/columns sit on the first and last image rows/
columns, so the query's feature cell is ``y' = floor(y·(H'−1)/(H−1) + 1/2)`` (and x' alike; 0 when H or H' is 1).
The drawn heat maps are resized by ``blend_heatmap`` (bilinear, cell-centred), so a peak may sit up to half a
feature cell (4 px) from the query mark: the two geometries differ by that much at the borders.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from .overlay import BACKGROUND, blend_heatmap, heatmap, panel_grid

MIN_PANEL = 256  # the figure's panels are upscaled (nearest) until their shorter side is at least this
MARK_COLOR = (255, 40, 40)
DENSE_KEYS = ("nonlocal", "position")  # (B, H'W', h'w') maps
QUERY_KEYS = ("grid", *DENSE_KEYS, "criss_cross", "fla_column", "fla_row", "channel")  # what the module reads


def _np(a) -> np.ndarray:
    """A tensor (any device or dtype) or array -> float64 numpy."""
    if hasattr(a, "detach"):
        a = a.detach().float().cpu().numpy()
    return np.asarray(a, np.float64)


def check_query(query: tuple[int, int], image_size: tuple[int, int]) -> tuple[int, int]:
    """(y, x) as ints, or ValueError when the pixel is outside the (H, W) image."""
    y, x = int(query[0]), int(query[1])
    H, W = int(image_size[0]), int(image_size[1])
    if not (0 <= y < H and 0 <= x < W):
        raise ValueError(f"query ({y}, {x}) is outside the {H}x{W} image; give --query Y,X with 0 <= Y < {H} "
                         f"and 0 <= X < {W}")
    return y, x


def feature_query(query: tuple[int, int], image_size: tuple[int, int], grid: tuple[int, int]) -> tuple[int, int]:
    """The feature cell (y', x') of image pixel (y, x) on an (H', W') grid (align_corners=True geometry)."""
    y, x = check_query(query, image_size)

    def one(v: int, n: int, m: int) -> int:
        return 0 if n <= 1 or m <= 1 else min(m - 1, math.floor(v * (m - 1) / (n - 1) + 0.5))

    return one(y, image_size[0], int(grid[0])), one(x, image_size[1], int(grid[1]))


def _key_grid(n: int, grid: tuple[int, int], name: str) -> tuple[tuple[int, int], bool]:
    """The key grid of a map with n keys per query: (H', W') or the 2x2-pooled one; and whether it is pooled."""
    H, W = grid
    if n == H * W:
        return (H, W), False
    pooled = ((H + 1) // 2, (W + 1) // 2)
    if n == pooled[0] * pooled[1]:
        return pooled, True
    raise ValueError(f"attention map {name!r} has {n} keys per query; the {H}x{W} feature grid has {H * W} "
                     f"pixels and its 2x2-pooled grid {pooled[0] * pooled[1]}")


def cross_step(v: np.ndarray, a: np.ndarray) -> np.ndarray:
    """One criss-cross step of a row vector over the (H', W') pixels: ``(v @ A)`` for the dense H'W'×H'W' matrix A
    that the (H', W', H' + W') cross weights ``a`` stand for (not sub-sampled): the map that ``v``'s pixels read."""
    H = a.shape[0]
    out = np.einsum("hc,hci->ic", v, a[..., :H])     # pixel (h, c) reads its column c at rows i
    out += np.einsum("rw,rwj->rj", v, a[..., H:])    # pixel (r, w) reads its row r at columns j
    return out


def query_attention_maps(att: dict, query: tuple[int, int], image_size: tuple[int, int],
                         batch_index: int = 0) -> list[tuple[str, str, np.ndarray]]:
    """The query pixel's slice of every map in ``att`` (see the module docstring for the formats).

    Args:
        att: the attention dict with ``grid``; keys other than the FLANet family's are ignored.
        query: (y, x) in pixels of the (H, W) = ``image_size`` input.
    Returns:
        ``[(title, kind, values)]``: kind ``"spatial"`` (values (h, w) over the feature or key grid, to blend over
        the image) or ``"matrix"`` (C×C). Each title starts with a file-safe name, then ``": "`` and a description
        (``"criss_cross_r1: query's cross"``); ``map_name(title)`` gives the name.
    """
    if "grid" not in att:
        raise ValueError("the attention maps carry no 'grid' (the feature grid of FLANet-family models)")
    grid = tuple(int(v) for v in _np(att["grid"])[batch_index])
    yq, xq = feature_query(query, image_size, grid)
    H, W = grid
    maps: list[tuple[str, str, np.ndarray]] = []
    for name in DENSE_KEYS:
        if name in att:
            a = _np(att[name][batch_index])                        # (H'W', h'w')
            if a.shape[0] != H * W:
                raise ValueError(f"attention map {name!r} has {a.shape[0]} queries, the {H}x{W} grid {H * W}")
            (h, w), pooled = _key_grid(a.shape[1], grid, name)
            maps.append((f"{name}: query's row{', pooled keys' if pooled else ''}", "spatial",
                         a[yq * W + xq].reshape(h, w)))
    if "criss_cross" in att:
        a = _np(att["criss_cross"][batch_index])                  # (R, H', W', h' + w')
        if a.shape[1:3] != (H, W):
            raise ValueError(f"criss_cross maps are on a {a.shape[1]}x{a.shape[2]} grid, not the {H}x{W} one")
        n = a.shape[-1]
        if n == H + W:
            (h, w), pooled = (H, W), False
        elif n == (H + 1) // 2 + (W + 1) // 2:
            (h, w), pooled = ((H + 1) // 2, (W + 1) // 2), True
        else:
            raise ValueError(f"criss_cross maps have {n} keys per pixel; the {H}x{W} grid needs {H + W} "
                             f"({(H + 1) // 2 + (W + 1) // 2} sub-sampled)")
        yk, xk = (yq // 2, xq // 2) if pooled else (yq, xq)
        cross = np.zeros((h, w))
        cross[:, xk] += a[0, yq, xq, :h]                          # its column (own row masked: 0)
        cross[yk, :] += a[0, yq, xq, h:]                          # its row
        maps.append((f"criss_cross_r1: query's cross{', pooled keys' if pooled else ''}", "spatial", cross))
        if not pooled and len(a) > 1:
            v = np.zeros((H, W))
            v[yq, xq] = 1.0
            for step in a[::-1]:                                  # e_p A_R ... A_1
                v = cross_step(v, step)
            maps.append((f"criss_cross_composed: {len(a)} steps composed", "spatial", v))
    if "fla_column" in att:
        m = _np(att["fla_column"][batch_index, xq])               # (C, C) of column x'
        maps.append((f"fla_column_x{xq}: column x'={xq}, {len(m)}x{len(m)}", "matrix", m))
    if "fla_row" in att:
        m = _np(att["fla_row"][batch_index, yq])                  # (C, C) of row y'
        maps.append((f"fla_row_y{yq}: row y'={yq}, {len(m)}x{len(m)}", "matrix", m))
    if "channel" in att:
        m = _np(att["channel"][batch_index])                      # (C, C), image-global
        maps.append((f"channel: whole image, {len(m)}x{len(m)}", "matrix", m))
    return maps


def map_name(title: str) -> str:
    """The file-safe name that starts a title of ``query_attention_maps``."""
    return title.split(":", 1)[0]


def mark_query(panel: np.ndarray, query: tuple[int, int], scale: int = 1) -> np.ndarray:
    """A copy of an (H, W, 3) uint8 panel with a ring and a cross at pixel ``query`` (given before a ``scale``-fold
    upscaling of the panel)."""
    image = Image.fromarray(np.ascontiguousarray(panel))
    draw = ImageDraw.Draw(image)
    y, x = query[0] * scale + scale // 2, query[1] * scale + scale // 2
    r = max(4, min(image.size) // 40)
    for colour, width in (((255, 255, 255), 3), (MARK_COLOR, 1)):   # white halo under a red mark
        draw.ellipse([x - r, y - r, x + r, y + r], outline=colour, width=width)
        draw.line([x - 2 * r, y, x - r // 2, y], fill=colour, width=width)
        draw.line([x + r // 2, y, x + 2 * r, y], fill=colour, width=width)
        draw.line([x, y - 2 * r, x, y - r // 2], fill=colour, width=width)
        draw.line([x, y + r // 2, x, y + 2 * r], fill=colour, width=width)
    return np.asarray(image)


def query_heatmap(image: np.ndarray, values: np.ndarray, query: tuple[int, int], scale: int = 1,
                  alpha: float = 0.6) -> np.ndarray:
    """A spatial map blended over the image (0 to the map's maximum, viridis) with the query marked; the image is
    first upscaled ``scale``-fold (nearest)."""
    image = _upscale(np.asarray(image), scale)
    values = np.asarray(values, np.float64)
    top = float(values.max()) if values.size else 1.0
    return mark_query(blend_heatmap(image, values, alpha, vmin=0.0, vmax=top if top > 0 else 1.0), query, scale)


def _upscale(a: np.ndarray, k: int) -> np.ndarray:
    return a if k == 1 else np.repeat(np.repeat(a, k, 0), k, 1)


def matrix_panel(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A C×C map as a square heat map (viridis, min to max) centred on a white (H, W) panel: upscaled with nearest
    by an integer factor to fill the shorter side, or box-filtered down when C is larger than it."""
    H, W = size
    side = min(H, W)
    colours = heatmap(values)
    C = colours.shape[0]
    if C <= side:
        square = _upscale(colours, side // C)
    else:
        square = np.asarray(Image.fromarray(colours).resize((side, side), Image.BOX))
    out = np.empty((H, W, 3), np.uint8)
    out[:] = BACKGROUND
    y0, x0 = (H - square.shape[0]) // 2, (W - square.shape[1]) // 2
    out[y0:y0 + square.shape[0], x0:x0 + square.shape[1]] = square
    return out


def query_attention_figure(image: np.ndarray, maps: list[tuple[str, str, np.ndarray]],
                           query: tuple[int, int]) -> Image.Image:
    """One figure for one query: the image with the query marked, then each spatial map blended over the image
    (query marked; colours from 0 to the map's maximum), then (second row) each C×C map as a heat map (colours
    from its minimum to its maximum); titled panels (``panel_grid``), the colour range in each title.

    Panels are the image upscaled (nearest) by the smallest integer factor that makes their shorter side at least
    ``MIN_PANEL`` pixels, so that small images and C×C maps stay legible.
    """
    image = np.asarray(image)
    H, W = image.shape[:2]
    y, x = check_query(query, (H, W))
    scale = max(1, math.ceil(MIN_PANEL / min(H, W)))
    first = [(f"image, query ({y}, {x})", mark_query(_upscale(image, scale), (y, x), scale))]
    first += [(f"{title} [0..{np.max(v):.2g}]", query_heatmap(image, v, (y, x), scale))
              for title, kind, v in maps if kind == "spatial"]
    second = [(f"{title} [{np.min(v):.2g}..{np.max(v):.2g}]", matrix_panel(v, (H * scale, W * scale)))
              for title, kind, v in maps if kind == "matrix"]
    return panel_grid([first, second] if second else [first])
