"""Classification inference shared by validation during training, ``attnseg eval``, ``attnseg predict``, the Python
API and the web page: one function from images to class probabilities (and, when asked, the model's glimpses).

Classifiers see grey images in [0, 1] at their training size (``meta["inference"]["input_size"]``): ``prepare``
converts any image (RGB, RGBA, grey, any size) to that, the single preprocessing of every caller.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from ..metrics.classification import confusion, summary


def prepare(image: np.ndarray, size: tuple[int, int] | None) -> torch.Tensor:
    """(H, W) or (H, W, C) uint8 / float image -> (1, h, w) float32 in [0, 1] at ``size`` (area resampling when
    shrinking, bilinear when enlarging; None keeps the size). Colour is averaged to grey (ITU-R 601 weights)."""
    a = np.asarray(image)
    if a.ndim == 3:                                                       # (H, W, C): grey from RGB, or channel 0
        a = a[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) if a.shape[-1] >= 3 \
            else a[..., 0]
    if a.ndim != 2:
        raise ValueError(f"a classifier takes an (H, W) or (H, W, C) image, got shape {np.asarray(image).shape}")
    x = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    if np.asarray(image).dtype == np.uint8:
        x = x / 255.0
    x = x[None]                                                           # (1, H, W)
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        shrink = x.shape[-2] >= size[0] and x.shape[-1] >= size[1]
        x = F.interpolate(x[None], size=tuple(size), mode="area" if shrink else "bilinear",
                          align_corners=None if shrink else False)[0]
    return x.clamp(0, 1)


def classify(model, x: torch.Tensor, precision=None, glimpses: bool = False) -> dict:
    """x (B, C, H, W) -> {"probs": (B, K) float32, "glimpses": [per image: the model's steps] (with ``glimpses``),
    "timing_ms": {"forward"}}. The model runs in eval mode (deterministic glimpses) and is put back."""
    device = precision.device if precision else torch.device("cpu")
    was = model.training
    model.eval()
    t0 = time.perf_counter()
    try:
        batch = x.to(device)
        with torch.no_grad(), (precision.autocast() if precision else torch.autocast("cpu", enabled=False)):
            out = model(batch)
        probs = torch.softmax(out["logits"].float(), 1).cpu()
    finally:
        model.train(was)
    res = {"probs": probs, "timing_ms": {"forward": 1000 * (time.perf_counter() - t0)}}
    if glimpses:
        res["glimpses"] = [model.glimpses(out, b) for b in range(x.shape[0])]
    return res


def evaluate_classification(model, dataset, precision=None, limit: int | None = None, rank: int = 0,
                            world_size: int = 1, batch_size: int = 250, progress=None) -> dict:
    """Accuracy, error, per-class recall and the confusion matrix over ``dataset`` (or its first ``limit``
    samples). With several processes each rank takes every world_size-th sample and the matrices are summed."""
    n = len(dataset) if limit is None else min(limit, len(dataset))
    K = len(dataset.class_names)
    idx = list(range(rank, n, world_size))
    preds, targets = [], []
    t = time.perf_counter()
    for s in range(0, len(idx), batch_size):
        items = [dataset[i] for i in idx[s:s + batch_size]]
        x = torch.stack([it["image"] for it in items])
        if precision is not None and precision.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        probs = classify(model, x, precision)["probs"]
        preds.append(probs.argmax(1).numpy())
        targets.append(np.array([int(it["label"]) for it in items]))
        if progress is not None:
            progress(len(items))
    cm = confusion(np.concatenate(preds) if preds else [], np.concatenate(targets) if targets else [], K)
    if world_size > 1 and torch.distributed.is_initialized():
        device = precision.device if precision is not None else torch.device("cpu")   # NCCL reduces device tensors
        mat = torch.from_numpy(cm).to(device)
        torch.distributed.all_reduce(mat)
        cm = mat.cpu().numpy()
    out = summary(cm, dataset.class_names)
    out["s_per_sample"] = (time.perf_counter() - t) / max(len(idx), 1)
    return out
