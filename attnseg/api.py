"""The Python API: load a trained model and predict on pictures. ``attnseg predict`` and ``attnseg serve`` are built
on it, so there is one inference path (that of ``attnseg eval`` and of validation during training).

    import attnseg
    predictor = attnseg.load("runs/camvid_fcn8s")        # a run directory, a .safetensors / last.pt, or a .onnx
    result = predictor.predict("street.png")             # a path, PIL image, HxWx3 uint8 array, tensor or a list
    result.ids                                           # (H, W) class ids
    result.classes, result.palette                       # the checkpoint's classes and colours
    result.overlay(alpha=0.5)                            # (H, W, 3) uint8 picture
    result.to_pipeline()                                 # [{"label", "score", "mask"}] as Hugging Face's pipeline
    predictor.predict(image, probs=True, attention=True, query=(120, 200)).attention.pictures()

The predictor applies the checkpoint's own preprocessing (normalisation, test scale) and inference mode (whole /
sliding window / multi-scale + flip, as saved at training time, unless overridden), keeps each inference under a
memory limit (``max_memory_gb``: a whole-image inference estimated above it runs in sliding windows, or is refused
with the figure), and runs under the precision that ``precision`` resolves to on this machine (``auto``: bf16 on a
CPU with native bf16 or on CUDA, fp32 elsewhere).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .data.labels import LabelSpec

DEFAULT_MAX_MEMORY_GB = 8.0


def memory_limit_bytes(max_memory_gb: float | None = None) -> float:
    """``max_memory_gb`` (GiB), else ``$ATTNSEG_MAX_MEMORY_GB``, else 8 GiB; in bytes."""
    if max_memory_gb is not None:
        if not float(max_memory_gb) > 0:
            raise ValueError(f"max_memory_gb={max_memory_gb!r} must be a number of GiB > 0")
        return float(max_memory_gb) * 1024 ** 3
    env = os.environ.get("ATTNSEG_MAX_MEMORY_GB")
    if env:
        try:
            value = float(env)
            if not value > 0:
                raise ValueError
        except ValueError:
            raise ValueError(f"ATTNSEG_MAX_MEMORY_GB={env!r} is not a number of GiB > 0") from None
        return value * 1024 ** 3
    return DEFAULT_MAX_MEMORY_GB * 1024 ** 3


# -- inputs --------------------------------------------------------------------------------------------------------
def _describe(x) -> str:
    if isinstance(x, (np.ndarray, torch.Tensor)):
        return f"{type(x).__name__} of shape {tuple(x.shape)} and dtype {x.dtype}"
    return type(x).__name__


def as_image(x) -> np.ndarray:
    """One picture -> (H, W, 3) uint8 RGB.

    Accepts a file path (str or Path), a PIL image (any mode; converted to RGB), an (H, W, 3) uint8 array (also
    (H, W) grey and (H, W, 4) RGBA: grey is repeated, alpha dropped), or a (3, H, W) tensor: uint8 0..255, or float
    RGB in [0, 1] (torchvision's ``to_tensor`` convention)."""
    from PIL import Image

    from .data.io import read_image
    if isinstance(x, (str, Path)):
        return read_image(x)
    if isinstance(x, Image.Image):
        return np.asarray(x.convert("RGB"))
    if isinstance(x, torch.Tensor):
        if x.dim() != 3 or x.shape[0] != 3:
            raise ValueError(f"an image tensor must be (3, H, W) (or (B, 3, H, W) for a batch), got {_describe(x)}")
        x = x.detach().cpu()
        if x.dtype == torch.uint8:
            return x.permute(1, 2, 0).contiguous().numpy()
        if not x.is_floating_point():
            raise ValueError(f"an image tensor must be uint8 (0..255) or float (0..1), got {_describe(x)}")
        lo, hi = float(x.min()), float(x.max())
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"a float image tensor holds RGB in [0, 1] (torchvision's to_tensor convention); this "
                             f"one holds values from {lo:g} to {hi:g}: divide 0..255 values by 255, or pass a uint8 "
                             "tensor")
        return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    if isinstance(x, np.ndarray):
        if x.dtype != np.uint8:
            raise ValueError(f"an image array must be uint8 (0..255), got {_describe(x)}; convert floats in [0, 1] "
                             "with (a * 255).round().astype(np.uint8)")
        if x.ndim == 2:
            x = np.repeat(x[..., None], 3, axis=2)
        elif x.ndim == 3 and x.shape[2] == 4:
            x = x[..., :3]
        if x.ndim != 3 or x.shape[2] != 3:
            raise ValueError(f"an image array must be (H, W, 3) RGB (or (H, W) grey, (H, W, 4) RGBA), got "
                             f"{_describe(x)}")
        return np.ascontiguousarray(x)
    raise TypeError(f"cannot predict on a {_describe(x)}; give a file path, a PIL image, an (H, W, 3) uint8 array, "
                    "a (3, H, W) or (B, 3, H, W) tensor, or a list of these")


