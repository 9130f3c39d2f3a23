"""Instance segmentation targets: one form from the reader to the loss, the metric and the picture.

An image's instances are an **instance id map** (H, W) of integers: 0 is background, every other value one
instance (ids need not be contiguous). Where a dataset has classes, ``classes`` maps each id to its class index
1..K (class k is ``class_names[k - 1]``; 0 is background, never an instance's class; default: every instance is
class 1, "object"); ``class_map`` paints those classes per pixel. ``to_torchvision`` gives torchvision's detection
form (``boxes`` (N, 4) xyxy float, ``labels`` (N,), ``masks`` (N, H, W) bool; DESIGN.md), ``from_masks`` the way
back (overlapping masks: the higher score wins a pixel, as a painter would draw them in score order).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .io import DataError, duplicate_entries_message, why_unreadable


def read_instance_map(path: str | Path) -> np.ndarray:
    """An instance id map from a 16-bit greyscale PNG (DSB2018), an 8-bit or palette PNG (CVPPP: the index is the
    id) -> (H, W) int32. RGB maps are refused: their colours are not ids."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"instance map {path} does not exist; check the dataset root and split list")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGB", "RGBA"):
                raise DataError(f"instance map {path} is a colour ({im.mode}) image; instance maps hold one id per "
                                "pixel (16-bit grey, 8-bit grey or palette PNG)")
            return np.asarray(im).astype(np.int32)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"instance map {path} {why_unreadable(path, e)}: re-copy it from the original dataset") from e


def read_split_names(root: Path, split: str, kind: str, what: str = "name") -> tuple[Path, list[tuple[int, str]]]:
    """``ROOT/splits/<split>.txt`` -> (its path, [(line number, entry)]): blank lines skipped, an entry listed twice
    refused, a missing list named with the lists that exist."""
    listing = Path(root) / "splits" / f"{split}.txt"
    if not listing.is_file():
        have = sorted(q.stem for q in listing.parent.glob("*.txt")) if listing.parent.is_dir() else []
        raise DataError(f"{kind}: split {split!r} needs {listing} (one {what} per line)"
                        + (f"; splits here: {', '.join(have)}" if have else "; without split lists use split 'all'"))
    lines = [(n, s.strip()) for n, s in enumerate(listing.read_text().splitlines(), 1) if s.strip()]
    dup = duplicate_entries_message(listing, lines)
    if dup:
        raise DataError(dup)
    return listing, lines


def instance_ids(ids: np.ndarray) -> np.ndarray:
    """The instance ids present in a map, increasing, background excluded."""
    present = np.unique(np.asarray(ids))
    return present[present != 0]


def instance_boxes(ids: np.ndarray) -> tuple[np.ndarray, list[tuple[slice, slice]], np.ndarray]:
    """(H, W) id map -> (ids (N,) increasing, the (rows, cols) slice of each instance's box, areas (N,) in px),
    from one pass over the map (``scipy.ndimage.find_objects``): no (N, H, W) masks are built."""
    from scipy import ndimage
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(f"an instance map must be (H, W), got shape {ids.shape}")
    flat = ids.astype(np.int64, copy=False)
    if flat.min(initial=0) < 0:
        raise ValueError("instance ids must be >= 0 (0 is background)")
    objects = ndimage.find_objects(flat)                     # slot k - 1: the box of id k, None where absent
    keys = np.array([k for k, sl in enumerate(objects, start=1) if sl is not None], np.int64)
    areas = np.bincount(flat.ravel())[keys] if len(keys) else np.zeros(0, np.int64)
    return keys, [objects[k - 1] for k in keys], areas


def class_map(ids: np.ndarray, classes: dict | None = None) -> np.ndarray:
    """(H, W) id map and {instance id: class 1..K} -> (H, W) int64 map of each pixel's class (0 on background; an
    instance missing from ``classes`` is class 1), by one lookup table indexed by the ids (no loop over pixels).
    Ids in ``classes`` absent from the map are ignored (an augmentation may have cropped them away)."""
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(f"an instance map must be (H, W), got shape {ids.shape}")
    if ids.size and ids.min() < 0:
        raise ValueError(f"instance ids must be >= 0 (0 is background); this map holds {int(ids.min())}")
    top = int(ids.max(initial=0))
    table = np.ones(top + 1, np.int64)
    table[0] = 0
    for k, c in (classes or {}).items():
        if not 1 <= int(c):
            raise ValueError(f"instance {k} has class {c}; instance classes are 1..K (0 is background)")
        if 0 < int(k) <= top:
            table[int(k)] = int(c)
    return table[ids]


def to_torchvision(ids: np.ndarray, classes: dict | None = None) -> dict:
    """(H, W) id map -> {"ids" (N,), "boxes" (N, 4) float32 x0, y0, x1, y1 (x1, y1 exclusive, torchvision's
    convention for masks), "labels" (N,) int64, "masks" (N, H, W) bool}, instances in increasing id order."""
    ids = np.asarray(ids)
    keys, slices, _ = instance_boxes(ids)
    masks = ids[None] == keys[:, None, None] if len(keys) else np.zeros((0, *ids.shape), bool)
    boxes = np.array([(sx.start, sy.start, sx.stop, sy.stop) for sy, sx in slices], np.float32).reshape(-1, 4)
    labels = np.array([int((classes or {}).get(int(k), 1)) for k in keys], np.int64)
    return {"ids": keys.astype(np.int64), "boxes": boxes, "labels": labels, "masks": masks}


