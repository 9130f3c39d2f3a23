"""DenseCRF (fully connected CRF with Gaussian edge potentials): the refinement that segmentation-aware filtering
replaces; the baseline of the segmentation-aware networks' comparison.

Krähenbühl, Koltun, "Efficient Inference in Fully Connected CRFs with Gaussian Edge Potentials", NIPS 2011,
https://arxiv.org/abs/1210.5644. Used on top of DeepLab (Chen et al., ICLR 2015, https://arxiv.org/abs/1412.7062).
Inference is the permutohedral-lattice mean field of the ``pydensecrf2`` package (an optional extra:
``pip install 'attnseg[densecrf]'``; it builds from source in about 40 s), on the CPU, one image at a time.

    E(x) = sum_i ψ_u(x_i) + sum_{i<j} μ(x_i, x_j) [ w_pos exp(-|p_i - p_j|² / 2σ_pos²)
                                                 + w_bi exp(-|p_i - p_j|² / 2σ_xy² - |I_i - I_j|² / 2σ_rgb²) ]

with Potts compatibility μ and unaries ψ_u = -log softmax(logits). The defaults are DeepLab-LargeFOV's VOC values
(``bi_w`` 4, ``bi_xy_std`` 121, ``bi_rgb_std`` 5, ``pos_w`` 3, ``pos_xy_std`` 3, 10 iterations) for images of
about 500 px; ``xy_scale`` multiplies both spatial σ for other image sizes (e.g. 0.5 for half resolution).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class DenseCRFParams:
    iterations: int = 10
    pos_w: float = 3.0
    pos_xy_std: float = 3.0
    bi_w: float = 4.0
    bi_xy_std: float = 121.0
    bi_rgb_std: float = 5.0
    xy_scale: float = 1.0


def _densecrf_module():
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as err:  # optional extra
        raise ImportError("DenseCRF needs the optional package pydensecrf2: pip install 'attnseg[densecrf]' "
                          "(or pip install pydensecrf2; the old 'pydensecrf' does not build on Python 3.11)") from err
    return dcrf


def dense_crf(probs: np.ndarray, image: np.ndarray, params: DenseCRFParams | None = None) -> np.ndarray:
    """probs (K, H, W) class probabilities (softmax of the logits), image (H, W, 3) uint8 RGB at the same size ->
    (K, H, W) float32 marginals after mean-field inference."""
    p = params or DenseCRFParams()
    dcrf = _densecrf_module()
    K, H, W = probs.shape
    if image.shape != (H, W, 3) or image.dtype != np.uint8:
        raise ValueError(f"the image must be (H, W, 3) uint8 at the size of the probabilities {(H, W, 3)}, got "
                         f"{image.shape} {image.dtype}; resize it to the logits' grid first")
    crf = dcrf.DenseCRF2D(W, H, K)
    unary = -np.log(np.clip(probs, 1e-8, 1.0)).reshape(K, H * W)        # (K, H·W), C-contiguous float32
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    s = p.xy_scale
    crf.addPairwiseGaussian(sxy=p.pos_xy_std * s, compat=p.pos_w)
    crf.addPairwiseBilateral(sxy=p.bi_xy_std * s, srgb=p.bi_rgb_std, rgbim=np.ascontiguousarray(image),
                             compat=p.bi_w)
    q = np.array(crf.inference(p.iterations), dtype=np.float32)         # (K, H·W)
    return q.reshape(K, H, W)


def available() -> bool:
    try:
        _densecrf_module()
    except ImportError:
        return False
    return True
