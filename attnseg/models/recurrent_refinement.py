"""Recurrent refinement: one network applied N times, each pass reading the previous pass's label planes.

Pinheiro, Collobert, "Recurrent Convolutional Neural Networks for Scene Labeling", ICML 2014,
http://proceedings.mlr.press/v32/pinheiro14.html. Official code: Torch7, never released; this follows the
paper and METHODS.md §5.2, with a registry model in place of the paper's patch-based tanh CNN.

What is computed, for images x of shape (B, 3, H, W), K classes and N passes of the *same* network f (one set
of weights, built with ``in_channels = 3 + K``)::

    planes_0 = 0                                   (B, K, H, W), the first instance gets zero planes
    for p = 1 .. N:
        s_p = f(cat(x, planes_{p-1}))              (B, 3 + K, H, W) -> (B, K, H, W) logits
        planes_p = softmax(s_p) over classes       (B, K, H, W), fed to pass p + 1
    logits = s_N

Each extra pass enlarges the effective context (pass p sees what pass p − 1 concluded about the whole receptive
field of f) and lets the net correct its own errors. Training is end-to-end by back-propagation through all
passes (BPTT) with a per-pixel cross-entropy (the paper's NLL) on **every** pass.

Choices:
- label planes: ``planes="softmax"`` (default) feeds the class probabilities of the previous pass, which live in
  [0, 1] like the zero planes of pass 1; ``"log_softmax"`` feeds log-probabilities, ``"logits"`` the raw scores
  (the paper's text leaves open whether its "label planes" are scores or probabilities). The planes are
  computed in fp32 and cast to the image dtype.
- resolution: every registry model returns full-resolution logits, so the planes already match the image and
  are fed at input resolution (the paper resizes them to the input of each instance; here that is a no-op).
- gradients: ``detach=False`` back-propagates through every pass as in the paper; ``detach=True`` stops the
  gradient between passes (each pass is then trained only by its own loss, on the previous pass's output).
- losses: weight 1 on every pass, as in the paper. In training mode passes 1 .. N−1 are returned as aux logits
  named ``pass1`` .. ``pass{N-1}`` with ``aux_weights`` 1.0 (overriding the engine's ``aux_weight``); the last
  pass is ``logits``. Aux terms of the base network itself (none of the registry models has any) are kept,
  named ``pass{p}_<name>``, with the base's own weights. In eval mode there is no aux.
- N = 1 is exactly the base network applied to the image with K zero planes, i.e. the plain 3-channel network
  whose first convolution is the first 3 input channels of the base's.
- ``return_attention=True`` adds ``attention["pass_probs"]``: (B, N, H, W), the maximum class probability of
  each pass (how sure each pass is, pixel by pixel; where it grows from pass to pass the refinement settled a
  pixel), plus the last pass's own attention maps of the base, named ``base_<name>``.

``forward_parts`` / ``upsample_scores`` keep the base-class defaults: the final full-resolution logits are the
score grid (a coarse grid of the last pass would not carry the earlier passes' work).
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn

from .base import SegmentationModel

PLANES = ("softmax", "log_softmax", "logits")


class RecurrentRefinement(SegmentationModel):
    """Args:
        base: a ``SegmentationModel`` with ``num_classes`` K that takes ``image_channels + K`` input channels.
        passes: N >= 1 applications of ``base`` (shared weights).
        detach: stop gradients between passes (default False: full BPTT as in the paper).
        planes: what is fed to the next pass: 'softmax' (default), 'log_softmax' or 'logits'.
        image_channels: channels of the images (3).

    ``forward(images (B, 3, H, W))`` -> ``{"logits": (B, K, H, W) of pass N, "aux": {"pass1": ..., ...}}``
    (aux only in training mode, with ``aux_weights`` 1.0); ``return_attention=True`` adds ``"pass_probs"``
    (B, N, H, W), see the module docstring.
    """

    def __init__(self, base: SegmentationModel, passes: int = 2, detach: bool = False, planes: str = "softmax",
                 image_channels: int = 3):
        super().__init__()
        if not isinstance(passes, int) or isinstance(passes, bool) or passes < 1:
            raise ValueError(f"recurrent refinement needs passes >= 1 (an integer), not {passes!r}")
        if planes not in PLANES:
            raise ValueError(f"planes={planes!r} unknown; choose one of {', '.join(PLANES)}")
        self.base, self.passes, self.detach, self.planes = base, passes, bool(detach), planes
        self.num_classes = base.num_classes
        self.image_channels = image_channels

    def extra_repr(self) -> str:
        return f"passes={self.passes}, detach={self.detach}, planes={self.planes!r}"

    def label_planes(self, logits: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(B, K, H, W) logits of one pass -> the (B, K, H, W) planes the next pass reads."""
        if self.detach:
            logits = logits.detach()
        if self.planes == "softmax":
            planes = torch.softmax(logits.float(), dim=1)
        elif self.planes == "log_softmax":
            planes = F.log_softmax(logits.float(), dim=1)
        else:
            planes = logits
        return planes.to(dtype)

    def forward(self, images: torch.Tensor, return_attention: bool = False) -> dict:
        if images.dim() != 4 or images.shape[1] != self.image_channels:
            raise ValueError(f"expected images of shape (B, {self.image_channels}, H, W), got {tuple(images.shape)}")
        B, _, H, W = images.shape
        planes = images.new_zeros(B, self.num_classes, H, W)   # pass 1 reads zero planes
        aux, aux_weights, pass_probs = {}, {}, []
        out = None
        for p in range(1, self.passes + 1):
            last = p == self.passes
            out = self.base(torch.cat([images, planes], dim=1), return_attention=return_attention and last)
            logits = out["logits"]                              # (B, K, H, W)
            for name, a in (out.get("aux") or {}).items():      # the base's own deep supervision, if any
                aux[f"pass{p}_{name}"] = a
                if name in (out.get("aux_weights") or {}):
                    aux_weights[f"pass{p}_{name}"] = out["aux_weights"][name]
            if return_attention:
                with torch.no_grad():
                    pass_probs.append(torch.softmax(logits.float(), dim=1).amax(1))  # (B, H, W)
            if not last:
                aux[f"pass{p}"] = logits
                aux_weights[f"pass{p}"] = 1.0
                planes = self.label_planes(logits, images.dtype)
        attention = None
        if return_attention:
            attention = {"pass_probs": torch.stack(pass_probs, dim=1)}  # (B, N, H, W)
            for name, a in (out.get("attention") or {}).items():
                attention[f"base_{name}"] = a
        return self.output(logits, aux=aux, attention=attention, return_attention=return_attention,
                           aux_weights=aux_weights)


