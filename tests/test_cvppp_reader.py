"""The CVPPP 2017 LSC reader on fixtures written in the release layout (the data itself cannot be shipped)."""

import numpy as np
import pytest
from PIL import Image

from attnseg.data import cvppp
from attnseg.data.instances import instance_ids
from attnseg.data.io import DataError


def write_cvppp(root, subset="A1", plants=(1, 2), leaves=(3, 2), csv_counts=None):
    folder = root / subset
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for p, n in zip(plants, leaves):
        rgba = np.zeros((10, 12, 4), np.uint8)
        rgba[..., 1], rgba[..., 3] = 100 + p, 255
        Image.fromarray(rgba, mode="RGBA").save(folder / f"plant{p:03d}_rgb.png")
        lab = np.zeros((10, 12), np.uint8)
        for k in range(1, n + 1):
            lab[k, 1:11] = k
        im = Image.fromarray(lab, mode="P")
        im.putpalette(list(np.random.default_rng(0).integers(0, 255, 768)))
        im.save(folder / f"plant{p:03d}_label.png")
        Image.fromarray((lab > 0).astype(np.uint8) * 255).save(folder / f"plant{p:03d}_fg.png")
        lines.append(f"plant{p:03d}_rgb.png, {n if csv_counts is None else csv_counts[p]}")
    (folder / f"{subset}.csv").write_text("\n".join(lines) + "\n")
    return root


def test_reads_the_release_layout(tmp_path):
    root = write_cvppp(tmp_path / "lsc")
    ds = cvppp.build(root)
    assert len(ds) == 2 and [s[0] for s in ds.samples] == ["A1/plant001", "A1/plant002"]
    image, ids = ds.load(0)
    assert image.shape == (10, 12, 3) and image[0, 0, 1] == 101                 # RGBA -> RGB
    assert instance_ids(ids).tolist() == [1, 2, 3] and ds.counts == {"A1/plant001": 3, "A1/plant002": 2}
    assert ds.check_counts() == []
    assert len(cvppp.build(root / "A1")) == 2                                    # a subset folder as ROOT


def test_splits_and_count_checks(tmp_path):
    root = write_cvppp(tmp_path / "lsc", csv_counts={1: 3, 2: 5})
    write_cvppp(root, "A2", plants=(1,), leaves=(1,))
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("A1/plant001\nplant002\n")
    train = cvppp.build(root, "train")
    assert [s[0] for s in train.samples] == ["A1/plant001", "A1/plant002"]
    assert train.check_counts() == [f"{root / 'A1' / 'plant002_label.png'} holds 2 leaves but the csv says 5"]
    (root / "splits" / "val.txt").write_text("plant001\n")
    with pytest.raises(DataError, match="in several subsets .*write it as A1/plant001"):
        cvppp.build(root, "val")
    with pytest.raises(DataError, match="needs .*test.txt"):
        cvppp.build(root, "test")


@pytest.mark.parametrize("damage, needle", [
    (lambda r: (r / "A1" / "plant002_label.png").unlink(), "lack their label map"),
    (lambda r: (r / "A1" / "A1.csv").write_text("plant001_rgb.png, many\n"), "line 1 is"),
    (lambda r: [p.unlink() for p in (r / "A1").glob("*_rgb.png")], "holds no plantNNN_rgb.png"),
])
def test_bad_layouts_are_named(tmp_path, damage, needle):
    root = write_cvppp(tmp_path / "lsc")
    damage(root)
    with pytest.raises(DataError, match=needle):
        cvppp.build(root)
