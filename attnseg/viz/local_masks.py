"""What a segmentation-aware network sees around a pixel: the local attention masks of its layers at a query pixel,
and the per-pixel embedding as colour (its first three principal components).

Harley, Derpanis, Kokkinos, "Segmentation-Aware Convolutional Networks Using Local Attention Masks", ICCV 2017,
https://arxiv.org/abs/1708.04607 (Fig. 1 and 3 draw the embedding as colour and the masks around pixels).

The maps are those of ``model(x, return_attention=True)["attention"]`` of ``SegAwareNet`` / ``SegAwareRefiner``:
``embedding`` (B, D, H', W') and ``mask/<layer>/k<k>_d<d>`` (B, k², h, w): for every pixel of the layer's grid, the
mask values of its k×k window (dilation d, taps in raster order). A layer's grid lies over the image with feature
i at image pixel i·(H − 1)/(h − 1) (corner-aligned, as the embedding is resized for that layer).
"""

from __future__ import annotations

import re

import numpy as np
from PIL import Image, ImageDraw

from .attention_maps import _np, check_query, feature_query, mark_query
from .overlay import colormap_table, panel_grid

MASK_KEY = re.compile(r"^mask/(?P<layer>.+)/k(?P<k>\d+)_d(?P<d>\d+)$")


def parse_mask_key(name: str) -> tuple[str, int, int] | None:
    """``mask/<layer>/k<k>_d<d>`` -> (layer, k, d); None for other names."""
    m = MASK_KEY.match(name)
    return (m["layer"], int(m["k"]), int(m["d"])) if m else None


def embedding_pca_colours(e, sample: int = 20000, seed: int = 0) -> np.ndarray:
    """(D, H, W) embedding -> (H, W, 3) uint8: the first three principal components (fitted on up to ``sample``
    pixels) as RGB, all on the scale that stretches the first one from its 1st to its 99th percentile (so a weak
    component stays near grey instead of having its noise stretched). Pixels of similar embedding get similar
    colours, so the segments the embedding separates show as regions."""
    e = _np(e)
    if e.ndim != 3:
        raise ValueError(f"the embedding must be (D, H, W), got shape {e.shape}")
    D, H, W = e.shape
    flat = e.reshape(D, H * W).T                                        # (H·W, D)
    rng = np.random.default_rng(seed)
    fit = flat[rng.choice(len(flat), size=min(sample, len(flat)), replace=False)]
    mean = fit.mean(0)
    _, _, vt = np.linalg.svd(fit - mean, full_matrices=False)           # rows of vt: principal directions
    proj = (flat - mean) @ vt[:3].T                                     # (H·W, ≤3)
    if proj.shape[1] < 3:
        proj = np.pad(proj, ((0, 0), (0, 3 - proj.shape[1])))
    lo, hi = np.percentile(proj[:, 0], 1), np.percentile(proj[:, 0], 99)
    span = hi - lo if hi > lo else 1.0
    scaled = np.clip(0.5 + (proj - np.median(proj, axis=0)) / span, 0, 1)
    return np.rint(scaled * 255).astype(np.uint8).reshape(H, W, 3)


def window_taps(query: tuple[int, int], image_size: tuple[int, int], grid: tuple[int, int], k: int,
                d: int) -> list[tuple[int, float, float, bool]]:
    """The taps of the window of ``query``'s feature cell: (tap index, image y, image x, inside the grid)."""
    fy, fx = feature_query(query, image_size, grid)
    H, W = image_size
    h, w = grid
    sy = (H - 1) / (h - 1) if h > 1 else 1.0
    sx = (W - 1) / (w - 1) if w > 1 else 1.0
    r = k // 2
    taps = []
    for t in range(k * k):
        ty, tx = fy + d * (t // k - r), fx + d * (t % k - r)
        taps.append((t, ty * sy, tx * sx, 0 <= ty < h and 0 <= tx < w))
    return taps


def local_mask_panel(image: np.ndarray, mask, query: tuple[int, int], k: int, d: int) -> np.ndarray:
    """The image (dimmed) with the k×k window of ``query`` at this layer drawn as squares coloured by their mask value
    (viridis, 0 to 1; outside the image: not drawn), the query marked. mask: (k², h, w) of one image."""
    m = _np(mask)
    H, W = image.shape[:2]
    y, x = check_query(query, (H, W))
    grid = m.shape[-2:]
    fy, fx = feature_query((y, x), (H, W), grid)
    values = m[:, fy, fx]                                               # (k²,) the window's masks
    panel = Image.fromarray((np.asarray(image, np.float32) * 0.45).astype(np.uint8))
    draw = ImageDraw.Draw(panel)
    taps = window_taps((y, x), (H, W), grid, k, d)
    step = min((abs(taps[1][2] - taps[0][2]) if k > 1 else 8.0), 24.0)
    half = max(2.0, 0.4 * step)
    table = colormap_table("viridis")
    for t, ty, tx, ok in taps:
        if not ok:
            continue
        colour = tuple(int(c) for c in table[int(round(np.clip(values[t], 0, 1) * (len(table) - 1)))])
        draw.rectangle([tx - half, ty - half, tx + half, ty + half], fill=colour, outline=(255, 255, 255))
    return mark_query(np.asarray(panel), (y, x))


def pick_layers(names, max_layers: int = 6) -> list[str]:
    """One mask per distinct (grid, window) in network order: the first layer of each resolution and dilation."""
    seen, picked = set(), []
    for name, shape in names:
        parsed = parse_mask_key(name)
        if parsed is None:
            continue
        key = (tuple(shape[-2:]), parsed[1], parsed[2])
        if key not in seen:
            seen.add(key)
            picked.append(name)
    return picked[:max_layers]


def local_mask_figure(image: np.ndarray, att: dict, query: tuple[int, int], max_layers: int = 6) -> Image.Image:
    """Panels: the image with the query marked, the embedding's colours, then for up to ``max_layers`` layers
    (one per resolution and window) the query's local attention mask. att: one image's maps (batch index 0)."""
    image = np.asarray(image)
    H, W = image.shape[:2]
    y, x = check_query(query, (H, W))
    first = [("image", mark_query(image, (y, x)))]
    if "embedding" in att:
        colours = embedding_pca_colours(att["embedding"])
        colours = np.asarray(Image.fromarray(colours).resize((W, H), Image.NEAREST))
        first.append(("embedding (PCA)", mark_query(colours, (y, x))))
    layers = pick_layers([(n, a.shape) for n, a in att.items()], max_layers)
    panels = []
    for name in layers:
        layer, k, d = parse_mask_key(name)
        h, w = att[name].shape[-2:]
        panels.append((f"{layer} {k}x{k} d{d} ({h}x{w})", local_mask_panel(image, att[name], (y, x), k, d)))
    rows = [first + panels[:max(0, 4 - len(first))]]
    rest = panels[max(0, 4 - len(first)):]
    rows += [rest[i:i + 4] for i in range(0, len(rest), 4)]
    return panel_grid(rows)
