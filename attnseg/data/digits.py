"""Digit classification tasks for the attention-over-locations models: centred, translated and cluttered digits.

The tasks of Mnih et al. 2014 ("Recurrent Models of Visual Attention", §4.1, https://arxiv.org/abs/1406.6247),
Jaderberg et al. 2015 and Gregor et al. 2015 (DRAW §4.1), built from digits that need no download:

- ``source=sklearn`` (default): the 1,797 handwritten 8x8 digits bundled with scikit-learn (UCI "optdigits",
  16 grey levels), upsampled to 20x20 inside a 28x28 frame, as MNIST digits are;
- ``source=fonts``: the digits 0-9 of the TrueType fonts matplotlib ships (DejaVu, STIX, Computer Modern),
  rendered at 20 px inside 28x28.

Each training sample gets a random affine distortion (rotation, scale, shear) and a random stroke width (grey
dilation or erosion), so the 28x28 digits differ from draw to draw. The tasks (``task=``):

- ``centred``: the distorted digit, 28x28;
- ``translated``: the digit at a uniformly random position in a 60x60 canvas (RAM §4.1 "Translated MNIST");
- ``cluttered60``: as translated, plus 4 clutter patches of 8x8 cut from other digits at random places;
- ``cluttered100``: 100x100 with 8 clutter patches (RAM's "Cluttered Translated MNIST", DRAW §4.1).

The clutter is combined with the digit by a pixel-wise maximum. **Train, val and test use disjoint source images**
(sklearn: a fixed shuffle of the 1,797 split 1,197 / 300 / 300; fonts: disjoint fonts), and the clutter of a
split is cut from that split's digits only. Deterministic by seed: a val/test sample depends on (``seed``, split,
index); a training sample on (``seed``, split, index) and, through ``configure(seed=..)`` and ``set_epoch``, on the
epoch, so every epoch draws fresh translations and clutter, as the papers generate them on the fly.

Samples are ``{"image": (1, H, W) float32 in [0, 1], "label": int64}``. This module knows nothing of models.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from .dataset import sample_seed
from .io import DataError
from .synthetic import parse_option_string

#: task -> (canvas side, clutter patches)
TASKS = {"centred": (28, 0), "translated": (60, 0), "cluttered60": (60, 4), "cluttered100": (100, 8)}
SOURCES = ("sklearn", "fonts")
SPLITS = ("train", "val", "test")
DIGIT = 28            # the digit frame, as MNIST
CLUTTER_PATCH = 8     # side of a clutter patch (RAM §4.1)
DEFAULT_COUNTS = {"train": 20000, "val": 2000, "test": 2000}
#: fonts per split (source=fonts): the fonts matplotlib ships whose digits 0-9 render distinctly
FONT_SPLITS = {
    "train": ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
              "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf",
              "STIXGeneral.ttf", "STIXGeneralBol.ttf", "cmr10.ttf", "cmss10.ttf"),
    "val": ("DejaVuSansMono-Oblique.ttf", "DejaVuSerif-Italic.ttf", "STIXGeneralItalic.ttf", "cmtt10.ttf"),
    "test": ("DejaVuSansMono-BoldOblique.ttf", "DejaVuSerif-BoldItalic.ttf", "STIXGeneralBolIta.ttf", "cmb10.ttf"),
}


def _counts(v: str) -> int:
    n = int(v)
    if n < 1:
        raise ValueError("give a count >= 1")
    return n


def _task(v: str) -> str:
    if v not in TASKS:
        raise ValueError(f"choose one of {', '.join(TASKS)}")
    return v


def _source(v: str) -> str:
    if v not in SOURCES:
        raise ValueError(f"choose one of {', '.join(SOURCES)}")
    return v


OPTIONS = {"task": _task, "source": _source, "n": _counts, "train": _counts, "val": _counts, "test": _counts,
           "seed": int, "clutter": int, "canvas": int, "distort": lambda v: v.lower() in ("1", "true", "yes", "on")}
EXAMPLE = "digits:task=cluttered60,source=sklearn,train=20000,seed=0"


@functools.lru_cache(maxsize=4)
def source_digits(source: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The split's source digits as 28x28 float32 frames in [0, 1] (the digit about 20x20 in the middle) and
    their labels: (N, 28, 28), (N,) int64."""
    if split not in SPLITS:
        raise DataError(f"digits has the splits {', '.join(SPLITS)}, not {split!r}")
    if source == "sklearn":
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise DataError("digits:source=sklearn reads the 8x8 digits bundled with scikit-learn, which is not "
                            "installed; pip install 'attnseg[digits]' or use digits:source=fonts") from None
        d = load_digits()
        order = np.random.default_rng(0).permutation(len(d.target))   # fixed: the splits never change
        part = {"train": order[:1197], "val": order[1197:1497], "test": order[1497:]}[split]
        small = d.images[part].astype(np.float32) / 16.0                    # (N, 8, 8), 16 grey levels
        return np.stack([_frame(im) for im in small]), d.target[part].astype(np.int64)
    frames, labels = [], []
    for font in FONT_SPLITS[split]:
        for digit in range(10):
            frames.append(_render_glyph(font, str(digit)))
            labels.append(digit)
    return np.stack(frames), np.asarray(labels, np.int64)


