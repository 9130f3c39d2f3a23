"""A generic folder of images, index masks and a classes file: the way to bring your own data.

No paper defines this format; it is the common denominator of the "custom dataset" layouts of
mmsegmentation (``img_dir``/``ann_dir`` with a ``CLASSES`` list) and segmentation_models_pytorch's examples.

::

    root/classes.txt                 one class per line: ``name`` or ``name R G B`` (or ``classes.json``)
    root/images/<split>/X.jpg        any of .png .jpg .jpeg .webp .bmp .tif .tiff
    root/masks/<split>/X.png         same stem as the image; 8-bit (L or P) or 16-bit index map

    or, without split subfolders (split "train" or "all"):

    root/images/X.jpg   root/masks/X.png   root/classes.txt

Label conventions: a mask pixel holds a class id, the line number (from 0) of its class in the classes file;
255 (or the ``ignore_index`` keyword) marks pixels that count nowhere. With ``reduce_zero_label=True``, 0
means "unlabelled" and the classes file lists the classes stored as 1, 2, ... (the ADE20K convention).
``classes.json`` holds ``{"names": [...], "palette": [[r, g, b], ...]}`` or a plain list of names.
Split "all" joins every split folder.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .dataset import SegmentationDataset
from .io import IMAGE_EXTS, DataError, lossy_mask, lossy_mask_message
from .labels import LabelSpec, check_unique_names

CLASSES_FILES = ("classes.txt", "classes.json")
MASK_EXTS = (".png", ".tif", ".tiff", ".bmp")  # lossless only: a JPEG mask would blur class ids


class FolderDataset(SegmentationDataset):
    """A SegmentationDataset whose out-of-range errors point at the classes file."""

    def __init__(self, *args, classes_file: Path, **kwargs):
        super().__init__(*args, **kwargs)
        self.classes_file = classes_file

    def to_ids(self, raw: np.ndarray, label_path: Path | str = "<label>") -> np.ndarray:
        """(H, W) stored values -> (H, W) class ids; a value with no class raises DataError naming both files."""
        label = self.spec.encode(raw)
        bad = self.spec.invalid_values(label)
        if len(bad):
            stored = np.unique(raw[np.isin(label, bad)])
            n = self.spec.num_classes
            valid = f"1..{n} and 0" if self.spec.reduce_zero_label else f"0..{n - 1}"
            raise DataError(
                f"classes file {self.classes_file} lists {n} classes but file {label_path} holds value "
                f"{int(stored[0])} (all such values: {stored.tolist()[:10]}; valid stored values: {valid} and "
                f"ignore {self.spec.ignore_index}); "
                f"add the missing classes to {self.classes_file.name} or pass ignore_index=<value> if that value "
                "marks unlabelled pixels")
        return label


def load_classes(root: Path, **spec_kwargs) -> tuple[LabelSpec, Path]:
    """root/classes.txt or root/classes.json -> (LabelSpec, path). spec_kwargs: ignore_index, reduce_zero_label."""
    path = next((root / name for name in CLASSES_FILES if (root / name).is_file()), None)
    if path is None:
        raise DataError(f"folder dataset {root}: classes file {root / 'classes.txt'} is missing; write one class "
                        "name per line (optionally followed by R G B), the class of mask value 0 first")
    try:
        if path.suffix == ".json" and isinstance(names := json.loads(path.read_text()), list):
            check_unique_names([str(n) for n in names], where=f"classes file {path}: ")
            return LabelSpec(names=names, **spec_kwargs), path  # a plain JSON list of names
        return LabelSpec.from_classes_file(path, **spec_kwargs), path
    except UnicodeDecodeError as e:
        raise DataError(f"classes file {path} is not a text file ({e}); write one class per line, `name` or "
                        "`name R G B`") from e
    except (ValueError, KeyError, TypeError) as e:
        msg = str(e.args[0] if isinstance(e, KeyError) and e.args else e)
        if str(path) in msg:  # the parser's own message: names the file, the line and the fix
            raise DataError(msg) from e
        raise DataError(f"classes file {path} cannot be read ({e}); write one class per line, `name` or "
                        "`name R G B`, or JSON {\"names\": [...], \"palette\": [[r, g, b], ...]}") from e


def split_folders(images_root: Path) -> list[str]:
    """Names of the split subfolders of root/images (empty for the flat layout)."""
    return sorted(p.name for p in images_root.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_files(folder: Path, exts: tuple[str, ...]) -> dict[str, Path]:
    """stem -> file for the files of ``folder`` with one of ``exts``; two files sharing a stem is an error."""
    files: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in exts:
            if p.stem in files:
                raise DataError(f"folder dataset: {files[p.stem]} and {p} share the name {p.stem!r}; "
                                "keep one file per sample")
            files[p.stem] = p
    return files


def _names(paths: list[Path], n: int = 5) -> str:
    more = f" and {len(paths) - n} more" if len(paths) > n else ""
    return ", ".join(str(p) for p in paths[:n]) + more


def pair_folder(image_dir: Path, mask_dir: Path) -> list[tuple[Path, Path]]:
    """Pair images and masks by stem. Raises DataError for an empty folder or any unpaired file."""
    if not mask_dir.is_dir():
        raise DataError(f"folder dataset: mask folder {mask_dir} does not exist; put one mask per image of "
                        f"{image_dir} there, with the same name and a .png extension")
    images, masks = list_files(image_dir, IMAGE_EXTS), list_files(mask_dir, MASK_EXTS)
    if not images:
        raise DataError(f"folder dataset: {image_dir} holds no images ({', '.join(IMAGE_EXTS)}); "
                        "the split is empty")
    lonely_images = [images[s] for s in images if s not in masks]
    lossy = [p for p in (lossy_mask(mask_dir, im.stem) for im in lonely_images) if p is not None]
    if lossy:
        raise DataError(f"folder dataset: {lossy_mask_message(lossy)}; the reader needs {mask_dir}/<image name>.png "
                        f"(or {', '.join(MASK_EXTS[1:])})")
    if lonely_images:
        raise DataError(f"folder dataset: image without mask: {_names(lonely_images)}; add "
                        f"{mask_dir}/<same name>.png for each, or remove the image")
    lonely_masks = [masks[s] for s in masks if s not in images]
    if lonely_masks:
        raise DataError(f"folder dataset: mask without image: {_names(lonely_masks)}; add the image to "
                        f"{image_dir} or remove the mask")
    return [(images[s], masks[s]) for s in images]


def list_samples(root: Path, split: str) -> list[tuple[Path, Path]]:
    """(image, mask) pairs of one split, in file-name order."""
    images_root = root / "images"
    if not root.is_dir():
        raise DataError(f"folder dataset root {root} does not exist; give the folder that holds images/, masks/ "
                        "and classes.txt (for example folder:/data/my_set or just /data/my_set)")
    if not images_root.is_dir():
        raise DataError(f"folder dataset {root}: images folder {images_root} does not exist; expected "
                        "root/images/<split>/*.jpg, root/masks/<split>/*.png and root/classes.txt")
    splits = split_folders(images_root)
    if not splits:
        if split not in ("train", "all"):
            raise DataError(f"folder dataset {root} has no split {split!r}: {images_root} has no split "
                            f"subfolders (flat layout: only 'train' or 'all'); create images/{split}/ and "
                            f"masks/{split}/ to add it")
        return pair_folder(images_root, root / "masks")
    if split == "all":
        return [pair for s in splits for pair in pair_folder(images_root / s, root / "masks" / s)]
    if split not in splits:
        raise DataError(f"folder dataset {root} has no split {split!r}: {images_root / split} does not exist "
                        f"(splits found: {', '.join(splits)})")
    return pair_folder(images_root / split, root / "masks" / split)


def build(root: str | Path, split: str = "train", transform: Callable | None = None, cache: bool = False,
          seed: int = 0, ignore_index: int | None = None, reduce_zero_label: bool | None = None,
          **_) -> FolderDataset:
    """The folder dataset of ``root`` for ``split``.

    Args:
        root: folder with images/, masks/ and classes.txt (or classes.json).
        split: a subfolder name of images/ ("train", "val", ...) or "all".
        ignore_index: mask value that counts nowhere (default 255, or the classes.json value).
        reduce_zero_label: mask 0 = unlabelled, class i stored as i + 1.
    Returns:
        FolderDataset of (image (H, W, 3) uint8, label (H, W) ids) samples.
    """
    root = Path(root)
    spec_kwargs = {k: v for k, v in (("ignore_index", ignore_index), ("reduce_zero_label", reduce_zero_label))
                   if v is not None}
    samples = list_samples(root, split)
    spec, classes_file = load_classes(root, **spec_kwargs)
    return FolderDataset(samples, spec, transform, cache=cache, name=f"folder:{root.name}/{split}", seed=seed,
                         classes_file=classes_file, split=split)
