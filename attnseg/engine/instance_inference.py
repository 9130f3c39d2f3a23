"""Instance inference shared by validation during training, ``attnseg eval``, ``attnseg predict``, the Python API and
the web page: one function from an image to an instance id map and per-instance scores.

- whole: the image (resized by ``test_scale`` when it is not 1) in one forward pass, grouped by the model's
  post-processing (``InstanceModel.group``);
- tiled: images with a side above ``max_side`` are cut into overlapping ``tile`` x ``tile`` tiles, each predicted
  and grouped alone, merged by ``instance_tiling`` (each instance kept from the tile whose core holds its
  centroid), so memory is bounded by the tile, not the slide. ``overlap`` should exceed the largest object.

``timing_ms`` separates the network (``forward``) from the post-processing (``group``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .instance_tiling import tiled_instances_scored


@dataclass
class InstanceInferenceConfig:
    test_scale: float = 1.0
    max_side: int = 1024          # images with a larger side (after test_scale) are tiled
    tile: int = 512
    overlap: int = 96

    def describe(self) -> str:
        s = f"whole up to {self.max_side} px, else tiles {self.tile} (overlap {self.overlap})"
        return s + (f", test_scale={self.test_scale:g}" if self.test_scale != 1.0 else "")


def _resize_ids(ids: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image
    if ids.shape == tuple(size):
        return ids
    return np.asarray(Image.fromarray(ids.astype(np.int32), mode="I").resize((size[1], size[0]), Image.NEAREST)
                      ).astype(np.int32)


def infer_instances(model, x: torch.Tensor, cfg: InstanceInferenceConfig | None = None, precision=None,
                    return_maps: bool = False) -> dict:
    """x: one normalised image (3, H, W) -> {"ids": (H, W) int32, "scores": {id: float}, "classes": {id: class
    1..K} from models that classify (``InstanceModel.instance_classes``; {} = every instance class 1; None when the
    image was tiled, whose merge does not carry classes), "timing_ms": {...}, "tiles": n, and with ``return_maps``
    "maps": the model's activated dense maps of the whole image (only when it was not tiled)}."""
    cfg = cfg or InstanceInferenceConfig()
    if x.dim() != 3 or x.shape[0] != 3:
        raise ValueError(f"infer_instances takes one (3, H, W) image, got shape {tuple(x.shape)}")
    device = precision.device if precision else torch.device("cpu")
    H, W = x.shape[-2:]
    was = model.training
    model.eval()
    timing = {"forward": 0.0, "group": 0.0}
    maps_out = None
    tiles = 0

    def run(t: torch.Tensor):
        nonlocal tiles
        tiles += 1
        t0 = time.perf_counter()
        batch = t[None].to(device)
        if precision is not None and precision.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), (precision.autocast() if precision else torch.autocast("cpu", enabled=False)):
            out = model(batch)
        maps = model.dense(out, 0)
        t1 = time.perf_counter()
        ids, scores = model.group(maps)
        timing["forward"] += (t1 - t0) * 1000
        timing["group"] += (time.perf_counter() - t1) * 1000
        return ids, scores, maps

    try:
        if cfg.test_scale != 1.0:
            size = (max(1, round(H * cfg.test_scale)), max(1, round(W * cfg.test_scale)))
            xs = F.interpolate(x[None].float(), size=size, mode="bilinear", align_corners=False)[0]
        else:
            xs = x
        h, w = xs.shape[-2:]
        if max(h, w) <= cfg.max_side:
            ids, scores, maps = run(xs)
            classes = model.instance_classes(maps, ids)
            maps_out = maps if return_maps else None
        else:
            arr = xs.permute(1, 2, 0).numpy()                                  # (h, w, 3) float, tiled by rows/cols

            def predict(tile_arr):
                ids_t, scores_t, _ = run(torch.from_numpy(np.ascontiguousarray(tile_arr)).permute(2, 0, 1))
                return ids_t, scores_t
            ids, scores = tiled_instances_scored(arr, predict, (cfg.tile, cfg.tile), cfg.overlap)
            classes = None   # the tiles' instances are renumbered by the merge; their classes are not carried
        if (h, w) != (H, W):
            ids = _resize_ids(ids, (H, W))
            present = set(np.unique(ids).tolist())
            scores = {k: v for k, v in scores.items() if k in present}
            classes = classes and {k: v for k, v in classes.items() if k in present}
    finally:
        model.train(was)
    result = {"ids": ids.astype(np.int32), "scores": scores, "classes": classes, "tiles": tiles,
              "timing_ms": {k: round(v, 2) for k, v in timing.items()}}
    if return_maps:
        result["maps"] = maps_out
    return result


def evaluate_instances(model, dataset, cfg: InstanceInferenceConfig | None = None, precision=None,
                       max_images: int | None = None, rank: int = 0, world_size: int = 1, progress=None,
                       with_ap: bool = True) -> tuple[dict, list[dict]]:
    """``infer_instances`` over ``dataset`` -> (summary: the means of ``metrics.instance.image_metrics``, COCO mask
    AP / AP50 / AP75 when pycocotools is installed, seconds per image; rows: one dict per image). With several
    processes each rank takes every world_size-th image and the rows are gathered."""
    from ..metrics.instance import InstanceMetrics, coco_mask_ap
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    metrics = InstanceMetrics()
    ap_inputs = []
    seconds = []
    multi_class = len(getattr(dataset, "class_names", ())) > 1
    for i in range(rank, n, world_size):
        item = dataset[i]
        t = time.perf_counter()
        res = infer_instances(model, item["image"], cfg, precision)
        seconds.append(time.perf_counter() - t)
        gt = item["instances"].numpy()
        row = metrics.update(res["ids"], gt, item["name"])
        row["seconds"] = seconds[-1]
        if with_ap:
            if multi_class:   # class-aware AP (mAP^r of SDS/MNC) beside the class-agnostic one
                ap_inputs.append((res["ids"], res["scores"], gt, res["classes"] or {}, dataset.instance_classes(i)))
            else:
                ap_inputs.append((res["ids"], res["scores"], gt))
        if progress is not None:
            progress(1)
    rows = metrics.rows
    if world_size > 1 and torch.distributed.is_initialized():
        gathered = [None] * world_size
        torch.distributed.all_gather_object(gathered, (rows, ap_inputs))
        rows = [r for part, _ in gathered for r in part]
        ap_inputs = [a for _, part in gathered for a in part]
        metrics.rows = rows
    summary = metrics.compute()
    summary["s_per_image"] = float(np.mean([r["seconds"] for r in rows])) if rows else math.nan
    if with_ap and ap_inputs:
        import importlib.util
        if importlib.util.find_spec("pycocotools") is None:
            summary["AP_note"] = "COCO AP needs pycocotools: pip install -e '.[instances]'"
        else:
            summary.update(coco_mask_ap(ap_inputs))
    return summary, rows
