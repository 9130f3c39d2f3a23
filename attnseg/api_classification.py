"""The Python API for classifiers (``task = "classification"``): what :func:`attnseg.load` returns for them.

    import attnseg
    predictor = attnseg.load("runs/digits_cluttered60_ram6")
    result = predictor.predict("digit.png")          # any size, grey or colour: resized to the training size
    result.label, result.name, result.score          # 7, "7", 0.98
    result.top(3)                                    # [("7", 0.98), ("1", 0.01), ("9", 0.004)]
    result.to_json()                                 # {"label", "class", "score", "probs", ...}
    result.save("out/digit")                         # _class.json (and, with attention, the glimpse pictures)
    predictor.predict(image, attention=True).attention.pictures()   # the glimpses step by step

It runs ``engine.classification.prepare`` + ``classify``, the functions validation and ``attnseg eval`` use. An ONNX
export holds the network's logits (RAM in eval mode follows its policy's means, so the file is deterministic);
the glimpses need the PyTorch checkpoint.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .api import CheckpointInfo, as_images


@dataclass
class GlimpseAttention:
    """One image's glimpses (``ClassifierModel.glimpses``) and their pictures (``attnseg.viz.glimpses``)."""
    steps: list = field(repr=False)
    image: np.ndarray = field(repr=False)          # (h, w) uint8: the input as the model saw it
    title: str = ""
    needs_query = False

    def pictures(self, query=None, query_only: bool = False):
        from .viz.glimpses import glimpse_pictures
        no_query = "a classifier's glimpses do not depend on a query pixel"
        if query_only:
            return [], [no_query]
        pics, notes = glimpse_pictures(self.image, self.steps, self.title)
        return pics, notes + ([no_query] if query else [])


@dataclass
class ClassificationResult:
    """The class of one image.

    Attributes:
        image: (H, W, 3) uint8 input; input: (h, w) float32 in [0, 1], what the model saw (grey, training size);
        probs: (K,) float32 class probabilities; class_names; attention: :class:`GlimpseAttention` when asked for;
        timing_ms: {"forward", "total"}; model; notes.
    """
    image: np.ndarray = field(repr=False)
    input: np.ndarray = field(repr=False)
    probs: np.ndarray = field(repr=False)
    class_names: list = field(default_factory=list)
    attention: GlimpseAttention | None = None
    timing_ms: dict = field(default_factory=dict)
    model: str = ""
    notes: list = field(default_factory=list)
    kind = "classification"

    @property
    def label(self) -> int:
        return int(np.argmax(self.probs))

    @property
    def name(self) -> str:
        return self.class_names[self.label]

    @property
    def score(self) -> float:
        return float(self.probs[self.label])

    def top(self, k: int = 3) -> list[tuple[str, float]]:
        order = np.argsort(-self.probs, kind="stable")[:k]
        return [(self.class_names[i], float(self.probs[i])) for i in order]

    def to_json(self) -> dict:
        return {"label": self.label, "class": self.name, "score": self.score,
                "probs": {n: float(p) for n, p in zip(self.class_names, self.probs)},
                "top": [{"class": n, "score": s} for n, s in self.top(3)], "model": self.model,
                "input_size": list(self.input.shape), "notes": list(self.notes)}

    def save(self, prefix: str | Path) -> list[Path]:
        """Writes ``<prefix>_class.json`` (class, score, every probability)."""
        path = Path(f"{prefix}_class.json")
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        return [path]


class ClassificationPredictor(CheckpointInfo):
    """A loaded classifier; build it with :func:`attnseg.load`. Calls are serialised by a lock."""

    task = "classification"

    def __init__(self, model, meta: dict, *, device, precision, backend: str = "torch", source: str = ""):
        self._set_checkpoint(model, meta, device, precision, backend, source)
        inf = meta.get("inference") or {}
        self.input_size = tuple(inf["input_size"])
        self.channels = int(inf.get("channels", 1))
        self.lock = threading.Lock()

    def describe(self) -> dict:
        m = self.metrics
        return {"model": self.name, "task": "classification", "classes": self.classes,
                "palette": [list(c) for c in self.palette], "num_params": self.num_params, "backend": self.backend,
                "precision": self.precision.name, "device": str(self.device),
                "inference": f"grey {self.input_size[0]}x{self.input_size[1]}",
                "metrics": {k: m[k] for k in ("accuracy", "error") if isinstance(m.get(k), (int, float))},
                "step": self.meta.get("step"), "data": (self.meta.get("config") or {}).get("data"),
                "attention": self.backend == "torch"}

    def predict(self, x, *, attention: bool = False, query=None):
        """Classify one picture (-> :class:`ClassificationResult`) or several (a list or a batch -> list). Images of
        another size are resized to the training size (a note says so); colour becomes grey."""
        from .engine.classification import classify, prepare
        if attention and self.backend != "torch":
            raise ValueError("glimpse pictures need the PyTorch checkpoint (an ONNX file holds only the logits); "
                             f"load the run directory instead of {self.source}")
        images, many = as_images(x)
        results = []
        for image in images:
            t0 = time.perf_counter()
            notes = []
            if image.shape[:2] != self.input_size:
                notes.append(f"the {image.shape[1]}x{image.shape[0]} image was resized to the "
                             f"{self.input_size[1]}x{self.input_size[0]} the model was trained on")
            inp = prepare(image, self.input_size)                             # (1, h, w)
            if float(inp.mean()) > 0.5:
                notes.append("the image is mostly bright, but the model was trained on light digits on a dark "
                             "ground: invert dark-on-light drawings before predicting (255 - image)")
            batch = inp[None].expand(1, self.channels, *self.input_size)
            with self.lock:
                res = classify(self.model, batch, self.precision if self.backend == "torch" else None,
                               glimpses=attention)
            p = res["probs"][0].numpy()
            r = ClassificationResult(image=image, input=inp[0].numpy(), probs=p, class_names=self.classes,
                                     model=self.name, notes=notes)
            if attention:
                title = f"predicted {r.name} ({100 * r.score:.1f} %)"
                r.attention = GlimpseAttention(res["glimpses"][0], (inp[0].numpy() * 255).astype(np.uint8), title)
            fwd = res["timing_ms"]["forward"]
            r.timing_ms = {"forward": fwd, "inference": fwd, "total": 1000 * (time.perf_counter() - t0)}
            results.append(r)
        return results if many else results[0]

    def __repr__(self) -> str:
        return (f"ClassificationPredictor({self.name}, {len(self.classes)} classes, {self.backend}, "
                f"{self.precision.name}, input {self.input_size[0]}x{self.input_size[1]})")

