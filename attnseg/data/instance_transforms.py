"""Joint transforms of an image and its instance id map that keep the ids: an instance keeps its id through every
transform (never renumbered), and one cut by a crop below ``min_pixels`` becomes background.

Each transform is ``t(image (H, W, 3) uint8, ids (H, W) int, rng: np.random.Generator) -> (image, ids)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image


def d4(a: np.ndarray, k: int) -> np.ndarray:
    """The k-th of the eight symmetries of the square (k = 0..7): rotation by 90°·(k mod 4), then a transpose for
    k >= 4. Works on (H, W) and (H, W, C) arrays."""
    if not 0 <= k < 8:
        raise ValueError(f"d4 takes k in 0..7, not {k}")
    out = np.rot90(a, k % 4, axes=(0, 1))
    return np.ascontiguousarray(out.swapaxes(0, 1) if k >= 4 else out)


@dataclass
class RandomD4:
    """One of the eight flips / rotations / transposes, uniformly (CVPPP's augmentation)."""

    def __call__(self, image, ids, rng):
        k = int(rng.integers(8))
        return d4(image, k), d4(ids, k)


@dataclass
class RandomScale:
    """Resize by a factor uniform in [lo, hi]: bilinear for the image, nearest for the ids."""
    lo: float = 0.75
    hi: float = 1.25

    def __call__(self, image, ids, rng):
        s = float(rng.uniform(self.lo, self.hi))
        H, W = ids.shape
        size = (max(1, round(W * s)), max(1, round(H * s)))
        image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
        ids = np.asarray(Image.fromarray(ids.astype(np.int32), mode="I").resize(size, Image.NEAREST)).astype(ids.dtype)
        return image, ids


@dataclass
class RandomCrop:
    """A random (h, w) window (zero padding, background ids, where the image is smaller); an instance left with
    fewer than ``min_pixels`` pixels (and less than half of itself) becomes background."""
    size: tuple[int, int]
    min_pixels: int = 8

    def __call__(self, image, ids, rng):
        h, w = self.size
        H, W = ids.shape
        ph, pw = max(h - H, 0), max(w - W, 0)
        if ph or pw:
            image = np.pad(image, ((0, ph), (0, pw), (0, 0)))
            ids = np.pad(ids, ((0, ph), (0, pw)))
            H, W = ids.shape
        y, x = int(rng.integers(H - h + 1)), int(rng.integers(W - w + 1))
        before = np.bincount(ids.ravel())
        image, ids = image[y:y + h, x:x + w].copy(), ids[y:y + h, x:x + w].copy()
        after = np.bincount(ids.ravel(), minlength=len(before))
        cut = (after > 0) & (after < self.min_pixels) & (2 * after < before)
        cut[0] = False
        if cut.any():
            ids[cut[ids]] = 0
        return image, ids


@dataclass
class Photometric:
    """Brightness and contrast jitter (the ids are untouched)."""
    brightness: float = 0.2
    contrast: float = 0.2

    def __call__(self, image, ids, rng):
        x = image.astype(np.float32)
        mean = x.mean()
        x = (x - mean) * (1 + rng.uniform(-self.contrast, self.contrast)) + mean
        x = x * (1 + rng.uniform(-self.brightness, self.brightness))
        return np.clip(np.rint(x), 0, 255).astype(np.uint8), ids


@dataclass
class Compose:
    transforms: list

    def __call__(self, image, ids, rng):
        for t in self.transforms:
            image, ids = t(image, ids, rng)
        return image, ids
