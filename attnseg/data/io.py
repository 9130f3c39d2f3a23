"""Reading images and label maps, with errors that name the file and say what to do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


class DataError(ValueError):
    """A problem with a dataset file: the message names the file and the fix."""


def read_image(path: str | Path) -> np.ndarray:
    """Read an RGB image as (H, W, 3) uint8. Raises DataError for missing, corrupt or truncated files."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image {path} does not exist; check the dataset root and split list")
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"image {path} cannot be decoded ({e}); the file is corrupt or truncated: "
                        "re-copy it or remove it from the split list") from e


def read_label(path: str | Path) -> np.ndarray:
    """Read a label map as (H, W) integer array (uint8 or uint16/int32 as stored). Palette ('P') images give
    their indices; RGB label images are rejected with a hint (convert colours to ids first)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"label map {path} does not exist; every image needs a label map of the same name")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGB", "RGBA"):
                arr = np.asarray(im)
                if arr.ndim == 3 and not (np.all(arr[..., 0] == arr[..., 1]) and np.all(arr[..., 1] == arr[..., 2])):
                    raise DataError(f"label map {path} is a colour image (mode {im.mode}); label maps must hold "
                                    "class ids (mode L or P); convert colours to ids with the palette first")
                return arr[..., 0].copy()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                return np.asarray(im).astype(np.int32)
            if im.mode not in ("L", "P", "1"):
                im = im.convert("L")
            return np.asarray(im)
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"label map {path} cannot be decoded ({e}); the file is corrupt or truncated") from e


def find_with_ext(stem_path: Path, exts=IMAGE_EXTS) -> Path | None:
    """``dir/name`` or ``dir/name.png`` -> the first existing file among ``dir/name<ext>``."""
    if stem_path.is_file():
        return stem_path
    for ext in exts:
        p = stem_path.with_suffix(ext)
        if p.is_file():
            return p
    return None
