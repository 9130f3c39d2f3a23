"""Segmentation-aware networks: any registered network with its convolutions gated by local attention masks, and
the segmentation-aware CRF as a refinement stage on any network's logits.

Harley, Derpanis, Kokkinos, "Segmentation-Aware Convolutional Networks Using Local Attention Masks", ICCV 2017,
https://arxiv.org/abs/1708.04607. Official code (Caffe): https://github.com/aharley/segaware
(``config/vgg/train.prototxt``: every convolution of DeepLab-LargeFOV made segmentation-aware;
``config/res/train.prototxt``: DeepLab-v2 ResNet-101 with the segmentation-aware CRF; METHODS.md §1.7).

``SegAwareNet(base)``:

    e = EmbeddingHead(image)                              (B, 64, H, W), the hypercolumn embedding (§1.3)
    for every stride-1 k×k convolution of ``base`` (k > 1; conv1_1 on the image included):
        e_l = interp(e, size of the layer's input)         the embedding bilinearly shrunk to the layer (§1.5)
        m = exp(-|λ_l| d(e_l))                            Eq. 3, one λ per layer (init 0.05), the conv's window
        y = segaware_conv2d(x, m, W, b)                   Eq. 5 (unnormalised as in the VGG config, or normalised)
    logits = base's head as before
    [logits = SegAwareCRF(logits, e)]                     optional mean-field stage (§1.7(b))

Strided convolutions (ResNet's stem and its stage transitions) stay plain: the paper's seg-aware layers are all
stride 1 and pooling does the downsampling. The distances of a window are computed once per resolution and
window and shared by the layers there; only the exponent's λ differs per layer.

``SegAwareRefiner(base)``: the base network's logits, an embedding head and the CRF, ``logits = CRF(base(x), e)``.
The base can be frozen (loaded from a trained run's weights) so that only the embedding and the CRF train.

In training mode both return ``"embedding"`` (B, D, H, W) beside the logits; the loss adds the embedding loss
(Eq. 1-2) on it when its weight is non-zero (``embedding_weight``). The released VGG config trains the embedding
only through the segmentation loss, after pretraining it with the embedding loss alone; with a short budget from
scratch the side loss is what makes the embedding separate the segments.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.embedding_head import EmbeddingHead
from ..nn.local_attention_mask import inside, window_distances
from ..nn.pretrained import read_state_dict
from ..nn.segaware_conv import segaware_conv2d
from ..nn.segaware_crf import SegAwareCRF
from .base import SegmentationModel


def _size_key(size) -> tuple:
    """A cache key of a (h, w) size: the ints, or, for the symbolic sizes of an export trace (unhashable), their
    expressions."""
    return tuple(n if isinstance(n, int) else str(n) for n in size)


class EmbeddingContext:
    """The embedding of the current forward pass, shared by every segmentation-aware layer of one network.
    ``distances(size, k, d)`` caches the window distances of the embedding resized to ``size`` (B, k², h, w).
    When ``record`` is a dict, every layer stores its mask there (for drawing)."""

    def __init__(self, distance: str = "l1"):
        self.distance = distance
        self.e: torch.Tensor | None = None
        self.record: dict | None = None
        self._cache: dict = {}

    def set(self, e: torch.Tensor | None, record: dict | None = None):
        self.e, self.record, self._cache = e, record, {}

    def resized(self, size) -> torch.Tensor:
        size = tuple(size)
        key = ("e", _size_key(size))
        if key not in self._cache:
            e = self.e
            if tuple(e.shape[-2:]) != size:  # feature i at input pixel stride·i: corner-aligned, as Caffe's Interp
                e = F.interpolate(e, size=size, mode="bilinear", align_corners=True)   # (B, D, h, w)
            self._cache[key] = e
        return self._cache[key]

    def distances(self, size, kernel_size: int, dilation: int) -> torch.Tensor:
        key = (_size_key(size), kernel_size, dilation)
        if key not in self._cache:
            self._cache[key] = window_distances(self.resized(size), kernel_size, dilation, self.distance)
        return self._cache[key]                                                     # (B, k², h, w)

    def inside(self, size, kernel_size: int, dilation: int) -> torch.Tensor:
        """(1, k², h, w) bool: the window's tap lies inside the (h, w) grid."""
        key = ("inside", _size_key(size), kernel_size, dilation)
        if key not in self._cache:
            self._cache[key] = inside(*size, kernel_size, dilation, self.e.device)
        return self._cache[key]


