"""Bad data given to ``attnseg train`` and ``attnseg data check``: every case is built at test time from 8x8 files.

``attnseg train`` must stop before training starts, with exit code 2 and ``attnseg: error: ...`` naming the file
(or option) and the fix. The ``train`` fixture makes building the optimizer (the step after the datasets are built,
the model created and the training samples decoded with cache=true) raise ``TrainingWouldStart``: a data error has
to surface before it, and a case whose data is accepted shows up as ``None`` instead of a Result.
``attnseg data check`` prints its report and exits 1 when it finds problems, 0 when there are none (warnings
allowed) and 2 for a spec it cannot scan at all. Every case also checks that neither the data folder nor an
earlier run directory was changed.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import attnseg.engine.trainer as trainer_module

from ..conftest import write_camvid
from .conftest import Result, expect_bad, tree_digest

S = 8  # every image is S x S
TRAIN_ARGS = ("model=fcn8s_resnet18", "crop=[8,8]", "batch_size=2", "iters=1", "val_interval=0", "workers=0",
              "progress=false")


class TrainingWouldStart(Exception):
    """Raised in place of building the optimizer: the data was accepted and training would start."""


# ----------------------------------------------------------------------------------------------- fixtures


@pytest.fixture
def train(run_cli, monkeypatch, tmp_path):
    """``train(spec, *overrides, data=ROOT) -> Result | None``: ``attnseg train`` on ``spec``; None when the data
    was accepted (training would start). Checks that ``data`` and an earlier run directory are untouched."""

    def stop(*args, **kwargs):
        raise TrainingWouldStart

    monkeypatch.setattr(trainer_module, "build_optimizer", stop)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("model: fcn8s_resnet18\n")
    (run / "checkpoints" / "last.pt").write_bytes(b"an earlier run's checkpoint")

    def go(spec, *overrides, data=None) -> Result | None:
        data_before, run_before = tree_digest(data) if data else None, tree_digest(run)
        try:
            res = run_cli("train", f"data={spec}", *TRAIN_ARGS, f"run_dir={run}", *overrides)
        except TrainingWouldStart:
            res = None
        if data:
            assert tree_digest(data) == data_before, "the data folder was changed"
        assert tree_digest(run) == run_before, "the earlier run directory was changed"
        return res

    return go


@pytest.fixture
def check(run_cli):
    """``check(spec, splits="train,val", data=ROOT) -> Result``: ``attnseg data check``; the data is untouched."""

    def go(spec, splits="train,val", data=None) -> Result:
        before = tree_digest(data) if data else None
        res = run_cli("data", "check", spec, "--splits", splits)
        if data:
            assert tree_digest(data) == before, "data check changed the data folder"
        return res

    return go


def expect_stop(res: Result | None, *needles: str) -> str:
    """``attnseg train`` stopped on bad input before training: exit code 2, each needle in the message."""
    assert res is not None, "the bad data was accepted: training would have started"
    return expect_bad(res, *needles)


def expect_report(res: Result, *needles: str) -> str:
    """``data check`` found problems: exit code 1, its report printed, each needle in it."""
    assert res.rc == 1, f"exit code {res.rc}, expected 1 (problems found); printed:\n{res.text}"
    assert "problem(s):" in res.out
    low = res.text.lower()
    for n in needles:
        assert n.lower() in low, f"{n!r} missing from the report:\n{res.text}"
    return res.text


def expect_accepted(res: Result | None):
    assert res is None, f"the data should have been accepted; exit code {res.rc}:\n{res.text}"


# ----------------------------------------------------------------------------------------------- writers


def save_label(path, label: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(label).save(path)  # uint8 -> 8-bit L PNG, uint16 -> 16-bit PNG, (H, W, 3) -> RGB


def camvid(tmp_path, n=2, label_fn=None, lists=False):
    """ROOT/{train,val}/s{i}.png + {train,val}annot/s{i}.png (class 0, sky); split lists when ``lists``."""
    root = write_camvid(tmp_path / "camvid", n, (S, S), label_fn)
    if lists:
        for split in ("train", "val"):
            write_list(root, split, [f"s{i}" for i in range(n)])
    return root


def write_list(root, split, names):
    (root / f"{split}.txt").write_text(
        "".join(f"/SegNet/CamVid/{split}/{n}.png /SegNet/CamVid/{split}annot/{n}.png\n" for n in names))


def folder(tmp_path, n=2, label=None, classes="a\nb\nc\n"):
    """ROOT/images/{train,val}/s{i}.png, ROOT/masks/{train,val}/s{i}.png (a 0/1/2 pattern), ROOT/classes.txt."""
    root = tmp_path / "ds"
    label = np.arange(S * S, dtype=np.uint8).reshape(S, S) % 3 if label is None else label
    for split in ("train", "val"):
        for i in range(n):
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((S, S, 3), 40 * i, np.uint8)).save(root / "images" / split / f"s{i}.png")
            save_label(root / "masks" / split / f"s{i}.png", label)
    (root / "classes.txt").write_text(classes)
    return root


def voc(tmp_path, train_ids):
    root = tmp_path / "VOC2012"
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    for i in sorted(set(train_ids)) + ["v0"]:
        (root / "JPEGImages").mkdir(exist_ok=True)
        Image.fromarray(np.zeros((S, S, 3), np.uint8)).save(root / "JPEGImages" / f"{i}.jpg")
        save_label(root / "SegmentationClass" / f"{i}.png", np.zeros((S, S), np.uint8))
    (lists / "train.txt").write_text("".join(f"{i}\n" for i in train_ids))
    (lists / "val.txt").write_text("v0\n")
    return root


def noise_png(path, label=False):
    """A valid PNG of random content (big enough that cutting it in half breaks the pixel data)."""
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 3, (S, S), dtype=np.uint8) if label else rng.integers(0, 256, (S, S, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)


def corrupt(path, label):
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + np.random.default_rng(1).integers(0, 256, 200, np.uint8).tobytes())


def truncate(path, label):
    noise_png(path, label)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def empty(path, label):
    path.write_bytes(b"")


def text(path, label):
    path.write_text("this is not an image, just some notes\n")


DAMAGES = {  # damage -> what the message says about the file
    "corrupt": (corrupt, "cannot be decoded"),
    "truncated": (truncate, "cannot be decoded"),
    "zero-byte": (empty, "is empty (0 bytes)"),
    "text": (text, "not an image but a text file"),
}
FIX = {"image": "re-copy it", "label": "re-export it"}


# ----------------------------------------------------------------------------------------------- broken files


@pytest.mark.parametrize("what", ["image", "label"])
@pytest.mark.parametrize("damage", list(DAMAGES))
def test_broken_file_stops_training(train, tmp_path, what, damage):
    root = camvid(tmp_path)
    path = root / ("train" if what == "image" else "trainannot") / "s1.png"
    DAMAGES[damage][0](path, what == "label")
    msg = expect_stop(train(f"camvid:{root}", data=root), str(path), DAMAGES[damage][1], FIX[what])
    assert "attnseg: error:" in msg


@pytest.mark.parametrize("what", ["image", "label"])
@pytest.mark.parametrize("damage", list(DAMAGES))
def test_broken_file_in_data_check(check, tmp_path, what, damage):
    root = folder(tmp_path)
    path = root / ("images" if what == "image" else "masks") / "val" / "s0.png"
    DAMAGES[damage][0](path, what == "label")
    text = expect_report(check(f"folder:{root}", data=root), "[val] ", str(path), DAMAGES[damage][1], FIX[what])
    assert "1 problem(s):" in text  # the other samples and the train split are fine


# ----------------------------------------------------------------------------------------------- label content


def test_label_size_mismatch(train, check, tmp_path):
    root = camvid(tmp_path, label_fn=lambda split, i: np.zeros((S, S + 2), np.uint8) if i == 1 else
                  np.zeros((S, S), np.uint8))
    needles = (f"{root}/trainannot/s1.png is 10x8 but its image", f"{root}/train/s1.png is 8x8", "same size")
    expect_stop(train(f"camvid:{root}", data=root), *needles)
    expect_report(check(f"camvid:{root}", data=root), *needles)


def test_label_value_out_of_range_camvid(train, tmp_path):
    root = camvid(tmp_path, label_fn=lambda split, i: np.full((S, S), 37 if i == 1 else 3, np.uint8))
    expect_stop(train(f"camvid:{root}", data=root), f"label value 37 in {root}/trainannot/s1.png",
               "exceeds the 11 classes", "ids 0..10 and 11 for void")


def test_label_value_out_of_range_folder(check, tmp_path):
    root = folder(tmp_path)
    save_label(root / "masks/train/s1.png", np.full((S, S), 7, np.uint8))
    expect_report(check(f"folder:{root}", data=root), f"classes file {root}/classes.txt lists 3 classes",
                  f"{root}/masks/train/s1.png holds value 7", "add the missing classes")


def test_colour_label(train, tmp_path):
    root = camvid(tmp_path)
    rgb = np.zeros((S, S, 3), np.uint8)
    rgb[..., 0], rgb[..., 2] = 128, 64  # not grey: a colour-coded label map
    save_label(root / "trainannot/s0.png", rgb)
    expect_stop(train(f"camvid:{root}", data=root), f"label map {root}/trainannot/s0.png is a colour image",
               "convert colours to ids")


def test_16bit_labels_within_range_are_read(train, check, tmp_path):
    """16-bit label maps are accepted when every value is a class or ignore: read exactly like 8-bit ones."""
    label = np.zeros((S, S), np.uint16)
    label[:, 4:], label[0, 0] = 8, 11  # car, one void pixel
    root = camvid(tmp_path, label_fn=lambda split, i: label)
    assert Image.open(root / "trainannot/s0.png").mode == "I;16"
    expect_accepted(train(f"camvid:{root}", data=root))
    res = check(f"camvid:{root}", data=root)
    assert res.rc == 0 and "no problems found" in res.out, res.text


def test_16bit_labels_out_of_range(train, check, tmp_path):
    label = np.full((S, S), 300, np.uint16)
    root = camvid(tmp_path, label_fn=lambda split, i: label)
    expect_stop(train(f"camvid:{root}", data=root), f"label value 300 in {root}/trainannot/s0.png",
               "16-bit label map", "exceeds the 11 classes")
    froot = folder(tmp_path)
    save_label(froot / "masks/val/s1.png", label)
    expect_report(check(f"folder:{froot}", data=froot), f"{froot}/masks/val/s1.png holds value 300",
                  "classes.txt lists 3 classes")


def test_all_ignore_labels_stop_training(train, check, tmp_path):
    root = camvid(tmp_path, label_fn=lambda split, i: np.full((S, S), 11, np.uint8))  # 11 = void -> ignore
    needles = ("every label pixel of split train is ignore (255; stored value 11 is read as ignore",
               f"{root}/trainannot", "loss 0")
    expect_stop(train(f"camvid:{root}", data=root), *needles)
    text = expect_report(check(f"camvid:{root}", data=root), *needles)
    assert "[val] split val has no valid label pixels" in text  # val: a warning, not a second problem
    assert "1 problem(s):" in text


def test_all_ignore_folder_dataset(check, tmp_path):
    root = folder(tmp_path, label=np.full((S, S), 255, np.uint8))
    expect_report(check(f"folder:{root}", splits="train", data=root), "every label pixel of split train is ignore",
                  f"{root}/masks/train", "class ids 0..2")


def test_unlabelled_val_split_is_a_warning(check, tmp_path):
    root = folder(tmp_path)
    for i in range(2):
        save_label(root / f"masks/val/s{i}.png", np.full((S, S), 255, np.uint8))
    res = check(f"folder:{root}", data=root)
    assert res.rc == 0, res.text
    assert "1 warning(s):" in res.out and "[val] split val has no valid label pixels" in res.out
    assert "no problems found" in res.out


# ----------------------------------------------------------------------------------------------- layout


def test_missing_mask_folder(check, tmp_path):
    root = folder(tmp_path)
    (root / "masks/train/s1.png").unlink()
    expect_report(check(f"folder:{root}", data=root), f"image without mask: {root}/images/train/s1.png",
                  f"{root}/masks/train/<same name>.png")


def test_missing_label_camvid(train, tmp_path):
    root = camvid(tmp_path, lists=True)
    (root / "trainannot/s1.png").unlink()
    expect_stop(train(f"camvid:{root}", data=root), f"label map is missing: {root}/trainannot/s1.png",
               "needs a label map of the same name")


def test_orphan_mask(train, tmp_path):
    root = folder(tmp_path)
    save_label(root / "masks/train/extra.png", np.zeros((S, S), np.uint8))
    expect_stop(train(f"folder:{root}", data=root), f"mask without image: {root}/masks/train/extra.png",
               "add the image", "or remove the mask")


def test_jpg_masks_folder(train, check, tmp_path):
    root = folder(tmp_path)
    for i in range(2):
        path = root / f"masks/train/s{i}.png"
        Image.open(path).convert("L").save(path.with_suffix(".jpg"))
        path.unlink()
    needles = (f"{root}/masks/train/s0.jpg", "saved as JPG and not read", "lossy",
               "label ids get corrupted at object edges", "save the masks as PNG")
    msg = expect_stop(train(f"folder:{root}", data=root), *needles)
    assert "image without mask" not in msg
    expect_report(check(f"folder:{root}", data=root), *needles)


def test_jpg_label_camvid(train, tmp_path):
    root = camvid(tmp_path)
    path = root / "trainannot/s0.png"
    Image.open(path).save(path.with_suffix(".jpg"))
    path.unlink()
    expect_stop(train(f"camvid:{root}", data=root), f"label map {root}/trainannot/s0.jpg", "lossy", "as PNG")


# ----------------------------------------------------------------------------------------------- split lists


def test_duplicate_split_entries(train, check, tmp_path):
    root = camvid(tmp_path, n=3, lists=True)
    write_list(root, "train", ["s0", "s1", "s0", "s2", "s0"])
    needles = (f"{root}/train.txt", "s0 3 times (lines 1, 3, 5)", "list each image once")
    expect_stop(train(f"camvid:{root}", data=root), *needles)
    text = expect_report(check(f"camvid:{root}", data=root), *needles)
    assert "1 problem(s):" in text
    assert [line.split()[:2] for line in text.splitlines() if line.startswith(("train ", "val "))] == \
        [["train", "3"], ["val", "3"]]  # the split is still scanned, each image once


def test_duplicate_split_entries_voc(train, check, tmp_path):
    root = voc(tmp_path, ["a", "b", "a"])
    needles = (f"{root}/ImageSets/Segmentation/train.txt", "a 2 times (lines 1, 3)", "list each image once")
    expect_stop(train(f"voc:{root}", data=root), *needles)
    expect_report(check(f"voc:{root}", data=root), *needles)


def test_empty_split_list(train, check, tmp_path):
    root = camvid(tmp_path, lists=True)
    (root / "train.txt").write_text("\n  \n")
    needles = (f"camvid split list {root}/train.txt is empty", "list one image per line", "delete the file")
    expect_stop(train(f"camvid:{root}", data=root), *needles)
    expect_report(check(f"camvid:{root}", data=root), *needles)


def test_split_list_names_missing_image(train, tmp_path):
    root = camvid(tmp_path, lists=True)
    write_list(root, "train", ["s0", "s1", "ghost"])
    expect_stop(train(f"camvid:{root}", data=root), f"{root}/train.txt, line 3", f"{root}/train/ghost.png",
               "restore the image or delete the line")


@pytest.mark.parametrize("content, needles", [
    ("a/train/s0.png a/trainannot/s0.png\na/train/s1.png a/trainannot/s1.png extra\n",
     ("line 2", "has 3 fields", "fix or delete the line")),
    ("a/train/s0.png a/trainannot/s1.png\n", ("line 1", "paired with label a/trainannot/s1.png", "fix the line")),
    (b"\xff\xfe\x00binary\x80\x81", ("is not a text file", "one image per line")),
], ids=["three-fields", "mismatched-names", "binary"])
def test_broken_split_list_lines(train, tmp_path, content, needles):
    root = camvid(tmp_path, lists=True)
    path = root / "train.txt"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    expect_stop(train(f"camvid:{root}", data=root), str(path), *needles)


# ----------------------------------------------------------------------------------------------- classes file


@pytest.mark.parametrize("name, content, needles", [
    ("classes.txt", "", ("lists no classes", "one class name per line")),
    ("classes.txt", "# only a comment\n\n", ("lists no classes",)),
    ("classes.txt", "a 0 0 0\nb 0 0 300\nc 1 2 3\n", ("line 2: colour (0, 0, 300)", "outside 0..255")),
    ("classes.txt", "a 0 0 0\nb 128 64\nc 1 2 3\n", ("line 2", "two numbers", "three integers r g b")),
    ("classes.txt", "a 0 0 0\n0 0 255\n", ("line 2", "no class name",)),
    ("classes.txt", "a\nroad\nb\nroad\n", ("'road' on lines 2, 4", "list each class once")),
    ("classes.txt", "a 1 2 3\nb\nc\n", ("1 of 3 lines give a colour", "on every line or on none")),
    ("classes.json", '{"names": ["a", "b", ', ("cannot be read", "json")),
    ("classes.json", '["a", "b", "a"]', ("'a' on positions (from 0) 0, 2",)),
], ids=["empty", "comment-only", "component-300", "two-numbers", "no-name", "duplicate-names", "some-colours",
        "bad-json", "json-duplicates"])
def test_bad_classes_file(train, tmp_path, name, content, needles):
    root = folder(tmp_path)
    (root / "classes.txt").unlink()
    (root / name).write_text(content)
    expect_stop(train(f"folder:{root}", data=root), f"{root}/{name}", *needles)


def test_missing_classes_file(train, tmp_path):
    root = folder(tmp_path)
    (root / "classes.txt").unlink()
    expect_stop(train(str(root), data=root), f"classes file {root}/classes.txt is missing", "one class name per line")


# ----------------------------------------------------------------------------------------------- the spec


def test_unknown_dataset_kind(train, check, tmp_path):
    needles = ("unknown dataset kind 'nope'", "choose one of camvid, folder")
    expect_stop(train(f"nope:{tmp_path}"), *needles)
    expect_bad(check(f"nope:{tmp_path}"), *needles)  # nothing to scan: the command stops


@pytest.mark.parametrize("spec, needles", [
    ("camvid:{tmp}/missing", ("camvid root {tmp}/missing does not exist", "holds train/, trainannot/")),
    ("{tmp}/missing", ("folder dataset root {tmp}/missing does not exist", "holds images/, masks/")),
    ("voc:{tmp}/missing", ("{tmp}/missing is not a PASCAL VOC 2012 folder", "point at the folder")),
], ids=["camvid", "folder", "voc"])
def test_root_does_not_exist(train, check, tmp_path, spec, needles):
    spec, needles = spec.format(tmp=tmp_path), [n.format(tmp=tmp_path) for n in needles]
    expect_stop(train(spec), *needles)
    text = expect_report(check(spec), *needles)
    assert "2 problem(s):" in text  # train and val, both named


def test_camvid_unknown_holdout_sequence(train, check, tmp_path):
    root = camvid(tmp_path)
    needles = ("camvid holdout sequence NOPE does not occur", "the sequences there are s0, s1")
    expect_stop(train(f"camvid:{root},holdout=NOPE", data=root), *needles)
    expect_report(check(f"camvid:{root},holdout=NOPE", data=root), *needles)


@pytest.mark.parametrize("option", ["foo=1", "holdout", "holdout="])
def test_camvid_unknown_option(train, check, tmp_path, option):
    root = camvid(tmp_path)
    needles = (f"camvid option {option!r} unknown", "holdout=SEQ", "camvid:ROOT,holdout=0006R0")
    expect_stop(train(f"camvid:{root},{option}", data=root), *needles)
    expect_bad(check(f"camvid:{root},{option}", data=root), *needles)  # data check stops too: nothing to scan


# ------------------------------------------------------------------ checked before training, whatever cache


def test_bad_val_file_stops_before_training(train, tmp_path):
    root = camvid(tmp_path)
    corrupt(root / "val/s0.png", False)
    expect_stop(train(f"camvid:{root}", data=root), f"{root}/val/s0.png", "cannot be decoded")


def test_all_ignore_labels_without_cache(train, tmp_path):
    root = camvid(tmp_path, label_fn=lambda split, i: np.full((S, S), 11, np.uint8))
    expect_stop(train(f"camvid:{root}", "cache=false", data=root), "every label pixel of split train is ignore")
