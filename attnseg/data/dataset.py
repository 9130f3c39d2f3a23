"""The dataset every reader returns: a list of (image, label) file pairs plus a LabelSpec.

Each loaded sample is checked (image decodes, label size equals image size, label values are classes or
ignore) and a failure raises DataError naming the file, in the main process or a worker alike. A training split
whose label maps hold no class pixel at all (every pixel ignore: the loss would be 0) raises DataError when its
cache is complete or from ``check_labels``, which the trainer calls before training.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .io import DataError, read_image, read_label
from .labels import LabelSpec


def is_training_split(split: str | None) -> bool:
    """Splits that are trained on: "train", "trainval", "train_aug", ..., and the folder reader's "all"."""
    return split is not None and (split.startswith("train") or split == "all")


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
        split: the split name ("train", "val", ...); a training split (``is_training_split``) must hold at least
            one class pixel.
        label_hint: what to check when a label value is out of range (default: ignore_index / classes file).
        problems: problems the reader tolerated while listing the samples (``check_dataset`` reports them).
    Items are dicts: ``image`` (3, H, W) float, ``label`` (H, W) int64 (absent without labels), ``name``.
    """

    def __init__(self, samples: list[tuple[Path, Path | None]], spec: LabelSpec,
                 transform: Callable | None = None, label_lut: np.ndarray | None = None, cache: bool = False,
                 name: str = "dataset", seed: int = 0, split: str | None = None, label_hint: str | None = None,
                 problems: list[str] | None = None):
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
        self.split = split
        self.label_hint = label_hint or "set ignore_index or check the palette / classes file"
        self.problems = list(problems or [])

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
            if len(self.cache) == len(self.samples) and is_training_split(self.split):
                self._require_classes(lab for _, lab in self.cache.values())
        return image, label

    def check_labels(self, require_classes: bool | None = None) -> None:
        """Decode every sample (filling the cache when there is one): the first bad file raises DataError, and so
        does a split whose label maps hold no class pixel when ``require_classes`` (default: a training split)."""
        if require_classes is None:
            require_classes = is_training_split(self.split)
        labels = (self.load(i)[1] for i in range(len(self)))
        if require_classes:
            self._require_classes(labels)
        else:
            for _ in labels:  # every file decoded and checked all the same
                pass

    def _require_classes(self, labels) -> None:
        """Consume every label map of ``labels`` (keeping none); raise DataError (``all_ignore_message``) when none
        holds a class pixel."""
        K, any_class, pixels, maps = self.spec.num_classes, False, 0, 0
        for label in labels:
            if label is None or any_class:
                continue
            any_class = bool(np.any((label >= 0) & (label < K)))
            pixels, maps = pixels + label.size, maps + 1
        if maps and not any_class:
            raise DataError(self.all_ignore_message(pixels, maps))

    def all_ignore_message(self, pixels: int, maps: int | None = None) -> str:
        """Every label pixel of this split is ignore: which files, why that is fatal, and what to check."""
        maps = len(self.samples) if maps is None else maps
        folders = sorted({str(l.parent) for _, l in self.samples if l is not None})
        where = ", ".join(folders[:3]) + (f" and {len(folders) - 3} more folders" if len(folders) > 3 else "")
        split = self.split or self.name
        causes = []
        if self.label_lut is not None:
            ignored = [v for v in range(len(self.label_lut))
                       if self.label_lut[v] == self.spec.ignore_index and v != self.spec.ignore_index]
            if ignored and len(ignored) <= 8:
                causes.append(f"stored value{'s' if len(ignored) > 1 else ''} {', '.join(map(str, ignored))} "
                              f"{'are' if len(ignored) > 1 else 'is'} read as ignore by {self.name}")
            elif ignored:
                causes.append(f"{len(ignored)} stored values are read as ignore by {self.name}")
        if self.spec.reduce_zero_label:
            causes.append("reduce_zero_label makes stored 0 ignore")
        why = "".join(f"; {c}" for c in causes)
        return (f"every label pixel of split {split} is ignore ({self.spec.ignore_index}{why}): {pixels:,} pixels in "
                f"{maps} label map{'s' if maps != 1 else ''} under {where}, none of the {self.spec.num_classes} "
                f"classes of {self.name}; training would run with loss 0. Check that the label maps hold class ids "
                f"0..{self.spec.num_classes - 1} (not colours or 0/255 masks) and the ignore_index / "
                "reduce_zero_label settings")

    def read_raw_label(self, label_path: Path) -> np.ndarray:
        """Stored label values of one file; readers of other formats (SBD .mat) override this."""
        return read_label(label_path)

    def to_ids(self, raw: np.ndarray, label_path: Path | str = "<label>") -> np.ndarray:
        """Stored values -> class ids, with the range check that names the file."""
        if self.label_lut is not None:
            if raw.max(initial=0) >= len(self.label_lut) or raw.min(initial=0) < 0:
                values = np.unique(raw)
                self._range_error(values[(values < 0) | (values >= len(self.label_lut))], raw, label_path)
            raw = self.label_lut[raw]
        label = self.spec.encode(raw)
        bad = self.spec.invalid_values(label)
        if len(bad):
            self._range_error(bad, raw, label_path)
        return label

    def _range_error(self, bad: np.ndarray, raw: np.ndarray, label_path) -> None:
        # read_label gives int32 only for 16/32-bit maps whose values do not fit in 8 bits
        depth = f" (a {16 if raw.max(initial=0) < 65536 else 32}-bit label map)" if raw.dtype == np.int32 else ""
        raise DataError(
            f"label value {int(bad[0])} in {label_path}{depth} exceeds the {self.spec.num_classes} classes of "
            f"{self.name} (values found outside [0, {self.spec.num_classes}) and ignore "
            f"{self.spec.ignore_index}: {bad.tolist()[:10]}); {self.label_hint}")

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
