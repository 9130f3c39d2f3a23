"""From per-pixel predictions to instance id maps: the two post-processing steps of attnseg's proposal-free
instance baselines.

- ``watershed_instances``: foreground + boundary maps (the DSB2018 winners' recipe, "topcoders": a U-Net
  predicting masks and borders; seeds where the mask is confident and the border is not; watershed of the
  foreground from those seeds), with scikit-image's ``watershed``.
- ``cluster_embeddings``: the discriminative-loss baseline (De Brabandere et al. 2017, arXiv 1708.02551):
  mean shift of the foreground pixels' embeddings with bandwidth δ_v (``mean_shift``: scikit-learn's algorithm,
  seeded on a grid of bins, vectorised over the seeds), each cluster one instance.

Both return (H, W) int32 id maps (0 = background, instances 1..N, ordered by first pixel in raster order), with
instances under ``min_size`` pixels removed.
"""

from __future__ import annotations

import numpy as np


def _relabel(ids: np.ndarray, min_size: int) -> np.ndarray:
    """Ids 1..N in raster order of first appearance, instances below ``min_size`` pixels set to 0."""
    flat = ids.ravel()
    counts = np.bincount(flat)
    small = counts < min_size
    small[0] = True
    values, first = np.unique(flat, return_index=True)
    order = [v for _, v in sorted(zip(first, values)) if not small[v]]
    table = np.zeros(len(counts), np.int32)
    table[order] = np.arange(1, len(order) + 1, dtype=np.int32)
    return table[ids]


def watershed_instances(fg: np.ndarray, boundary: np.ndarray, fg_threshold: float = 0.5,
                        seed_threshold: float = 0.7, boundary_threshold: float = 0.3,
                        min_size: int = 8, min_seed: int = 4) -> np.ndarray:
    """fg, boundary: (H, W) probabilities. Seeds: the connected regions where ``fg > seed_threshold`` and
    ``boundary < boundary_threshold`` (seeds under ``min_seed`` px dropped); flooded by watershed over ``-fg``
    within ``fg > fg_threshold``."""
    from scipy import ndimage
    try:
        from skimage.segmentation import watershed
    except ImportError:
        raise ImportError("the watershed of the foreground + boundary models needs scikit-image: "
                          "pip install -e '.[instances]'") from None
    fg, boundary = np.asarray(fg, np.float64), np.asarray(boundary, np.float64)
    if fg.shape != boundary.shape or fg.ndim != 2:
        raise ValueError(f"foreground and boundary must be (H, W) maps of one size; got {fg.shape} and "
                         f"{boundary.shape}")
    seeds, _ = ndimage.label((fg > seed_threshold) & (boundary < boundary_threshold))
    seeds = _relabel(seeds, min_seed)
    ids = watershed(-fg, markers=seeds, mask=fg > fg_threshold)
    return _relabel(ids.astype(np.int64), min_size)


