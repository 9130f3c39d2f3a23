"""The instance target form: id maps <-> torchvision's boxes/labels/masks, and the instance map reader."""

import numpy as np
import pytest
from PIL import Image

from attnseg.data.instances import from_masks, instance_ids, read_instance_map, to_torchvision
from attnseg.data.io import DataError


def test_round_trip_with_boxes_and_classes():
    ids = np.zeros((6, 8), np.int32)
    ids[1:3, 2:5] = 7
    ids[4:6, 0:1] = 3
    t = to_torchvision(ids, classes={7: 2})
    assert t["ids"].tolist() == [3, 7] and t["labels"].tolist() == [1, 2]
    assert t["boxes"].tolist() == [[0, 4, 1, 6], [2, 1, 5, 3]]          # x0, y0, x1, y1 (exclusive)
    assert t["masks"].shape == (2, 6, 8) and t["masks"][1].sum() == 6
    back = from_masks(t["masks"])
    assert instance_ids(back).tolist() == [1, 2]
    for new, old in ((1, 3), (2, 7)):
        assert ((back == new) == (ids == old)).all()
    empty = to_torchvision(np.zeros((3, 3), int))
    assert empty["masks"].shape == (0, 3, 3) and empty["boxes"].shape == (0, 4)


def test_overlaps_go_to_the_higher_score():
    masks = np.zeros((2, 4, 4), bool)
    masks[0, :, :3] = True
    masks[1, :, 1:] = True
    assert (from_masks(masks, scores=[0.9, 0.1])[:, 1:3] == 1).all()
    assert (from_masks(masks, scores=[0.1, 0.9])[:, 1:3] == 2).all()
    probs = masks.astype(np.float32) * 0.6
    assert (from_masks(probs, threshold=0.5) > 0).sum() == 16 and (from_masks(probs, threshold=0.7) == 0).all()
    with pytest.raises(ValueError, match="one score per mask"):
        from_masks(masks, scores=[1.0])


def test_reader_16_bit_palette_and_bad_maps(tmp_path):
    ids = np.zeros((5, 7), np.uint16)
    ids[1:4, 1:4] = 300                                                  # > 255: needs 16 bits
    Image.fromarray(ids).save(tmp_path / "a.png")
    assert read_instance_map(tmp_path / "a.png").max() == 300
    pal = Image.fromarray(np.array([[0, 1], [2, 2]], np.uint8), mode="P")
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    pal.save(tmp_path / "p.png")
    assert read_instance_map(tmp_path / "p.png").tolist() == [[0, 1], [2, 2]]
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(DataError, match="is a colour"):
        read_instance_map(tmp_path / "rgb.png")
    with pytest.raises(DataError, match="does not exist"):
        read_instance_map(tmp_path / "none.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nxx")
    with pytest.raises(DataError, match="bad.png"):
        read_instance_map(tmp_path / "bad.png")


