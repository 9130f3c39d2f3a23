"""The Python API for instance models (``task = "instances"``): what :func:`attnseg.load` returns for them.

    import attnseg
    predictor = attnseg.load("runs/dsb2018_unet_watershed")
    result = predictor.predict("nuclei.png")
    result.ids                  # (H, W) int32 instance map: 0 background, 1..N the instances
    result.instances            # [{"id", "label", "score", "box", "area"}], one per instance
    result.to_torchvision()     # {"boxes", "labels", "scores", "masks"} tensors (DESIGN.md)
    result.overlay()            # colours and outlines on the image
    result.save("out/nuclei")   # _instances.png (16-bit), _overlay.png, _instances.json (boxes, scores, RLE masks)
    predictor.predict(image, attention=True).attention.pictures()   # the model's maps (foreground, boundary, ...)

It runs ``engine.instance_inference.infer_instances``, the function validation and ``attnseg eval`` use: a whole
image up to ``max_side`` pixels, tiles with overlap and merging above it. An ONNX export holds the network only
(its dense maps); the post-processing (watershed, mean shift) runs here in NumPy on the exported maps.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .api import CheckpointInfo


@dataclass
class InstanceAttention:
    """The model's dense maps of one image (``InstanceModel.attention_maps``) as pictures."""
    maps: dict = field(repr=False)
    image: np.ndarray = field(repr=False)
    ids: np.ndarray = field(repr=False)
    #: recurrent models (Ren & Zemel): {"maps": the model's per-step maps, "kept": steps kept}, drawn step by step
    sequence: dict | None = field(default=None, repr=False)
    #: proposal models (MNC): pictures of the regions considered (proposals, kept boxes), drawn by the model
    regions: list = field(default_factory=list, repr=False)
    needs_query = False

    def pictures(self, query=None, query_only: bool = False):
        """``(list of Picture, notes)``: each map as a heat map on the image, and the instances in colour."""
        from .viz.instances import instance_picture
        from .viz.overlay import blend_heatmap
        from .viz.pictures import Picture
        no_query = "instance models have no per-pixel attention; their maps do not depend on a query pixel"
        if query_only:
            return [], [no_query]
        pics = []
        for name, m in self.maps.items():
            title = {"fg": "foreground probability", "boundary": "boundary probability"}.get(
                name, name.replace("_", " "))
            pics.append(Picture(f"attn_{name}", title, blend_heatmap(self.image, np.asarray(m, np.float32))))
        if self.sequence is not None:
            from .viz.recurrent_steps import step_pictures
            kept = self.sequence["kept"]
            strip, gif = step_pictures(self.image, self.sequence["maps"], self.ids, kept)
            pics.append(Picture("steps", f"the sequence: {kept} steps kept (box, glimpse, mask, canvas, score)",
                                strip, animation=gif))
        pics.extend(self.regions)
        count = len(np.unique(self.ids)) - 1
        pics.append(Picture("instance_colours", f"{count} instances", instance_picture(self.ids)))
        return pics, ([no_query] if query else [])


