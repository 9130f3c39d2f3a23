"""Datasets, label specs and transforms. Knows nothing of models or the engine.

``build_dataset("camvid:/path", split="val")`` picks a reader by the part before the colon.
"""

from __future__ import annotations

import importlib

from .dataset import SegmentationDataset, sample_seed
from .io import DataError, read_image, read_label
from .labels import CAMVID, CITYSCAPES, VOC, LabelSpec

# kind -> module with ``build(root, split, transform=None, cache=False, seed=0, **kwargs)``
READERS = {
    "camvid": "attnseg.data.camvid",
    "folder": "attnseg.data.folder",
    "voc": "attnseg.data.voc",
    "cityscapes": "attnseg.data.cityscapes",
    "ade20k": "attnseg.data.ade20k",
    "synthetic": "attnseg.data.synthetic",
    # instance datasets (``task = "instances"``): build(root, split, transform) -> InstanceDataset
    "dsb2018": "attnseg.data.dsb2018",
    "cvppp": "attnseg.data.cvppp",
    "coco": "attnseg.data.coco_instances",
    "instances": "attnseg.data.instance_folder",
    "nuclei": "attnseg.data.synthetic_instances:build_nuclei",
    "rosettes": "attnseg.data.synthetic_instances:build_rosettes",
    "shapes": "attnseg.data.synthetic_instances:build_shapes",        # three classes: disc, square, triangle
    # classification (``task = "classification"``): centred, translated and cluttered digits
    "digits": "attnseg.data.digits",
}
INSTANCE_KINDS = ("dsb2018", "cvppp", "coco", "instances", "nuclei", "rosettes", "shapes")
CLASSIFICATION_KINDS = ("digits",)


def parse_data_spec(spec: str) -> tuple[str, str]:
    """'camvid:../data/camvid' -> ('camvid', '../data/camvid'). A bare path is a folder dataset."""
    kind, sep, root = spec.partition(":")
    if not sep:
        return "folder", spec
    if kind not in READERS:
        raise DataError(f"unknown dataset kind {kind!r} in {spec!r}; choose one of {', '.join(READERS)} "
                        "(for example camvid:../shared/data/camvid)")
    return kind, root


def build_dataset(spec: str, split: str = "train", transform=None, **kwargs):
    """A semantic ``SegmentationDataset`` or, for the instance kinds, an ``InstanceDataset`` (``.task ==
    "instances"``); ``cache`` and ``seed`` apply to both."""
    kind, root = parse_data_spec(spec)
    module_name, _, func = READERS[kind].partition(":")
    build = getattr(importlib.import_module(module_name), func or "build")
    if kind in INSTANCE_KINDS or kind in CLASSIFICATION_KINDS:
        return build(root, split=split, transform=transform).configure(cache=kwargs.get("cache", False),
                                                                      seed=kwargs.get("seed", 0))
    return build(root, split=split, transform=transform, **kwargs)


def task_of(dataset) -> str:
    """"semantic", "instances" or "classification"."""
    return getattr(dataset, "task", "semantic")


__all__ = ["LabelSpec", "CAMVID", "VOC", "CITYSCAPES", "SegmentationDataset", "DataError", "read_image",
           "read_label", "build_dataset", "task_of", "INSTANCE_KINDS", "CLASSIFICATION_KINDS", "parse_data_spec",
           "sample_seed", "READERS"]