class MaskedConv2d(nn.Conv2d):
    """A stride-1 "same" ``nn.Conv2d`` made segmentation-aware: its mask comes from the network's shared embedding.
    Parameter names are those of ``nn.Conv2d`` plus ``lam`` (λ), so plain weights load into it.

    ``remove_bounds``: out-of-image taps get mask 0 (``None``: when ``normalize``, METHODS.md §1.9.2). It changes
    only a normalised layer's output (Eq. 5's denominator then sums the taps inside the image); an unnormalised one
    reads the zero padding there whatever the mask."""

    def __init__(self, conv: nn.Conv2d, context: EmbeddingContext, init_lambda: float = 0.05,
                 normalize: bool = False, remove_bounds: bool | None = None):
        k, d = conv.kernel_size[0], conv.dilation[0]
        super().__init__(conv.in_channels, conv.out_channels, k, 1, conv.padding, conv.dilation,
                         bias=conv.bias is not None, device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            self.weight.copy_(conv.weight)
            if conv.bias is not None:
                self.bias.copy_(conv.bias)
        self.lam = nn.Parameter(torch.tensor(float(init_lambda)))
        self.normalize = normalize
        self.remove_bounds = normalize if remove_bounds is None else remove_bounds
        self._context = [context]   # a list: not a submodule, not in the state dict
        self.window = (k, d)
        self.layer_name = ""

    def mask(self, size) -> torch.Tensor:
        k, d = self.window
        m = torch.exp(-self.lam.abs() * self._context[0].distances(size, k, d))   # (B, k², h, w), Eq. 3, fp32
        if self.remove_bounds:
            m = m * self._context[0].inside(size, k, d)
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._context[0].e is None:
            raise RuntimeError("a segmentation-aware convolution ran without an embedding; call it through its "
                               "SegAwareNet, which sets the embedding of the image first")
        m = self.mask(x.shape[-2:])               # fp32; segaware_conv2d casts to its compute dtype
        if self._context[0].record is not None:
            k, d = self.window
            self._context[0].record[f"mask/{self.layer_name}/k{k}_d{d}"] = m.detach()
        return segaware_conv2d(x, m, self.weight, self.bias, self.dilation[0], self.normalize)


def convertible(conv: nn.Module) -> bool:
    """A stride-1, ungrouped, odd square convolution larger than 1x1 with "same" zero padding."""
    if type(conv) is not nn.Conv2d:
        return False
    k, d = conv.kernel_size, conv.dilation
    return (k[0] == k[1] and k[0] > 1 and k[0] % 2 == 1 and conv.stride == (1, 1) and conv.groups == 1
            and d[0] == d[1] and conv.padding == (d[0] * (k[0] // 2),) * 2 and conv.padding_mode == "zeros")


def make_segaware(module: nn.Module, context: EmbeddingContext, skip: tuple[str, ...] = (), **kwargs) -> list[str]:
    """Replace every convertible convolution inside ``module`` (except names starting with one of ``skip``) by a
    ``MaskedConv2d`` reading ``context``; returns the converted names."""
    done = []
    for name, child in list(module.named_modules()):
        for cname, conv in list(child.named_children()):
            full = f"{name}.{cname}" if name else cname
            if convertible(conv) and not full.startswith(skip):
                new = MaskedConv2d(conv, context, **kwargs)
                new.layer_name = full
                setattr(child, cname, new)
                done.append(full)
    return done


class SegAwareNet(SegmentationModel):
    """Args:
        base: the network to make segmentation-aware (a ``SegmentationModel``).
        embedding_dim, embedding_width: the embedding head's D (64) and channel multiplier.
        distance: "l1" (the VGG config) or "l2" (½ squared L2).
        init_lambda: λ's initial value per layer (0.05).
        normalize: Eq. 5's division by the mask's sum (the VGG config does not normalise).
        remove_bounds: out-of-image taps get mask 0, so that a normalised layer's border outputs average the taps
            inside the image only (METHODS.md §1.9.2). ``None`` (default): on when ``normalize``; off otherwise, as
            the VGG config's masks (distance 0 outside, where the zero padding silences the tap anyway).
        skip: names of convolutions to leave plain (e.g. ``("aux",)``).
        crf: add the segmentation-aware CRF on the logits; ``crf_kwargs`` go to ``SegAwareCRF``.

    ``forward(images)`` -> the base's dict with, in training, ``"embedding"`` (B, D, H, W) and, with ``crf``, the
    CRF's logits as ``"logits"`` and the base's as ``aux["unary"]`` (weight 1). ``return_attention=True`` adds
    ``attention["embedding"]`` (B, D, H, W) and, for every segmentation-aware layer,
    ``attention["mask/<layer>/k<k>_d<d>"]`` (B, k², h, w): its local attention masks on its own grid.
    """

    def __init__(self, base: SegmentationModel, embedding_dim: int = 64, embedding_width: float = 1.0,
                 distance: str = "l1", init_lambda: float = 0.05, normalize: bool = False,
                 remove_bounds: bool | None = None, skip=(), crf: bool = False, crf_kwargs: dict | None = None):
        super().__init__()
        self.num_classes = base.num_classes
        self.context = EmbeddingContext(distance)
        self.embedding = EmbeddingHead(embedding_dim, width=embedding_width)
        self.base = base
        self.segaware_layers = make_segaware(base, self.context, tuple(skip), init_lambda=init_lambda,
                                             normalize=normalize, remove_bounds=remove_bounds)
        if not self.segaware_layers:
            raise ValueError(f"{type(base).__name__} has no stride-1 k×k convolution to make segmentation-aware")
        self.crf = SegAwareCRF(self.num_classes, **(crf_kwargs or {})) if crf else None

    def forward(self, images: torch.Tensor, return_attention: bool = False) -> dict:
        e = self.embedding(images)                                          # (B, D, H, W)
        masks = {} if return_attention else None
        self.context.set(e if e.dtype == torch.float64 else e.float(), masks)   # masks in fp32 (fp64 stays)
        try:
            out = self.base(images)
        finally:
            self.context.set(None)
        logits, aux = out["logits"], dict(out.get("aux") or {})
        if self.crf is not None:
            if self.training:
                aux["unary"] = logits
            logits = self.crf(logits.float(), e.float())
        attention = {"embedding": e.detach(), **masks} if return_attention else None
        result = self.output(logits, aux, attention, return_attention, out.get("aux_weights"))
        if self.training:
            result["embedding"] = e
            if self.crf is not None:
                result.setdefault("aux_weights", {})["unary"] = 1.0
        return result


class SegAwareRefiner(SegmentationModel):
    """The segmentation-aware CRF as a refinement stage on any network's logits: ``logits = CRF(base(x), e(x))``.

    Args:
        base: the network whose logits are refined.
        base_weights: a weights file of ``base`` (a run's ``checkpoints/best.safetensors``), loaded strictly.
        freeze_base: keep the base fixed (eval mode, no gradients): only the embedding head and the CRF train.
        embedding_dim, embedding_width: the embedding head.
        crf_kwargs: ``SegAwareCRF`` options (``emb_scale``, windows, iterations, ``learnable``).
        train_crf: run the CRF in training (end to end). False trains the embedding alone with the embedding loss
            (the paper's first step; the training logits are then the base's), for a CRF with fixed parameters.

    In training mode the output has ``"embedding"`` for the embedding loss and, unless the base is frozen, the
    base's logits as ``aux["unary"]``.
    """

    def __init__(self, base: SegmentationModel, base_weights: str | None = None, freeze_base: bool = True,
                 embedding_dim: int = 64, embedding_width: float = 1.0, crf_kwargs: dict | None = None,
                 train_crf: bool = True):
        super().__init__()
        self.num_classes = base.num_classes
        self.base = base
        if base_weights:
            state = read_state_dict(base_weights)
            missing, unexpected = base.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise ValueError(f"{base_weights} does not hold the weights of {type(base).__name__}: "
                                 f"missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}; pass base= the "
                                 "model that run trained (its config.yaml names it)")
        self.freeze_base = freeze_base
        if freeze_base:
            base.requires_grad_(False)
            base.eval()                 # from the start: a new module is in training mode until .train()/.eval()
        self.embedding = EmbeddingHead(embedding_dim, width=embedding_width)
        self.crf = SegAwareCRF(self.num_classes, **(crf_kwargs or {}))
        self.train_crf = train_crf
        if not train_crf:
            self.crf.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_base:
            self.base.eval()    # frozen BN statistics and no dropout
        return self

    def forward(self, images: torch.Tensor, return_attention: bool = False) -> dict:
        if self.freeze_base:
            with torch.no_grad():
                unary = self.base(images)["logits"]
        else:
            unary = self.base(images)["logits"]
        e = self.embedding(images)                                           # (B, D, H, W)
        if self.training and not self.train_crf:
            logits = unary                                                   # the embedding loss alone trains
        else:
            logits = self.crf(unary.float(), e.float())
        aux = {"unary": unary} if self.training and not self.freeze_base and self.train_crf else {}
        attention = {"embedding": e.detach()} if return_attention else None
        result = self.output(logits, aux, attention, return_attention, {"unary": 1.0} if aux else None)
        if self.training:
            result["embedding"] = e
        return result


SEGAWARE_OPTIONS = ("embedding_dim", "embedding_width", "distance", "init_lambda", "normalize", "remove_bounds",
                    "skip")


def segaware(num_classes: int, base: str = "deeplab_largefov_vgg16_w05", base_kwargs: dict | None = None,
             crf: bool = False, crf_kwargs: dict | None = None, **kwargs) -> SegAwareNet:
    """``base`` (a registered model name) with every stride-1 convolution segmentation-aware. Keyword options
    other than ``SegAwareNet``'s go to the base (so a config's ``model_kwargs: {channels: 256}`` reaches it)."""
    from . import create_model
    own = {k: v for k, v in kwargs.items() if k in SEGAWARE_OPTIONS}
    net = create_model(base, num_classes, **{**{k: v for k, v in kwargs.items() if k not in own},
                                             **(base_kwargs or {})})
    return SegAwareNet(net, crf=crf, crf_kwargs=crf_kwargs, **own)


def segaware_crf(num_classes: int, base: str = "fcn8s_resnet18", base_kwargs: dict | None = None,
                 base_weights: str | None = None, crf_kwargs: dict | None = None, **kwargs) -> SegAwareRefiner:
    """The segmentation-aware CRF on the logits of ``base`` (a registered model name, optionally trained weights)."""
    from . import create_model
    net = create_model(base, num_classes, **(base_kwargs or {}))
    return SegAwareRefiner(net, base_weights=base_weights, crf_kwargs=crf_kwargs, **kwargs)