@dataclass
class InstanceResult:
    """The instances found in one image.

    Attributes:
        image: (H, W, 3) uint8 input; ids: (H, W) int32 instance map; scores: {id: confidence in [0, 1]};
        class_names: the instance classes; classes: {id: class 1..K} (absent ids, and every id of a one-class
        model, are class 1);
        attention: :class:`InstanceAttention` when asked for; timing_ms: {"forward", "group", "total"};
        inference: what ran (whole image or tiles); notes: sentences about what was decided.
    """
    image: np.ndarray = field(repr=False)
    ids: np.ndarray = field(repr=False)
    scores: dict = field(repr=False)
    class_names: list = field(default_factory=lambda: ["object"])
    classes: dict = field(default_factory=dict, repr=False)
    attention: InstanceAttention | None = None
    timing_ms: dict = field(default_factory=dict)
    inference: str = ""
    model: str = ""
    notes: list = field(default_factory=list)
    kind = "instance"

    @property
    def count(self) -> int:
        return len(self.instances)

    @property
    def instances(self) -> list[dict]:
        """Per instance, in id order: ``{"id", "label" (class index, 1-based), "class", "score", "box" [x0, y0, x1,
        y1) (x1, y1 exclusive), "area"}`` (one pass over the id map; no per-instance masks)."""
        from .data.instances import instance_boxes
        keys, slices, areas = instance_boxes(self.ids)
        labels = [int(self.classes.get(int(k), 1)) for k in keys]
        return [{"id": int(k), "label": c, "class": self.class_names[c - 1],
                 "score": float(self.scores.get(int(k), 1.0)),
                 "box": [float(sx.start), float(sy.start), float(sx.stop), float(sy.stop)], "area": int(a)}
                for k, (sy, sx), a, c in zip(keys, slices, areas, labels)]

    def to_torchvision(self) -> dict:
        """torchvision's form: ``boxes`` (N, 4) float32 xyxy, ``labels`` (N,) int64, ``scores`` (N,) float32,
        ``masks`` (N, H, W) bool."""
        from .data.instances import to_torchvision
        tv = to_torchvision(self.ids, self.classes)
        return {"boxes": torch.from_numpy(tv["boxes"]), "labels": torch.from_numpy(tv["labels"]),
                "scores": torch.tensor([self.scores.get(int(k), 1.0) for k in tv["ids"]], dtype=torch.float32),
                "masks": torch.from_numpy(tv["masks"])}

    def overlay(self, alpha: float = 0.45, outline: bool = True) -> np.ndarray:
        from .viz.instances import instance_overlay
        return instance_overlay(self.image, self.ids, alpha, outline)

    def to_json(self) -> dict:
        """JSON-ready: the image size, the classes, and per instance its id, class, score, box, area and COCO
        uncompressed RLE mask (``{"size": [H, W], "counts": [...]}``, column-major; ``pycocotools.mask.frPyObjects``
        reads it)."""
        from .viz.instances import rle_encode
        H, W = self.ids.shape
        rows = self.instances
        for r in rows:                                      # each mask encoded from its box crop
            x0, y0, x1, y1 = (int(v) for v in r["box"])
            r["mask"] = rle_encode(self.ids[y0:y1, x0:x1] == r["id"], (y0, x0), (H, W))
        return {"kind": "instance", "model": self.model, "height": H, "width": W, "classes": self.class_names,
                "count": len(rows), "inference": self.inference, "instances": rows}

    def save(self, prefix: str | Path) -> list[Path]:
        """Writes ``<prefix>_instances.png`` (16-bit grey PNG: pixel = instance id, as DSB2018's labels),
        ``<prefix>_overlay.png`` and ``<prefix>_instances.json``."""
        from PIL import Image
        if self.ids.max(initial=0) > 65535:
            raise ValueError(f"{int(self.ids.max())} instances do not fit a 16-bit PNG (65535 at most)")
        prefix = Path(prefix)
        png, ov, js = (Path(f"{prefix}_instances.png"), Path(f"{prefix}_overlay.png"),
                       Path(f"{prefix}_instances.json"))
        Image.fromarray(self.ids.astype(np.uint16)).save(png)
        Image.fromarray(self.overlay()).save(ov)
        js.write_text(json.dumps(self.to_json()) + "\n")
        return [png, ov, js]