def mean_shift(x: np.ndarray, bandwidth: float, max_iter: int = 300, chunk: int = 4096) -> np.ndarray:
    """Flat-kernel mean shift of points x (n, D) seeded on a grid of bins -> cluster centres (C, D), densest first.

    The algorithm of scikit-learn's ``MeanShift(bandwidth, bin_seeding=True)`` (Comaniciu & Meer 2002): seeds are
    the centres of the occupied bins of side ``bandwidth`` (round(x / bandwidth) * bandwidth); each moves to the mean
    of the points within ``bandwidth`` until it moves less than 1e-3 bandwidth; converged centres are ranked by how
    many points lie within ``bandwidth`` and a centre closer than ``bandwidth`` to a denser one is dropped.
    Written here, vectorised over all seeds at once, because scikit-learn runs one neighbour query per seed and
    step: on one DSB2018 val image (538 seeds, one thread) ``cluster_embeddings`` took 2.9 s with scikit-learn
    and 0.17 s with this (tests compare the two).
    """
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or not len(x):
        raise ValueError(f"mean_shift takes points (n, D) with n >= 1, got shape {x.shape}")
    if not bandwidth > 0:
        raise ValueError(f"the bandwidth must be > 0, not {bandwidth}")
    r2 = bandwidth ** 2
    xx = (x ** 2).sum(1)                                                  # (n,)

    def within(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(len(c), D) sums and (len(c),) counts of the points within bandwidth of each centre, in chunks."""
        sums, counts = np.zeros_like(c), np.zeros(len(c))
        for lo in range(0, len(x), chunk):
            xs = x[lo:lo + chunk]
            d2 = (c ** 2).sum(1)[:, None] + xx[None, lo:lo + chunk] - 2 * c @ xs.T     # (len(c), chunk)
            w = (d2 <= r2).astype(np.float64)
            sums += w @ xs
            counts += w.sum(1)
        return sums, counts

    centres = np.unique(np.round(x / bandwidth), axis=0) * bandwidth     # (S, D) bin seeds
    density = np.zeros(len(centres))   # points within bandwidth of the mean before the last step (as scikit-learn)
    active = np.ones(len(centres), bool)
    for _ in range(max_iter):
        if not active.any():
            break
        idx = np.nonzero(active)[0]
        sums, counts = within(centres[idx])
        density[idx] = counts
        empty = counts == 0
        new = np.where(empty[:, None], centres[idx], sums / np.maximum(counts, 1)[:, None])
        moved = np.linalg.norm(new - centres[idx], axis=1)
        centres[idx] = new
        active[idx[(moved <= 1e-3 * bandwidth) | empty]] = False
    keep = density > 0
    centres, density = centres[keep], density[keep]
    # densest first, ties by the centre's coordinates, both descending (scikit-learn's order)
    order = np.lexsort(tuple(-centres.T[::-1]) + (-density,))
    kept: list[int] = []
    for i in order:                                                      # drop centres within bandwidth of a kept one
        if not kept or np.min(((centres[kept] - centres[i]) ** 2).sum(1)) > r2:
            kept.append(i)
    return centres[kept]


def nearest_centre(x: np.ndarray, centres: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Index of the nearest centre (C, D) of every point x (n, D), in chunks (memory n x C at most per chunk)."""
    cc = (centres ** 2).sum(1)
    out = np.empty(len(x), np.int64)
    for lo in range(0, len(x), chunk):
        xs = x[lo:lo + chunk]
        out[lo:lo + chunk] = (cc[None] - 2 * xs @ centres.T).argmin(1)
    return out


def cluster_embeddings(emb: np.ndarray, fg: np.ndarray, bandwidth: float = 0.5, fg_threshold: float = 0.5,
                       min_size: int = 8, max_pixels: int = 20000, seed: int = 0,
                       split_components: bool = False) -> np.ndarray:
    """emb: (D, H, W) embedding; fg: (H, W) foreground probability. Mean shift (``mean_shift``, bandwidth δ_v) on
    up to ``max_pixels`` sampled foreground pixels; every foreground pixel joins its nearest cluster centre.
    ``split_components``: a cluster made of several connected regions (8-connectivity) becomes one instance per
    region."""
    emb, fg = np.asarray(emb, np.float64), np.asarray(fg)
    if emb.ndim != 3 or emb.shape[1:] != fg.shape:
        raise ValueError(f"the embedding must be (D, H, W) over the (H, W) foreground; got {emb.shape} and "
                         f"{fg.shape}")
    mask = fg > fg_threshold
    ids = np.zeros(fg.shape, np.int64)
    if mask.sum() == 0:
        return ids.astype(np.int32)
    x = emb[:, mask].T                                                    # (n, D)
    rng = np.random.default_rng(seed)
    fit = x[rng.choice(len(x), size=min(max_pixels, len(x)), replace=False)]
    centres = mean_shift(fit, bandwidth)                                  # (C, D)
    ids[mask] = nearest_centre(x, centres) + 1
    if split_components:
        from scipy import ndimage
        parts = np.zeros_like(ids)
        offset = 0
        for k, sl in enumerate(ndimage.find_objects(ids), start=1):      # each cluster within its bounding box
            if sl is None:
                continue
            comp, n = ndimage.label(ids[sl] == k, structure=np.ones((3, 3)))
            parts[sl][comp > 0] = comp[comp > 0] + offset
            offset += n
        ids = parts
    return _relabel(ids, min_size)
