"""Instance data wiring: the ``nuclei:``, ``rosettes:`` and ``shapes:`` readers through ``build_dataset``
(determinism, disjoint splits, options and their errors), ``task_of``, the dataset's cache, augmentation keyed by
(seed, epoch, index) and ``check_labels``; the per-pixel ``classes`` of an item after augmentation and its collation;
the shapes set written as COCO and read back by ``coco:``; the generator's one-piece guarantee; and ``attnseg data
check`` on an instance folder holding a split id, an empty map, a speck and an image listed in two splits."""

import hashlib
import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from attnseg.cli import main
from attnseg.data import INSTANCE_KINDS, READERS, build_dataset, task_of
from attnseg.data.check import check_dataset
from attnseg.data.dataset import sample_seed
from attnseg.data.instance_transforms import Compose, Photometric, RandomCrop, RandomD4, RandomScale
from attnseg.data.instances import class_map
from attnseg.data.io import DataError
from attnseg.data.synthetic_instances import SHAPE_CLASSES, leaf_rosette, nuclei_field, shapes_field, write_coco_shapes

SMALL = "size=48x40,count=3-9"


def digest(a: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(a).tobytes(), digest_size=8).hexdigest()


# -- readers ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, make, cls, size, count", [("nuclei", nuclei_field, "nucleus", (256, 256), (1, 150)),
                                                          ("rosettes", leaf_rosette, "leaf", (224, 224), (5, 20))])
def test_synthetic_readers_are_registered_and_deterministic(kind, make, cls, size, count):
    assert kind in INSTANCE_KINDS and kind in READERS
    a = build_dataset(f"{kind}:n=3", "val", cache=True, seed=0)
    b = build_dataset(f"{kind}:n=3", "val", cache=True, seed=0)
    assert task_of(a) == "instances" and len(a) == 3 and a.class_names == [cls]
    assert (a.size, a.count) == (size, count)                          # the reader's defaults
    assert [a.sample_name(i) for i in range(3)] == [f"{kind}_val_{i:04d}" for i in range(3)]
    image, ids = a.load(0)
    assert image.shape == (*size, 3) and image.dtype == np.uint8 and ids.shape == size and ids.dtype == np.int32
    for i in range(3):
        (ia, da), (ib, db) = a.load(i), b.load(i)
        assert np.array_equal(ia, ib) and np.array_equal(da, db)
    # scene i is the generator at the split's scene seed: the reader adds nothing of its own
    from attnseg.data.synthetic import scene_seed_of
    ref_image, ref_ids = make(scene_seed_of(0, "val", 2), size, count)
    assert np.array_equal(a.load(2)[0], ref_image) and np.array_equal(a.load(2)[1], ref_ids)


def test_scene_seed_option_and_augmentation_seed_are_separate():
    base = build_dataset(f"nuclei:n=2,{SMALL}", "train", seed=0)
    other_aug = build_dataset(f"nuclei:n=2,{SMALL}", "train", seed=7)   # augmentation seed: same scenes
    other_scene = build_dataset(f"nuclei:n=2,{SMALL},seed=1", "train", seed=0)
    assert other_aug.seed == 7 and base.seed == 0
    for i in range(2):
        assert np.array_equal(base.load(i)[1], other_aug.load(i)[1])
        assert not np.array_equal(base.load(i)[0], other_scene.load(i)[0])


@pytest.mark.parametrize("kind", ["nuclei", "rosettes"])
def test_train_val_and_test_never_share_a_scene(kind):
    spec = f"{kind}:n=6,{SMALL}" if kind == "nuclei" else f"{kind}:n=6,size=48x48,count=5-8"
    seen = {}
    for split in ("train", "val", "test"):
        ds = build_dataset(spec, split)
        for i in range(len(ds)):
            key = digest(ds.load(i)[0])
            assert key not in seen, f"{split} {i} repeats {seen[key]}"
            seen[key] = (split, i)
    assert len(seen) == 18


def test_split_counts_options_and_defaults():
    ds = {s: build_dataset(f"nuclei:n=4,val=2,{SMALL}", s) for s in ("train", "val", "test")}
    assert {s: len(d) for s, d in ds.items()} == {"train": 4, "val": 2, "test": 4}
    assert len(build_dataset(f"nuclei:{SMALL}", "val")) == 50 and len(build_dataset(f"nuclei:{SMALL}", "train")) == 400
    d = build_dataset("nuclei:size=40,count=3", "val")
    assert d.size == (40, 40) and d.count == (3, 3)
    assert d.load(0)[0].shape == (40, 40, 3)


