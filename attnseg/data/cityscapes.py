"""Cityscapes, fine annotations, 19 training classes.

Cordts, Omran, Ramos, Rehfeld, Enzweiler, Benenson, Franke, Roth, Schiele, "The Cityscapes Dataset for
Semantic Urban Scene Understanding", CVPR 2016. https://www.cityscapes-dataset.com/ ; the label table is
``cityscapesscripts/helpers/labels.py`` of https://github.com/mcordts/cityscapesScripts.

::

    root/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png       (split: train, val, test)
    root/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png       8-bit, the 34 label ids
    root/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png  optional (createTrainIdLabelImgs)

Label conventions: the files store label ids 0..33; training uses the 19 classes of the official table
(``LABEL_TO_TRAIN``: road 7 -> 0, ..., car 26 -> 13, ..., bicycle 33 -> 18); every other id (unlabeled 0,
ego vehicle 1, ..., parking 9, rail track 10, guard rail 14, ..., caravan 29, trailer 30) becomes 255, ignored.
When every sample of the split has a ``labelTrainIds`` file, those are read instead (``use_train_ids``).
The public test split's labels hold no classes; evaluate on val.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from .dataset import SegmentationDataset
from .io import IMAGE_EXTS, DataError
from .labels import CITYSCAPES

SPLITS = ("train", "val", "test", "trainval")

# cityscapesScripts labels.py: (id, trainId) of the 19 evaluated classes, trainId order = CITYSCAPES.names
LABEL_TO_TRAIN = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                  26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def train_id_lut(ignore_index: int = 255) -> np.ndarray:
    """(256,) uint8 table: label id -> train id, everything outside the 19 classes -> ignore_index."""
    lut = np.full(256, ignore_index, dtype=np.uint8)
    for label_id, train_id in LABEL_TO_TRAIN.items():
        lut[label_id] = train_id
    return lut


def list_images(root: Path, split: str) -> list[Path]:
    """All ``*_leftImg8bit.*`` images of a split, sorted by city then name."""
    image_root = root / "leftImg8bit" / split
    if not image_root.is_dir():
        found = sorted(p.name for p in (root / "leftImg8bit").glob("*") if p.is_dir())
        raise DataError(f"cityscapes has no split {split!r}: {image_root} does not exist "
                        f"(splits found: {', '.join(found) or 'none'}); is {root} the folder holding "
                        "leftImg8bit/ and gtFine/?")
    images = sorted(p for p in image_root.glob("*/*_leftImg8bit.*") if p.suffix.lower() in IMAGE_EXTS)
    if not images:
        raise DataError(f"cityscapes split {split!r}: {image_root} holds no <city>/*_leftImg8bit.png images")
    return images


def label_path(root: Path, split: str, image: Path, suffix: str) -> Path:
    """.../leftImg8bit/<split>/<city>/X_leftImg8bit.png -> .../gtFine/<split>/<city>/X_gtFine_<suffix>.png"""
    stem = image.name[: image.name.rindex("_leftImg8bit")]
    return root / "gtFine" / split / image.parent.name / f"{stem}_gtFine_{suffix}.png"


def list_samples(root: Path, split: str, use_train_ids: bool | None) -> tuple[list[tuple[Path, Path]], bool]:
    """(image, label) pairs of ``split`` and whether the labels are trainIds files."""
    images = list_images(root, split)
    train_ids = [label_path(root, split, p, "labelTrainIds") for p in images]
    if use_train_ids is None:
        use_train_ids = all(p.is_file() for p in train_ids)
    labels = train_ids if use_train_ids else [label_path(root, split, p, "labelIds") for p in images]
    missing = [p for p in labels if not p.is_file()]
    if missing:
        raise DataError(f"cityscapes split {split!r}: {len(missing)} label maps are missing: "
                        f"{', '.join(map(str, missing[:5]))}{' ...' if len(missing) > 5 else ''}; "
                        "extract gtFine_trainvaltest.zip into the same root as leftImg8bit")
    return list(zip(images, labels, strict=True)), use_train_ids


def build(root: str | Path, split: str = "train", transform: Callable | None = None, cache: bool = False,
          seed: int = 0, use_train_ids: bool | None = None, **_) -> SegmentationDataset:
    """Cityscapes ``split`` ("train", "val", "test" or "trainval").

    Args:
        use_train_ids: read ``*_gtFine_labelTrainIds.png`` (True), ``*_gtFine_labelIds.png`` mapped through
            ``train_id_lut`` (False), or the former when every sample has one (None).
    Returns:
        SegmentationDataset of (image (H, W, 3) uint8, label (H, W) train ids 0..18 or 255), spec CITYSCAPES.
    """
    root = Path(root)
    if split not in SPLITS:
        raise DataError(f"cityscapes has no split {split!r}; choose one of {', '.join(SPLITS)}")
    if split == "trainval":
        train, train_ids = list_samples(root, "train", use_train_ids)
        val, _ = list_samples(root, "val", train_ids)
        samples = train + val
    else:
        samples, train_ids = list_samples(root, split, use_train_ids)
    lut = None if train_ids else train_id_lut(CITYSCAPES.ignore_index)
    return SegmentationDataset(samples, CITYSCAPES, transform, label_lut=lut, cache=cache,
                               name=f"cityscapes/{split}", seed=seed, split=split)
