"""Segmentation-aware bilateral filtering of optical flow, and the plain bilateral filter it is compared with.

Harley, Derpanis, Kokkinos, "Segmentation-Aware Convolutional Networks Using Local Attention Masks", ICCV 2017,
https://arxiv.org/abs/1708.04607 (the optical-flow experiments; the official code
https://github.com/aharley/segaware has none for flow). The flow output of a network is smoothed with Eq. 4
filters whose weights are local attention masks from a per-pixel embedding, so that flow is averaged only within
a segment and motion boundaries stay sharp. Several filters in a row (a cascade, the same masks each time)
carry flow from a segment's interior up to its edge:

    m_{i,k} = exp(-λ d(e_i, e_{i+k}))          Eq. 3, d = L1 (``"l1"``) or ½ squared L2 (``"l2"``)
    f ← Σ_k f_{i+k} m_{i,k} / Σ_k m_{i,k}       Eq. 4, ``iterations`` times (per dilation, in the given order)

Masks are normalised, keep the centre tap and drop the taps outside the image (otherwise the filter's zero
padding, at distance 0, would pull the flow towards 0 at the border). The baseline bilateral filter is the same
operator with e = [colour · s_c, (y, x) · s_p] and ½ squared L2 (λ = 1): a Gaussian of colour and position,
σ_c = 1/s_c, σ_p = 1/s_p (the bilateral case of ``segaware_filter``: e = (position, colour)).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .nn.segaware_crf import pixel_coordinates
from .nn.segaware_filter import segaware_filter_cascade


def _dilations(dilation: int | Sequence[int]) -> tuple[int, ...]:
    out = (dilation,) if isinstance(dilation, int) else tuple(int(d) for d in dilation)
    if not out or min(out) < 1:
        raise ValueError(f"dilation must be a positive int or a non-empty sequence of them, not {dilation!r}")
    return out


def masked_flow_filter(flow: torch.Tensor, embedding: torch.Tensor, kernel_size: int = 5,
                       dilation: int | Sequence[int] = 1, lam: float = 1.0, iterations: int = 1,
                       distance: str = "l1") -> torch.Tensor:
    """The cascade shared by both filters: flow (B, 2, H, W) filtered ``iterations`` times by the masks of the
    (B, D, H, W) embedding; with a dilation sequence every iteration applies one filter per dilation
    (``segaware_filter_cascade`` with k×k windows)."""
    windows = [(kernel_size, d) for d in _dilations(dilation)]
    return segaware_filter_cascade(flow, embedding, windows, lam, distance, iterations)


def segaware_flow_filter(flow: torch.Tensor, embedding: torch.Tensor, kernel_size: int = 5,
                         dilation: int | Sequence[int] = 1, lam: float = 1.0, iterations: int = 3,
                         distance: str = "l1") -> torch.Tensor:
    """Segmentation-aware bilateral filtering of a flow field.

    Args:
        flow: (B, 2, H, W) flow to filter.
        embedding: (B, D, H, W) per-pixel embedding (e.g. ``EmbeddingHead`` trained with ``embedding_loss``).
        kernel_size, dilation: the window; a sequence of dilations is a cascade of filters per iteration.
        lam: λ of Eq. 3 (0 gives a box filter).
        iterations: how many times the cascade runs (the same masks each time).
        distance: "l1" (the embedding loss's metric) or "l2" (½ squared L2).

    Returns:
        (B, 2, H, W) filtered flow.
    """
    return masked_flow_filter(flow, embedding, kernel_size, dilation, lam, iterations, distance)


def bilateral_embedding(image: torch.Tensor, colour_scale: float, position_scale: float) -> torch.Tensor:
    """(B, C, H, W) image -> (B, C + 2, H, W) embedding [image · s_c, (y, x) · s_p]."""
    B, _, H, W = image.shape
    pos = pixel_coordinates(B, H, W, image.device, image.dtype)                  # (B, 2, H, W)
    return torch.cat([image * colour_scale, pos * position_scale], 1)


def bilateral_flow_filter(flow: torch.Tensor, image: torch.Tensor, kernel_size: int = 5,
                          dilation: int | Sequence[int] = 1, colour_scale: float = 10.0,
                          position_scale: float = 0.2, iterations: int = 3) -> torch.Tensor:
    """Plain bilateral filtering of a flow field guided by the frame-1 image (the baseline).

    Args:
        flow: (B, 2, H, W) flow to filter.
        image: (B, C, H, W) guide image (frame 1, values in [0, 1] for the default scales).
        colour_scale, position_scale: s_c = 1/σ_c and s_p = 1/σ_p of the Gaussian kernel
            exp(-½ (s_c² |ΔI|² + s_p² |Δp|²)).
        kernel_size, dilation, iterations: as for ``segaware_flow_filter``.
    """
    if image.shape[-2:] != flow.shape[-2:]:
        raise ValueError(f"guide image {tuple(image.shape)} and flow {tuple(flow.shape)} differ in size")
    e = bilateral_embedding(image, colour_scale, position_scale)
    return masked_flow_filter(flow, e, kernel_size, dilation, 1.0, iterations, "l2")


__all__ = ["segaware_flow_filter", "bilateral_flow_filter", "bilateral_embedding", "masked_flow_filter"]
