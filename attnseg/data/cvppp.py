"""CVPPP 2017 leaf segmentation (LSC) in its released layout. The data cannot be shipped (its terms forbid
redistribution): users bring it.

    ROOT/A1/plant001_rgb.png        RGBA image (alpha dropped)
    ROOT/A1/plant001_label.png      palette PNG: index = leaf id, 0 = background
    ROOT/A1/plant001_fg.png         foreground mask (not needed: label > 0)
    ROOT/A1/plant001_centers.png    leaf centres (not needed)
    ROOT/A1/A1.csv                  lines ``plant001_rgb.png, 15``: the leaf count of each plant
    ROOT/splits/train.txt, val.txt  optional: one plant per line, ``plant001`` or ``A1/plant001``

ROOT may also be one subset folder (``.../A1``). ``split="all"`` takes every plant; ``train`` / ``val`` need the
split lists. ``check_counts()`` compares every label map's leaf count with the csv.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from .instances import InstanceDataset, instance_ids, read_instance_map, read_split_names
from .io import DataError

PLANT = re.compile(r"^(plant\d+)_rgb\.png$")


def _subsets(root: Path) -> list[Path]:
    if any(PLANT.match(p.name) for p in root.glob("*_rgb.png")):
        return [root]
    subsets = sorted(p for p in root.iterdir() if p.is_dir() and any(PLANT.match(q.name) for q in p.glob("*_rgb.png")))
    if not subsets:
        raise DataError(f"cvppp: {root} holds no plantNNN_rgb.png files, neither directly nor in subset folders "
                        "(A1, A2, ...); give the folder of the CVPPP 2017 LSC release")
    return subsets


def read_counts(csv_path: Path) -> dict[str, int]:
    """``plant001_rgb.png, 15`` lines -> {"plant001": 15}."""
    counts = {}
    with csv_path.open(newline="") as f:
        for lineno, row in enumerate(csv.reader(f), 1):
            if not row or not row[0].strip():
                continue
            m = PLANT.match(row[0].strip())
            try:
                if m is None or len(row) < 2:
                    raise ValueError
                counts[m[1]] = int(row[1])
            except ValueError:
                raise DataError(f"cvppp: {csv_path} line {lineno} is {','.join(row)!r}; lines read "
                                "'plant001_rgb.png, 15' (the image and its leaf count)") from None
    return counts


class CVPPP(InstanceDataset):
    """The plants of the chosen subsets and split; ``counts`` holds the csv leaf counts by sample name."""

    def __init__(self, samples, counts: dict, name: str, transform=None):
        super().__init__(samples, name=name, transform=transform)
        self.counts = counts

    def check_counts(self) -> list[str]:
        """One line per plant whose label map does not hold the csv's number of leaves."""
        problems = []
        for stem, _, label in self.samples:
            if stem in self.counts:
                n = len(instance_ids(read_instance_map(label)))
                if n != self.counts[stem]:
                    problems.append(f"{label} holds {n} leaves but the csv says {self.counts[stem]}")
        return problems


def build(root, split: str = "all", transform=None) -> CVPPP:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"cvppp: {root} is not a folder; give the folder of the CVPPP 2017 LSC release")
    subsets = _subsets(root)
    plants, counts = {}, {}
    for sub in subsets:
        csv_path = sub / f"{sub.name}.csv"
        sub_counts = read_counts(csv_path) if csv_path.is_file() else {}
        for image in sorted(q for q in sub.glob("plant*_rgb.png") if PLANT.match(q.name)):
            plant = PLANT.match(image.name)[1]
            key = f"{sub.name}/{plant}"
            plants[key] = (key, image, sub / f"{plant}_label.png")
            if plant in sub_counts:
                counts[key] = sub_counts[plant]
    if split == "all":
        chosen = list(plants)
    else:
        listing, lines = read_split_names(root, split, "cvppp", "plant")
        chosen = []
        for lineno, name in lines:
            found = [k for k in plants if k == name or k.split("/", 1)[1] == name]
            if len(found) != 1:
                raise DataError(f"cvppp: {listing} line {lineno} names {name!r}, which "
                                + ("is not among the plants found" if not found else
                                   f"is in several subsets ({', '.join(found)}); write it as {found[0]}"))
            chosen.append(found[0])
    missing = [plants[k][2] for k in chosen if not plants[k][2].is_file()]
    if missing:
        raise DataError(f"cvppp: {len(missing)} plant(s) lack their label map: "
                        f"{', '.join(str(p) for p in missing[:5])}")
    return CVPPP([plants[k] for k in chosen], {k: counts[k] for k in chosen if k in counts},
                 name=f"cvppp [{split}]", transform=transform)