def as_images(x) -> tuple[list[np.ndarray], bool]:
    """Inputs -> (list of (H, W, 3) uint8 images, whether a list of results is returned)."""
    if isinstance(x, (list, tuple)):
        if not x:
            raise ValueError("an empty list of images was given")
        return [as_image(v) for v in x], True
    if isinstance(x, torch.Tensor) and x.dim() == 4:
        return [as_image(v) for v in x], True
    return [as_image(x)], False


# -- results -------------------------------------------------------------------------------------------------------
@dataclass
class Attention:
    """The attention maps of one image, and their pictures (``attnseg.viz.pictures``).

    ``maps``: name -> tensor of the model's ``return_attention=True`` output, with its batch dimension of 1 (each
    model documents its names and shapes)."""
    maps: dict
    image: np.ndarray = field(repr=False)
    ids: np.ndarray = field(repr=False)
    spec: LabelSpec = field(repr=False)
    model_name: str = ""
    scales: tuple | None = None

    @property
    def needs_query(self) -> bool:
        """Whether some maps are drawn per query pixel (FLANet family, segmentation-aware masks)."""
        from .viz.pictures import needs_query
        return needs_query(self.maps)

    def pictures(self, query=None, query_only: bool = False):
        """``(list of Picture, notes)`` for a query pixel (y, x), a list of them, or None (the image centre)."""
        from .viz.pictures import attention_pictures
        return attention_pictures(self.maps, self.image, self.ids, self.spec, scales=self.scales,
                                  queries=_queries(query), query_only=query_only, model_name=self.model_name)


def _queries(query) -> list[tuple[int, int]]:
    if query is None:
        return []
    if len(query) == 2 and all(isinstance(v, (int, np.integer)) for v in query):
        return [(int(query[0]), int(query[1]))]
    return [(int(q[0]), int(q[1])) for q in query]


