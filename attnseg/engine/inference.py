"""Inference modes shared by validation during training, ``attnseg eval`` and ``attnseg predict``.

- whole: the image (optionally resized by ``test_scale``) in one forward pass;
- slide: windows of ``crop`` every ``stride`` (default 2/3 of the crop), batched, logits of overlapping
  windows averaged (mmsegmentation's ``slide`` mode); images smaller than the crop are padded;
- multi-scale + flip: the mode above at each of ``scales`` x ``test_scale`` and, with ``flip``, on the mirrored
  image; softmax probabilities averaged at the original resolution.

The result is always (B, K, H, W) at the input's resolution: the metric is computed against full-resolution labels.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from ..metrics import ConfusionMatrix


@dataclass
class InferenceConfig:
    mode: str = "whole"               # whole | slide
    crop: tuple | None = None         # slide window (H, W) at the network's input scale
    stride: tuple | None = None       # slide step; default 2/3 of crop
    scales: tuple = (1.0,)            # multiplied by test_scale
    flip: bool = False
    test_scale: float = 1.0
    window_batch: int = 4

    def describe(self) -> str:
        s = self.mode
        if self.mode == "slide":
            s += f"(crop={tuple(self.crop)}, stride={tuple(self.stride or self.default_stride())})"
        if self.test_scale != 1.0:
            s += f", test_scale={self.test_scale:g}"
        if tuple(self.scales) != (1.0,) or self.flip:
            s += f", scales={list(self.scales)}" + (", flip" if self.flip else "")
        return s

    def default_stride(self):
        return tuple(max(1, (2 * c) // 3) for c in self.crop)


def _forward(model, x, autocast, return_attention: bool = False):
    with autocast:
        if not return_attention:
            return model(x)["logits"].float()
        out = model(x, return_attention=True)
    return out["logits"].float(), out.get("attention") or {}


def slide_logits(model, x: torch.Tensor, crop, stride, num_classes: int, autocast, window_batch: int = 4):
    """(B, 3, H, W) -> (B, K, H, W) by overlapping windows (logits averaged where windows overlap)."""
    B, _, H, W = x.shape
    ch, cw = crop
    sh, sw = stride
    ph, pw = max(ch - H, 0), max(cw - W, 0)
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))
    Hp, Wp = x.shape[-2:]
    ys = list(range(0, max(Hp - ch, 0) + 1, sh))
    xs = list(range(0, max(Wp - cw, 0) + 1, sw))
    if ys[-1] + ch < Hp:
        ys.append(Hp - ch)
    if xs[-1] + cw < Wp:
        xs.append(Wp - cw)
    boxes = [(y, x0) for y in ys for x0 in xs]
    out = torch.zeros(B, num_classes, Hp, Wp, device=x.device)
    count = torch.zeros(1, 1, Hp, Wp, device=x.device)
    for i in range(0, len(boxes), window_batch):
        chunk = boxes[i:i + window_batch]
        windows = torch.cat([x[..., y:y + ch, x0:x0 + cw] for y, x0 in chunk])   # (n*B, 3, ch, cw)
        logits = _forward(model, windows, autocast).view(len(chunk), B, num_classes, ch, cw)
        for (y, x0), lg in zip(chunk, logits):
            out[..., y:y + ch, x0:x0 + cw] += lg
            count[..., y:y + ch, x0:x0 + cw] += 1
    return (out / count)[..., :H, :W]


def rescale(images: torch.Tensor, scale: float) -> torch.Tensor:
    """(B, C, H, W) resized by ``scale`` (bilinear; antialiased when shrinking, like the PIL resize of training)."""
    if scale == 1.0:
        return images
    H, W = images.shape[-2:]
    size = (max(1, round(H * scale)), max(1, round(W * scale)))
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=scale < 1)


@torch.no_grad()
def infer(model, images: torch.Tensor, cfg: InferenceConfig, num_classes: int, autocast=None,
          channels_last: bool = False, return_attention: bool = False):
    """(B, 3, H, W) normalised images -> (B, K, H, W) scores at input resolution (probabilities when several
    scales/flips are averaged, logits otherwise).

    With ``return_attention`` returns ``(scores, attention)``: the attention maps of the whole-image pass at scale
    ``test_scale`` without flip (the view the maps are drawn for; the same forward that gives its logits), or None
    where no such pass runs (sliding windows, or TTA scales without 1)."""
    autocast = autocast or contextlib.nullcontext()
    H, W = images.shape[-2:]
    views = [(s, f) for s in cfg.scales for f in ((False, True) if cfg.flip else (False,))]
    total, attention = None, None
    for s, flip in views:
        x = rescale(images.flip(-1) if flip else images, s * cfg.test_scale)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if cfg.mode == "whole" and return_attention and (s, flip) == (1.0, False):
            logits, attention = _forward(model, x, autocast, return_attention=True)
        elif cfg.mode == "whole":
            logits = _forward(model, x, autocast)
        elif cfg.mode == "slide":
            if cfg.crop is None:
                raise ValueError("slide inference needs a crop size (eval_crop / --crop)")
            logits = slide_logits(model, x, cfg.crop, cfg.stride or cfg.default_stride(), num_classes, autocast,
                                  cfg.window_batch)
        else:
            raise ValueError(f"inference mode {cfg.mode!r} unknown; choose whole or slide")
        if logits.shape[-2:] != (H, W):
            logits = F.interpolate(logits, size=(H, W), mode="bilinear", align_corners=False)
        if flip:
            logits = logits.flip(-1)
        if len(views) == 1:
            return (logits, attention) if return_attention else logits
        probs = logits.softmax(1)
        total = probs if total is None else total + probs
    return (total / len(views), attention) if return_attention else total / len(views)


# the estimate counts tensors only (no allocator slack, library scratch or interpreter): measured 0.67-1.0x of the
# real peak for most models, 1.4-2.4x where the CPU path computes attention in chunks that the meta run does not
# (benchmarks/memory_estimate.py); planned memory = MEMORY_SAFETY x estimate + MEMORY_OVERHEAD
MEMORY_SAFETY = 1.5
MEMORY_OVERHEAD = 64 * 1024 ** 2


def plan_memory(model, image_hw: tuple[int, int], cfg: InferenceConfig, num_classes: int, limit_bytes: float,
                fallback_crop: tuple[int, int] | None, meta_model=None) -> tuple[InferenceConfig, str | None]:
    """Keep an inference under ``limit_bytes``: estimate its memory first (``engine.memory``), switch a whole-image
    inference that would exceed the limit to sliding windows of ``fallback_crop``, and stop with the figures and
    the fix when even that does not fit. Returns (the config to use, a line saying what was decided or None)."""
    from .memory import format_bytes, inference_peak_bytes, meta_copy

    meta_model = meta_model if meta_model is not None else meta_copy(model)

    def need(c: InferenceConfig) -> float:
        return MEMORY_SAFETY * inference_peak_bytes(model, image_hw, c, num_classes, meta_model) + MEMORY_OVERHEAD

    whole = need(cfg)
    if whole <= limit_bytes:
        return cfg, None
    what = f"inference of a {image_hw[1]}x{image_hw[0]} image ({cfg.describe()}) needs about {format_bytes(whole)}"
    if cfg.mode == "whole" and fallback_crop:
        # one window at a time, of 512 px (few windows, little overlap) or the training crop where that is larger;
        # then of the training crop
        crops = dict.fromkeys([tuple(max(512, int(c)) for c in fallback_crop), tuple(int(c) for c in fallback_crop)])
        for crop in crops:
            slide = replace(cfg, mode="slide", crop=crop, stride=None, window_batch=1)
            need_slide = need(slide)
            if need_slide <= limit_bytes:
                return slide, (f"{what}, over the limit of {format_bytes(limit_bytes)}: using sliding windows "
                               f"instead ({slide.describe()}, about {format_bytes(need_slide)})")
    raise ValueError(f"{what}, over the limit of {format_bytes(limit_bytes)} (--max-memory); give a smaller "
                     "image, --mode slide with a smaller --crop, or a larger --max-memory if the machine has it")


class MemoryPlanner:
    """``plan_memory`` per image size, for a stream of images (``attnseg eval`` / ``predict``): each size is
    estimated once, on one meta copy of the model. ``planner(hw) -> (config, note)``; the note (what was decided,
    or None) comes with the first image of a size only."""

    def __init__(self, model, cfg: InferenceConfig, num_classes: int, limit_bytes: float,
                 fallback_crop: tuple[int, int] | None):
        from .memory import meta_copy
        self.model, self.cfg, self.num_classes = model, cfg, num_classes
        self.limit_bytes, self.fallback_crop = limit_bytes, fallback_crop
        self.meta_model = meta_copy(model)
        self.plans: dict[tuple[int, int], InferenceConfig] = {}

    def __call__(self, image_hw: tuple[int, int]) -> tuple[InferenceConfig, str | None]:
        hw = tuple(int(v) for v in image_hw)
        if hw in self.plans:
            return self.plans[hw], None
        self.plans[hw], note = plan_memory(self.model, hw, self.cfg, self.num_classes, self.limit_bytes,
                                           self.fallback_crop, self.meta_model)
        return self.plans[hw], note


@torch.no_grad()
def evaluate(model, dataset, cfg: InferenceConfig, precision=None, max_images: int | None = None,
             rank: int = 0, world_size: int = 1, progress=None, plan=None) -> tuple[dict, ConfusionMatrix]:
    """Runs ``infer`` over ``dataset`` (one image at a time, any size) and returns (metrics, confusion matrix).
    With several processes each rank takes every world_size-th image and the matrices are summed. ``plan``
    (optional, ``(H, W) -> InferenceConfig``) picks the config per image size, e.g. ``plan_memory``'s choice."""
    spec = dataset.spec
    device = precision.device if precision else torch.device("cpu")
    cm = ConfusionMatrix(spec.num_classes, spec.ignore_index)
    was_training = model.training
    model.eval()
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    indices = range(rank, n, world_size)
    for i in indices:
        item = dataset[i]
        x = item["image"][None].to(device)
        view_cfg = cfg if plan is None else plan(tuple(x.shape[-2:]))
        scores = infer(model, x, view_cfg, spec.num_classes, precision.autocast() if precision else None,
                       precision.channels_last if precision else False)
        cm.update(scores.argmax(1)[0].cpu(), item["label"])
        if progress is not None:
            progress(1)
    if world_size > 1 and torch.distributed.is_initialized():
        mat = cm.mat.to(device)
        torch.distributed.all_reduce(mat)
        cm.mat = mat.cpu()
    model.train(was_training)
    return cm.compute(), cm
