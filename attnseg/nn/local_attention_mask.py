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
``normalize`` (the NormConv form: the mask divided by the window's sum).

The normalised mask is a softmax over the taps that count (removed taps excluded), computed as the official
NormConv does, with the window's largest exponent subtracted before the exp:

    m_ij = exp(a_ij - max_k a_ik) / sum_j' exp(a_ij' - max_k a_ik),   a_ij = -|λ| d_ij

Without it, exp(-|λ| d) underflows to 0 for every tap once the distances are large (the released CRF scales the
embedding by 200, so d is in the thousands) and the message vanishes. A pixel whose taps are all removed (a 1x1
image without its centre) gets weights 0.

Distances, exponents and masks are computed in at least float32, also under autocast (``attnseg.nn.amp``); the
gradient of the embedding comes back in its own dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .amp import at_least_fp32, no_autocast
from .tracing import is_exporting


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
    """(1, k², H, W) bool: the window tap lies inside the image (0 <= i + dy < H and 0 <= j + dx < W), from one
    row test and one column test per tap offset (few ops, also with the symbolic sizes of an export trace)."""
    r = dilation * (kernel_size // 2)
    o = torch.arange(-r, r + 1, dilation, device=device)                 # (k,) offsets along one axis
    ty = torch.arange(height, device=device)[None] + o[:, None]          # (k, H): the tap's row
    tx = torch.arange(width, device=device)[None] + o[:, None]           # (k, W): its column
    in_y, in_x = (ty >= 0) & (ty < height), (tx >= 0) & (tx < width)
    both = in_y[:, None, :, None] & in_x[None, :, None, :]               # (k, k, H, W): tap (ky, kx), raster order
    return both.reshape(1, kernel_size * kernel_size, height, width)


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
        with no_autocast(e.device.type):
            return _WindowDistances._forward(ctx, e, kernel_size, dilation, distance)

    @staticmethod
    def _forward(ctx, e, kernel_size, dilation, distance):
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
        with no_autocast(g.device.type):      # backward() may be called inside an autocast block
            return _WindowDistances._backward(ctx, g)

    @staticmethod
    def _backward(ctx, g):
        (el,) = ctx.saved_tensors
        g = g.to(el.dtype)
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
    (B, D·k², H, W) unfolded tensor, in the forward or the backward. The distances are in at least float32 (also
    under autocast; a bf16 / fp16 embedding is cast first and gets its gradient in its own dtype)."""
    if distance not in ("l1", "l2"):
        raise ValueError(f"distance must be 'l1' or 'l2' (½ squared L2), not {distance!r}")
    e = e.to(at_least_fp32(e.dtype))
    if is_exporting():   # plain ops, no Python slice bounds from the (symbolic) size; the same numbers
        with no_autocast(e.device.type):
            return window_distances_plain(e, kernel_size, dilation, distance)
    return _WindowDistances.apply(e, kernel_size, dilation, distance)


def window_distances_plain(e: torch.Tensor, kernel_size: int, dilation: int = 1, distance: str = "l1") -> torch.Tensor:
    """``_WindowDistances``'s forward written with shape-agnostic ops, for export: the neighbours of the taps before
    the centre are views of one zero-padded copy, the taps whose neighbour is outside are set to 0 by the ``inside``
    mask, and the mirror taps are views of the zero-padded result (d_{-o}(i) = d_o(i − o)). Same
    (B, D, H, W) -> (B, k², H, W) result, in e's dtype; a few ops per tap (export time grows with their number)."""
    H, W = e.shape[-2:]
    offsets = window_offsets(kernel_size, dilation)
    half = len(offsets) // 2
    p = dilation * (kernel_size // 2)
    el = e.permute(0, 2, 3, 1).contiguous()                              # (B, H, W, D), as the Function
    elp = F.pad(el, (0, 0, p, p, p, p))                                  # (B, H + 2p, W + 2p, D)
    ins = inside(H, W, kernel_size, dilation, e.device)[0, :half].unbind(0)   # half x (H, W)
    first = []
    for (dy, dx), keep in zip(offsets[:half], ins):                       # the taps before the centre
        diff = el - elp.narrow(1, p + dy, H).narrow(2, p + dx, W)         # (B, H, W, D): pixel minus neighbour
        dt = diff.abs().sum(-1) if distance == "l1" else 0.5 * diff.square().sum(-1)   # (B, H, W)
        first.append(torch.where(keep, dt, 0.0))                         # 0 where the neighbour is outside
    dp = F.pad(torch.stack(first, 1), (p, p, p, p)).unbind(1)             # half x (B, H + 2p, W + 2p)
    mirror = [dp[t].narrow(1, p - dy, H).narrow(2, p - dx, W)            # d_{-o}(i) = d_o(i - o), 0 outside
              for t, (dy, dx) in enumerate(offsets[:half])]
    return torch.stack(first + [e.new_zeros(e.shape[0], H, W)] + mirror[::-1], 1)   # (B, k², H, W)


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
                 normalize: bool = False):
        super().__init__()
        window_offsets(kernel_size, dilation)  # checks the size
        lam = torch.tensor(float(init_lambda))
        self.lam = nn.Parameter(lam) if learn_lambda else nn.Buffer(lam)
        self.kernel_size, self.dilation, self.distance = kernel_size, dilation, distance
        self.remove_center, self.remove_bounds, self.normalize = remove_center, remove_bounds, normalize

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        """(B, D, H, W) -> (B, k², H, W) masks, in at least float32."""
        d = window_distances(e, self.kernel_size, self.dilation, self.distance)   # (B, k², H, W), >= fp32
        with no_autocast(e.device.type):
            a = -self.lam.abs().to(d.dtype) * d                                   # Eq. 3's exponent
            keep = None
            if self.remove_bounds or self.remove_center:
                keep = torch.ones_like(a[:1], dtype=torch.bool)                   # (1, k², H, W)
                if self.remove_bounds:
                    keep = keep & inside(*e.shape[-2:], self.kernel_size, self.dilation, e.device)
                if self.remove_center:
                    keep[:, self.kernel_size ** 2 // 2] = False
            if self.normalize:
                return window_softmax(a, keep)
            m = torch.exp(a)                                                      # Eq. 3
            return m if keep is None else m * keep


def window_softmax(a: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax over the taps (dim 1) of exponents a (B, k², H, W), only over the taps where ``keep``
    (broadcastable bool) is True; the others get 0, and so does every tap of a pixel that keeps none. The window's
    largest kept exponent is subtracted first (the official NormConv's max subtraction): no underflow at any scale."""
    if keep is not None:
        a = a.masked_fill(~keep, float("-inf"))
    top = a.amax(1, keepdim=True).detach()                                        # (B, 1, H, W)
    top = top.masked_fill(top == float("-inf"), 0.0)                              # no tap kept: exp(-inf) = 0
    w = torch.exp(a - top)                                                        # in (0, 1], 1 at the largest
    s = w.sum(1, keepdim=True)                                                    # >= 1 where a tap is kept
    return w / s.masked_fill(s == 0, 1.0)
