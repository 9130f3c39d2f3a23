"""PASCAL VOC 2012 semantic segmentation, 20 classes + background, with the SBD augmentation.

Everingham, Van Gool, Williams, Winn, Zisserman, "The PASCAL Visual Object Classes (VOC) Challenge", IJCV 2010.
http://host.robots.ox.ac.uk/pascal/VOC/voc2012/
SBD: Hariharan, Arbelaez, Bourdev, Maji, Malik, "Semantic Contours from Inverse Detectors", ICCV 2011.
http://home.bharathh.info/pubs/codes/SBD/download.html (benchmark.tgz -> benchmark_RELEASE/)

::

    root/JPEGImages/X.jpg
    root/SegmentationClass/X.png                 palette PNG: index = class id, 255 = border / difficult
    root/ImageSets/Segmentation/{train,val,trainval}.txt    one id per line
    sbd_root/dataset/cls/X.mat                   struct GTcls, field Segmentation: (H, W) uint8 ids 0..20
    sbd_root/dataset/{train,val}.txt

``root`` may be ``VOC2012`` itself, ``VOCdevkit`` or the folder holding ``VOCdevkit``.

Label conventions: 0 = background, 1..20 the classes of ``labels.VOC``, 255 = the object borders and
"difficult" regions, ignored. The palette PNG's indices are read, never its colours. SBD labels have no
border band (no 255).

Split "train_aug" is the standard 10,582-image set: (VOC train ∪ SBD train ∪ SBD val) minus VOC val, as in
mmsegmentation's ``voc_aug.py``. An image with a VOC ``SegmentationClass`` PNG takes that label (finer, with
the border band); the others take SBD's. SBD is looked up at ``sbd_root`` or beside the VOC folders
(``SBD/`` or ``benchmark_RELEASE/``); passing ``sbd_root`` with split "train" also selects "train_aug".
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.io

from .dataset import SegmentationDataset
from .io import DataError, duplicate_entries_message, read_split_list
from .labels import VOC

SPLITS = ("train", "val", "trainval", "train_aug")
SBD_NAMES = ("SBD", "benchmark_RELEASE", "sbd")


class VOCDataset(SegmentationDataset):
    """SegmentationDataset that also reads SBD ``.mat`` label maps."""

    def read_raw_label(self, label_path: Path) -> np.ndarray:
        """VOC PNGs as usual; SBD ``.mat`` files through ``read_sbd_mat``."""
        return read_sbd_mat(label_path) if label_path.suffix == ".mat" else super().read_raw_label(label_path)


def read_sbd_mat(path: Path) -> np.ndarray:
    """SBD ``cls/X.mat`` -> (H, W) uint8 class ids (``GTcls.Segmentation``)."""
    if not path.is_file():
        raise DataError(f"SBD label {path} does not exist; check sbd_root (it holds dataset/cls/*.mat)")
    try:
        mat = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
        seg = np.asarray(mat["GTcls"].Segmentation)
    except (OSError, ValueError, TypeError, KeyError, AttributeError, scipy.io.matlab.MatReadError) as e:
        raise DataError(f"SBD label {path} cannot be read ({type(e).__name__}: {e}); expected a MATLAB file "
                        "with struct GTcls holding field Segmentation") from e
    if seg.ndim != 2 or seg.dtype.kind not in "ui":
        raise DataError(f"SBD label {path}: GTcls.Segmentation is {seg.dtype} of shape {seg.shape}, "
                        "expected an (H, W) integer map")
    return seg.astype(np.uint8) if seg.max(initial=0) < 256 and seg.min(initial=0) >= 0 else seg.astype(np.int64)


def resolve_root(root: Path) -> Path:
    """The folder holding JPEGImages/: root, root/VOC2012 or root/VOCdevkit/VOC2012."""
    for cand in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (cand / "JPEGImages").is_dir():
            return cand
    raise DataError(f"voc: {root} is not a PASCAL VOC 2012 folder (no JPEGImages/ in it, in VOC2012/ or in "
                    "VOCdevkit/VOC2012/); point at the folder that holds JPEGImages/ and SegmentationClass/")


def resolve_sbd(voc_root: Path, sbd_root: str | Path | None) -> Path:
    """The SBD ``dataset`` folder (holding cls/, train.txt, val.txt)."""
    if sbd_root is not None:
        cands = [Path(sbd_root)]
    else:
        parents = [voc_root, voc_root.parent, voc_root.parent.parent]
        cands = [p / name for p in parents for name in SBD_NAMES]
    for cand in cands:
        for d in (cand / "dataset", cand):
            if (d / "cls").is_dir():
                return d
    raise DataError(f"voc train_aug needs SBD: no dataset/cls/ folder under {', '.join(map(str, cands[:3]))}"
                    f"{' ...' if len(cands) > 3 else ''}; download benchmark.tgz from "
                    "http://home.bharathh.info/pubs/codes/SBD/download.html and pass sbd_root=.../benchmark_RELEASE")


def read_ids(list_file: Path, duplicates: list[str] | None = None) -> list[str]:
    """Image ids of a split list (first word of each non-empty line). An id listed twice raises DataError; with
    ``duplicates`` (a list) the message is appended there instead and only the first line is kept."""
    if not list_file.is_file():
        raise DataError(f"voc split list {list_file} does not exist; VOC 2012 has {', '.join(SPLITS[:3])} "
                        "(and train_aug with SBD)")
    entries = [(lineno, fields[0]) for lineno, _, fields in read_split_list(list_file, "voc split list")]
    if not entries:
        raise DataError(f"voc split list {list_file} is empty; it should list one image id per line")
    message = duplicate_entries_message(list_file, entries, "voc split list")
    if message:
        if duplicates is None:
            raise DataError(message)
        duplicates.append(message)
    return list(dict.fromkeys(i for _, i in entries))


def voc_samples(root: Path, ids: list[str]) -> list[tuple[Path, Path]]:
    """(JPEGImages/X.jpg, SegmentationClass/X.png) per id; missing files raise DataError naming them."""
    samples = [(root / "JPEGImages" / f"{i}.jpg", root / "SegmentationClass" / f"{i}.png") for i in ids]
    missing = [p for pair in samples for p in pair if not p.is_file()]
    if missing:
        raise DataError(f"voc: {len(missing)} listed files are missing: {', '.join(map(str, missing[:5]))}"
                        f"{' ...' if len(missing) > 5 else ''}; re-extract VOCtrainval_11-May-2012.tar")
    return samples


def train_aug_samples(root: Path, sbd: Path, duplicates: list[str] | None = None) -> list[tuple[Path, Path]]:
    """(VOC train ∪ SBD train ∪ SBD val) - VOC val, VOC labels first, SBD .mat otherwise; sorted by id."""
    split_dir = root / "ImageSets" / "Segmentation"
    ids = (set(read_ids(split_dir / "train.txt", duplicates)) | set(read_ids(sbd / "train.txt", duplicates))
           | set(read_ids(sbd / "val.txt", duplicates)))
    ids -= set(read_ids(split_dir / "val.txt", duplicates))
    samples = []
    for i in sorted(ids):
        image = root / "JPEGImages" / f"{i}.jpg"
        if not image.is_file() and (sbd / "img" / f"{i}.jpg").is_file():
            image = sbd / "img" / f"{i}.jpg"
        png = root / "SegmentationClass" / f"{i}.png"
        samples.append((image, png if png.is_file() else sbd / "cls" / f"{i}.mat"))
    missing = [p for pair in samples for p in pair if not p.is_file()]
    if missing:
        raise DataError(f"voc train_aug: {len(missing)} files are missing: {', '.join(map(str, missing[:5]))}"
                        f"{' ...' if len(missing) > 5 else ''}; check the VOC and SBD folders")
    return samples


def build(root: str | Path, split: str = "train", transform: Callable | None = None, cache: bool = False,
          seed: int = 0, sbd_root: str | Path | None = None, allow_duplicates: bool = False, **_) -> VOCDataset:
    """PASCAL VOC 2012 ``split`` ("train", "val", "trainval" or "train_aug").

    Args:
        allow_duplicates: keep the first line of an id listed twice and record the problem in
            ``dataset.problems`` (what ``attnseg data check`` does) instead of raising DataError.
    Returns:
        VOCDataset of (image (H, W, 3) uint8, label (H, W) ids 0..20 or 255) samples, spec ``labels.VOC``.
    """
    root = resolve_root(Path(root))
    duplicates: list[str] | None = [] if allow_duplicates else None
    if split == "train_aug" or (split == "train" and sbd_root is not None):
        samples = train_aug_samples(root, resolve_sbd(root, sbd_root), duplicates)
        split = "train_aug"
    elif split in SPLITS:
        samples = voc_samples(root, read_ids(root / "ImageSets" / "Segmentation" / f"{split}.txt", duplicates))
    else:
        raise DataError(f"voc has no split {split!r}; choose one of {', '.join(SPLITS)}")
    return VOCDataset(samples, VOC, transform, cache=cache, name=f"voc/{split}", seed=seed, split=split,
                      problems=duplicates)
