"""COCO instance annotations (a COCO json and its image folder) through pycocotools, as instance id maps.

``coco:ANNOTATIONS.json,IMAGE_DIR``: each image's annotations (polygons or RLE) become one id map, instances
numbered 1..N in annotation order (a pixel claimed by two annotations goes to the later one); ``instance_classes(i)``
maps each id to its class index 1..K: the categories in category-id order are ``classes`` (= ``class_names``), class
k being ``classes[k - 1]`` (a json without categories: one class, "object"); crowd annotations are not instances:
``ignore_mask(i)`` gives their pixels, for a loss or a metric to leave out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .instances import InstanceDataset
from .io import DataError, read_image


class CocoInstances(InstanceDataset):
    def __init__(self, coco, image_ids, image_dir: Path, name: str, transform=None):
        samples = [(coco.imgs[i]["file_name"], image_dir / coco.imgs[i]["file_name"], None) for i in image_ids]
        cats = sorted(coco.cats)
        classes = [coco.cats[c]["name"] for c in cats]
        super().__init__(samples, name=name, transform=transform, class_names=classes or ["object"])
        self.coco, self.image_ids = coco, list(image_ids)
        self.classes = classes
        self.class_index = {c: k for k, c in enumerate(cats, start=1)}     # category id -> class 1..K

    def _annotations(self, i: int):
        return self.coco.loadAnns(self.coco.getAnnIds(imgIds=[self.image_ids[i]]))

    def _masks(self, i: int):
        info = self.coco.imgs[self.image_ids[i]]
        H, W = info["height"], info["width"]
        for ann in self._annotations(i):
            try:
                m = self.coco.annToMask(ann).astype(bool)
            except (TypeError, ValueError, KeyError, IndexError) as e:
                raise DataError(f"{self.name}: annotation {ann.get('id')} of {info['file_name']} has an unreadable "
                                f"segmentation ({type(e).__name__}); fix or remove it") from None
            if m.shape != (H, W):
                raise DataError(f"{self.name}: annotation {ann.get('id')} is {m.shape} but {info['file_name']} is "
                                f"{(H, W)}")
            yield ann, m

    def instance_map(self, i: int) -> np.ndarray:
        info = self.coco.imgs[self.image_ids[i]]
        ids = np.zeros((info["height"], info["width"]), np.int32)
        n = 0
        for ann, m in self._masks(i):
            if not ann.get("iscrowd", 0):
                n += 1
                ids[m] = n
        return ids

    def instance_classes(self, i: int) -> dict[int, int]:
        """{instance id: class 1..K} of image i, ids numbered as ``instance_map(i)`` numbers them."""
        anns = [a for a in self._annotations(i) if not a.get("iscrowd", 0)]
        if not self.class_index:                                 # no categories listed: every instance "object"
            return {k: 1 for k in range(1, len(anns) + 1)}
        out = {}
        for k, a in enumerate(anns, start=1):
            c = self.class_index.get(a.get("category_id"))
            if c is None:
                info = self.coco.imgs[self.image_ids[i]]
                raise DataError(f"{self.name}: annotation {a.get('id')} of {info['file_name']} has category_id "
                                f"{a.get('category_id')!r}, which is not among the categories "
                                f"({', '.join(map(str, self.class_index))}); fix the annotation or add the category")
            out[k] = c
        return out

    def ignore_mask(self, i: int) -> np.ndarray:
        info = self.coco.imgs[self.image_ids[i]]
        out = np.zeros((info["height"], info["width"]), bool)
        for ann, m in self._masks(i):
            if ann.get("iscrowd", 0):
                out |= m
        return out

    def load(self, i: int):
        image, ids = read_image(self.samples[i][1]), self.instance_map(i)
        if image.shape[:2] != ids.shape:
            raise DataError(f"{self.name}: {self.samples[i][1]} is {image.shape[1]}x{image.shape[0]} but its "
                            f"annotations say {ids.shape[1]}x{ids.shape[0]}")
        return image, ids


def build(root: str, split: str = "all", transform=None) -> CocoInstances:
    """``root`` = ``ANNOTATIONS.json,IMAGE_DIR`` (the split is the json's: ``split`` is only a name)."""
    import contextlib
    import io
    ann, _, image_dir = str(root).partition(",")
    if not image_dir:
        raise DataError(f"coco takes ANNOTATIONS.json,IMAGE_DIR, not {root!r}")
    ann_path, image_dir = Path(ann), Path(image_dir)
    if not ann_path.is_file():
        raise DataError(f"coco: annotation file {ann_path} does not exist")
    if not image_dir.is_dir():
        raise DataError(f"coco: image folder {image_dir} does not exist")
    try:
        from pycocotools.coco import COCO
    except ImportError:
        raise DataError("coco annotations need pycocotools: pip install -e '.[instances]'") from None
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(ann_path))
    except (ValueError, KeyError, TypeError, AssertionError) as e:  # pycocotools asserts the top-level dict
        raise DataError(f"coco: {ann_path} is not a COCO annotation file ({type(e).__name__}: {e})") from None
    ids = sorted(coco.imgs)
    if not ids:
        raise DataError(f"coco: {ann_path} lists no images")
    return CocoInstances(coco, ids, image_dir, name=f"coco [{split}]", transform=transform)
