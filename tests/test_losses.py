import numpy as np
import torch
import torch.nn.functional as F

from attnseg.losses import class_pixel_stats, median_frequency_weights, segmentation_loss


def test_median_frequency_by_hand():
    # image A: 6 px of class 0, 2 px of class 1; image B: 4 px of class 0, 4 px of class 2 (255 ignored)
    a = np.array([[0, 0, 0, 0], [0, 0, 1, 1]])
    b = np.array([[0, 0, 2, 2], [0, 0, 2, 2]])
    b_ign = b.copy()
    b_ign[0, 0] = 255
    counts, pix = class_pixel_stats([a, b], 3)
    assert counts.tolist() == [10, 2, 4] and pix.tolist() == [16, 8, 8]
    f = np.array([10 / 16, 2 / 8, 4 / 8])
    np.testing.assert_allclose(median_frequency_weights(counts, pix), np.median(f) / f)
    counts2, pix2 = class_pixel_stats([a, b_ign], 3)
    assert counts2.tolist() == [9, 2, 4] and pix2.tolist() == [15, 8, 7]


def test_unseen_class_gets_zero_weight():
    w = median_frequency_weights(np.array([5, 0, 5]), np.array([10, 0, 10]))
    assert w[1] == 0 and w[0] == 1


def test_loss_matches_cross_entropy_with_ignore_and_aux():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5, 6)
    aux = torch.randn(2, 4, 5, 6)
    target = torch.randint(0, 4, (2, 5, 6))
    target[0, 0] = 255
    w = torch.tensor([1.0, 2.0, 0.5, 1.0])
    total, parts = segmentation_loss({"logits": logits, "aux": {"a": aux}}, target, 255, w, aux_weight=0.4)
    ref = F.cross_entropy(logits, target, w, ignore_index=255) + 0.4 * F.cross_entropy(aux, target, w, ignore_index=255)
    assert torch.allclose(total, ref)
    assert set(parts) == {"loss_main", "loss_aux_a"}


def test_all_ignore_batch_is_zero_not_nan():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    total, _ = segmentation_loss({"logits": logits}, torch.full((1, 4, 4), 255), 255)
    assert total.item() == 0.0
    total.backward()
    assert torch.isfinite(logits.grad).all()
