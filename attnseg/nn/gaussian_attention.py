"""Gaussian attention: a grid of N x N separable Gaussian filters reads a patch from an image, or writes one back.

Gregor, Danihelka, Graves, Rezende, Wierstra, "DRAW: A Recurrent Neural Network For Image Generation", ICML 2015,
https://arxiv.org/abs/1502.04623, §3.2 "Selective Attention Model" (eqs 19-29). No official code was released.

Ren, Zemel, "End-to-End Instance Segmentation with Recurrent Attention", CVPR 2017, https://arxiv.org/abs/1605.09410,
§3.2 (the box network reads the image through the same filters, parametrised as a box). Official code (TensorFlow):
https://github.com/renmengye/rec-attend-public (``modellib.get_gaussian_filter``, ``get_unnormalized_center``,
``get_unnormalized_size``, ``get_normalized_var``; the box network in ``full_model.py``).

    μ_k = g + (k − (N−1)/2) δ,  k = 0..N−1                     Eq. 19-20 (the paper's (i − N/2 − 0.5) δ, i = 1..N)
    F[k, a] = exp(−(a − μ_k)² / (2σ²)) / Z_k                   Eq. 25-26 (Z_k = Σ_a: every row sums to 1)
    read(x) = γ F_Y x F_Xᵀ      (per channel)                  Eq. 27
    write(p) = F_Yᵀ p F_X / γ                                  Eq. 29

Coordinates: the filters are evaluated at the 0-based pixel-centre indices a = 0..size−1 of the image read (DRAW's
1-based a = 1..A shifted by one), and every :class:`GlimpseParams` field is in those pixel units.

Parametrisations (``raw`` is what a network emits, (B, 5) or (B, 7)):

* DRAW (:func:`draw_attention_params`): (g̃_X, g̃_Y, log σ², log δ̃, log γ), eqs 21-24. g̃ = 0 is the image centre
  ((H−1)/2, (W−1)/2); g̃ = −1 / +1 put the grid centre one pixel outside the first / last pixel (the paper's 1-based
  0 and A+1); δ̃ = 1 makes the N means span max(A, B) − 1 pixels. One δ and one σ² serve both axes.
* Ren & Zemel (:func:`ren_zemel_box_params`): (ỹ, x̃, log δ̃_y, log δ̃_x, log σ²_y, log σ²_x, log γ): centre
  ((ỹ+1) H/2, (x̃+1) W/2), box size δ = exp(log δ̃) (H, W), and with the "ren_zemel" means convention the N means
  are (δ+1)/N apart, μ_k = g + (δ+1)/N (k − (N−1)/2). σ² is predicted (``dynamic_var``) or tied to the stride,
  σ² = δ/N (their ``get_normalized_var``). Their filters are the normal pdf, not row-normalised (``normalise="pdf"``).

Either normalisation can be combined with either parametrisation.

Adjointness: read and write are transposes of each other up to γ. With γ = 1, ⟨read X, P⟩ = ⟨X, write P⟩ exactly
(Frobenius products over C, N, M and C, H, W); in general, per image, ⟨read X, P⟩ = γ² ⟨X, write P⟩.

Mixed precision: the parameters, the means and the filter banks are computed in at least float32 (bf16 / fp16
inputs are cast up, autocast is disabled there); the two matmuls of read / write follow the input dtype: under
``torch.autocast`` they run (and return) in autocast's dtype like any matmul, otherwise in the promoted dtype of the
image and the banks (float32 banks with a float64 image: float64). γ is folded into F_Y before the matmuls.

Export: no data-dependent Python control flow; everything is elementwise ops, ``arange`` and batched matmuls, so
``torch.onnx.export(..., dynamo=True)`` gives the same numbers in onnxruntime.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .amp import at_least_fp32, common_dtype, no_autocast

CONVENTIONS = ("draw", "ren_zemel")
NORMALISATIONS = ("row", "pdf")
PARAMETRISATIONS = {"draw": 5, "ren_zemel": 7}


@dataclass
class GlimpseParams:
    """Attention parameters of a batch, every field a (B,) tensor in pixel units of the image read.

    Attributes:
        centre_y, centre_x: the grid centre g (0-based pixel-centre coordinates).
        delta_y, delta_x: DRAW: the stride δ (spacing of the N means). Ren & Zemel: the box size δ (the means are
            (δ+1)/N apart, see :func:`filterbank_means`).
        sigma2_y, sigma2_x: the Gaussian variance σ² per axis.
        gamma: the intensity γ.
    """

    centre_y: Tensor
    centre_x: Tensor
    delta_y: Tensor
    delta_x: Tensor
    sigma2_y: Tensor
    sigma2_x: Tensor
    gamma: Tensor


# -- checks ----------------------------------------------------------------------------------------------------------
def _check_count(N, what: str = "N") -> int:
    if isinstance(N, bool) or not isinstance(N, int) or N < 1:
        raise ValueError(f"{what} (the number of filters per axis) must be an int >= 1, not {N!r}")
    return N


def _check_size(size, what: str) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, torch.SymInt)) or (isinstance(size, int) and size < 1):
        raise ValueError(f"the {what} must be an int >= 1, not {size!r}")
    return size


def _check_raw(raw: Tensor, width: int, what: str) -> None:
    if not isinstance(raw, Tensor) or raw.dim() != 2 or raw.shape[-1] != width:
        shape = tuple(raw.shape) if isinstance(raw, Tensor) else type(raw).__name__
        raise ValueError(f"{what} takes raw parameters of shape (B, {width}), got {shape}; the network emitting them "
                         f"needs {width} outputs per image")


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown means convention {convention!r}; choose from {', '.join(CONVENTIONS)}")


def _check_normalise(normalise: str) -> None:
    if normalise not in NORMALISATIONS:
        raise ValueError(f"unknown normalise option {normalise!r}; choose 'row' (DRAW: every filter sums to 1) or "
                         "'pdf' (Ren & Zemel: the normal density)")


def _float(t: Tensor) -> Tensor:
    """At least float32 (bf16 / fp16 / integer -> float32; float64 stays)."""
    dtype = at_least_fp32(t.dtype) if t.is_floating_point() else torch.float32
    return t if t.dtype == dtype else t.to(dtype)


# -- parametrisations ------------------------------------------------------------------------------------------------
def draw_attention_params(raw: Tensor, height: int, width: int, N: int) -> GlimpseParams:
    """DRAW's attention parameters (eqs 21-24) from a linear layer's output.

    Args:
        raw: (B, 5) columns (g̃_X, g̃_Y, log σ², log δ̃, log γ) in DRAW's order.
        height, width: B and A of the paper, the size of the image read.
        N: grid size.

    Returns:
        :class:`GlimpseParams` with centre g = ((B+1)/2 (g̃_Y+1) − 1, (A+1)/2 (g̃_X+1) − 1) (0-based), the same stride
        δ = (max(A, B) − 1)/(N − 1) δ̃ and variance σ² for both axes. For N = 1 the divisor N − 1 is taken as 1,
        δ = (max(A, B) − 1) δ̃: a single mean sits at g whatever δ is, and δ stays finite and differentiable.

    Raises:
        ValueError: raw not (B, 5), a size < 1 or N < 1.
    """
    _check_raw(raw, 5, "draw_attention_params")
    _check_size(height, "height")
    _check_size(width, "width")
    _check_count(N)
    with no_autocast(raw.device.type):
        r = _float(raw)
        gx, gy, log_s2, log_d, log_g = r.unbind(-1)                     # 5 x (B,)
        centre_x = (width + 1) / 2 * (gx + 1) - 1                       # Eq. 22, minus 1: 0-based
        centre_y = (height + 1) / 2 * (gy + 1) - 1                      # Eq. 23
        delta = (torch.sym_max(height, width) - 1) / max(N - 1, 1) * torch.exp(log_d)   # Eq. 24
        sigma2, gamma = torch.exp(log_s2), torch.exp(log_g)             # Eq. 21 (emitted as logs)
    return GlimpseParams(centre_y, centre_x, delta, delta, sigma2, sigma2, gamma)


def ren_zemel_box_params(raw: Tensor, height: int, width: int, K: int, dynamic_var: bool = False) -> GlimpseParams:
    """Ren & Zemel's box parametrisation (§3.2; ``get_unnormalized_center`` / ``get_unnormalized_size``).

    Args:
        raw: (B, 7) columns (ỹ, x̃, log δ̃_y, log δ̃_x, log σ²_y, log σ²_x, log γ).
        height, width: size of the image read.
        K: filter grid size (N).
        dynamic_var: use the predicted variances; otherwise σ² = δ/K per axis (``get_normalized_var``: the variance
            equals the box size over the filter size) and columns 4-5 are ignored.

    Returns:
        :class:`GlimpseParams` with centre ((ỹ+1) H/2, (x̃+1) W/2), delta_y / delta_x the box SIZE
        δ = exp(log δ̃) (H, W) (the means are (δ+1)/K apart with the "ren_zemel" convention), σ², γ = exp(log γ).

    Raises:
        ValueError: raw not (B, 7), a size < 1 or K < 1.
    """
    _check_raw(raw, 7, "ren_zemel_box_params")
    _check_size(height, "height")
    _check_size(width, "width")
    _check_count(K, "K")
    with no_autocast(raw.device.type):
        r = _float(raw)
        ty, tx, log_dy, log_dx, log_s2y, log_s2x, log_g = r.unbind(-1)  # 7 x (B,)
        centre_y, centre_x = (ty + 1) * (height / 2), (tx + 1) * (width / 2)
        delta_y, delta_x = torch.exp(log_dy) * height, torch.exp(log_dx) * width
        if dynamic_var:
            sigma2_y, sigma2_x = torch.exp(log_s2y), torch.exp(log_s2x)
        else:
            sigma2_y, sigma2_x = delta_y / K, delta_x / K
        gamma = torch.exp(log_g)
    return GlimpseParams(centre_y, centre_x, delta_y, delta_x, sigma2_y, sigma2_x, gamma)


# -- filter banks ----------------------------------------------------------------------------------------------------
def filterbank_means(centre: Tensor, delta: Tensor, N: int, convention: str = "draw") -> Tensor:
    """The N filter means along one axis.

    Args:
        centre: (B,) grid centre g.
        delta: (B,) DRAW: the stride δ; Ren & Zemel: the box size δ.
        N: number of filters.
        convention: "draw": μ_k = g + (k − (N−1)/2) δ (Eq. 19-20); "ren_zemel": μ_k = g + (δ+1)/N (k − (N−1)/2).

    Returns:
        (B, N) means, in at least float32.

    Raises:
        ValueError: N < 1, an unknown convention, centre / delta not (B,) of one B.
    """
    _check_count(N)
    _check_convention(convention)
    if centre.dim() != 1 or delta.shape != centre.shape:
        raise ValueError(f"centre and delta must be (B,) tensors of one B, got {tuple(centre.shape)} and "
                         f"{tuple(delta.shape)}")
    with no_autocast(centre.device.type):
        dtype = at_least_fp32(common_dtype(centre, delta))
        g, d = centre.to(dtype), delta.to(dtype)
        k = torch.arange(N, device=g.device, dtype=dtype) - (N - 1) / 2          # (N,)
        stride = d if convention == "draw" else (d + 1) / N                        # (B,)
        return g[:, None] + stride[:, None] * k                                   # (B, 1) + (B, 1) * (N,) -> (B, N)


def gaussian_filterbank(mu: Tensor, sigma2: Tensor, size: int, normalise: str = "row", eps: float = 1e-8) -> Tensor:
    """The Gaussian filter bank along one axis, evaluated at the pixel centres a = 0..size−1.

    Args:
        mu: (B, N) means.
        sigma2: (B,) variances σ².
        size: number of pixels along the axis.
        normalise: "row": F[b, k, a] = exp(−(a − μ_k)²/(2σ²)) / max(Σ_a exp(...), eps) (Eq. 25-26, every row sums
            to 1); "pdf": exp(...) / sqrt(2πσ²) (Ren & Zemel: the normal density, rows not normalised).
        eps: floor of a row's sum ("row").

    Returns:
        (B, N, size) filters, in at least float32.

    Raises:
        ValueError: an unknown normalise option, mu not (B, N), sigma2 not (B,), size < 1.
    """
    _check_normalise(normalise)
    _check_size(size, "filter bank size")
    if mu.dim() != 2 or sigma2.dim() != 1 or sigma2.shape[0] != mu.shape[0]:
        raise ValueError(f"mu must be (B, N) and sigma2 (B,) of the same B, got {tuple(mu.shape)} and "
                         f"{tuple(sigma2.shape)}")
    with no_autocast(mu.device.type):
        dtype = at_least_fp32(common_dtype(mu, sigma2))
        mu, s2 = mu.to(dtype), sigma2.to(dtype)[:, None, None]                    # (B, N), (B, 1, 1)
        a = torch.arange(size, device=mu.device, dtype=dtype)                      # (size,)
        d = a - mu[:, :, None]                                                     # (size,) - (B, N, 1) -> (B, N, size)
        f = torch.exp(-d * d / (2 * s2))                                           # Eq. 25-26 numerator
        if normalise == "row":
            return f / f.sum(-1, keepdim=True).clamp_min(eps)                      # / Z_k, (B, N, 1)
        return f / torch.sqrt(2 * math.pi * s2)                                    # normal pdf


def attention_banks(params: GlimpseParams, height: int, width: int, N: int, convention: str = "draw",
                    normalise: str = "row") -> tuple[Tensor, Tensor]:
    """The two filter banks of a batch of glimpses.

    Args:
        params: the glimpses (:func:`draw_attention_params`, :func:`ren_zemel_box_params` or hand-made).
        height, width: size of the image read.
        N: grid size (one N for both axes, as in DRAW).
        convention: means convention of :func:`filterbank_means`.
        normalise: "row" or "pdf", see :func:`gaussian_filterbank`.

    Returns:
        F_Y (B, N, height) and F_X (B, N, width), in at least float32.
    """
    _check_size(height, "height")
    _check_size(width, "width")
    mu_y = filterbank_means(params.centre_y, params.delta_y, N, convention)       # (B, N)
    mu_x = filterbank_means(params.centre_x, params.delta_x, N, convention)       # (B, N)
    Fy = gaussian_filterbank(mu_y, params.sigma2_y, height, normalise)            # (B, N, H)
    Fx = gaussian_filterbank(mu_x, params.sigma2_x, width, normalise)             # (B, N, W)
    return Fy, Fx


def _prepared(t: Tensor, Fy: Tensor, Fx: Tensor, gamma: Tensor | None, what: str):
    """The banks checked against ``t`` (B, C, ., .), everything in one dtype: (t, Fy, Fx, γ as (B, 1, 1) or None)."""
    _check_banks(Fy, Fx, t.shape[0], what)
    dtype = common_dtype(t, Fy, Fx)
    return t.to(dtype), Fy.to(dtype), Fx.to(dtype), _gamma_column(gamma, t.shape[0], dtype)


def _check_banks(Fy: Tensor, Fx: Tensor, batch, what: str) -> None:
    if Fy.dim() != 3 or Fx.dim() != 3:
        raise ValueError(f"{what}: the filter banks must be F_Y (B, N, H) and F_X (B, M, W), got "
                         f"{tuple(Fy.shape)} and {tuple(Fx.shape)}")
    if Fy.shape[0] != batch or Fx.shape[0] != batch:
        raise ValueError(f"{what}: the banks' batch {Fy.shape[0]}, {Fx.shape[0]} differs from the input's {batch}")


def _gamma_column(gamma: Tensor | None, batch, dtype) -> Tensor | None:
    if gamma is None:
        return None
    if gamma.dim() != 1 or gamma.shape[0] != batch:
        raise ValueError(f"gamma must be a (B,) tensor with B = {batch}, got {tuple(gamma.shape)}")
    return gamma.to(dtype)[:, None, None]                                          # (B, 1, 1)


def filterbank_read(x: Tensor, Fy: Tensor, Fx: Tensor, gamma: Tensor | None = None) -> Tensor:
    """Read a patch: γ F_Y x F_Xᵀ per channel (Eq. 27).

    Args:
        x: (B, C, H, W) image.
        Fy: (B, N, H) vertical filters.
        Fx: (B, M, W) horizontal filters.
        gamma: (B,) intensity, or None for 1.

    Returns:
        (B, C, N, M) patch; autocast's dtype under autocast, else the promoted dtype of x and the banks.

    Raises:
        ValueError: wrong ranks, or banks that do not fit the image.
    """
    if x.dim() != 4:
        raise ValueError(f"filterbank_read takes an image (B, C, H, W), got shape {tuple(x.shape)}")
    x, Fy, Fx, g = _prepared(x, Fy, Fx, gamma, "filterbank_read")
    H, W = x.shape[-2:]
    if Fy.shape[2] != H or Fx.shape[2] != W:
        raise ValueError(f"filterbank_read: F_Y {tuple(Fy.shape)} and F_X {tuple(Fx.shape)} do not fit the image "
                         f"of size {H}x{W}; build them with height={H}, width={W}")
    if g is not None:
        Fy = Fy * g                                                                # γ F_Y, (B, N, H)
    # (B, 1, N, H) @ (B, C, H, W) @ (B, 1, W, M) -> (B, C, N, M)                     Eq. 27
    return Fy[:, None] @ x @ Fx.transpose(1, 2)[:, None]


def filterbank_write(p: Tensor, Fy: Tensor, Fx: Tensor, gamma: Tensor | None = None) -> Tensor:
    """Write a patch back into image space: F_Yᵀ p F_X / γ per channel (Eq. 29).

    Args:
        p: (B, C, N, M) patch.
        Fy: (B, N, H) vertical filters.
        Fx: (B, M, W) horizontal filters.
        gamma: (B,) intensity, or None for 1.

    Returns:
        (B, C, H, W) image; dtype as :func:`filterbank_read`.

    Raises:
        ValueError: wrong ranks, or banks that do not fit the patch.
    """
    if p.dim() != 4:
        raise ValueError(f"filterbank_write takes a patch (B, C, N, M), got shape {tuple(p.shape)}")
    p, Fy, Fx, g = _prepared(p, Fy, Fx, gamma, "filterbank_write")
    N, M = p.shape[-2:]
    if Fy.shape[1] != N or Fx.shape[1] != M:
        raise ValueError(f"filterbank_write: F_Y {tuple(Fy.shape)} and F_X {tuple(Fx.shape)} do not fit the patch "
                         f"of size {N}x{M}; the banks need N={N} and M={M} filters")
    if g is not None:
        Fy = Fy / g                                                                # F_Y / γ, (B, N, H)
    # (B, 1, H, N) @ (B, C, N, M) @ (B, 1, M, W) -> (B, C, H, W)                     Eq. 29
    return Fy.transpose(1, 2)[:, None] @ p @ Fx[:, None]


def grid_points(params: GlimpseParams, N: int, convention: str = "draw") -> Tensor:
    """The N x N filter means as pixel (y, x) coordinates, for drawing the grid on the image.

    Returns:
        (B, N, N, 2): [b, i, j] = (μ_Y[i], μ_X[j]).
    """
    mu_y = filterbank_means(params.centre_y, params.delta_y, N, convention)       # (B, N)
    mu_x = filterbank_means(params.centre_x, params.delta_x, N, convention)       # (B, N)
    B = mu_y.shape[0]
    # (B, N, 1) and (B, 1, N) -> (B, N, N) each -> (B, N, N, 2)
    return torch.stack([mu_y[:, :, None].expand(B, N, N), mu_x[:, None, :].expand(B, N, N)], dim=-1)


class GaussianAttention(nn.Module):
    """N x N Gaussian attention read / write with DRAW's or Ren & Zemel's parametrisation (no weights of its own).

    Args:
        N: grid size.
        parametrisation: "draw" (raw (B, 5), :func:`draw_attention_params`, default normalise "row") or
            "ren_zemel" (raw (B, 7), :func:`ren_zemel_box_params`, default normalise "pdf"). The means follow the
            same-named convention of :func:`filterbank_means`.
        normalise: "row" or "pdf" (either with either parametrisation); None for the parametrisation's default.
        dynamic_var: "ren_zemel" only: use the predicted variances instead of σ² = δ/N.

    Attributes:
        raw_size: 5 or 7, the width of ``raw``.
    """

    def __init__(self, N: int, parametrisation: str = "draw", normalise: str | None = None,
                 dynamic_var: bool = False):
        super().__init__()
        _check_count(N)
        if parametrisation not in PARAMETRISATIONS:
            raise ValueError(f"unknown parametrisation {parametrisation!r}; choose 'draw' (5 raw numbers) or "
                             "'ren_zemel' (7 raw numbers)")
        if normalise is None:
            normalise = "row" if parametrisation == "draw" else "pdf"
        _check_normalise(normalise)
        self.N, self.parametrisation, self.normalise, self.dynamic_var = N, parametrisation, normalise, dynamic_var
        self.raw_size = PARAMETRISATIONS[parametrisation]

    def extra_repr(self) -> str:
        return f"N={self.N}, parametrisation={self.parametrisation!r}, normalise={self.normalise!r}"

    def params(self, raw: Tensor, height: int, width: int) -> GlimpseParams:
        """raw (B, raw_size) -> :class:`GlimpseParams` for an image of height x width."""
        if self.parametrisation == "draw":
            return draw_attention_params(raw, height, width, self.N)
        return ren_zemel_box_params(raw, height, width, self.N, self.dynamic_var)

    def banks(self, raw: Tensor, height: int, width: int) -> tuple[Tensor, Tensor, GlimpseParams]:
        """raw (B, raw_size) -> F_Y (B, N, height), F_X (B, N, width), the parameters."""
        p = self.params(raw, height, width)
        Fy, Fx = attention_banks(p, height, width, self.N, self.parametrisation, self.normalise)
        return Fy, Fx, p

    def _check_batch(self, t: Tensor, raw: Tensor, what: str) -> None:
        if t.dim() != 4:
            raise ValueError(f"GaussianAttention.{what} takes (B, C, H, W), got shape {tuple(t.shape)}")
        _check_raw(raw, self.raw_size, f"GaussianAttention({self.parametrisation!r})")
        if raw.shape[0] != t.shape[0]:
            raise ValueError(f"GaussianAttention.{what}: raw has {raw.shape[0]} rows for a batch of {t.shape[0]}; "
                             "give one row of parameters per image")

    def read(self, x: Tensor, raw: Tensor) -> tuple[Tensor, GlimpseParams]:
        """x (B, C, H, W), raw (B, raw_size) -> the patch (B, C, N, N) (Eq. 27) and the parameters."""
        self._check_batch(x, raw, "read")
        Fy, Fx, p = self.banks(raw, x.shape[-2], x.shape[-1])
        return filterbank_read(x, Fy, Fx, p.gamma), p

    def write(self, patch: Tensor, raw: Tensor, height: int, width: int) -> Tensor:
        """patch (B, C, N, N), raw (B, raw_size) -> (B, C, height, width) (Eq. 29)."""
        self._check_batch(patch, raw, "write")
        if patch.shape[-2] != self.N or patch.shape[-1] != self.N:
            raise ValueError(f"GaussianAttention.write takes an {self.N}x{self.N} patch (N={self.N}), got "
                             f"{tuple(patch.shape)}")
        Fy, Fx, p = self.banks(raw, height, width)
        return filterbank_write(patch, Fy, Fx, p.gamma)

    def forward(self, x: Tensor, raw: Tensor) -> Tensor:
        """The read patch (B, C, N, N)."""
        return self.read(x, raw)[0]