def write_dsb(root, ids=("a1", "b2"), size=(12, 16)):
    for d in ("images", "labels", "splits"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for n, stem in enumerate(ids):
        Image.fromarray(np.full((*size, 3), 40 * n, np.uint8)).save(root / "images" / f"{stem}.webp", lossless=True)
        lab = np.zeros(size, np.uint16)
        lab[2:5, 2:6], lab[7:10, 9:14] = 1, 2 + n
        Image.fromarray(lab).save(root / "labels" / f"{stem}.png")
    (root / "splits" / "train.txt").write_text("\n".join(ids) + "\n")
    return root


def test_dsb2018_reader_on_its_layout(tmp_path):
    from attnseg.data import dsb2018
    ds = dsb2018.build(write_dsb(tmp_path / "dsb"), "train")
    assert len(ds) == 2 and ds.task == "instances"
    image, ids = ds.load(1)
    assert image.shape == (12, 16, 3) and instance_ids(ids).tolist() == [1, 3]
    item = ds[0]
    assert item["image"].shape == (3, 12, 16) and item["instances"].dtype.is_floating_point is False
    assert item["name"] == "a1"


def test_dsb2018_bad_layouts(tmp_path):
    from attnseg.data import dsb2018
    root = write_dsb(tmp_path / "dsb")
    with pytest.raises(DataError, match="splits here: train"):
        dsb2018.build(root, "val")
    (root / "splits" / "dup.txt").write_text("a1\nb2\na1\n")
    with pytest.raises(DataError, match="a1 2 times"):
        dsb2018.build(root, "dup")
    (root / "labels" / "b2.png").unlink()
    with pytest.raises(DataError, match=r"b2 \(labels/b2.png\)"):
        dsb2018.build(root, "train")
    Image.fromarray(np.zeros((5, 5), np.uint16)).save(root / "labels" / "b2.png")
    with pytest.raises(DataError, match="they must match"):
        dsb2018.build(root, "train").load(1)


def test_dsb2018_real_data_when_present():
    from attnseg.data import dsb2018

    from .conftest import REPO
    root = REPO.parent / "shared" / "data" / "dsb2018_stage1_train"
    if not root.is_dir():
        pytest.skip(f"DSB2018 not found at {root}")
    train, val = dsb2018.build(root, "train"), dsb2018.build(root, "val")
    assert (len(train), len(val)) == (565, 99)
    image, ids = val.load(0)
    n = len(instance_ids(ids))
    assert image.dtype == np.uint8 and ids.shape == image.shape[:2] and 1 <= n <= 375
    assert instance_ids(ids).tolist() == list(range(1, n + 1))       # ids 1..N, contiguous (SOURCE.md)


def test_instance_folder_reader(tmp_path):
    import json

    from attnseg.data import instance_folder
    root = tmp_path / "f"
    (root / "images").mkdir(parents=True)
    (root / "instances").mkdir()
    for stem in ("x", "y"):
        Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(root / "images" / f"{stem}.png")
        lab = np.zeros((6, 6), np.uint16)
        lab[1:3, 1:3] = 1000
        Image.fromarray(lab).save(root / "instances" / f"{stem}.png")
    (root / "classes.txt").write_text("cell\nspot\n")
    (root / "instance_classes").mkdir()
    (root / "instance_classes" / "x.json").write_text(json.dumps({"1000": 1}))
    ds = instance_folder.build(root)
    assert len(ds) == 2 and ds.classes == ["cell", "spot"] and ds.load(0)[1].max() == 1000
    assert ds.instance_classes(0) == {1000: 2} and ds.instance_classes(1) == {}   # the json's 0-based index + 1
    assert ds[0]["classes"].max() == 2 and ds[1]["classes"].max() == 1            # "spot"; "cell" by default
    (root / "instance_classes" / "y.json").write_text(json.dumps({"1000": 5}))
    with pytest.raises(DataError, match=r"class index 5 is outside the 2 classes .* 0-based: 0..1"):
        ds.instance_classes(1)
    (root / "splits").mkdir()
    (root / "splits" / "val.txt").write_text("y\nz\n")
    with pytest.raises(DataError, match=r"z \(image\)"):
        instance_folder.build(root, "val")
    with pytest.raises(DataError, match="needs .*train.txt"):
        instance_folder.build(root, "train")
    with pytest.raises(DataError, match="nothing/images is missing; ROOT holds images/ and instances/"):
        instance_folder.build(tmp_path / "nothing")


def test_coco_reader_polygons_rle_crowd(tmp_path):
    pytest.importorskip("pycocotools")
    import json

    from pycocotools import mask as mask_util

    from attnseg.data import coco_instances
    (tmp_path / "img").mkdir()
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(tmp_path / "img" / "a.png")
    crowd = np.zeros((10, 12), np.uint8)
    crowd[8:10, :] = 1
    rle = mask_util.encode(np.asfortranarray(crowd))
    rle["counts"] = rle["counts"].decode()
    ann = {"images": [{"id": 7, "file_name": "a.png", "height": 10, "width": 12}],
           "categories": [{"id": 3, "name": "cat"}, {"id": 1, "name": "dog"}],
           "annotations": [
               {"id": 1, "image_id": 7, "category_id": 3, "iscrowd": 0, "area": 16,
                "segmentation": [[1, 1, 5, 1, 5, 5, 1, 5]], "bbox": [1, 1, 4, 4]},
               {"id": 2, "image_id": 7, "category_id": 1, "iscrowd": 0, "area": 9,
                "segmentation": [[4, 4, 8, 4, 8, 7, 4, 7]], "bbox": [4, 4, 4, 3]},
               {"id": 3, "image_id": 7, "category_id": 1, "iscrowd": 1, "area": 24, "segmentation": rle,
                "bbox": [0, 8, 12, 2]}]}
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    ds = coco_instances.build(f"{tmp_path / 'ann.json'},{tmp_path / 'img'}")
    image, ids = ds.load(0)
    assert image.shape == (10, 12, 3) and instance_ids(ids).tolist() == [1, 2]
    assert ids[2, 2] == 1 and ids[5, 5] == 2                            # the overlap goes to the later annotation
    # categories in id order (1 dog, 3 cat) are classes 1..K: class k is classes[k - 1]
    assert ds.classes == ds.class_names == ["dog", "cat"] and ds.instance_classes(0) == {1: 2, 2: 1}
    assert ds[0]["classes"][2, 2] == 2 and ds[0]["classes"][5, 5] == 1 and ds[0]["classes"][9, 0] == 0
    assert ds.ignore_mask(0)[9].all() and not ds.ignore_mask(0)[0].any() and (ids[8:] == 0).all()
    with pytest.raises(DataError, match="ANNOTATIONS.json,IMAGE_DIR"):
        coco_instances.build(str(tmp_path / "ann.json"))
    ann["annotations"][1]["category_id"] = 7
    (tmp_path / "unknown.json").write_text(json.dumps(ann))
    with pytest.raises(DataError, match=r"annotation 2 of a.png has category_id 7, which is not among the categories "
                                        r"\(1, 3\); fix the annotation or add the category"):
        coco_instances.build(f"{tmp_path / 'unknown.json'},{tmp_path / 'img'}")[0]
    ann["categories"] = []
    (tmp_path / "nocats.json").write_text(json.dumps(ann))
    bare = coco_instances.build(f"{tmp_path / 'nocats.json'},{tmp_path / 'img'}")
    assert bare.class_names == ["object"] and bare.instance_classes(0) == {1: 1, 2: 1}
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="not a COCO annotation file"):
        coco_instances.build(f"{tmp_path / 'bad.json'},{tmp_path / 'img'}")