def from_masks(masks: np.ndarray, scores=None, threshold: float = 0.5) -> np.ndarray:
    """(N, H, W) masks (bool, or probabilities thresholded at ``threshold``) -> (H, W) int32 id map with ids 1..N in
    the masks' order; where masks overlap, the higher score wins (ties: the later mask)."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {masks.shape}")
    if masks.dtype != bool:
        masks = masks > threshold
    n = len(masks)
    scores = np.ones(n) if scores is None else np.asarray(scores, np.float64)
    if scores.shape != (n,):
        raise ValueError(f"{n} masks but {scores.shape} scores; give one score per mask")
    out = np.zeros(masks.shape[1:], np.int32)
    for k in np.argsort(scores, kind="stable"):        # lowest score first: the highest is painted last
        out[masks[k]] = k + 1
    return out


class InstanceDataset:
    """Images with instance id maps. ``load(i)`` -> ((H, W, 3) uint8 image, (H, W) int32 id map);
    ``dataset[i]`` -> {"image": (3, H, W) float tensor normalised by ``transform`` (default ImageNet statistics),
    "instances": (H, W) int64 tensor, "classes": (H, W) int64 tensor, the class 1..K of the instance at each pixel
    (0 on background; ``class_map`` of the augmented ids and ``instance_classes(i)``), "name": str, "index": int}.
    ``samples``: (name, image path, instance map path).

    Training: ``augment`` is an id-keeping transform of ``attnseg.data.instance_transforms`` applied before
    ``transform``, drawn from (seed, epoch, index) like the semantic datasets (``sample_seed``), so a resumed run sees
    the same crops. ``class_names``: the instance classes (instance class k is ``class_names[k - 1]``; default one
    class, "object"). ``cache``: keep decoded samples in memory.
    """

    task = "instances"

    def __init__(self, samples: list[tuple[str, Path, Path]], name: str = "instances", transform=None,
                 class_names: list[str] | tuple[str, ...] = ("object",)):
        if not samples:
            raise DataError(f"{name}: the split holds no images")
        self.samples, self.name, self.transform = samples, name, transform
        self.class_names = list(class_names)
        self.augment = None
        self.cache: dict | None = None
        self.seed, self.epoch = 0, 0
        self.problems: list[str] = []

    def configure(self, cache: bool = False, seed: int = 0) -> InstanceDataset:
        """The options every reader takes (``build_dataset(..., cache=, seed=)``)."""
        self.cache = {} if cache else None
        self.seed = seed
        return self

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def sample_name(self, i: int) -> str:
        return self.samples[i][0]

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        from .io import read_image
        stem, image_path, label_path = self.samples[i]
        image, ids = read_image(image_path), read_instance_map(label_path)
        if image.shape[:2] != ids.shape:
            raise DataError(f"{self.name}: image {image_path} is {image.shape[1]}x{image.shape[0]} but its instance "
                            f"map {label_path} is {ids.shape[1]}x{ids.shape[0]}; they must match")
        return image, ids

    def get(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """``load(i)`` through the cache (when there is one)."""
        if self.cache is not None and i in self.cache:
            return self.cache[i]
        out = self.load(i)
        if self.cache is not None:
            self.cache[i] = out
        return out

    def instance_classes(self, i: int) -> dict[int, int]:
        """{instance id: class index 1..K} of sample i (class k is ``class_names[k - 1]``); an id not in it is
        class 1. This default, {}, makes every instance class 1: readers with several classes override it."""
        return {}

    def check_labels(self, require_instances: bool = False) -> None:
        """Decode every sample (filling the cache); the first bad file raises DataError, and so does a split
        without a single instance when ``require_instances`` (training on it would learn "background")."""
        total = 0
        for i in range(len(self)):
            total += len(instance_ids(self.get(i)[1]))
        if require_instances and total == 0:
            raise DataError(f"{self.name}: none of its {len(self)} instance maps holds an instance (every pixel is "
                            "0, background); check that the maps are instance ids, not an empty export")

    def __getitem__(self, i: int) -> dict:
        import torch

        from .dataset import sample_seed
        from .transforms import Normalize
        image, ids = self.get(i)
        if self.augment is not None:
            image, ids = self.augment(image, ids, np.random.default_rng(sample_seed(self.seed, self.epoch, i)))
        x, _ = (self.transform or Normalize())(image, None, None)
        classes = self.instance_classes(i)
        bad = {k: c for k, c in classes.items() if not 1 <= int(c) <= len(self.class_names)}
        if bad:
            k, c = next(iter(bad.items()))
            raise DataError(f"{self.name}: instance {k} of {self.sample_name(i)} has class {c}, outside the "
                            f"{len(self.class_names)} classes 1..{len(self.class_names)} ({', '.join(self.class_names)}"
                            "); fix its class annotation")
        ids = np.asarray(ids, np.int64)        # the augmented ids: an instance cropped away leaves no pixel
        return {"image": x, "instances": torch.from_numpy(ids), "classes": torch.from_numpy(class_map(ids, classes)),
                "name": self.sample_name(i), "index": i}
