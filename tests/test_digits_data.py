"""attnseg.data.digits: the translated and cluttered digit tasks (deterministic, disjoint splits, what each task
puts on its canvas) and their option errors."""

import numpy as np
import pytest
import torch

from attnseg.data import build_dataset, task_of
from attnseg.data.digits import DIGIT, TASKS, distort, source_digits
from attnseg.data.io import DataError

pytest.importorskip("sklearn")


def test_tasks_have_their_canvas_and_sample_form():
    for task, (side, _) in TASKS.items():
        ds = build_dataset(f"digits:task={task},n=5", "val")
        assert task_of(ds) == "classification" and len(ds) == 5 and ds.size == (side, side)
        item = ds[0]
        assert item["image"].shape == (1, side, side) and item["image"].dtype == torch.float32
        assert item["label"].dtype == torch.int64 and 0 <= int(item["label"]) < 10
        assert 0 <= float(item["image"].min()) and float(item["image"].max()) <= 1


def test_val_and_test_are_fixed_and_training_samples_change_with_the_epoch():
    val = build_dataset("digits:task=cluttered60,n=4", "val")
    a = val.get(2)[0]
    val.set_epoch(5)
    assert np.array_equal(a, val.get(2)[0])                               # val ignores the epoch
    assert np.array_equal(a, build_dataset("digits:task=cluttered60,n=4", "val").get(2)[0])
    train = build_dataset("digits:task=cluttered60,n=4", "train")
    e0 = train.get(1)[0]
    train.set_epoch(1)
    assert not np.array_equal(e0, train.get(1)[0])                        # fresh translations and clutter
    train.set_epoch(0)
    assert np.array_equal(e0, train.get(1)[0])
    other = build_dataset("digits:task=cluttered60,n=4,seed=3", "train")
    assert not np.array_equal(e0, other.get(1)[0])
    aug = build_dataset("digits:task=cluttered60,n=4", "train").configure(seed=7)
    assert not np.array_equal(e0, aug.get(1)[0])                          # the training seed changes the draws


@pytest.mark.parametrize("source", ["sklearn", "fonts"])
def test_splits_use_disjoint_source_digits_holding_every_class(source):
    frames = {s: source_digits(source, s)[0].reshape(-1, DIGIT * DIGIT) for s in ("train", "val", "test")}
    for s in frames:
        assert set(source_digits(source, s)[1].tolist()) == set(range(10))
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        d = np.abs(frames[a][:, None, :] - frames[b][None, :, :]).max(-1)   # (Na, Nb) largest pixel difference
        assert d.min() > 0.05, f"{source}: a {a} source digit equals a {b} one"
    if source == "sklearn":
        assert [len(frames[s]) for s in ("train", "val", "test")] == [1197, 300, 300]


def test_translated_digit_sits_at_its_box_and_nothing_else_is_drawn():
    ds = build_dataset("digits:task=translated,n=6", "test")
    for i in range(6):
        image = ds.get(i)[0]
        x0, y0, x1, y1 = ds.digit_box(i)
        assert x1 - x0 == DIGIT and 0 <= x0 and x1 <= 60 and 0 <= y0 and y1 <= 60
        outside = image.copy()
        outside[y0:y1, x0:x1] = 0
        assert outside.max() == 0 and image[y0:y1, x0:x1].sum() > 20


def test_clutter_patches_are_pieces_of_other_digits_outside_the_digit():
    ds = build_dataset("digits:task=cluttered100,n=20", "test")
    assert ds.clutter == 8
    outside_ink = []
    for i in range(20):
        image = ds.get(i)[0]
        x0, y0, x1, y1 = ds.digit_box(i)
        outside = image.copy()
        outside[y0:y1, x0:x1] = 0
        outside_ink.append(outside.sum())
    assert np.mean(outside_ink) > 5, "clutter patches put almost no ink on the canvas"
    none = build_dataset("digits:task=cluttered100,n=3,clutter=0", "test")
    for i in range(3):
        image = none.get(i)[0]
        x0, y0, x1, y1 = none.digit_box(i)
        image[y0:y1, x0:x1] = 0
        assert image.max() == 0


def test_distortion_keeps_the_ink_near_the_centre_and_varies():
    frame = source_digits("sklearn", "train")[0][0]
    rng = np.random.default_rng(0)
    outs = [distort(frame, rng) for _ in range(8)]
    assert all(o.shape == (DIGIT, DIGIT) and 0 <= o.min() and o.max() <= 1 for o in outs)
    assert len({o.tobytes() for o in outs}) == 8
    for o in outs:   # a rotation, scale and shear about the centre keep the ink's centre of mass near the frame's
        ys, xs = np.nonzero(o > 0.1)
        cy, cx = np.average(ys, weights=o[o > 0.1]), np.average(xs, weights=o[o > 0.1])
        fy, fx = np.nonzero(frame > 0.1)
        assert abs(cy - fy.mean()) < 4 and abs(cx - fx.mean()) < 4


def test_fonts_source_renders_ten_distinct_digits_per_font():
    frames, labels = source_digits("fonts", "val")
    assert len(frames) % 10 == 0 and labels[:10].tolist() == list(range(10))
    first = frames[:10].reshape(10, -1)
    assert len({f.round(2).tobytes() for f in first}) == 10
    assert all(f.sum() > 10 for f in first)


@pytest.mark.parametrize("spec, message", [
    ("digits:task=mnist", "choose one of centred, translated, cluttered60, cluttered100"),
    ("digits:source=emnist", "choose one of sklearn, fonts"),
    ("digits:size=60", "keys: task, source"),
    ("digits:n=0", "give a count >= 1"),
    ("digits:canvas=20", "smaller than the 28x28 digit"),
    ("digits:clutter=-1", "must be >= 0"),
])
def test_bad_options_say_what_to_give(spec, message):
    with pytest.raises(DataError, match=message):
        build_dataset(spec, "train")


def test_unknown_split_is_refused():
    with pytest.raises(DataError, match="splits train, val, test"):
        build_dataset("digits:", "holdout")
