"""ADE20K, the 150-class SceneParsing benchmark (ADEChallengeData2016).

Zhou, Zhao, Puig, Fidler, Barriuso, Torralba, "Scene Parsing through ADE20K Dataset", CVPR 2017.
http://sceneparsing.csail.mit.edu/ (ADEChallengeData2016.zip). Class names and palette as in
mmsegmentation's ``ADE20KDataset`` (``mmseg/utils/class_names.py``), except that its ``'bed '`` is written
without the trailing space.

::

    root/images/training/ADE_train_00000001.jpg        root/annotations/training/ADE_train_00000001.png
    root/images/validation/ADE_val_00000001.jpg        root/annotations/validation/ADE_val_00000001.png

``root`` may be ``ADEChallengeData2016`` or the folder holding it. Splits "train" and "val" are the folders
``training`` (20,210 images) and ``validation`` (2,000).

Label conventions: annotations are 8-bit maps, 0 = "other objects" (unlabelled), 1..150 = the classes.
``reduce_zero_label`` applies: 0 becomes 255 (ignored) and 1..150 become 0..149, as in mmsegmentation.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .dataset import SegmentationDataset
from .io import IMAGE_EXTS, DataError, lossy_mask, lossy_mask_message
from .labels import LabelSpec

SPLIT_DIRS = {"train": "training", "val": "validation", "training": "training", "validation": "validation"}

ADE20K = LabelSpec(
    names=["wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
           "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
           "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence",
           "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column",
           "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator",
           "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway",
           "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
           "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
           "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning",
           "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel", "pole", "land",
           "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
           "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket",
           "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name",
           "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
           "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
           "bulletin board", "shower", "radiator", "glass", "clock", "flag"],
    palette=[(120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80),
             (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7),
             (150, 5, 61), (120, 120, 70), (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4),
             (255, 51, 7), (204, 70, 3), (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255),
             (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220), (255, 9, 92), (112, 9, 255),
             (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10), (7, 255, 255),
             (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20),
             (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255),
             (140, 140, 140), (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0),
             (153, 255, 0), (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255),
             (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255), (0, 255, 112), (0, 255, 133),
             (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0), (0, 143, 255), (51, 255, 0),
             (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255, 0), (0, 255, 153),
             (255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20),
             (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194),
             (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255),
             (0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0), (143, 255, 0), (82, 0, 255),
             (163, 255, 0), (255, 235, 0), (8, 184, 170), (133, 0, 255), (0, 255, 92), (184, 0, 255),
             (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112), (92, 255, 0), (0, 224, 255),
             (112, 224, 255), (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0), (255, 0, 163),
             (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235), (245, 0, 255),
             (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0), (0, 204, 255), (20, 0, 255),
             (255, 255, 0), (0, 153, 255), (0, 41, 255), (0, 255, 204), (41, 0, 255), (41, 255, 0),
             (173, 0, 255), (0, 245, 255), (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255),
             (184, 255, 0), (0, 133, 255), (255, 214, 0), (25, 194, 194), (102, 255, 0), (92, 0, 255)],
    ignore_index=255,
    reduce_zero_label=True,
)


def resolve_root(root: Path) -> Path:
    """The folder holding images/ and annotations/: root or root/ADEChallengeData2016."""
    for cand in (root, root / "ADEChallengeData2016"):
        if (cand / "images").is_dir() and (cand / "annotations").is_dir():
            return cand
    raise DataError(f"ade20k: {root} is not an ADEChallengeData2016 folder (no images/ and annotations/ in it "
                    "or in ADEChallengeData2016/); unzip ADEChallengeData2016.zip and point at it")


def list_samples(root: Path, split: str) -> list[tuple[Path, Path]]:
    """(images/<dir>/X.jpg, annotations/<dir>/X.png) pairs of a split, sorted by name."""
    if split not in SPLIT_DIRS:
        raise DataError(f"ade20k has no split {split!r}; choose train or val")
    image_dir, ann_dir = root / "images" / SPLIT_DIRS[split], root / "annotations" / SPLIT_DIRS[split]
    if not image_dir.is_dir():
        raise DataError(f"ade20k split {split!r}: folder {image_dir} does not exist")
    images = sorted(p for p in image_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if not images:
        raise DataError(f"ade20k split {split!r}: {image_dir} holds no images")
    samples = [(p, ann_dir / f"{p.stem}.png") for p in images]
    missing = [label for _, label in samples if not label.is_file()]
    lossy = [p for p in (lossy_mask(ann_dir, m.stem) for m in missing) if p is not None]
    if lossy:
        raise DataError(f"ade20k split {split!r}: {lossy_mask_message(lossy, 'annotation')}; the reader needs "
                        f"{ann_dir}/<image name>.png")
    if missing:
        raise DataError(f"ade20k split {split!r}: {len(missing)} annotations are missing: "
                        f"{', '.join(map(str, missing[:5]))}{' ...' if len(missing) > 5 else ''}; every image "
                        f"needs {ann_dir}/<same name>.png")
    return samples


def build(root: str | Path, split: str = "train", transform: Callable | None = None, cache: bool = False,
          seed: int = 0, **_) -> SegmentationDataset:
    """ADE20K ``split`` ("train" or "val").

    Returns:
        SegmentationDataset of (image (H, W, 3) uint8, label (H, W) ids 0..149 or 255), spec ``ADE20K``.
    """
    samples = list_samples(resolve_root(Path(root)), split)
    return SegmentationDataset(samples, ADE20K, transform, cache=cache, name=f"ade20k/{split}", seed=seed,
                               split=split)
