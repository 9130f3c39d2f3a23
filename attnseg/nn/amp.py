"""Mixed precision for the custom autograd Functions of ``attnseg.nn`` (``torch.autocast`` on CPU and CUDA).

A custom ``torch.autograd.Function`` is opaque to autocast: its forward receives whatever dtypes come in (under
autocast typically bf16 / fp16 activations beside fp32 parameters), and its backward runs under the autocast
state of the thread that calls ``backward()`` (on the CPU, ``loss.backward()`` inside an autocast block re-enables
it there), not under the forward's. The Functions of this package therefore follow one recipe:

1. the public wrapper picks a single compute dtype (``lower_precision_dtype`` or ``at_least_fp32``) and casts the
   inputs to it *before* ``Function.apply``: those casts are ordinary autograd ops, so every input's gradient
   comes back in that input's own dtype (a bf16 activation gets a bf16 gradient, an fp32 weight an fp32 one);
2. the Function's forward and backward run with autocast disabled (``no_autocast``) on the one dtype they were
   given, accumulating sums in at least float32.

The compute dtype follows autocast's own policy: matmul-like work (the segmentation-aware convolution) takes
autocast's dtype, as ``F.conv2d`` would; distances, exponentials and normalised attention sums stay in at least
float32. float64 is never lowered (autocast leaves it alone too).
"""

from __future__ import annotations

import contextlib
from functools import reduce

import torch


def at_least_fp32(dtype: torch.dtype) -> torch.dtype:
    """float16 / bfloat16 / float32 -> float32; float64 stays."""
    return torch.promote_types(dtype, torch.float32)


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The dtype to compute in outside autocast: the promotion of the floating inputs (integer ones count as
    float32), at least float32 (a bf16 input computes in float32, float64 stays)."""
    out = torch.float32
    for t in tensors:
        if t.is_floating_point():
            out = torch.promote_types(out, t.dtype)
    return at_least_fp32(out)


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """Autocast's lower-precision dtype on ``device_type`` when autocast is enabled there, else None."""
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def common_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """The promoted dtype of the given tensors (None entries skipped)."""
    return reduce(torch.promote_types, [t.dtype for t in tensors if t is not None])


def lower_precision_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """Compute dtype of a matmul-like op: autocast's dtype when it is enabled on the tensors' device (unless an
    input is float64), else the inputs' promoted dtype."""
    dtype = common_dtype(*tensors)
    device = next(t for t in tensors if t is not None).device.type
    low = autocast_dtype(device)
    return low if low is not None and dtype != torch.float64 else dtype


def cast(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return t if t is None or t.dtype == dtype else t.to(dtype)


def no_autocast(device_type: str):
    """A context with autocast disabled on ``device_type``; a no-op where autocast does not exist or is off
    already (then nothing changes, and an export trace gets no autocast region wrapped around the code)."""
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()
