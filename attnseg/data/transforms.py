"""Joint image + label transforms.

Every random transform draws from an explicit ``torch.Generator`` handed in by the dataset, seeded from
(seed, epoch, sample index). The augmentation of a sample therefore does not depend on the number of loader
workers or on where a resumed run restarts. Label maps are only ever resampled by nearest neighbour.

Images travel as (H, W, 3) uint8 numpy arrays until ``Normalize``, which makes the (3, H, W) float tensor;
labels as (H, W) integer arrays, then an int64 tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand((), generator=g).item()


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 -> (h, w, 3) uint8, bilinear (antialiased when shrinking). size = (h, w)."""
    h, w = size
    if image.shape[:2] == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))


def resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an (H, W) id map to (h, w), any integer dtype, pixel-centre aligned."""
    h, w = size
    H, W = label.shape
    if (H, W) == (h, w):
        return label
    ys = np.minimum(((np.arange(h) + 0.5) * H / h).astype(np.int64), H - 1)
    xs = np.minimum(((np.arange(w) + 0.5) * W / w).astype(np.int64), W - 1)
    return label[ys[:, None], xs[None, :]]


class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, image, label, g: torch.Generator):
        for t in self.transforms:
            image, label = t(image, label, g)
        return image, label

    def __repr__(self):
        return "Compose(" + ", ".join(repr(t) for t in self.transforms) + ")"


@dataclass
class Resize:
    """Resize to a fixed (h, w), or by a fixed factor when ``scale`` is given."""
    size: tuple[int, int] | None = None
    scale: float | None = None

    def __call__(self, image, label, g):
        if self.scale is not None:
            size = (max(1, round(image.shape[0] * self.scale)), max(1, round(image.shape[1] * self.scale)))
        else:
            size = tuple(self.size)
        return resize_image(image, size), (None if label is None else resize_label(label, size))


@dataclass
class RandomScale:
    """Resize by a factor drawn uniformly from [lo, hi] (aspect ratio kept)."""
    lo: float = 0.5
    hi: float = 2.0

    def __call__(self, image, label, g):
        s = _uniform(g, self.lo, self.hi)
        size = (max(1, round(image.shape[0] * s)), max(1, round(image.shape[1] * s)))
        return resize_image(image, size), (None if label is None else resize_label(label, size))


@dataclass
class RandomCrop:
    """Crop (h, w); smaller inputs are padded first, image with ``pad_value`` (0) and label with ignore.
    ``cat_max_ratio`` < 1 retries (up to 10 times) crops where one class covers more than that share."""
    size: tuple[int, int]
    ignore_index: int = 255
    cat_max_ratio: float = 1.0

    def __call__(self, image, label, g):
        h, w = self.size
        H, W = image.shape[:2]
        if H < h or W < w:
            ph, pw = max(h - H, 0), max(w - W, 0)
            image = np.pad(image, ((0, ph), (0, pw), (0, 0)))
            if label is not None:
                label = np.pad(label, ((0, ph), (0, pw)), constant_values=self.ignore_index)
            H, W = image.shape[:2]
        for _ in range(10 if (self.cat_max_ratio < 1 and label is not None) else 1):
            y = int(torch.randint(0, H - h + 1, (), generator=g))
            x = int(torch.randint(0, W - w + 1, (), generator=g))
            if label is None or self.cat_max_ratio >= 1:
                break
            crop = label[y:y + h, x:x + w]
            _, counts = np.unique(crop[crop != self.ignore_index], return_counts=True)
            if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                break
        image = image[y:y + h, x:x + w]
        return image, (None if label is None else label[y:y + h, x:x + w])


@dataclass
class RandomFlip:
    """Horizontal flip with probability p."""
    p: float = 0.5

    def __call__(self, image, label, g):
        if torch.rand((), generator=g).item() < self.p:
            image = image[:, ::-1]
            label = None if label is None else label[:, ::-1]
        return image, label


@dataclass
class PhotometricJitter:
    """Brightness, contrast and saturation jitter by factors in [1-d, 1+d], and hue shift; image only."""
    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.25
    p: float = 0.8

    def __call__(self, image, label, g):
        if torch.rand((), generator=g).item() >= self.p:
            return image, label
        x = image.astype(np.float32)
        b = _uniform(g, 1 - self.brightness, 1 + self.brightness)
        c = _uniform(g, 1 - self.contrast, 1 + self.contrast)
        s = _uniform(g, 1 - self.saturation, 1 + self.saturation)
        x = x * b
        mean = x.mean()
        x = (x - mean) * c + mean
        gray = x @ np.array([0.299, 0.587, 0.114], np.float32)
        x = (x - gray[..., None]) * s + gray[..., None]
        return np.clip(x, 0, 255).astype(np.uint8), label


@dataclass
class Normalize:
    """uint8 (H, W, 3) -> float (3, H, W) normalised tensor; label -> int64 (H, W) tensor."""
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD

    def __call__(self, image, label, g):
        x = torch.from_numpy(np.require(image, requirements=("C", "W"))).permute(2, 0, 1).float().div_(255)
        x = (x - torch.tensor(self.mean).view(3, 1, 1)) / torch.tensor(self.std).view(3, 1, 1)
        y = None if label is None else torch.from_numpy(np.asarray(label, dtype=np.int64).copy())
        return x, y


def train_transforms(crop: tuple[int, int], scale=(0.5, 2.0), base_scale: float = 1.0, ignore_index: int = 255,
                     flip: bool = True, jitter: bool = True, cat_max_ratio: float = 1.0,
                     mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Compose:
    """The usual training pipeline: random scale (relative to ``base_scale``), crop with ignore padding,
    flip, photometric jitter, normalisation."""
    ts = [RandomScale(scale[0] * base_scale, scale[1] * base_scale),
          RandomCrop(tuple(crop), ignore_index, cat_max_ratio)]
    if flip:
        ts.append(RandomFlip())
    if jitter:
        ts.append(PhotometricJitter())
    ts.append(Normalize(mean, std))
    return Compose(ts)


def eval_transforms(mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Compose:
    """Evaluation keeps the full-resolution label; any test-time resizing happens in engine.inference."""
    return Compose([Normalize(mean, std)])
