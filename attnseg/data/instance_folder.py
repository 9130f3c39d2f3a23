"""A generic instance dataset: a folder of images and 16-bit instance PNGs (the zero-code path for a user's data).

    ROOT/images/<name>.<png|jpg|webp|...>
    ROOT/instances/<name>.png         instance ids (16-bit or 8-bit grey, or palette), 0 = background
    ROOT/splits/<split>.txt           optional: one name per line; without it, split "all" takes every image
    ROOT/classes.txt                  optional: class names, one per line (default: one class, "object")
    ROOT/instance_classes/<name>.json optional: {"<instance id>": <class index>} per image, the index 0-based
                                      into classes.txt (0 = its first line; default: 0 for every instance)

``instance_classes(i)`` gives the classes in the dataset convention, 1..K (class k is ``class_names[k - 1]``): the
json's 0-based index plus one. The files keep their 0-based form (line index of classes.txt).
"""

from __future__ import annotations

import json
from pathlib import Path

from .instances import InstanceDataset, read_split_names
from .io import IMAGE_EXTS, DataError, find_with_ext


class InstanceFolder(InstanceDataset):
    def __init__(self, samples, classes: list[str], root: Path, name: str, transform=None):
        super().__init__(samples, name=name, transform=transform, class_names=classes)
        self.classes, self.root = classes, root

    def instance_classes(self, i: int) -> dict[int, int]:
        """{instance id: class 1..K} of image i (the json's 0-based index + 1; {} where the image has no json: every
        instance class 1, the first line of classes.txt)."""
        stem = self.samples[i][0]
        path = self.root / "instance_classes" / f"{stem}.json"
        if not path.is_file():
            return {}
        try:
            raw = json.loads(path.read_text())
            out = {int(k): int(v) for k, v in raw.items()}
        except (ValueError, AttributeError, TypeError):
            raise DataError(f"{path} must be a JSON object {{\"<instance id>\": <class index>}}") from None
        bad = [v for v in out.values() if not 0 <= v < len(self.classes)]
        if bad:
            raise DataError(f"{path}: class index {bad[0]} is outside the {len(self.classes)} classes of "
                            f"{self.root / 'classes.txt'} (these indices are 0-based: 0..{len(self.classes) - 1}, 0 "
                            "for its first line)")
        return {k: v + 1 for k, v in out.items()}


def build(root, split: str = "all", transform=None) -> InstanceFolder:
    root = Path(root)
    for sub in ("images", "instances"):
        if not (root / sub).is_dir():
            raise DataError(f"instances: {root / sub} is missing; ROOT holds images/ and instances/ (16-bit PNGs)")
    classes_file = root / "classes.txt"
    classes = [c.strip() for c in classes_file.read_text().splitlines() if c.strip()] if classes_file.is_file() \
        else ["object"]
    if split == "all":
        names = sorted(p.stem for p in (root / "images").iterdir() if p.suffix.lower() in IMAGE_EXTS)
    else:
        _, lines = read_split_names(root, split, "instances", "image name")
        names = [s for _, s in lines]
    samples, missing = [], []
    for stem in names:
        image = find_with_ext(root / "images" / stem)
        label = root / "instances" / f"{stem}.png"
        if image is None or not label.is_file():
            missing.append(f"{stem} ({'image' if image is None else 'instances/' + stem + '.png'})")
        else:
            samples.append((stem, image, label))
    if missing:
        raise DataError(f"instances: {len(missing)} image(s) lack their files: {', '.join(missing[:5])}"
                        f"{' ...' if len(missing) > 5 else ''}")
    return InstanceFolder(samples, classes, root, name=f"instances [{split}]", transform=transform)