@dataclass
class Result:
    """The prediction of one image.

    Attributes:
        image: (H, W, 3) uint8, the input as the model saw it before normalisation.
        ids: (H, W) uint8 class ids (int32 for more than 256 classes).
        probs: (K, H, W) float32 class probabilities, when asked for (``probs=True``), else None.
        attention: :class:`Attention`, when asked for (``attention=True``), else None.
        spec: the checkpoint's LabelSpec (``classes``, ``palette``).
        confidence: (K,) mean probability of class k over the pixels predicted as k (NaN where none).
        timing_ms: {"inference": model time, "total": with pre- and post-processing}.
        inference: the inference mode that ran (``whole``, ``slide(...)``, scales, ...).
        notes: sentences about what was decided (a memory plan, a query defaulted to the centre, ...).
    """
    image: np.ndarray = field(repr=False)
    ids: np.ndarray = field(repr=False)
    spec: LabelSpec = field(repr=False)
    confidence: np.ndarray = field(repr=False)
    probs: np.ndarray | None = field(default=None, repr=False)
    attention: Attention | None = None
    timing_ms: dict = field(default_factory=dict)
    inference: str = ""
    model: str = ""
    notes: list = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return list(self.spec.names)

    @property
    def palette(self) -> list[tuple[int, int, int]]:
        return list(self.spec.palette)

    def overlay(self, alpha: float = 0.5) -> np.ndarray:
        """(H, W, 3) uint8: the image tinted with each pixel's class colour (``alpha`` = weight of the colour)."""
        from .viz.overlay import overlay
        return overlay(self.image, self.ids, self.spec, alpha)

    def class_stats(self) -> list[dict]:
        """Per class present: ``{"id", "name", "color", "pixels", "share", "confidence"}``, largest share first."""
        counts = np.bincount(self.ids.ravel(), minlength=self.spec.num_classes)
        total = max(int(self.ids.size), 1)
        rows = [{"id": k, "name": self.spec.names[k], "color": list(self.spec.palette[k]), "pixels": int(n),
                 "share": float(n) / total, "confidence": float(self.confidence[k])}
                for k, n in enumerate(counts[: self.spec.num_classes]) if n]
        return sorted(rows, key=lambda r: -r["pixels"])

    def to_pipeline(self) -> list[dict]:
        """Hugging Face's image-segmentation pipeline form: per class present, ``{"label": name, "score": mean
        probability of the class over its pixels, "mask": PIL "L" image, 255 on the class and 0 elsewhere}``
        (largest first)."""
        from PIL import Image
        return [{"label": r["name"], "score": r["confidence"],
                 "mask": Image.fromarray(np.where(self.ids == r["id"], 255, 0).astype(np.uint8), mode="L")}
                for r in self.class_stats()]

    def save(self, prefix: str | Path) -> list[Path]:
        """Writes ``<prefix>_ids.png`` (palette PNG: pixel = class id) and ``<prefix>_overlay.png``."""
        from PIL import Image

        from .viz.overlay import save_label_png
        prefix = Path(prefix)
        ids_path, ov_path = Path(f"{prefix}_ids.png"), Path(f"{prefix}_overlay.png")
        save_label_png(ids_path, self.ids, self.spec)
        Image.fromarray(self.overlay()).save(ov_path)
        return [ids_path, ov_path]


# -- the predictor -------------------------------------------------------------------------------------------------
def fallback_crop(meta: dict) -> tuple[int, int]:
    """The window a too-large whole-image inference slides with: the training crop, else 512x512."""
    crop = (meta.get("config") or {}).get("crop")
    return tuple(crop) if crop else (512, 512)


def inference_config(meta: dict, overrides: dict):
    """The checkpoint's saved inference settings with ``overrides`` (None values keep the saved ones), checked."""
    from .engine.inference import InferenceConfig
    saved = meta.get("inference") or {}
    cfg = InferenceConfig(mode=saved.get("mode", "whole"), crop=saved.get("crop"), stride=saved.get("stride"),
                          scales=tuple(saved.get("scales", (1.0,))), flip=bool(saved.get("flip", False)),
                          test_scale=float(saved.get("test_scale", 1.0)))
    for key, value in overrides.items():
        if value is None:
            continue
        if not hasattr(cfg, key):
            raise ValueError(f"unknown inference setting {key!r}; use mode, crop, stride, scales, flip, test_scale")
        setattr(cfg, key, tuple(value) if key in ("crop", "stride", "scales") else value)
    if cfg.mode not in ("whole", "slide"):
        raise ValueError(f"inference mode {cfg.mode!r} unknown; choose whole or slide")
    if cfg.mode == "slide" and cfg.crop is None:
        raise ValueError("--mode slide needs --crop H,W (crop=(H, W) in attnseg.load): the window, at the "
                         "network's input scale")
    if not cfg.test_scale > 0 or not cfg.scales or min(cfg.scales) <= 0:
        raise ValueError(f"test_scale and scales must be > 0, got test_scale={cfg.test_scale}, scales={cfg.scales}")
    return cfg


