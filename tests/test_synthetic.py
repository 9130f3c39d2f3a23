"""Synthetic semantic scenes: determinism, label space, classes, thin lines, scale range, folder export."""

import time

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from attnseg.data import DataError, LabelSpec, build_dataset
from attnseg.data.synthetic import (
    LINE,
    SYNTHETIC,
    TEXTURE,
    SceneConfig,
    SyntheticScenes,
    build,
    generate_scene,
    parse_options,
    write_folder,
)


@pytest.fixture(scope="module")
def scenes():
    """The first 16 training scenes (cached: the module's tests share them)."""
    ds = build("n=16", "train", cache=True)
    return [ds.scene(i) for i in range(len(ds))]


def test_same_seed_same_scene():
    a, b = build("n=3,seed=5"), build("n=3,seed=5")
    for i in range(3):
        (ia, la), (ib, lb) = a.load(i), b.load(i)
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(la, lb)
        assert a.instances(i)[0] == b.instances(i)[0]


def test_index_split_and_seed_change_the_scene():
    base = build("n=2,seed=5").load(0)[0]
    assert not np.array_equal(base, build("n=2,seed=5").load(1)[0])
    assert not np.array_equal(base, build("n=2,seed=5", split="val").load(0)[0])
    assert not np.array_equal(base, build("n=2,seed=6").load(0)[0])


def test_images_and_labels_are_well_formed(scenes):
    for s in scenes:
        assert s.image.shape == (128, 160, 3) and s.image.dtype == np.uint8
        assert s.label.shape == (128, 160) and s.label.dtype == np.uint8
        assert s.label.max() < SYNTHETIC.num_classes
        assert len(SYNTHETIC.invalid_values(s.label)) == 0


def test_every_class_appears(scenes):
    present = set()
    for s in scenes:
        present |= set(np.unique(s.label).tolist())
    assert present == set(range(SYNTHETIC.num_classes))


def test_instance_map_agrees_with_label_and_metadata(scenes):
    for s in scenes:
        class_of = np.array([0] + [inst["class_id"] for inst in s.instances])
        np.testing.assert_array_equal(class_of[s.instance_map], s.label)
        for inst in s.instances:
            mask = s.instance_map == inst["id"]
            assert inst["area"] == mask.sum()
            if inst["bbox"] is not None:
                x0, y0, x1, y1 = inst["bbox"]
                assert mask[y0:y1, x0:x1].sum() == inst["area"]
                assert mask[y0, x0:x1].any() and mask[y1 - 1, x0:x1].any()
                assert mask[y0:y1, x0].any() and mask[y0:y1, x1 - 1].any()


def fits_square(mask: np.ndarray, side: int) -> bool:
    """Whether a side x side block of pixels lies entirely inside ``mask``."""
    return bool(ndimage.binary_erosion(mask, np.ones((side, side), bool)).any())


def test_thin_lines_are_1_to_3_pixels_wide(scenes):
    lines = [(s, inst) for s in scenes for inst in s.instances if inst["class_id"] == LINE and inst["area"]]
    assert len(lines) >= 5
    for s, inst in lines:
        assert 1 <= inst["width"] <= 3
        # a stroke at most 3 px wide holds no 4x4 block, whatever its direction
        assert not fits_square(s.instance_map == inst["id"], 4), inst
    # the measure does see thick shapes: every fully visible large disc holds a 4x4 block
    discs = [(s, inst) for s in scenes for inst in s.instances
             if inst["class_id"] == 1 and inst["radius"] >= 5 and inst["area"] > 0.9 * np.pi * inst["radius"] ** 2]
    assert discs and all(fits_square(s.instance_map == inst["id"], 4) for s, inst in discs)


def test_sizes_span_more_than_8x(scenes):
    radii = [inst["radius"] for s in scenes for inst in s.instances if inst["area"] > 0]
    assert max(radii) / min(radii) >= 8
    assert min(radii) <= 6  # small objects exist, not only a wide tail of large ones


def test_texture_regions_share_the_background_colour():
    """A texture region differs from its surroundings by texture, not by mean colour."""
    cfg = SceneConfig(blur=0.0, noise=0.0)
    checked = 0
    for seed in range(30):
        s = generate_scene(seed, cfg)
        for inst in s.instances:
            region = s.instance_map == inst["id"]
            if inst["class_id"] != TEXTURE or region.sum() < 400:
                continue
            ring = ndimage.binary_dilation(region, iterations=3) & (s.instance_map == 0)
            if ring.sum() < 100:
                continue
            inside, around = s.image[region].astype(float), s.image[ring].astype(float)
            assert np.abs(inside.mean(0) - around.mean(0)).max() < 8
            assert inside.std(0).mean() > 2 * around.std(0).mean() + 5  # the texture is what stands out
            checked += 1
    assert checked >= 5


def test_generation_is_fast():
    cfg = SceneConfig()
    generate_scene(0, cfg)
    start = time.perf_counter()
    for seed in range(20):
        generate_scene(seed, cfg)
    per_image = (time.perf_counter() - start) / 20
    assert per_image < 0.02, f"{per_image * 1e3:.1f} ms per 128x160 scene"  # about 3 ms; loose for busy CI


def test_options_and_defaults():
    assert parse_options("") == {}
    assert parse_options("n=200, size=96x128,seed=3,radius=2-40") == {
        "n": 200, "size": (96, 128), "seed": 3, "radius": (2.0, 40.0)}
    assert [len(build("", split)) for split in ("train", "val", "test")] == [300, 60, 60]
    assert [len(build("n=7,val=3", split)) for split in ("train", "val")] == [7, 3]
    ds = build("n=2,size=64x96,objects=1-2")
    assert ds.load(0)[0].shape == (64, 96, 3)
    assert all(1 <= len(ds.instances(i)[0]) <= 2 for i in range(2))
    with pytest.raises(DataError, match="known key"):
        build("colour=red")
    with pytest.raises(DataError, match="no split"):
        build("", "trainval")


def test_dataset_items_through_build_dataset():
    ds = build_dataset("synthetic:n=2,size=32x48", split="val")
    assert isinstance(ds, SyntheticScenes) and ds.spec is SYNTHETIC
    item = ds[1]
    assert item["image"].shape == (3, 32, 48) and item["image"].dtype == torch.float32
    assert item["label"].dtype == torch.int64
    np.testing.assert_array_equal(item["label"].numpy(), ds.load(1)[1])
    assert item["name"] == "val_00001" and item["index"] == 1


def test_write_folder_round_trip(tmp_path):
    ds = build("n=3,size=40x56", split="val")
    out = write_folder(ds, tmp_path / "scenes")
    for i in range(3):
        image, label = ds.load(i)
        name = ds.sample_name(i)
        np.testing.assert_array_equal(np.asarray(Image.open(out / "images" / "val" / f"{name}.png")), image)
        with Image.open(out / "masks" / "val" / f"{name}.png") as mask:
            assert mask.mode == "P"
            np.testing.assert_array_equal(np.asarray(mask), label)
            assert mask.getpalette()[:3 * SYNTHETIC.num_classes] == [v for c in SYNTHETIC.palette for v in c]
    spec = LabelSpec.from_classes_file(out / "classes.txt")
    assert spec.names == SYNTHETIC.names and spec.palette == SYNTHETIC.palette
