"""Load a torchvision-format (or any) state dict from a local file into a backbone, and say what matched.

Files are read without executing pickled code: ``.safetensors`` through safetensors, anything else through
``torch.load(weights_only=True)``. Nothing is ever downloaded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)


@dataclass
class LoadReport:
    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)      # in the model, not in the file
    unexpected: list[str] = field(default_factory=list)   # in the file, not in the model
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # (name, file shape, model shape)

    def summary(self) -> str:
        s = (f"loaded {len(self.matched)} tensors; {len(self.missing)} missing from the file, "
             f"{len(self.unexpected)} unused, {len(self.mismatched)} with a different shape")
        if self.missing:
            s += "\n  missing: " + ", ".join(self.missing[:12]) + (" ..." if len(self.missing) > 12 else "")
        if self.unexpected:
            s += "\n  unused: " + ", ".join(self.unexpected[:12]) + (" ..." if len(self.unexpected) > 12 else "")
        for n, a, b in self.mismatched[:12]:
            s += f"\n  shape differs: {n} file {tuple(a)} vs model {tuple(b)}"
        return s


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist (attnseg never downloads weights; "
                                "give a local .pth or .safetensors file)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    sd = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    return sd


def load_pretrained(module: nn.Module, source: str | Path | dict, prefix: str = "", strict: bool = False) -> LoadReport:
    """Copy every tensor of ``source`` (a file, or a state dict already read) whose name (after stripping
    ``prefix``) and shape match ``module``; report what matched."""
    sd = source if isinstance(source, dict) else read_state_dict(source)
    path = "<state dict>" if isinstance(source, dict) else source
    if prefix:
        sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    own = module.state_dict()
    report = LoadReport()
    to_load = {}
    for k, v in sd.items():
        if k not in own:
            report.unexpected.append(k)
        elif own[k].shape != v.shape:
            report.mismatched.append((k, tuple(v.shape), tuple(own[k].shape)))
        else:
            to_load[k] = v
            report.matched.append(k)
    report.missing = [k for k in own if k not in to_load and not k.endswith("num_batches_tracked")]
    if strict and (report.missing or report.mismatched):
        raise ValueError(f"{path} does not fit the model: {report.summary()}")
    module.load_state_dict(to_load, strict=False)
    log.info("%s: %s", path, report.summary())
    return report
