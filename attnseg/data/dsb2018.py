"""DSB2018 nuclei (Kaggle Data Science Bowl 2018, BBBC038v1, stage-1 train with the community mask fixes), in the
layout of ../shared/data/dsb2018_stage1_train (its SOURCE.md):

    ROOT/images/<id>.webp (or .png)   RGB image
    ROOT/labels/<id>.png              16-bit instance map: 0 = background, k = the k-th nucleus
    ROOT/splits/<split>.txt           one image id per line (train: 565, val: 99)

Terms: CC0 1.0. ``build(root, split)`` -> :class:`attnseg.data.instances.InstanceDataset`.
"""

from __future__ import annotations

from pathlib import Path

from .instances import InstanceDataset, read_split_names
from .io import DataError, find_with_ext


def build(root, split: str = "train", transform=None) -> InstanceDataset:
    root = Path(root)
    listing, lines = read_split_names(root, split, "dsb2018", "image id")
    samples, missing = [], []
    for _, stem in lines:
        image = find_with_ext(root / "images" / stem, (".webp", ".png"))
        label = root / "labels" / f"{stem}.png"
        if image is None or not label.is_file():
            missing.append(f"{stem} ({'image' if image is None else 'labels/' + stem + '.png'})")
            continue
        samples.append((stem, image, label))
    if missing:
        raise DataError(f"dsb2018: {len(missing)} entr{'y' if len(missing) == 1 else 'ies'} of {listing} lack their "
                        f"files: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; re-copy them or "
                        "remove them from the split list")
    return InstanceDataset(samples, name=f"dsb2018 [{split}]", transform=transform)