@pytest.mark.parametrize("spec, split, needle", [
    ("nuclei:foo=1", "val", "nuclei option 'foo=1' is not key=value with a known key; keys: n, train, val, test, "
                            "seed, size, count"),
    ("rosettes:n", "val", "rosettes option 'n' is not key=value with a known key"),
    ("nuclei:count=0-5", "val", r"nuclei option count=0-5: give lo-hi with 1 <= lo <= hi"),
    ("nuclei:n=2,count=6-3", "val", r"count=6-3: give lo-hi with 1 <= lo <= hi"),
    ("nuclei:n=two", "val", "nuclei option 'n=two': cannot read 'two'"),
    ("nuclei:size=axb", "val", "nuclei option 'size=axb': cannot read 'axb'"),
    ("nuclei:n=3", "tests", "nuclei: split 'tests' unknown; choose train, val or test"),
    ("rosettes:val=0", "val", "rosettes: split val would hold 0 scenes; give n >= 1"),
])
def test_bad_options_are_refused_with_a_message(spec, split, needle):
    with pytest.raises(DataError, match=needle):
        build_dataset(spec, split)


def test_a_degenerate_size_is_refused_when_the_dataset_is_built():
    with pytest.raises(DataError, match="size"):
        build_dataset("nuclei:size=0x10", "val")


def test_task_of():
    assert task_of(build_dataset(f"nuclei:n=1,{SMALL}", "val")) == "instances"
    assert task_of(build_dataset("rosettes:n=1,size=32x32,count=5-6", "val")) == "instances"
    assert task_of(build_dataset("synthetic:n=1,size=32x32", "val")) == "semantic"
    assert task_of(object()) == "semantic"


# -- the dataset: items, cache, augmentation ---------------------------------------------------------------------

