"""The dataset every reader returns: a list of (image, label) file pairs plus a LabelSpec.

Each loaded sample is checked (image decodes, label size equals image size, label values are classes or
ignore) and a failure raises DataError naming the file, in the main process or a worker alike.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .io import DataError, read_image, read_label
from .labels import LabelSpec


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed that depends on (seed, epoch, index) only."""
    h = hashlib.blake2b(f"{seed}/{epoch}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


class SegmentationDataset(torch.utils.data.Dataset):
    """Image/label pairs read from disk.

    Args:
        samples: list of (image_path, label_path or None).
        spec: the label space.
        transform: ``callable(image, label, generator) -> (image_tensor, label_tensor)``.
        label_lut: optional 1-D array mapping stored values to ids (e.g. CamVid 11 -> 255, Cityscapes
            labelIds -> trainIds); applied before ``spec.encode``.
        cache: keep decoded images and labels in memory (CamVid train: ~190 MB).
        name: dataset name used in messages.
    Items are dicts: ``image`` (3, H, W) float, ``label`` (H, W) int64 (absent without labels), ``name``.
    """

    def __init__(self, samples: list[tuple[Path, Path | None]], spec: LabelSpec,
                 transform: Callable | None = None, label_lut: np.ndarray | None = None, cache: bool = False,
                 name: str = "dataset", seed: int = 0):
        if not samples:
            raise DataError(f"{name}: no samples found; check the dataset root and the split name")
        self.samples = [(Path(i), None if l is None else Path(l)) for i, l in samples]
        self.spec = spec
        self.transform = transform
        self.label_lut = label_lut
        self.cache = {} if cache else None
        self.name = name
        self.seed = seed
        self.epoch = 0

    def __len__(self):
        return len(self.samples)

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def sample_name(self, index: int) -> str:
        return self.samples[index][0].stem

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Decoded, checked (image uint8 (H, W, 3), label (H, W) ids or None)."""
        if self.cache is not None and index in self.cache:
            return self.cache[index]
        image_path, label_path = self.samples[index]
        image = read_image(image_path)
        label = None
        if label_path is not None:
            raw = self.read_raw_label(label_path)
            if raw.shape != image.shape[:2]:
                raise DataError(f"label map {label_path} is {raw.shape[1]}x{raw.shape[0]} but its image "
                                f"{image_path} is {image.shape[1]}x{image.shape[0]}; they must have the same size")
            label = self.to_ids(raw, label_path)
        if self.cache is not None:
            self.cache[index] = (image, label)
        return image, label

    def read_raw_label(self, label_path: Path) -> np.ndarray:
        """Stored label values of one file; readers of other formats (SBD .mat) override this."""
        return read_label(label_path)

    def to_ids(self, raw: np.ndarray, label_path: Path | str = "<label>") -> np.ndarray:
        """Stored values -> class ids, with the range check that names the file."""
        if self.label_lut is not None:
            if raw.max(initial=0) >= len(self.label_lut) or raw.min(initial=0) < 0:
                raise DataError(f"label value {int(raw.max())} in {label_path} is outside the mapping table "
                                f"of {self.name} ({len(self.label_lut)} entries); check the label format")
            raw = self.label_lut[raw]
        label = self.spec.encode(raw)
        bad = self.spec.invalid_values(label)
        if len(bad):
            raise DataError(
                f"label value {int(bad[0])} in {label_path} exceeds the {self.spec.num_classes} classes of "
                f"{self.name} (values found outside [0, {self.spec.num_classes}) and ignore "
                f"{self.spec.ignore_index}: {bad.tolist()[:10]}); set ignore_index or check the palette / classes file")
        return label

    def __getitem__(self, index: int) -> dict:
        image, label = self.load(index)
        g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, index))
        transform = self.transform
        if transform is None:
            from .transforms import Normalize
            transform = Normalize()
        x, y = transform(image, label, g)
        item = {"image": x, "name": self.sample_name(index), "index": index}
        if y is not None:
            item["label"] = y
        return item