class InstancePredictor(CheckpointInfo):
    """A loaded instance model. Build it with :func:`attnseg.load`; calls are serialised by a lock."""

    task = "instances"

    def __init__(self, model, meta: dict, *, device, precision, backend: str = "torch", source: str = "",
                 max_side: int | None = None, tile: int | None = None, overlap: int | None = None,
                 test_scale: float | None = None, post: dict | None = None):
        from .engine.instance_inference import InstanceInferenceConfig
        self._set_checkpoint(model, meta, device, precision, backend, source)
        saved = meta.get("inference") or {}
        self.inference = InstanceInferenceConfig(
            test_scale=float(test_scale if test_scale is not None else saved.get("test_scale", 1.0)),
            max_side=int(max_side if max_side is not None else saved.get("max_side", 1024)),
            tile=int(tile if tile is not None else saved.get("tile", 512)),
            overlap=int(overlap if overlap is not None else saved.get("overlap", 96)))
        c = self.inference
        if not c.test_scale > 0 or c.tile < 16 or not 0 <= c.overlap < c.tile or c.max_side < c.tile:
            raise ValueError(f"instance inference needs test_scale > 0, tile >= 16, 0 <= overlap < tile and "
                             f"max_side >= tile; got {c}")
        if post:
            (self.model.post if backend == "onnx" else self.model).set_post(**post)
        self.lock = threading.Lock()

    @property
    def post(self) -> dict:
        """The post-processing settings in force (thresholds of the watershed, mean-shift bandwidth, ...)."""
        return dict((self.model.post if self.backend == "onnx" else self.model).post)

    @property
    def class_names(self) -> list[str]:
        return list(self.spec.names[1:])

    def describe(self) -> dict:
        m = self.metrics
        return {"model": self.name, "task": "instances", "classes": self.classes,
                "palette": [list(c) for c in self.palette], "num_params": self.num_params, "backend": self.backend,
                "precision": self.precision.name, "device": str(self.device),
                "inference": self.inference.describe(),
                "metrics": {k: m[k] for k in ("DSB", "AP", "AP50", "SBD", "|DiC|")
                            if isinstance(m.get(k), (int, float))},
                "step": self.meta.get("step"), "data": (self.meta.get("config") or {}).get("data"),
                "post": self.post, "attention": True}

    def predict(self, x, *, attention: bool = False, probs: bool = False, query=None):
        """One picture (-> :class:`InstanceResult`) or several (a list or a (B, 3, H, W) tensor -> list). Inputs
        as for semantic models (path, PIL image, uint8 array, tensor). ``attention``: the model's dense maps as
        pictures (foreground, boundary, embedding components). ``probs`` and ``query`` are accepted for a uniform
        call and have no effect on instance models."""
        from .api import as_images
        images, many = as_images(x)
        results = [self._predict_one(im, attention) for im in images]
        return results if many else results[0]

    def _predict_one(self, image: np.ndarray, want_attention: bool) -> InstanceResult:
        from .engine.instance_inference import infer_instances
        t0 = time.perf_counter()
        H, W = image.shape[:2]
        if H < 1 or W < 1:
            raise ValueError(f"the image is {W}x{H}: it has no pixels")
        x = self.normalize(image)
        notes = []
        with self.lock:
            res = infer_instances(self.model, x, self.inference, self.precision, return_maps=want_attention)
        if res["tiles"] > 1:
            notes.append(f"{W}x{H} exceeds {self.inference.max_side} px: predicted in {res['tiles']} tiles of "
                         f"{self.inference.tile} px (overlap {self.inference.overlap}) and merged")
        if res["classes"] is None and len(self.class_names) > 1:
            notes.append("the tiles' instances were merged without their classes: every instance is reported as "
                         f"{self.class_names[0]}; raise max_side to predict the image whole")
        result = InstanceResult(image=image, ids=res["ids"], scores=res["scores"], class_names=self.class_names,
                                classes=res["classes"] or {}, inference=self.inference.describe(), model=self.name,
                                notes=notes)
        if want_attention:
            if res.get("maps") is None:
                notes.append("the maps are drawn from one whole-image pass, which tiling replaced for this image")
            else:
                # blend_heatmap resizes a map made at another test scale to the image
                maps = res["maps"]
                result.attention = InstanceAttention(self.model.attention_maps(maps), image, res["ids"],
                                                     self.model.sequence(maps),
                                                     self.model.region_pictures(image, maps, res["ids"],
                                                                                self.class_names))
        result.timing_ms = {**res["timing_ms"], "inference": res["timing_ms"]["forward"] + res["timing_ms"]["group"],
                            "total": 1000 * (time.perf_counter() - t0)}
        return result

    def __repr__(self) -> str:
        return f"InstancePredictor({self.name}, {self.class_names}, {self.backend}, {self.inference.describe()})"



class OnnxInstanceModel:
    """An exported instance model (``attnseg export``: the network's dense maps, concatenated) run by onnxruntime,
    with the post-processing of the model class named in its metadata (watershed, mean shift) in NumPy. Callable
    like the PyTorch model by ``engine.instance_inference``."""

    training = False
    task = "instances"

    def __init__(self, onnx_model):
        from .models import create_model
        meta = onnx_model.meta
        kwargs = dict(meta.get("model_kwargs") or {})
        # the class holds the post-processing settings; its weights are not used (the network runs in onnxruntime)
        self.post = create_model(meta["model"], num_classes=len(meta["classes"]["names"]) - 1, **kwargs)
        self.onnx = onnx_model

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def __call__(self, images: torch.Tensor) -> dict:
        return self.post.unflat_maps(self.onnx(images)["logits"])

    def dense(self, out: dict, b: int = 0):
        return self.post.dense(out, b)

    def group(self, maps):
        return self.post.group(maps)

    def attention_maps(self, maps):
        return self.post.attention_maps(maps)

    def sequence(self, maps):
        return self.post.sequence(maps)

    def instance_classes(self, maps, ids):
        return self.post.instance_classes(maps, ids)

    def region_pictures(self, image, maps, ids, class_names=()):
        return self.post.region_pictures(image, maps, ids, class_names)
