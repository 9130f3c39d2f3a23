"""Export-time switches: where a model computes the same numbers by another path while it is traced for export.

``torch.export`` (and so ``attnseg export --format onnx``, see ``attnseg.export``) traces a model with symbolic
image sizes. Three kinds of code do not survive that: code that turns a size into a Python number (``int()`` of a
scaled size, Python's ``max`` / ``min`` choosing a branch, slice bounds computed in Python), which fixes the exported
graph to the example's size or to a range of sizes; loops whose count depends on a size (chunking); and custom
``torch.autograd.Function`` s, which are traced op by op through Python slicing and whose hand-written backward is
of no use in an inference graph. Such code branches on :func:`is_exporting` and runs plain tensor ops of the same math
there, while eager training and inference keep their own (leaner, faster) path; the tests check that both agree.
"""

from __future__ import annotations

import torch


def is_exporting() -> bool:
    """True while ``torch.export`` (or the ONNX exporter) traces the model; False in eager and ``torch.compile``."""
    return bool(torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export())
