"""check_dataset: every problem of every split in one run, and exact per-class pixel counts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from attnseg.data import DataError, build_dataset
from attnseg.data.check import CheckReport, check_dataset, count_pixels

H, W = 4, 6


def write_pair(root: Path, split: str, name: str, label: np.ndarray, image_size: tuple[int, int] | None = None):
    """images/<split>/<name>.png (grey RGB) and masks/<split>/<name>.png (mode L ids)."""
    h, w = image_size or label.shape
    for sub in ("images", "masks"):
        (root / sub / split).mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(root / "images" / split / f"{name}.png")
    Image.fromarray(label.astype(np.uint8)).save(root / "masks" / split / f"{name}.png")


def make_counted(root: Path) -> Path:
    """Hand-made folder dataset: classes a, b, c; known pixel counts per split."""
    (root / "classes.txt").write_text("a\nb\nc\n")
    label = np.zeros((H, W), np.uint8)          # 24 pixels: 10 a, 8 b, 4 c, 2 ignore
    label[:, 3:] = 1
    label[2:, 3:5] = 2
    label[0, 0:2] = 255
    write_pair(root, "train", "x0", label)
    write_pair(root, "train", "x1", np.full((H, W), 2, np.uint8))      # 24 c
    write_pair(root, "val", "y0", np.zeros((2 * H, W), np.uint8))      # 48 a, size 8x6
    return root


def test_class_frequencies_on_hand_made_case(tmp_path):
    report = check_dataset(f"folder:{make_counted(tmp_path)}")
    assert report.ok and report.problems == []
    assert report.names == ["a", "b", "c"]
    assert report.splits["train"].class_pixels.tolist() == [10, 8, 28]
    assert report.splits["train"].ignore_pixels == 2
    assert report.splits["val"].class_pixels.tolist() == [48, 0, 0]
    assert report.class_pixels.tolist() == [58, 8, 28] and report.ignore_pixels == 2
    assert {k: s.samples for k, s in report.splits.items()} == {"train": 2, "val": 1}
    assert report.image_sizes == {(H, W): 2, (2 * H, W): 1}
    text = report.format()
    assert "no problems found" in text
    a_row = next(line for line in text.splitlines() if line.split()[1:2] == ["a"])
    assert a_row.split()[2:] == ["58", "60.42"]  # 58 of 96 pixels
    assert "(absent)" not in text


def test_two_bad_files_are_both_reported(tmp_path):
    root = make_counted(tmp_path)
    (root / "images/train/x0.png").write_bytes(b"\x89PNG not really")                  # corrupt image
    write_pair(root, "train", "x1", np.full((H, W), 2, np.uint8), image_size=(H, W + 1))  # size mismatch
    report = check_dataset(str(root))
    assert not report.ok and report.problems_total == 2
    assert "x0.png cannot be decoded" in report.problems[0] and report.problems[0].startswith("[train]")
    assert "x1.png is 6x4 but its image" in report.problems[1]
    assert report.splits["train"].bad_samples == 2 and report.splits["val"].bad_samples == 0
    assert report.class_pixels.tolist() == [48, 0, 0]  # only the good val sample is counted
    text = report.format()
    assert "2 problem(s):" in text and "x0.png" in text and "x1.png" in text


def test_classes_file_mismatch_is_reported_per_file(tmp_path):
    root = make_counted(tmp_path)
    write_pair(root, "val", "y1", np.full((H, W), 5, np.uint8))
    report = check_dataset(str(root))
    assert report.problems_total == 1
    assert "lists 3 classes but file" in report.problems[0] and "y1.png holds value 5" in report.problems[0]


def test_missing_and_empty_splits_are_problems_not_crashes(tmp_path):
    root = make_counted(tmp_path)
    (root / "images/test").mkdir()
    (root / "masks/test").mkdir()
    report = check_dataset(str(root), splits=("train", "val", "test", "extra"))
    assert report.problems_total == 2
    assert report.splits["test"].samples == 0 and "holds no images" in report.splits["test"].error
    assert "no split 'extra'" in report.problems[1]
    assert report.splits["train"].samples == 2  # the good splits are still scanned
    assert "missing or empty" in report.format()


def test_nothing_readable(tmp_path):
    report = check_dataset(f"folder:{tmp_path / 'none'}")
    assert report.problems_total == 2 and report.names == [] and report.class_pixels.tolist() == []
    assert "none does not exist" in report.format()
    (tmp_path / "none").mkdir()
    assert "images folder" in check_dataset(f"folder:{tmp_path / 'none'}").format()


def test_max_problems_keeps_count(tmp_path):
    root = make_counted(tmp_path)
    for i in range(5):
        write_pair(root, "val", f"bad{i}", np.full((H, W), 9, np.uint8))
    report = check_dataset(str(root), max_problems=2)
    assert len(report.problems) == 2 and report.problems_total == 5
    assert "... and 3 more" in report.format()


def test_reader_kwargs_and_to_dict(tmp_path):
    root = make_counted(tmp_path)
    report = check_dataset(str(root), splits=("train",), reduce_zero_label=True)
    # reduce_zero_label: stored 0 -> ignore, 1 -> a, 2 -> b, and 3 classes listed
    assert report.class_pixels.tolist() == [8, 28, 0] and report.ignore_pixels == 12
    d = json.loads(json.dumps(report.to_dict()))
    assert d["ok"] and d["splits"]["train"]["sizes"] == {f"{H}x{W}": 2}
    assert d["class_pixels"] == [8, 28, 0] and d["names"] == ["a", "b", "c"]


def test_count_pixels():
    label = np.array([[0, 1, 1], [255, 2, 1]])
    pixels, ignore = count_pixels(label, 3, 255)
    assert pixels.tolist() == [1, 3, 1] and ignore == 1
    assert isinstance(CheckReport(spec="x").format(), str)


@pytest.mark.camvid
def test_check_real_camvid_val():
    root = Path(__file__).resolve().parents[2] / "shared/data/camvid"
    if not root.is_dir():
        pytest.skip(f"real CamVid not found at {root}")
    report = check_dataset(f"camvid:{root}", splits=("val",))
    assert report.ok, report.format()
    assert report.splits["val"].samples == 101 and report.image_sizes == {(360, 480): 101}
    assert report.class_pixels.sum() + report.ignore_pixels == 101 * 360 * 480


def test_duplicate_list_entries_are_reported_and_the_split_still_scanned(tmp_path):
    root = tmp_path / "cv"
    for split in ("train", "val"):
        for sub in (split, f"{split}annot"):
            (root / sub).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(root / split / f"s{i}.png")
            Image.fromarray(np.full((H, W), 3, np.uint8)).save(root / f"{split}annot" / f"s{i}.png")
    (root / "train.txt").write_text("".join(f"/x/train/{n}.png /x/trainannot/{n}.png\n"
                                            for n in ("s0", "s1", "s0", "s0")))
    report = check_dataset(f"camvid:{root}")
    assert report.problems_total == 1
    assert "train.txt lists 1 image more than once: s0 3 times (lines 1, 3, 4)" in report.problems[0]
    assert report.splits["train"].samples == 2 and report.splits["train"].class_pixels[3] == 2 * H * W
    with pytest.raises(DataError, match="s0 3 times"):  # a reader building a dataset refuses them
        build_dataset(f"camvid:{root}")


def test_all_ignore_train_is_a_problem_and_val_a_warning(tmp_path):
    (tmp_path / "classes.txt").write_text("a\nb\n")
    write_pair(tmp_path, "train", "x0", np.full((H, W), 255, np.uint8))
    write_pair(tmp_path, "val", "y0", np.full((H, W), 255, np.uint8))
    report = check_dataset(str(tmp_path))
    assert report.problems_total == 1 and report.problems[0].startswith("[train] every label pixel of split train is "
                                                                        "ignore (255)")
    assert "loss 0" in report.problems[0] and str(tmp_path / "masks" / "train") in report.problems[0]
    assert len(report.warnings) == 1 and "[val] split val has no valid label pixels" in report.warnings[0]
    assert report.to_dict()["warnings"] == report.warnings and "1 warning(s):" in report.format()
    write_pair(tmp_path, "train", "x1", np.zeros((H, W), np.uint8))  # one class pixel is enough
    report = check_dataset(str(tmp_path))
    assert report.ok and len(report.warnings) == 1


def test_jpg_masks_are_named_with_the_reason(tmp_path):
    root = make_counted(tmp_path)
    path = root / "masks/val/y0.png"
    Image.open(path).save(path.with_suffix(".jpg"))
    path.unlink()
    report = check_dataset(str(root))
    assert report.problems_total == 1 and "image without mask" not in report.problems[0]
    assert "y0.jpg is saved as JPG and not read" in report.problems[0] and "as PNG" in report.problems[0]


def test_a_spec_that_cannot_be_scanned_raises(tmp_path):
    with pytest.raises(DataError, match="unknown dataset kind 'nope'"):
        check_dataset(f"nope:{tmp_path}")
    with pytest.raises(DataError, match="camvid option 'foo=1' unknown"):
        check_dataset(f"camvid:{tmp_path},foo=1")
