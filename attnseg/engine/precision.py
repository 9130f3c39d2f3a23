"""Device and numeric-precision policy.

On CPU, bfloat16 autocast only pays where the processor has native bf16 (AVX512-BF16 / AMX): there it roughly
doubles training speed; on AVX2-only processors (seen: AMD EPYC without AVX512) oneDNN emulates it and a
ResNet-18 step was measured ~10x slower than fp32. ``precision="auto"`` therefore asks oneDNN whether bf16 is
native. channels_last helps on CPU either way (~1.6x on the same AVX2 machine).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

#: the accepted ``precision`` values (aliases included)
PRECISIONS = ("auto", "fp32", "float32", "bf16", "bfloat16", "fp16", "float16")


def cpu_has_native_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        d = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device {device!r} unknown; use auto, cpu, cuda or cuda:N") from None
    if d.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r} is not supported; use auto, cpu, cuda or cuda:N")
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device} was asked for but CUDA is not available on this machine; use "
                             "device=cpu or device=auto")
        if d.index is not None and d.index >= torch.cuda.device_count():
            raise ValueError(f"device={device} was asked for but this machine has {torch.cuda.device_count()} CUDA "
                             f"device(s) (cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
    return d


@dataclass
class Precision:
    device: torch.device
    dtype: torch.dtype | None  # autocast dtype, None = fp32
    channels_last: bool

    @classmethod
    def resolve(cls, device: torch.device, precision: str = "auto", channels_last: bool | None = None) -> Precision:
        if precision == "auto":
            if device.type == "cuda":
                dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            else:
                dtype = torch.bfloat16 if cpu_has_native_bf16() else None
        elif precision in ("fp32", "float32"):
            dtype = None
        elif precision in ("bf16", "bfloat16"):
            dtype = torch.bfloat16
        elif precision in ("fp16", "float16"):
            if device.type == "cpu":
                raise ValueError("precision=fp16 is for CUDA; on CPU use bf16 or fp32 (or auto)")
            dtype = torch.float16
        else:
            raise ValueError(f"precision {precision!r} unknown; choose auto, fp32, bf16 or fp16")
        return cls(device, dtype, True if channels_last is None else bool(channels_last))

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype] + \
            ("+channels_last" if self.channels_last else "")

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def images(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def model(self, m: torch.nn.Module) -> torch.nn.Module:
        m = m.to(self.device)
        return m.to(memory_format=torch.channels_last) if self.channels_last else m
