"""The contract every instance model follows (DESIGN.md "Interfaces").

An instance model is split where export and batching need it:

- ``forward(images (B, 3, H, W))`` -> dict of dense maps at input resolution (logits, embeddings): the part that
  is a network, runs batched, autocasts, and exports to ONNX;
- ``loss(out, instances (B, H, W) int64) -> (loss, {name: part})``: the model owns its loss; 0 in ``instances``
  is background, every other value one instance (``attnseg.data.instances``);
- ``group(maps)``: one image's maps as numpy arrays (``dense(out)`` picks and activates them, batch index
  removed) -> (``ids`` (H, W) int32 instance map, ``scores`` {id: confidence in [0, 1]}): the post-processing
  (watershed, clustering), which stays on the CPU and outside ONNX;
- ``predict_instances(images)`` -> per image torchvision's form, ``boxes`` (N, 4) xyxy, ``labels`` (N,),
  ``scores`` (N,), ``masks`` (N, H, W) bool, plus ``ids`` (the id map the masks come from);
- ``attention_maps(maps)`` -> name -> (H, W) float map for pictures (foreground, boundary, embedding PCA, ...).

``task = "instances"`` tells the engine, the CLI and the web page which path to take.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 − Dice of sigmoid(logits) against a {0, 1} target, over each image, averaged over the batch. (B, 1, H, W)."""
    p = torch.sigmoid(logits.float()).flatten(1)
    t = target.float().flatten(1)
    return (1 - (2 * (p * t).sum(1) + eps) / (p.sum(1) + t.sum(1) + eps)).mean()


def instance_scores(ids: np.ndarray, fg: np.ndarray) -> dict[int, float]:
    """{id: mean foreground probability over the instance's pixels}."""
    flat = ids.ravel()
    if flat.max(initial=0) == 0:
        return {}
    count = np.bincount(flat)
    total = np.bincount(flat, weights=np.asarray(fg, np.float64).ravel(), minlength=len(count))
    return {int(k): float(total[k] / count[k]) for k in np.nonzero(count)[0] if k != 0}


class InstanceModel(nn.Module):
    task = "instances"

    def map_channels(self) -> dict[str, int]:
        """name -> channels of the dense maps ``forward`` returns, in order (what ONNX export concatenates)."""
        raise NotImplementedError

    def flat_maps(self, out: dict) -> torch.Tensor:
        """The dense maps as one (B, C, H, W) tensor, channels in ``map_channels`` order."""
        return torch.cat([out[k] for k in self.map_channels()], 1)

    def unflat_maps(self, flat: torch.Tensor) -> dict:
        """The inverse of ``flat_maps`` (an exported file's output back to ``forward``'s dict)."""
        names, sizes = zip(*self.map_channels().items())
        if flat.shape[1] != sum(sizes):
            raise ValueError(f"expected {sum(sizes)} channels ({dict(zip(names, sizes))}), got {flat.shape[1]}")
        return dict(zip(names, torch.split(flat, list(sizes), 1)))

    def loss(self, out: dict, instances: torch.Tensor) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    #: the post-processing settings of ``group`` (thresholds, sizes), set by the builder's options
    post: dict

    def set_post(self, **settings) -> dict:
        """Change post-processing settings (e.g. ``seed_threshold=0.6``) without retraining; unknown names are
        refused with the valid ones. Returns the settings now in force."""
        unknown = sorted(set(settings) - set(self.post))
        if unknown:
            raise ValueError(f"{type(self).__name__} has no post-processing setting {', '.join(unknown)}; its "
                             f"settings: {', '.join(f'{k}={v}' for k, v in self.post.items())}")
        for k, v in settings.items():
            current = self.post[k]
            if isinstance(current, bool) and isinstance(v, str):
                v = v.strip().lower() in ("1", "true", "yes", "on")
            try:
                self.post[k] = type(current)(v)
            except (TypeError, ValueError):
                raise ValueError(f"post-processing setting {k}={v!r} is not a {type(current).__name__}") from None
        return dict(self.post)

    def dense(self, out: dict, b: int = 0) -> dict[str, np.ndarray]:
        """Image b's activated maps as float32 numpy arrays: (H, W) for one channel, (C, H, W) for several."""
        raise NotImplementedError

    def group(self, maps: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[int, float]]:
        raise NotImplementedError

    def attention_maps(self, maps: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: v for k, v in maps.items() if v.ndim == 2}

    def sequence(self, maps: dict[str, np.ndarray]) -> dict | None:
        """Models that find instances step by step: {"maps": maps, "kept": steps kept} for the step pictures."""
        return None

    #: models that teacher-force the ground truth take ``forward(images, targets=instances)`` in training
    uses_targets = False
    #: models that classify their instances also take ``classes=`` (B, H, W), the class 1..K of each instance pixel
    uses_classes = False

    def instance_classes(self, maps: dict[str, np.ndarray], ids: np.ndarray) -> dict[int, int]:
        """{id: class 1..K} of the instances ``group(maps)`` returned as ``ids``; {} = every instance class 1."""
        return {}

    def region_pictures(self, image: np.ndarray, maps: dict[str, np.ndarray], ids: np.ndarray,
                        class_names=()) -> list:
        """Pictures of the regions a proposal model considered (``viz.pictures.Picture``), labelled with
        ``class_names`` (class k is ``class_names[k - 1]``); none by default."""
        return []

    def set_training_step(self, step: int) -> None:
        """The trainer's step before each forward (schedules such as scheduled sampling); nothing by default."""

    @torch.no_grad()
    def predict_instances(self, images: torch.Tensor) -> list[dict]:
        from ..data.instances import to_torchvision
        was = self.training
        self.eval()
        try:
            out = self(images)
        finally:
            self.train(was)
        results = []
        for b in range(images.shape[0]):
            maps = self.dense(out, b)
            ids, scores = self.group(maps)
            tv = to_torchvision(ids, self.instance_classes(maps, ids))
            results.append({"boxes": torch.from_numpy(tv["boxes"]), "labels": torch.from_numpy(tv["labels"]),
                            "scores": torch.tensor([scores.get(int(k), 1.0) for k in tv["ids"]], dtype=torch.float32),
                            "masks": torch.from_numpy(tv["masks"]), "ids": torch.from_numpy(ids)})
        return results


def _max_pool3(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(x, 3, stride=1, padding=1)


def boundary_target(instances: torch.Tensor) -> torch.Tensor:
    """(B, H, W) instance ids -> (B, H, W) bool: the instance pixels next to (3x3) another id or the background,
    and the background pixels between two instances (a gap of one or two pixels between touching nuclei)."""
    ids = instances.float()[:, None]                                     # (B, 1, H, W); ids < 2^24 are exact
    big = 1e9
    mx = _max_pool3(ids)
    mn_all = -_max_pool3(-ids)
    mn_pos = -_max_pool3(-torch.where(ids > 0, ids, torch.full_like(ids, big)))
    edge = (ids > 0) & (mx != mn_all)
    gap = (ids == 0) & (mn_pos < big) & (mx != mn_pos)
    return (edge | gap)[:, 0]