def _accepts_in_channels(builder) -> bool | None:
    """True / False when the builder's signature says whether it takes ``in_channels``; None when it takes
    ``**kwargs`` without naming it (only calling it tells)."""
    try:
        params = inspect.signature(builder).parameters
    except (TypeError, ValueError):
        return None
    if "in_channels" in params:
        return True
    return None if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()) else False


def recurrent_refinement(num_classes: int, base: str = "fcn8s_resnet18", passes: int = 2,
                         base_kwargs: dict | None = None, detach: bool = False,
                         planes: str = "softmax") -> RecurrentRefinement:
    """Pinheiro & Collobert's recurrent refinement over the registry model ``base`` (built with
    ``in_channels = 3 + num_classes`` and ``base_kwargs``), applied ``passes`` times with shared weights."""
    from . import MODELS, create_model  # here: the registry imports this module

    base_kwargs = dict(base_kwargs or {})
    clash = sorted({"num_classes", "in_channels"} & set(base_kwargs))
    if clash:
        raise ValueError(f"base_kwargs must not set {clash}: recurrent refinement sets them "
                         f"(in_channels = 3 + num_classes)")
    if base in MODELS and _accepts_in_channels(MODELS[base]) is False:
        raise ValueError(f"base model {base!r} does not accept in_channels, so it cannot read the image plus "
                         f"{num_classes} label planes; recurrent refinement needs a base whose builder takes "
                         "in_channels (e.g. fcn8s_resnet18, deeplab_largefov_vgg16, deconvnet_vgg16)")
    try:
        model = create_model(base, num_classes, in_channels=3 + num_classes, **base_kwargs)
    except (TypeError, KeyError) as e:   # create_model may report an unknown keyword as a KeyError
        if "in_channels" not in str(e):
            raise
        raise ValueError(f"base model {base!r} does not accept in_channels ({e}); recurrent refinement needs a "
                         "base whose builder takes in_channels") from e
    if not isinstance(model, nn.Module) or getattr(model, "num_classes", None) != num_classes:
        raise ValueError(f"base model {base!r} did not build a SegmentationModel with {num_classes} classes")
    return RecurrentRefinement(model, passes=passes, detach=detach, planes=planes)
