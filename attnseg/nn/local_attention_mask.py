"""Local attention masks from per-pixel embeddings (segmentation-aware networks).

Harley, Derpanis, Kokkinos, "Segmentation-Aware Convolutional Networks Using Local Attention Masks", ICCV 2017,
https://arxiv.org/abs/1708.04607. Official code (Caffe): https://github.com/aharley/segaware (``im2dist`` layer;
the masks of ``config/vgg/train.prototxt``: Scale -> AbsVal -> Exp(-1)).

For every pixel i and every neighbour j of a k×k window with dilation d ("same" padding, raster order of the
window, the centre included):

    d_ij = sum_c |e_i^c - e_j^c|            L1 (the code's default), or ½‖e_i - e_j‖² ("l2", the code's L2 option)
    m_ij = exp(-|λ| d_ij)                    Eq. 3; λ learned per layer, initialised to 0.05 (the code)

Options (METHODS.md §1.5): ``remove_center`` (m_ii = 0), ``remove_bounds`` (m = 0 for neighbours outside the image;
otherwise their distance is 0 as in the code, where im2col's zero padding then silences them in a convolution),
``normalize`` (divide by the window's sum, the NormConv form).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def window_offsets(kernel_size: int, dilation: int = 1) -> list[tuple[int, int]]:
    """(dy, dx) of the k×k window's taps in raster order, relative to the centre."""
    if kernel_size % 2 != 1:
        raise ValueError(f"the window must have an odd size (a centre pixel), not {kernel_size}")
    r = kernel_size // 2
    return [(dilation * (i - r), dilation * (j - r)) for i in range(kernel_size) for j in range(kernel_size)]


def shifted(x: torch.Tensor, dy: int, dx: int, fill: float = 0) -> torch.Tensor:
    """x[..., i + dy, j + dx] for every (i, j), ``fill`` outside the image: (..., H, W) -> (..., H, W)."""
    H, W = x.shape[-2:]
    p = max(abs(dy), abs(dx))
    if p == 0:
        return x
    xp = F.pad(x, (p, p, p, p), value=fill)
    return xp[..., p + dy:p + dy + H, p + dx:p + dx + W]


def inside(height: int, width: int, kernel_size: int, dilation: int = 1, device=None) -> torch.Tensor:
    """(1, k², H, W) bool: the window tap lies inside the image."""
    ones = torch.ones(1, 1, height, width, device=device)
    return torch.cat([shifted(ones, dy, dx) for dy, dx in window_offsets(kernel_size, dilation)], 1) > 0


def overlap(n: int, o: int) -> tuple[slice, slice]:
    """Along one axis of length n: the positions i with i + o inside, and those i + o."""
    lo = min(n, max(0, -o))
    hi = max(lo, n - max(0, o))
    return slice(lo, hi), slice(lo + o, hi + o)