def test_items_and_the_cache():
    ds = build_dataset(f"nuclei:n=3,{SMALL}", "val", cache=True)
    item = ds[1]
    assert set(item) == {"image", "instances", "classes", "name", "index"}
    assert item["image"].shape == (3, 48, 40) and item["instances"].dtype.is_floating_point is False
    assert item["name"] == "nuclei_val_0001" and item["index"] == 1
    image, ids = ds.load(1)
    assert np.array_equal(item["instances"].numpy(), ids)
    assert ds.instance_classes(1) == {} and item["classes"].dtype == item["instances"].dtype      # one class
    assert np.array_equal(item["classes"].numpy(), (ids > 0).astype(np.int64))
    # the default transform is ImageNet normalisation
    from attnseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    ref = (image / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(item["image"].permute(1, 2, 0).numpy(), ref, atol=1e-5)
    assert list(ds.cache) == [1]
    assert ds.get(1) is ds.cache[1]
    uncached = build_dataset(f"nuclei:n=3,{SMALL}", "val")
    assert uncached.cache is None and uncached.get(1) is not uncached.get(1)


def augmented(ds, i):
    item = ds[i]
    return item["image"].numpy(), item["instances"].numpy()


def test_augmentation_is_drawn_from_seed_epoch_and_index():
    aug = Compose([RandomCrop((32, 32)), RandomD4(), Photometric()])
    ds = build_dataset(f"nuclei:n=3,{SMALL}", "train", seed=3)
    ds.augment = aug
    first = augmented(ds, 1)
    assert first[0].shape == (3, 32, 32)
    assert all(np.array_equal(a, b) for a, b in zip(first, augmented(ds, 1)))      # same (seed, epoch, index)
    # the draw is the augmentation fed np.random.default_rng(sample_seed(seed, epoch, index))
    image, ids = ds.load(1)
    _, ref_ids = aug(image, ids, np.random.default_rng(sample_seed(3, 0, 1)))
    assert np.array_equal(first[1], ref_ids)
    ds.set_epoch(1)
    assert ds.epoch == 1
    second = augmented(ds, 1)
    assert not np.array_equal(first[0], second[0])
    _, ref_ids = aug(image, ids, np.random.default_rng(sample_seed(3, 1, 1)))
    assert np.array_equal(second[1], ref_ids)
    ds.set_epoch(0)
    assert all(np.array_equal(a, b) for a, b in zip(first, augmented(ds, 1)))      # back to epoch 0: the same
    twin = build_dataset(f"nuclei:n=3,{SMALL}", "train", seed=3)
    twin.augment = aug
    assert np.array_equal(augmented(twin, 1)[0], first[0])                         # a fresh copy (a worker, a resume)
    other = build_dataset(f"nuclei:n=3,{SMALL}", "train", seed=4)
    other.augment = aug
    assert not np.array_equal(augmented(other, 1)[0], first[0])
    # the ids are kept: every id after the crop is one of the scene's
    assert set(np.unique(first[1])) <= set(np.unique(ds.load(1)[1]))


# -- classes: per instance (``instance_classes``) and per pixel (the item's "classes") ---------------------------

SHAPES = "size=64x72,count=4-8"


def test_class_map_is_a_lookup_of_the_ids():
    ids = np.array([[0, 3, 3], [7, 0, 9]])
    out = class_map(ids, {3: 2, 9: 3, 50: 2})               # 7 is missing: class 1; 50 is not in the map
    assert out.dtype == np.int64 and out.tolist() == [[0, 2, 2], [1, 0, 3]]
    assert class_map(np.zeros((2, 2), int), {1: 3}).tolist() == [[0, 0], [0, 0]]
    with pytest.raises(ValueError, match="instance 3 has class 0; instance classes are 1..K"):
        class_map(ids, {3: 0})


def test_shapes_reader_is_registered_with_three_classes():
    assert "shapes" in INSTANCE_KINDS and "shapes" in READERS
    ds = build_dataset(f"shapes:n=3,{SHAPES}", "val", seed=0)
    assert task_of(ds) == "instances" and ds.class_names == list(SHAPE_CLASSES) and len(ds) == 3
    assert (ds.size, ds.count) == ((64, 72), (4, 8))
    assert build_dataset("shapes:n=1", "val").size == (192, 192)      # the reader's default
    from attnseg.data.synthetic import scene_seed_of
    ref_image, ref_ids, ref_classes = shapes_field(scene_seed_of(0, "val", 2), (64, 72), (4, 8))
    fresh = build_dataset(f"shapes:n=3,{SHAPES}", "val")
    assert fresh.instance_classes(2) == ref_classes                     # asked before any load: it generates
    image, ids = ds.load(2)
    assert np.array_equal(image, ref_image) and np.array_equal(ids, ref_ids) and ds.instance_classes(2) == ref_classes
    item = ds[2]
    assert np.array_equal(item["classes"].numpy(), class_map(ref_ids, ref_classes))
    assert set(np.unique(item["classes"].numpy())) == {0} | set(ref_classes.values())
    assert check_dataset(f"shapes:n=2,{SHAPES}", ("train", "val")).ok            # attnseg data check takes it


def test_classes_follow_the_augmented_ids_and_collate():
    import torch
    from torch.utils.data import DataLoader
    aug = Compose([RandomScale(0.6, 0.9), RandomCrop((40, 40), min_pixels=30), RandomD4(), Photometric()])
    ds = build_dataset(f"shapes:n=4,{SHAPES}", "train", seed=2)
    ds.augment = aug
    dropped = False
    for i in range(4):
        item = ds[i]
        ids, cls = item["instances"].numpy(), item["classes"].numpy()
        assert ids.shape == cls.shape == (40, 40)
        classes = ds.instance_classes(i)
        expect = np.zeros_like(ids)
        for k in np.unique(ids[ids > 0]):                                # the slow way, per instance
            expect[ids == k] = classes[int(k)]
        assert np.array_equal(cls, expect)
        assert ((cls > 0) == (ids > 0)).all() and set(np.unique(ids)) <= set(np.unique(ds.load(i)[1]))
        dropped |= len(np.unique(ids)) < len(np.unique(ds.load(i)[1]))
        # the augmentation fed the item's generator: its ids, and so its classes, are reproduced
        _, ref = aug(*ds.load(i), np.random.default_rng(sample_seed(2, 0, i)))
        assert np.array_equal(ids, ref) and np.array_equal(cls, class_map(ref, classes))
    assert dropped                                                         # some instance was cropped away
    batch = next(iter(DataLoader(ds, batch_size=4, num_workers=0)))
    assert batch["classes"].shape == batch["instances"].shape == (4, 40, 40)
    assert batch["classes"].dtype == torch.int64
    assert torch.equal(batch["classes"][1], ds[1]["classes"])


def test_a_class_outside_the_class_names_is_refused_per_sample():
    ds = build_dataset(f"shapes:n=1,{SHAPES}", "val", cache=True)
    ds.get(0)                                                      # cached: the item does not generate it again
    ds._classes[0] = {1: 4}
    with pytest.raises(DataError, match=r"shapes \[val\]: instance 1 of shapes_val_0000 has class 4, outside the 3 "
                                        r"classes 1..3 \(disc, square, triangle\)"):
        ds[0]


def same_up_to_renumbering(a: np.ndarray, b: np.ndarray) -> bool:
    """One id of ``a`` for each id of ``b`` and back, on the same pixels."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return (len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))
            and ((pairs[0] == 0) == (pairs[1] == 0)).all())


def test_coco_shapes_round_trip_through_the_coco_reader(tmp_path):
    pytest.importorskip("pycocotools")
    paths = write_coco_shapes(tmp_path / "set", n_train=4, n_val=2, seed=3, size=(48, 56), count=(3, 6))
    assert paths == {"root": tmp_path / "set", "images": tmp_path / "set" / "images",
                     "train": tmp_path / "set" / "train.json", "val": tmp_path / "set" / "val.json"}
    assert sorted(p.name for p in paths["images"].iterdir()) == [f"train_000{i}.png" for i in range(4)] + \
        ["val_0000.png", "val_0001.png"]
    from attnseg.data.synthetic import scene_seed_of
    seen = set()
    for split, n in (("train", 4), ("val", 2)):
        ds = build_dataset(f"coco:{paths[split]},{paths['images']}", split)
        assert len(ds) == n and ds.class_names == list(SHAPE_CLASSES)
        record = json.loads(paths[split].read_text())
        assert [c["id"] for c in record["categories"]] == [1, 2, 3]
        assert all(a["iscrowd"] == 0 and isinstance(a["segmentation"]["counts"], str) for a in record["annotations"])
        for i in range(n):
            image, ids, classes = shapes_field(scene_seed_of(3, split, i), (48, 56), (3, 6))
            got_image, got_ids = ds.load(i)
            assert np.array_equal(got_image, image)                        # PNG: lossless
            assert same_up_to_renumbering(got_ids, ids)
            got = ds.instance_classes(i)
            for k in np.unique(ids[ids > 0]):                              # the class follows its pixels
                assert got[int(np.bincount(got_ids[ids == k]).argmax())] == classes[int(k)]
            assert np.array_equal(ds[i]["classes"].numpy(), class_map(ids, classes))
            seen.add(digest(image))
            if split == "train":
                assert np.array_equal(build_dataset("shapes:n=4,size=48x56,count=3-6,seed=3", "train").load(i)[1],
                                      got_ids)                          # the shapes: reader holds the same scenes
    assert len(seen) == 6                                                  # train and val never share a scene


def test_coco_shapes_rewrite_cleanly_and_refuse_bad_settings(tmp_path):
    pytest.importorskip("pycocotools")
    out = tmp_path / "set"
    write_coco_shapes(out, n_train=3, n_val=2, size=(40, 40), count=(2, 4))
    (out / "images" / "mine.png").write_bytes(b"user file")
    before = (out / "train.json").read_text()
    write_coco_shapes(out, n_train=3, n_val=2, size=(40, 40), count=(2, 4))
    assert (out / "train.json").read_text() == before                    # the same set again
    write_coco_shapes(out, n_train=1, n_val=1, size=(40, 40), count=(2, 4))
    assert sorted(p.name for p in (out / "images").iterdir()) == ["mine.png", "train_0000.png", "val_0000.png"]
    assert len(json.loads((out / "train.json").read_text())["images"]) == 1
    assert not list(out.glob(".*.tmp"))
    with pytest.raises(DataError, match="give at least 1 of each"):
        write_coco_shapes(out, n_train=0)
    with pytest.raises(DataError, match="size 16x40 is too small; use at least 32x32"):
        write_coco_shapes(out, size=(16, 40))
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match=r"cannot write .*file.*; choose a folder you can write"):
        write_coco_shapes(tmp_path / "file" / "set", n_train=1, n_val=1)


def write_folder(root, maps: dict, splits: dict | None = None):
    """ROOT/images/<name>.png + ROOT/instances/<name>.png (16-bit) [+ ROOT/splits/<split>.txt]."""
    (root / "images").mkdir(parents=True)
    (root / "instances").mkdir()
    for name, ids in maps.items():
        ids = np.asarray(ids)
        Image.fromarray(np.full((*ids.shape, 3), 40, np.uint8)).save(root / "images" / f"{name}.png")
        Image.fromarray(ids.astype(np.uint16)).save(root / "instances" / f"{name}.png")
    if splits:
        (root / "splits").mkdir()
        for split, names in splits.items():
            (root / "splits" / f"{split}.txt").write_text("\n".join(names) + "\n")
    return root


def test_check_labels_refuses_a_split_without_instances(tmp_path):
    root = write_folder(tmp_path / "empty", {"x": np.zeros((8, 8)), "y": np.zeros((8, 8))})
    ds = build_dataset(f"instances:{root}", "all", cache=True)
    ds.check_labels()                                                 # fine for validation
    assert sorted(ds.cache) == [0, 1]                                  # and it filled the cache
    with pytest.raises(DataError, match=r"instances \[all\]: none of its 2 instance maps holds an instance \(every "
                                        r"pixel is 0, background\); check that the maps are instance ids"):
        ds.check_labels(require_instances=True)
    one = np.zeros((8, 8))
    one[2:4, 2:4] = 300
    root2 = write_folder(tmp_path / "one", {"x": np.zeros((8, 8)), "y": one})
    build_dataset(f"instances:{root2}", "all").check_labels(require_instances=True)   # one instance is enough


def test_check_labels_raises_on_the_first_bad_file(tmp_path):
    root = write_folder(tmp_path / "bad", {"x": np.ones((8, 8))})
    Image.fromarray(np.zeros((8, 9), np.uint16)).save(root / "instances" / "x.png")
    with pytest.raises(DataError, match=r"image .*x.png is 8x8 but its instance map .*x.png is 9x8; they must match"):
        build_dataset(f"instances:{root}", "all").check_labels()


# -- the generator ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(6))
def test_nuclei_ids_are_one_piece_each(seed):
    """Crowded fields (many blobs cut by later ones): every id is one 8-connected piece of >= 12 pixels and the
    ids are 1..N."""
    _, ids = nuclei_field(seed, size=(96, 96), count=(40, 60))
    present = np.unique(ids)[1:]
    assert present.tolist() == list(range(1, len(present) + 1)) and len(present) >= 20
    counts = np.bincount(ids.ravel())
    for k in present:
        _, n = ndimage.label(ids == k, structure=np.ones((3, 3)))
        assert n == 1, f"seed {seed}: id {k} is in {n} pieces"
        assert counts[k] >= 12


# -- attnseg data check --------------------------------------------------------------------------------------------

def problem_maps():
    H, W = 12, 16
    a = np.zeros((H, W))
    a[1:3, 1:3] = 3                     # id 3: 4 px ...
    a[8:10, 10:13] = 3                  # ... and 6 px far away: two pieces
    a[5:8, 4:7] = 5                     # 9 px
    b = np.zeros((H, W))                # all background
    c = np.zeros((H, W))
    c[2:5, 2:5] = 1                     # 9 px
    c[10, 10:12] = 7                    # 2 px: a speck
    d = np.zeros((H, W))
    d[0:4, 0:4] = 1                     # 16 px
    d[6:9, 6:9] = 2                     # 9 px
    d[9:11, 0:2] = 4
    d[11, 2] = 4                        # touches (10, 1) at a corner: one 8-connected piece of 5 px
    return {"a": a, "b": b, "c": c, "d": d}


def test_data_check_counts_and_problems_of_an_instance_folder(tmp_path):
    root = write_folder(tmp_path / "f", problem_maps())
    spec = f"instances:{root}"
    report = check_dataset(spec, ("all",))
    d = report.to_dict()
    assert d["task"] == "instances" and d["spec"] == spec
    assert d["splits"]["all"] == {"images": 4, "instances": 7, "per_image_min_median_max": [0, 2.0, 3],
                                  "size_px_min_median_max": [2, 9.0, 16], "overlap_pixels": 0,
                                  "image_sizes": {"16x12": 4}}
    assert d["problems"] == [
        "[all] a: instance id 3 is in several disconnected pieces (two objects with one id?)",
        "[all] b: its instance map holds no instance (all background)",
        "[all] c: 1 instance(s) under 4 px (ids 7); likely labelling specks",
    ]
    assert d["problems_total"] == 3 and not report.ok
    text = report.format()
    assert text.splitlines()[0] == f"{spec} (instances)"
    assert "  all: 4 images, 7 instances (per image 0 / 2 / 3 min/median/max), sizes 2 / 9 / 16 px" in text
    assert "    image sizes: 16x12 x4" in text and "3 problems:" in text
    assert all(f"  {p}" in text for p in d["problems"])
    capped = check_dataset(spec, ("all",), max_problems=1)
    assert len(capped.problems) == 1 and capped.problems_total == 3 and "  ... and 2 more" in capped.format()


def test_data_check_plural_split_ids_and_an_unreadable_pair(tmp_path):
    e = np.zeros((10, 10))
    e[0, 0] = e[0, 1] = e[1, 0] = e[1, 1] = 2
    e[8:10, 8:10] = 2
    e[0:2, 8:10] = 6
    e[8:10, 0:2] = 6
    root = write_folder(tmp_path / "g", {"e": e, "f": np.ones((10, 10))})
    Image.fromarray(np.zeros((10, 11), np.uint16)).save(root / "instances" / "f.png")
    report = check_dataset(f"instances:{root}", ("all",))
    assert report.problems[0] == ("[all] e: instance ids 2, 6 are in several disconnected pieces (two objects with "
                                  "one id?)")
    assert report.problems[1].startswith("[all] instances [all]: image ") and "they must match" in report.problems[1]
    assert report.splits["all"].images == 1 and report.problems_total == 2


def test_data_check_reports_an_image_in_two_splits_and_missing_lists(tmp_path):
    maps = problem_maps()
    root = write_folder(tmp_path / "s", {k: maps[k] for k in ("a", "c", "d")},
                        splits={"train": ["a", "d"], "val": ["d", "c"]})
    report = check_dataset(f"instances:{root}", ("train", "val"))
    assert "d is in both train and val: the validation would score training images" in report.problems
    assert report.splits["train"].images == 2 and report.splits["val"].images == 2
    assert report.problems_total == 3                 # d in both lists, a's split id (train), c's speck (val)
    assert report.problems[0].startswith("[train] a: instance id 3") and report.problems[-1].startswith("[val] c: 1")
    missing = check_dataset(f"instances:{root}", ("test",))
    assert set(missing.to_dict()["splits"]["test"]) == {"error"}
    assert "split 'test' needs" in missing.problems[0] and "splits here: train, val" in missing.problems[0]


def test_data_check_cli_on_instances(tmp_path, capsys):
    root = write_folder(tmp_path / "f", problem_maps())
    out = tmp_path / "report.json"
    assert main(["data", "check", f"instances:{root}", "--splits", "all", "--json", str(out)]) == 1
    text = capsys.readouterr().out
    assert "all: 4 images, 7 instances" in text and "b: its instance map holds no instance" in text
    saved = json.loads(out.read_text())
    assert saved == check_dataset(f"instances:{root}", ("all",)).to_dict()
    clean = write_folder(tmp_path / "clean", {"d": problem_maps()["d"]})
    assert main(["data", "check", f"instances:{clean}", "--splits", "all"]) == 0
    assert "no problems found" in capsys.readouterr().out
    assert main(["data", "check", "nuclei:n=2,size=32x32,count=2-4", "--splits", "train,val,test"]) == 0
    text = capsys.readouterr().out
    assert "train: 2 images" in text and "test: 2 images" in text and "no problems found" in text


def test_data_check_refuses_an_unknown_instance_option_like_the_semantic_readers():
    with pytest.raises(DataError, match="not key=value with a known key"):
        check_dataset("synthetic:foo=1", ("train", "val"))
    with pytest.raises(DataError, match="not key=value with a known key"):
        check_dataset("nuclei:foo=1", ("train", "val"))
