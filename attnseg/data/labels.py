"""LabelSpec: the one description of a label space, shared by datasets, losses, metrics and pictures.

A label map stores one integer per pixel. Values in ``[0, num_classes)`` are classes; ``ignore_index``
(255 by default) marks pixels that count nowhere (not in the loss, not in the metrics). Datasets whose
label 0 means "unlabelled" (ADE20K) set ``reduce_zero_label``: 0 becomes ignore and every other value
is shifted down by one, as mmsegmentation does.
"""

from __future__ import annotations

import colorsys
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


def default_palette(n: int) -> list[tuple[int, int, int]]:
    """Distinct colours for ``n`` classes: the PASCAL VOC bit-interleaving palette (index 0 is black)."""
    palette = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette.append((r, g, b))
    return palette


def hue_palette(n: int) -> list[tuple[int, int, int]]:
    """Evenly spaced hues: better than the VOC palette when no colour should be black."""
    return [tuple(int(255 * v) for v in colorsys.hsv_to_rgb(i / max(n, 1), 0.65, 0.95)) for i in range(n)]


_INT = re.compile(r"[+-]?\d+")


def check_unique_names(names: list[str], lines: list[int] | None = None, where: str = "") -> None:
    """ValueError naming each class listed more than once (with its line numbers when given); ``where`` starts the
    message (e.g. "classes file X: ")."""
    found: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        found.setdefault(name, []).append(lines[i] if lines else i)
    dups = {n: w for n, w in found.items() if len(w) > 1}
    if dups:
        how = "lines" if lines else "positions (from 0)"
        shown = "; ".join(f"{n!r} on {how} {', '.join(map(str, w))}" for n, w in list(dups.items())[:5])
        raise ValueError(f"{where}class name{'s' if len(dups) > 1 else ''} listed more than once: {shown}; list "
                         "each class once (its position is its mask value): merge the classes in the masks or rename "
                         "one")


@dataclass
class LabelSpec:
    """Classes, colours and the ignore convention of one dataset.

    Args:
        names: class names, index = class id.
        palette: one RGB triple per class (default: VOC palette).
        ignore_index: label value excluded from loss and metrics.
        reduce_zero_label: map stored 0 to ignore and shift others down by one (ADE20K).
    """

    names: list[str]
    palette: list[tuple[int, int, int]] = field(default_factory=list)
    ignore_index: int = 255
    reduce_zero_label: bool = False

    def __post_init__(self):
        self.names = [str(n) for n in self.names]
        if not self.names:
            raise ValueError("LabelSpec needs at least one class name")
        if not self.palette:
            self.palette = default_palette(len(self.names))
        self.palette = [tuple(int(v) for v in c) for c in self.palette]
        if len(self.palette) != len(self.names):
            raise ValueError(
                f"LabelSpec has {len(self.names)} class names but {len(self.palette)} palette colours; "
                "give one RGB colour per class")
        if 0 <= self.ignore_index < len(self.names):
            raise ValueError(
                f"ignore_index {self.ignore_index} is a valid class id (there are {len(self.names)} classes); "
                "choose a value outside [0, num_classes), usually 255")

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def encode(self, raw: np.ndarray) -> np.ndarray:
        """Stored label values -> training ids (applies reduce_zero_label). Returns uint8 or int64 copy."""
        if not self.reduce_zero_label:
            return raw
        out = raw.astype(np.int64) - 1
        out[raw == 0] = self.ignore_index
        out[raw == self.ignore_index] = self.ignore_index
        return out.astype(raw.dtype) if raw.dtype == np.uint8 else out

    def invalid_values(self, label: np.ndarray) -> np.ndarray:
        """Sorted label values (after encode) that are neither a class nor ignore (negatives included)."""
        values = np.unique(label)
        return values[((values < 0) | (values >= self.num_classes)) & (values != self.ignore_index)]

    def colorize(self, label: np.ndarray, ignore_color=(0, 0, 0)) -> np.ndarray:
        """(H, W) ids -> (H, W, 3) uint8 RGB using the palette; ignore and unknown ids get ignore_color."""
        out = np.empty((*label.shape, 3), np.uint8)
        out[:] = ignore_color
        valid = (label >= 0) & (label < self.num_classes)
        out[valid] = np.asarray(self.palette, np.uint8)[label[valid]]
        return out

    def to_dict(self) -> dict:
        return {"names": self.names, "palette": [list(c) for c in self.palette],
                "ignore_index": self.ignore_index, "reduce_zero_label": self.reduce_zero_label}

    @classmethod
    def from_dict(cls, d: dict) -> LabelSpec:
        return cls(names=list(d["names"]), palette=[tuple(c) for c in d.get("palette") or []],
                   ignore_index=int(d.get("ignore_index", 255)),
                   reduce_zero_label=bool(d.get("reduce_zero_label", False)))

    @classmethod
    def from_classes_file(cls, path: str | Path, **kwargs) -> LabelSpec:
        """Read a classes file: one class per line, ``name`` or ``name R G B`` (or ``name,R,G,B``);
        a ``.json`` file may hold ``{"names": [...], "palette": [[r,g,b], ...]}``.
        Either every line has a colour or none does."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"classes file {path} does not exist; write one class name per line")
        if path.suffix == ".json":
            d = json.loads(path.read_text())
            check_unique_names([str(n) for n in d["names"]], where=f"classes file {path}: ")
            return cls.from_dict({**d, **kwargs})
        names, palette, lines = [], [], []
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.replace(",", " ").split()
            numbers = 0
            while numbers < len(parts) and _INT.fullmatch(parts[-1 - numbers]):
                numbers += 1
            if numbers == len(parts) and numbers in (3, 4):
                raise ValueError(f"classes file {path}, line {lineno}: {line!r} gives a colour but no class name; "
                                 "write `name R G B`")
            if numbers >= 3:
                rgb = tuple(int(p) for p in parts[-3:])
                if any(not 0 <= v <= 255 for v in rgb):
                    raise ValueError(f"classes file {path}, line {lineno}: colour {rgb} has a component outside "
                                     "0..255; "
                                     "write R G B as three integers 0-255")
                names.append(" ".join(parts[:-3]))
                palette.append(rgb)
            elif numbers == 2:
                raise ValueError(f"classes file {path}, line {lineno}: {line!r} ends in two numbers, not a colour; "
                                 "a colour is three integers R G B (0-255) after the name")
            else:
                names.append(line)
            lines.append(lineno)
        if not names:
            raise ValueError(f"classes file {path} lists no classes; write one class name per line (optionally "
                             "followed by R G B), the class of mask value 0 first")
        if palette and len(palette) != len(names):
            raise ValueError(f"classes file {path}: {len(palette)} of {len(names)} lines give a colour; "
                             "give a colour on every line or on none")
        check_unique_names(names, lines, where=f"classes file {path}: ")
        return cls(names=names, palette=palette, **kwargs)


CAMVID = LabelSpec(
    names=["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
           "Pedestrian", "Bicyclist"],
    palette=[(128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
             (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192)],
    ignore_index=255,
)
#: CamVid (SegNet layout) stores void as 11; the reader maps it to CAMVID.ignore_index.
CAMVID_VOID = 11

VOC = LabelSpec(
    names=["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
           "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
           "tvmonitor"],
    ignore_index=255,
)

CITYSCAPES = LabelSpec(
    names=["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
           "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
           "bicycle"],
    palette=[(128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
             (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
             (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32)],
    ignore_index=255,
)