class _WindowDistances(torch.autograd.Function):
    """d_t(i) = f(e_i - e_{i+o_t}) for the taps o_t of a window; f = L1 or ½ squared L2; 0 where i + o_t is outside.

    Only half of the taps are computed: the window is symmetric and d_{-o}(i) = d_o(i - o), so the taps after the
    centre are copies of those before it. Every difference is taken between two views of e over the pixels whose
    neighbour is inside (no padded copies), and nothing of size (B, D, H, W) per tap is saved: the backward
    recomputes each difference. Gradient of tap o and its mirror together, with G_o the incoming gradient of d_o
    and Ĝ_o(j) = G_o(j) + G_{-o}(j + o) over the valid j:
        s = f'(e_j - e_{j+o}) Ĝ_o(j);  ∂/∂e_j += s(j);  ∂/∂e_{j+o} -= s(j)
    """

    @staticmethod
    def forward(ctx, e, kernel_size: int, dilation: int, distance: str):
        H, W = e.shape[-2:]
        offsets = window_offsets(kernel_size, dilation)
        el = e.permute(0, 2, 3, 1).contiguous()                          # (B, H, W, D): reduce over the inner dim
        d = e.new_zeros(e.shape[0], len(offsets), H, W)
        for t in range(len(offsets) // 2):                               # the taps before the centre
            (ry, ny), (rx, nx) = overlap(H, offsets[t][0]), overlap(W, offsets[t][1])
            diff = el[:, ry, rx] - el[:, ny, nx]                          # (B, h, w, D): pixel minus neighbour
            dt = diff.abs_().sum(-1) if distance == "l1" else 0.5 * diff.square_().sum(-1)   # (B, h, w)
            d[:, t, ry, rx] = dt
            d[:, -1 - t, ny, nx] = dt                                     # the mirror tap: d_{-o}(i + o) = d_o(i)
        ctx.save_for_backward(el)
        ctx.window = (kernel_size, dilation, distance)
        return d

    @staticmethod
    def backward(ctx, g):
        (el,) = ctx.saved_tensors
        kernel_size, dilation, distance = ctx.window
        H, W = el.shape[1:3]
        offsets = window_offsets(kernel_size, dilation)
        ge = torch.zeros_like(el)                                         # (B, H, W, D)
        for t in range(len(offsets) // 2):
            (ry, ny), (rx, nx) = overlap(H, offsets[t][0]), overlap(W, offsets[t][1])
            gt = g[:, t, ry, rx] + g[:, -1 - t, ny, nx]                   # (B, h, w): Ĝ_o
            diff = el[:, ry, rx] - el[:, ny, nx]                          # (B, h, w, D)
            s = (diff.sign_() if distance == "l1" else diff).mul_(gt[..., None])
            ge[:, ry, rx] += s
            ge[:, ny, nx] -= s                                            # the neighbour j + o gets -s(j)
        return ge.permute(0, 3, 1, 2), None, None, None                   # (B, D, H, W), channels-last strides


def window_distances(e: torch.Tensor, kernel_size: int, dilation: int = 1, distance: str = "l1") -> torch.Tensor:
    """(B, D, H, W) embedding -> (B, k², H, W) distances from each pixel to its window's taps (0 outside the
    image, as the code's). Computed one tap at a time (half of them, the rest by symmetry): never a
    (B, D·k², H, W) unfolded tensor, in the forward or the backward."""
    if distance not in ("l1", "l2"):
        raise ValueError(f"distance must be 'l1' or 'l2' (½ squared L2), not {distance!r}")
    return _WindowDistances.apply(e, kernel_size, dilation, distance)


class LocalAttentionMask(nn.Module):
    """``forward(e (B, D, H, W))`` -> m (B, k², H, W), the local attention mask of every pixel's window.

    Args:
        kernel_size, dilation: the window (that of the convolution it gates).
        distance: "l1" or "l2" (½ squared L2).
        init_lambda: λ's initial value (0.05); ``learn_lambda`` makes it a parameter (one per layer).
        remove_center, remove_bounds, normalize: see the module docstring.
    """

    def __init__(self, kernel_size: int = 3, dilation: int = 1, distance: str = "l1", init_lambda: float = 0.05,
                 learn_lambda: bool = True, remove_center: bool = False, remove_bounds: bool = False,
                 normalize: bool = False, eps: float = 1e-6):
        super().__init__()
        window_offsets(kernel_size, dilation)  # checks the size
        lam = torch.tensor(float(init_lambda))
        self.lam = nn.Parameter(lam) if learn_lambda else nn.Buffer(lam)
        self.kernel_size, self.dilation, self.distance = kernel_size, dilation, distance
        self.remove_center, self.remove_bounds, self.normalize, self.eps = remove_center, remove_bounds, normalize, eps

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        d = window_distances(e, self.kernel_size, self.dilation, self.distance)   # (B, k², H, W)
        m = torch.exp(-self.lam.abs() * d)                                        # Eq. 3
        if self.remove_bounds or self.remove_center:
            keep = torch.ones_like(m[:1], dtype=torch.bool)                       # (1, k², H, W)
            if self.remove_bounds:
                keep = keep & inside(*e.shape[-2:], self.kernel_size, self.dilation, e.device)
            if self.remove_center:
                keep[:, self.kernel_size ** 2 // 2] = False
            m = m * keep
        if self.normalize:
            m = m / (m.sum(1, keepdim=True) + self.eps)
        return m
