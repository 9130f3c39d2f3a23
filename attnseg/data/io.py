"""Reading images, label maps and split lists, with errors that name the file and say what to do."""

from __future__ import annotations

import codecs
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
#: mask formats that are never read as label maps: their compression changes pixel values
LOSSY_MASK_EXTS = (".jpg", ".jpeg", ".webp")


class DataError(ValueError):
    """A problem with a dataset file: the message names the file and the fix."""


def why_unreadable(path: Path, error: Exception) -> str:
    """What is wrong with a file that PIL cannot decode: empty, a text file, or corrupt / truncated."""
    try:
        head = path.read_bytes()[:200]
    except OSError:
        head = b""
    if not head:
        return "is empty (0 bytes)"
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head)  # a character cut at byte 200 is no error
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c in "\r\n\t" for c in text):
        return f"is not an image but a text file (it starts with {text[:40]!r})"
    return f"cannot be decoded ({error}); the file is corrupt or truncated"


def read_image(path: str | Path) -> np.ndarray:
    """Read an RGB image as (H, W, 3) uint8. Raises DataError for missing, empty, corrupt or truncated files."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image {path} does not exist; check the dataset root and split list")
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"image {path} {why_unreadable(path, e)}: re-copy it from the original dataset or "
                        "remove it (and its label map) from the split") from e


def read_label(path: str | Path) -> np.ndarray:
    """Read a label map as (H, W) integer array: uint8, or int32 for 16/32-bit maps holding values above 255.

    Palette ('P') images give their indices; grey RGB images their grey level; colour RGB label images are
    rejected with a hint (convert colours to ids first). 16-bit maps whose values fit in 8 bits are returned as
    uint8, so that they behave exactly like 8-bit ones; larger values are kept and reported by the range check.
    """
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
                arr = np.asarray(im).astype(np.int32)
                if arr.size and 0 <= arr.min() and arr.max() < 256:
                    return arr.astype(np.uint8)
                return arr
            if im.mode not in ("L", "P", "1"):
                im = im.convert("L")
            return np.asarray(im)
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"label map {path} {why_unreadable(path, e)}: re-export it from the annotation tool "
                        "(a PNG of class ids) or remove the sample from the split") from e


def find_with_ext(stem_path: Path, exts=IMAGE_EXTS) -> Path | None:
    """``dir/name`` or ``dir/name.png`` -> the first existing file among ``dir/name<ext>``."""
    if stem_path.is_file():
        return stem_path
    for ext in exts:
        p = stem_path.with_suffix(ext)
        if p.is_file():
            return p
    return None


def lossy_mask(folder: Path, stem: str) -> Path | None:
    """``folder/stem.jpg`` (or .jpeg / .webp) when such a mask exists: a label map that is never read."""
    for ext in LOSSY_MASK_EXTS:
        for p in (folder / f"{stem}{ext}", folder / f"{stem}{ext.upper()}"):
            if p.is_file():
                return p
    return None


def lossy_mask_message(paths: list[Path], what: str = "mask") -> str:
    """Why JPEG / WebP masks are not read, and what to do instead."""
    shown = ", ".join(str(p) for p in paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
    return (f"{what}{'s' if len(paths) > 1 else ''} {shown} {'is' if len(paths) == 1 else 'are'} saved as "
            f"{'/'.join(sorted({p.suffix.lower().lstrip('.').upper() for p in paths}))} and not read: JPEG (and lossy "
            "WebP) compression is lossy, so label ids get corrupted at object edges (values between two classes "
            "appear); save the masks as PNG from the original class ids (converting the .jpg would keep the damage)")


def read_split_list(path: Path, what: str = "split list") -> list[tuple[int, str, list[str]]]:
    """Entries of a split list: (line number from 1, the line, its whitespace-separated fields), skipping blank
    lines and ``#`` comments. Raises DataError for a file that is not text."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{what} {path} is not a text file ({e}); it should list one image per line") from e
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            out.append((lineno, stripped, stripped.split()))
    return out


def duplicate_entries_message(path: Path, keyed: list[tuple[int, str]], what: str = "split list") -> str | None:
    """``keyed``: (line number, image name) per entry. A message naming each image listed more than once with its
    count and line numbers, or None when every image is listed once."""
    lines: dict[str, list[int]] = defaultdict(list)
    for lineno, key in keyed:
        lines[key].append(lineno)
    dups = [(key, nums) for key, nums in lines.items() if len(nums) > 1]
    if not dups:
        return None
    def where(nums: list[int]) -> str:
        return ", ".join(map(str, nums[:8])) + (", ..." if len(nums) > 8 else "")

    shown = "; ".join(f"{key} {len(nums)} times (lines {where(nums)})" for key, nums in dups[:5])
    more = f"; and {len(dups) - 5} more images" if len(dups) > 5 else ""
    return (f"{what} {path} lists {len(dups)} image{'s' if len(dups) > 1 else ''} more than once: {shown}{more}; "
            "list each image once (delete the repeated lines): a repeated image is trained on more often and "
            "counted several times in the scores")