class CheckpointInfo:
    """What a loaded checkpoint says (name, classes, palette, parameters, metrics) and its input normalisation;
    shared by the semantic :class:`Predictor` and ``api_instances.InstancePredictor`` (which set ``meta``, ``spec``,
    ``backend``, ``model``, ``mean`` and ``std``)."""

    @property
    def name(self) -> str:
        return str(self.meta.get("model", "?"))

    @property
    def classes(self) -> list[str]:
        return list(self.spec.names)

    @property
    def palette(self) -> list[tuple[int, int, int]]:
        return list(self.spec.palette)

    @property
    def num_params(self) -> int | None:
        n = self.meta.get("num_params")
        if n is None and self.backend == "torch":
            n = sum(p.numel() for p in self.model.parameters())
        return n

    @property
    def metrics(self) -> dict:
        return dict(self.meta.get("metrics") or {})

    def _set_checkpoint(self, model, meta: dict, device, precision, backend: str, source: str) -> None:
        """The attributes both predictors share: the model, its metadata, classes and normalisation."""
        from .data.transforms import IMAGENET_MEAN, IMAGENET_STD
        self.model, self.meta, self.device, self.precision = model, meta, device, precision
        self.backend, self.source = backend, source
        self.spec = LabelSpec.from_dict(meta["classes"])
        pre = meta.get("preprocessing") or {}
        self.mean = torch.tensor(pre.get("mean", IMAGENET_MEAN), dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(pre.get("std", IMAGENET_STD), dtype=torch.float32).view(-1, 1, 1)

    def normalize(self, image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 -> (3, H, W) float, normalised as in training."""
        x = torch.from_numpy(np.ascontiguousarray(image).copy()).permute(2, 0, 1).float()
        return x.sub_(self.mean * 255).div_(self.std * 255)


class Predictor(CheckpointInfo):
    """A loaded model with its classes, preprocessing and inference settings. Build it with :func:`load`.

    Calls are serialised by a lock (one model call at a time, as the web server needs); a predictor may be shared
    by threads."""

    def __init__(self, model, meta: dict, *, device, precision, backend: str = "torch", source: str = "",
                 max_memory_gb: float | None = None, inference: dict | None = None):
        from .engine.inference import MemoryPlanner
        self._set_checkpoint(model, meta, device, precision, backend, source)
        self.inference = inference_config(meta, inference or {})
        self.limit_bytes = memory_limit_bytes(max_memory_gb)
        self.planner = (MemoryPlanner(model, self.inference, self.spec.num_classes, self.limit_bytes,
                                      fallback_crop(meta))
                        if backend == "torch" else None)
        self.lock = threading.Lock()

    @property
    def scales(self):
        return getattr(self.model, "scales", None)

    def describe(self) -> dict:
        """What a user needs to pick this model: name, classes and colours, parameters, metrics, settings."""
        m = self.metrics
        return {"model": self.name, "classes": self.classes, "palette": [list(c) for c in self.palette],
                "num_params": self.num_params, "backend": self.backend, "precision": self.precision.name,
                "device": str(self.device), "inference": self.inference.describe(),
                "metrics": {k: m[k] for k in ("mIoU", "aAcc", "mAcc") if isinstance(m.get(k), (int, float))},
                "step": self.meta.get("step"), "data": (self.meta.get("config") or {}).get("data"),
                "attention": self.backend == "torch"}

    # prediction ------------------------------------------------------------------------------------------------
    def predict(self, x, *, probs: bool = False, attention: bool = False, query=None):
        """Predict one picture (-> :class:`Result`) or several (a list, or a (B, 3, H, W) tensor -> list).

        Args:
            x: file path, PIL image, (H, W, 3) uint8 array, (3, H, W) / (B, 3, H, W) tensor (uint8, or float RGB in
                [0, 1]), or a list of these.
            probs: also return the (K, H, W) class probabilities (``result.probs``).
            attention: also return the attention maps (``result.attention``; needs the PyTorch checkpoint).
            query: a pixel (y, x) or a list of them: checked against each image's size before inference, and the
                default of ``result.attention.pictures()``.
        """
        images, many = as_images(x)
        if attention and self.backend != "torch":
            raise ValueError("attention maps need the PyTorch checkpoint (an ONNX file holds only the logits); "
                             f"load the run directory instead of {self.source}")
        results = [self._predict_one(im, probs, attention, _queries(query)) for im in images]
        return results if many else results[0]

    def _predict_one(self, image: np.ndarray, want_probs: bool, want_attention: bool, queries) -> Result:
        from .engine.inference import infer
        from .viz.attention_maps import check_query
        t0 = time.perf_counter()
        H, W = image.shape[:2]
        if H < 1 or W < 1:
            raise ValueError(f"the image is {W}x{H}: it has no pixels")
        for q in queries:
            check_query(q, (H, W))  # before the inference: a wrong query fails fast, with the image size
        notes = []
        cfg = self.inference
        if self.planner is not None:
            cfg, note = self.planner((H, W))
            if note:
                notes.append(note)
        if want_attention and cfg.mode != "whole":
            notes.append("attention maps are drawn from one whole-image pass, which "
                         + ("the memory limit ruled out for this image; give a smaller image or a larger memory "
                            "limit" if self.inference.mode == "whole" else "sliding-window inference does not run; "
                            "use mode=whole"))
        x = self.normalize(image)[None].to(self.device)
        with self.lock, torch.no_grad():
            t1 = time.perf_counter()
            out = infer(self.model, x, cfg, self.spec.num_classes, self.precision.autocast(),
                        self.precision.channels_last, return_attention=want_attention and cfg.mode == "whole")
            scores, maps = out if isinstance(out, tuple) else (out, None)
            if want_attention and cfg.mode == "whole" and maps is None:
                # TTA without the identity view: one more whole-image pass at the test scale for the maps
                _, maps = infer(self.model, x, replace(cfg, scales=(1.0,), flip=False), self.spec.num_classes,
                                self.precision.autocast(), self.precision.channels_last, return_attention=True)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            t2 = time.perf_counter()
        averaged = len(cfg.scales) > 1 or cfg.flip  # infer returns probabilities then, logits otherwise
        scores = scores[0].float().cpu()                                              # (K, H, W)
        top, ids = scores.max(0)                                                      # (H, W) each
        if averaged:
            p, top_prob = scores, top
        else:  # the predicted class's softmax probability, 1 / sum_k exp(l_k - l_max), without a (K, H, W) division
            p = scores.softmax(0) if want_probs else None
            top_prob = scores.sub_(top).exp_().sum(0).reciprocal_()  # in place: the logits are not needed after
        K = self.spec.num_classes
        flat = ids.flatten()
        counts = torch.bincount(flat, minlength=K).double()
        conf_sum = torch.bincount(flat, weights=top_prob.flatten().double(), minlength=K)
        confidence = torch.where(counts > 0, conf_sum / counts.clamp(min=1), torch.nan).numpy()
        ids_np = ids.numpy().astype(np.uint8 if K <= 256 else np.int32)
        result = Result(image=image, ids=ids_np, spec=self.spec, confidence=confidence,
                        probs=p.numpy().astype(np.float32) if want_probs else None,
                        inference=cfg.describe(), model=self.name, notes=notes)
        if want_attention and maps is not None:
            maps = {k: (v.detach().float().cpu() if v.is_floating_point() else v.detach().cpu())
                    for k, v in maps.items()}
            result.attention = Attention(maps, image, ids_np, self.spec, self.name,
                                         tuple(self.scales) if self.scales else None)
        t3 = time.perf_counter()
        result.timing_ms = {"inference": 1000 * (t2 - t1), "total": 1000 * (t3 - t0)}
        return result

    def __repr__(self) -> str:
        return (f"Predictor({self.name}, {len(self.classes)} classes, {self.backend}, {self.precision.name}, "
                f"{self.inference.describe()})")


def load(source, *, device: str = "auto", precision: str = "auto", max_memory_gb: float | None = None,
         mode: str | None = None, crop=None, stride=None, scales=None, flip: bool | None = None,
         test_scale: float | None = None, threads: int | None = None, tile: int | None = None,
         overlap: int | None = None, max_side: int | None = None, post: dict | None = None):
    """Load a trained model for prediction.

    Args:
        source: a run directory (its ``checkpoints/model.safetensors``, else ``best``/``last``), a ``.safetensors``
            or ``last.pt`` checkpoint, or an ``.onnx`` file written by ``attnseg export`` (run by onnxruntime on
            the CPU in fp32; no attention maps).
        device: ``auto`` (CUDA if present), ``cpu``, ``cuda``, ``cuda:N``.
        precision: ``auto``, ``fp32``, ``bf16``, ``fp16`` (CUDA).
        max_memory_gb: memory limit of one inference (default ``$ATTNSEG_MAX_MEMORY_GB`` or 8 GiB).
        mode, crop, stride, scales, flip, test_scale: override the inference settings saved in the checkpoint.
        threads: onnxruntime's intra-op threads (ONNX files only).
        tile, overlap, max_side: instance models (``attnseg.api_instances.InstancePredictor``, which ``load``
            returns for them): images with a side above ``max_side`` are predicted in ``tile``-pixel tiles
            overlapping by ``overlap`` and merged (defaults: the checkpoint's).
        post: instance models: post-processing settings to change, e.g. ``{"seed_threshold": 0.6}``
            (``InstanceModel.set_post``; unknown names are refused with the valid ones).
    """
    tiles = {"tile": tile, "overlap": overlap, "max_side": max_side}
    instance_only = {**tiles, "post": post}
    from .engine.precision import Precision, resolve_device
    overrides = {"mode": mode, "crop": crop, "stride": stride, "scales": scales, "flip": flip,
                 "test_scale": test_scale}
    path = Path(source)
    if path.suffix.lower() == ".onnx":
        if not path.is_file():
            raise FileNotFoundError(f"ONNX file {path} does not exist; write one with attnseg export RUN --format onnx")
        from .export import OnnxModel
        model = OnnxModel(path, threads=threads)
        cpu = torch.device("cpu")
        if model.meta.get("task") == "classification":
            from .api_classification import ClassificationPredictor
            _refuse_for_classifier(model.meta, {**overrides, **instance_only})
            return ClassificationPredictor(model, model.meta, device=cpu,
                                           precision=Precision(cpu, None, False), backend="onnx", source=str(path))
        if model.meta.get("task") == "instances":
            from .api_instances import InstancePredictor, OnnxInstanceModel
            return InstancePredictor(OnnxInstanceModel(model), model.meta, device=cpu,
                                     precision=Precision(cpu, None, False), backend="onnx", source=str(path),
                                     test_scale=test_scale, post=post, **tiles)
        return Predictor(model, model.meta, device=cpu, precision=Precision(cpu, None, False), backend="onnx",
                         source=str(path), max_memory_gb=max_memory_gb, inference=overrides)
    from .engine.checkpoint import load_model
    dev = resolve_device(device)
    prec = Precision.resolve(dev, precision)
    model, meta = load_model(path, dev)
    if meta.get("task") == "classification":
        from .api_classification import ClassificationPredictor
        _refuse_for_classifier(meta, {**overrides, **instance_only})
        return ClassificationPredictor(prec.model(model), meta, device=dev, precision=prec, backend="torch",
                                       source=str(path))
    if meta.get("task") == "instances":
        from .api_instances import InstancePredictor
        if mode not in (None, "whole") or crop or stride or scales or flip:
            raise ValueError(f"{meta['model']} is an instance model: it takes test_scale (and tiles large images "
                             "itself), not mode, crop, stride, scales or flip")
        return InstancePredictor(prec.model(model), meta, device=dev, precision=prec, backend="torch",
                                 source=str(path), test_scale=test_scale, post=post, **tiles)
    if any(v is not None for v in instance_only.values()):
        raise ValueError(f"tile, overlap, max_side and post apply to instance models; {meta['model']} is semantic (it "
                         "takes mode='slide' with crop and stride)")
    return Predictor(prec.model(model), meta, device=dev, precision=prec, backend="torch", source=str(path),
                     max_memory_gb=max_memory_gb, inference=overrides)


def _refuse_for_classifier(meta: dict, settings: dict) -> None:
    given = sorted(k for k, v in settings.items() if v is not None)
    if given:
        raise ValueError(f"{meta['model']} is a classifier: {', '.join(given)} apply to segmentation models (a "
                         "classifier resizes each image to its training size)")