def _frame(small: np.ndarray) -> np.ndarray:
    """An 8x8 digit -> 20x20 (bicubic) in the middle of a 28x28 frame, [0, 1]."""
    from PIL import Image
    up = np.asarray(Image.fromarray(small).resize((20, 20), Image.BICUBIC), np.float32)
    out = np.zeros((DIGIT, DIGIT), np.float32)
    out[4:24, 4:24] = np.clip(up, 0, 1)
    return out


def _render_glyph(font: str, char: str) -> np.ndarray:
    import matplotlib
    from PIL import Image, ImageDraw, ImageFont
    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / font
    if not path.is_file():
        raise DataError(f"digits:source=fonts needs matplotlib's font {font}, which is missing from {path.parent}; "
                        "use digits:source=sklearn")
    f = ImageFont.truetype(str(path), 64)
    canvas = Image.new("L", (96, 96), 0)
    ImageDraw.Draw(canvas).text((16, 0), char, fill=255, font=f)
    a = np.asarray(canvas, np.float32) / 255.0
    ys, xs = np.nonzero(a > 0.05)
    a = a[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    scale = 20.0 / max(a.shape)                                          # the longer side 20 px, as MNIST
    h, w = max(1, round(a.shape[0] * scale)), max(1, round(a.shape[1] * scale))
    glyph = np.asarray(Image.fromarray(a).resize((w, h), Image.BILINEAR), np.float32)
    out = np.zeros((DIGIT, DIGIT), np.float32)
    y0, x0 = (DIGIT - h) // 2, (DIGIT - w) // 2
    out[y0:y0 + h, x0:x0 + w] = np.clip(glyph, 0, 1)
    return out


def distort(frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random affine distortion about the frame's centre (rotation ±15°, scale 0.85-1.15, shear ±0.25) and a
    random stroke width (2x2 grey dilation, or the mean with a 2x2 erosion, each with probability 1/4).
    (28, 28) -> (28, 28)."""
    u = rng.random(4)
    a, s, sh = np.deg2rad(30 * u[0] - 15), 0.85 + 0.3 * u[1], 0.5 * u[2] - 0.25
    # forward map R(a) S(s) H(sh) = s [[cos, cos·sh − sin], [sin, sin·sh + cos]] (determinant s²); the output pixel
    # p reads the input at M p + o with M its inverse, written out
    c_, s_ = np.cos(a), np.sin(a)
    M = np.array([[s_ * sh + c_, -(c_ * sh - s_)], [-s_, c_]]) / s
    c = np.array([(DIGIT - 1) / 2, (DIGIT - 1) / 2])
    out = ndimage.affine_transform(frame, M, offset=c - M @ c, order=1, mode="constant", cval=0.0)
    if u[3] < 0.5:  # the max (dilation) or min (erosion) over each 2x2 window, anchored at the top-left pixel
        pad = np.pad(out, ((0, 1), (0, 1)))
        op = np.maximum if u[3] < 0.25 else np.minimum
        win = op(op(pad[:-1, :-1], pad[1:, :-1]), op(pad[:-1, 1:], pad[1:, 1:]))
        out = win if u[3] < 0.25 else 0.5 * (out + win)
    return np.clip(out, 0, 1).astype(np.float32)


class DigitClassification(torch.utils.data.Dataset):
    """One split of a digit task. ``get(i)`` -> ((H, W) float32 image in [0, 1], label); ``[i]`` -> the sample
    dict; ``digit_box(i)`` -> where the digit was placed (x0, y0, x1, y1), for pictures and tests."""

    task = "classification"

    def __init__(self, task: str, split: str, n: int, source: str = "sklearn", seed: int = 0,
                 clutter: int | None = None, canvas: int | None = None, distortion: bool = True):
        side, patches = TASKS[task]
        self.kind, self.split, self.n, self.source, self.seed = task, split, n, source, seed
        self.canvas = canvas or side
        self.clutter = patches if clutter is None else clutter
        if self.canvas < DIGIT:
            raise DataError(f"digits: canvas={self.canvas} is smaller than the {DIGIT}x{DIGIT} digit; give canvas >= "
                            f"{DIGIT}")
        if self.clutter < 0:
            raise DataError(f"digits: clutter={self.clutter} must be >= 0 patches")
        self.distortion = distortion
        self.frames, self.labels = source_digits(source, split)
        self.class_names = [str(d) for d in range(10)]
        self.epoch, self.aug_seed = 0, 0
        self.transform = None

    # the engine's dataset interface (as InstanceDataset)
    def configure(self, cache: bool = False, seed: int = 0) -> DigitClassification:
        self.aug_seed = seed
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    @property
    def size(self) -> tuple[int, int]:
        return self.canvas, self.canvas

    def sample_name(self, i: int) -> str:
        return f"{self.kind}_{self.split}_{i:05d}"

    def _rng(self, i: int) -> np.random.Generator:
        # val/test: fixed by (seed, split, i); train: also by the augmentation seed and the epoch
        epoch = self.epoch if self.split == "train" else 0
        aug = self.aug_seed if self.split == "train" else 0
        return np.random.default_rng(sample_seed(self.seed * 1000 + aug, epoch, hash_split(self.split) + i))

    def _draw(self, i: int):
        if not 0 <= i < self.n:
            raise IndexError(f"sample {i} of a split of {self.n}")
        rng = self._rng(i)
        N, C, P = len(self.labels), self.canvas, CLUTTER_PATCH
        k = int(rng.integers(N))
        digit = distort(self.frames[k], rng) if self.distortion else self.frames[k]
        image = np.zeros((C, C), np.float32)
        # 8x8 pieces of random digits of this split (RAM §4.1), from inside their 20x20 boxes; as in the cluttered
        # MNIST generators, a piece may (with probability 1/N per piece) come from the digit's own source image
        if self.clutter:
            src = rng.integers(N, size=self.clutter)
            cut = rng.integers(4, 24 - P + 1, size=(self.clutter, 2))
            at = rng.integers(0, C - P + 1, size=(self.clutter, 2))
            for j, (py, px), (y, x) in zip(src, cut, at):
                np.maximum(image[y:y + P, x:x + P], self.frames[j][py:py + P, px:px + P], out=image[y:y + P, x:x + P])
        y, x = (int(v) for v in rng.integers(0, C - DIGIT + 1, size=2))
        np.maximum(image[y:y + DIGIT, x:x + DIGIT], digit, out=image[y:y + DIGIT, x:x + DIGIT])
        return image, int(self.labels[k]), (x, y, x + DIGIT, y + DIGIT)

    def get(self, i: int) -> tuple[np.ndarray, int]:
        image, label, _ = self._draw(i)
        return image, label

    def digit_box(self, i: int) -> tuple[int, int, int, int]:
        return self._draw(i)[2]

    def __getitem__(self, i: int) -> dict:
        image, label = self.get(i)
        x = torch.from_numpy(image)[None]                                    # (1, H, W)
        if self.transform is not None:
            x = self.transform(x)
        return {"image": x, "label": torch.tensor(label, dtype=torch.int64)}

    def check_labels(self, **_) -> None:
        """Every split holds every class (the engine calls this before training, as for the other tasks)."""
        missing = sorted(set(range(10)) - set(self.labels.tolist()))
        if missing:
            raise DataError(f"digits {self.source} {self.split}: no source image of the classes {missing}")

    def __repr__(self) -> str:
        return (f"DigitClassification({self.kind}, {self.split}, {self.n} samples of {self.canvas}x{self.canvas}, "
                f"{self.clutter} clutter patches, {len(self.labels)} {self.source} source digits)")


def hash_split(split: str) -> int:
    return {"train": 0, "val": 10**7, "test": 2 * 10**7}.get(split, 3 * 10**7)


def build(root: str = "", split: str = "train", transform=None) -> DigitClassification:
    """``digits:task=..,source=..,n=..,train=..,val=..,test=..,seed=..,clutter=..,canvas=..,distort=..``.

    Defaults: task=cluttered60, source=sklearn, 20000 training samples per epoch, 2000 val and 2000 test,
    seed 0 (the data seed, independent of the training seed), the task's clutter and canvas."""
    opts = parse_option_string(root, OPTIONS, "digits", EXAMPLE)
    if split not in SPLITS:
        raise DataError(f"digits has the splits {', '.join(SPLITS)}, not {split!r}")
    n = opts.get(split, opts.get("n", DEFAULT_COUNTS[split]))
    ds = DigitClassification(opts.get("task", "cluttered60"), split, n, opts.get("source", "sklearn"),
                             opts.get("seed", 0), opts.get("clutter"), opts.get("canvas"), opts.get("distort", True))
    ds.transform = transform
    return ds
