"""The DenseCRF baseline (optional pydensecrf2)."""

import numpy as np
import pytest

from attnseg.nn import dense_crf

needs = pytest.mark.skipif(not dense_crf.available(), reason="pydensecrf2 not installed (attnseg[densecrf])")


@needs
def test_smooths_noise_inside_a_colour_region_and_keeps_the_edge():
    rng = np.random.default_rng(0)
    H, W = 24, 32
    truth = np.zeros((H, W), np.int64)
    truth[:, 16:] = 1
    image = np.where(truth[..., None] == 1, 200, 40).astype(np.uint8).repeat(3, -1)
    logits = 1.5 * np.eye(2)[truth].transpose(2, 0, 1) + 1.2 * rng.standard_normal((2, H, W))
    probs = np.exp(logits) / np.exp(logits).sum(0, keepdims=True)
    q = dense_crf.dense_crf(probs.astype(np.float32), image, dense_crf.DenseCRFParams(bi_xy_std=20, bi_rgb_std=10))
    assert q.shape == (2, H, W) and np.allclose(q.sum(0), 1, atol=1e-4)
    before, after = (probs.argmax(0) != truth).sum(), (q.argmax(0) != truth).sum()
    assert before > 20 and after < before / 4


@needs
def test_rejects_an_image_of_another_size():
    with pytest.raises(ValueError, match="resize it"):
        dense_crf.dense_crf(np.full((2, 4, 5), 0.5, np.float32), np.zeros((4, 6, 3), np.uint8))


def test_missing_package_message(monkeypatch):
    import builtins
    real = builtins.__import__

    def fake(name, *args, **kwargs):
        if name.startswith("pydensecrf"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)
    assert not dense_crf.available()
    with pytest.raises(ImportError, match=r"attnseg\[densecrf\]"):
        dense_crf.dense_crf(np.full((2, 4, 5), 0.5, np.float32), np.zeros((4, 5, 3), np.uint8))
