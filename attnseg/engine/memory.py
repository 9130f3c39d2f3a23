"""How much memory an inference will take, estimated before running it.

``estimate_inference_bytes(model, (B, 3, H, W))`` runs the model once on the ``meta`` device (shapes only, no
arithmetic, so an 8000x8000 image costs milliseconds) under a dispatch mode that adds up the bytes of every tensor
an operator creates and subtracts them when the tensor dies: the peak of that sum is the peak of live activations,
quadratic attention maps included. The weights are counted once. Where an operator cannot run on ``meta`` (one that
reads values, such as ``.item()``), the estimate falls back to a real forward pass on a small input, measured the
same way and scaled by the pixel ratio (a lower bound for models with (HW)^2 attention; they name their memory in
``memory_bytes``).
"""

from __future__ import annotations

import copy
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

GiB = 1024 ** 3


class _LiveBytes(TorchDispatchMode):
    """Counts the bytes of tensors created by operators while they are alive; ``peak`` is the high-water mark."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0

    def _free(self, n: int):
        self.live -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {id(t) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and id(t) not in inputs and t._base is None:
                n = t.untyped_storage().nbytes()
                self.live += n
                self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._free, n)
        return out


def _activation_peak(model, x: torch.Tensor) -> int:
    counter = _LiveBytes()
    with torch.no_grad(), counter:
        model(x)
    return counter.peak


def weight_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def meta_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The model with every parameter and buffer on ``meta``; the weights themselves are never copied (a plain
    deep copy would double the model's memory for a moment, on a GPU too)."""
    memo = {id(p): torch.nn.Parameter(torch.empty_like(p, device="meta"), p.requires_grad)
            for p in model.parameters()}
    memo.update({id(b): torch.empty_like(b, device="meta") for b in model.buffers()})
    return copy.deepcopy(model, memo)


def estimate_inference_bytes(model: torch.nn.Module, shape: tuple[int, int, int, int],
                             dtype: torch.dtype = torch.float32, meta_model: torch.nn.Module | None = None) -> int:
    """Estimated peak memory (bytes) of ``model(x)`` under no_grad for x of ``shape``: activations + weights.
    ``meta_model``: ``meta_copy(model)`` made once by a caller that estimates several shapes."""
    B, C, H, W = shape
    try:
        meta_model = meta_model if meta_model is not None else meta_copy(model)
        peak = _activation_peak(meta_model, torch.empty(B, C, H, W, device="meta", dtype=dtype))
    except (NotImplementedError, RuntimeError, TypeError, ValueError):
        ph, pw = min(H, 128), min(W, 128)
        probe = torch.zeros(B, C, ph, pw, dtype=dtype, device=next(model.parameters()).device)
        peak = int(_activation_peak(model, probe) * (H * W) / (ph * pw))
    return peak + weight_bytes(model)


def format_bytes(n: float) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB / 10 else f"{n / 1024 ** 2:.0f} MiB"


def inference_peak_bytes(model, image_hw: tuple[int, int], cfg, num_classes: int, meta_model=None) -> int:
    """Estimated peak memory of ``engine.inference.infer`` on one image of ``image_hw`` with ``cfg``: the largest
    view's forward pass (whole image, or one batch of windows plus the window-score accumulator), the input and its
    rescaled copy, and the full-resolution scores (one map; three when several views are averaged)."""
    H, W = image_hw
    K, f32 = num_classes, 4
    views = len(cfg.scales) * (2 if cfg.flip else 1)
    fixed = 2 * 3 * H * W * f32 + K * H * W * f32 * (1 if views == 1 else 3)
    peak = 0
    for s in cfg.scales:
        scale = s * cfg.test_scale
        h, w = max(1, round(H * scale)), max(1, round(W * scale))
        if cfg.mode == "slide":
            ch, cw = cfg.crop
            sh, sw = cfg.stride or cfg.default_stride()
            windows = (-(-max(h - ch, 0) // sh) + 1) * (-(-max(w - cw, 0) // sw) + 1)
            n = max(1, min(cfg.window_batch, windows))
            # window batch forward + accumulator and its average at (K, h, w)
            view = (estimate_inference_bytes(model, (n, 3, ch, cw), meta_model=meta_model)
                    + 2 * K * max(h, ch) * max(w, cw) * f32)
        else:
            view = estimate_inference_bytes(model, (1, 3, h, w), meta_model=meta_model)
        peak = max(peak, view)
    return peak + fixed
