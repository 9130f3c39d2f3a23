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
}


def parse_data_spec(spec: str) -> tuple[str, str]:
    """'camvid:../data/camvid' -> ('camvid', '../data/camvid'). A bare path is a folder dataset."""
    kind, sep, root = spec.partition(":")
    if not sep:
        return "folder", spec
    if kind not in READERS:
        raise DataError(f"unknown dataset kind {kind!r} in {spec!r}; choose one of {', '.join(READERS)} "
                        "(for example camvid:../shared/data/camvid)")
    return kind, root


def build_dataset(spec: str, split: str = "train", transform=None, **kwargs) -> SegmentationDataset:
    kind, root = parse_data_spec(spec)
    module = importlib.import_module(READERS[kind])
    return module.build(root, split=split, transform=transform, **kwargs)


__all__ = ["LabelSpec", "CAMVID", "VOC", "CITYSCAPES", "SegmentationDataset", "DataError", "read_image",
           "read_label", "build_dataset", "parse_data_spec", "sample_seed", "READERS"]
