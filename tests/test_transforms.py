import numpy as np
import pytest
import torch

from attnseg.data.transforms import (
    Compose,
    Normalize,
    PhotometricJitter,
    RandomCrop,
    RandomFlip,
    RandomScale,
    Resize,
    resize_label,
    train_transforms,
)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def sample(h=30, w=40):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    label = rng.integers(0, 5, (h, w)).astype(np.uint8)
    return image, label


def test_resize_label_is_nearest_and_keeps_values():
    label = np.array([[0, 1], [2, 255]], np.uint8)
    up = resize_label(label, (4, 4))
    assert set(np.unique(up)) == {0, 1, 2, 255}
    np.testing.assert_array_equal(up, np.kron(label, np.ones((2, 2), np.uint8)))
    big = np.arange(6 * 8).reshape(6, 8).astype(np.int32) + 1000  # values > 255 survive
    assert set(np.unique(resize_label(big, (3, 4)))) <= set(np.unique(big))


def test_random_scale_resamples_labels_by_nearest_only():
    image, label = sample()
    for seed in range(5):
        im, lab = RandomScale(0.5, 2.0)(image, label, gen(seed))
        assert im.shape[:2] == lab.shape
        assert set(np.unique(lab)) <= set(np.unique(label))


def test_crop_pads_label_with_ignore_and_image_with_zero():
    image, label = sample(10, 12)
    im, lab = RandomCrop((16, 20), ignore_index=255)(image, label, gen())
    assert im.shape == (16, 20, 3) and lab.shape == (16, 20)
    assert (lab[10:] == 255).all() and (lab[:, 12:] == 255).all()
    assert (im[10:] == 0).all()
    np.testing.assert_array_equal(lab[:10, :12], label)


def test_crop_is_consistent_between_image_and_label():
    image, label = sample()
    label = image[..., 0] // 64  # label derived from the image: must stay aligned
    im, lab = RandomCrop((12, 17))(image, label.astype(np.uint8), gen(3))
    np.testing.assert_array_equal(im[..., 0] // 64, lab)


def test_flip_is_joint():
    image, label = sample()
    label = (image[..., 1] // 64).astype(np.uint8)
    flipped = 0
    for seed in range(20):
        im, lab = RandomFlip(0.5)(image, label, gen(seed))
        np.testing.assert_array_equal(im[..., 1] // 64, lab)
        flipped += not np.array_equal(im, image)
    assert 3 < flipped < 17


def test_jitter_leaves_label_and_is_deterministic():
    image, label = sample()
    a = PhotometricJitter(p=1.0)(image, label, gen(1))
    b = PhotometricJitter(p=1.0)(image, label, gen(1))
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1] is label and not np.array_equal(a[0], image)


def test_normalize_values():
    image = np.full((2, 3, 3), 255, np.uint8)
    x, y = Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))(image, np.zeros((2, 3), np.uint8), gen())
    assert x.shape == (3, 2, 3) and torch.allclose(x, torch.full_like(x, 2.0))
    assert y.dtype == torch.int64


def test_pipeline_same_generator_same_result():
    image, label = sample(60, 80)
    t = train_transforms((32, 48), scale=(0.5, 1.5))
    x1, y1 = t(image, label, gen(7))
    x2, y2 = t(image, label, gen(7))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    x3, _ = t(image, label, gen(8))
    assert not torch.equal(x1, x3)
    assert x1.shape == (3, 32, 48) and y1.shape == (32, 48)


def test_resize_fixed_and_by_scale():
    image, label = sample(30, 40)
    im, lab = Resize(scale=0.5)(image, label, gen())
    assert im.shape[:2] == (15, 20) and lab.shape == (15, 20)
    im, lab = Compose([Resize(size=(7, 9))])(image, label, gen())
    assert lab.shape == (7, 9)


@pytest.mark.parametrize("cat_max_ratio", [0.75])
def test_cat_max_ratio_prefers_mixed_crops(cat_max_ratio):
    label = np.zeros((40, 40), np.uint8)
    label[:, 30:] = 1  # class 1 only in the right quarter
    image = np.zeros((40, 40, 3), np.uint8)
    mixed = 0
    for seed in range(20):
        _, lab = RandomCrop((10, 10), cat_max_ratio=cat_max_ratio)(image, label, gen(seed))
        mixed += len(np.unique(lab)) > 1
    plain = sum(len(np.unique(RandomCrop((10, 10))(image, label, gen(s))[1])) > 1 for s in range(20))
    assert mixed > plain
