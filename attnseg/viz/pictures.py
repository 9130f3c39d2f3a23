"""Every attention map a model returns, as named pictures: what ``attnseg predict --attention`` writes to files and
what the web page shows, from one function.

A model's ``forward(x, return_attention=True)["attention"]`` is a dict of tensors whose names say what they are
(each model documents its own). ``attention_pictures`` turns the maps of one image into a list of
:class:`Picture` (a file-safe name, a title, an (h, w, 3) uint8 image and, where the picture belongs to a query
pixel, that pixel):

- attention to scale (Chen et al. 2016): ``scale_weights`` (B, S, h, w) and ``scale_logits`` (B, S, K, h, w) ->
  per scale s the weight map ``attn_scale_<s>``, the prediction of that scale alone ``pred_scale_<s>``, and the
  paper's figure ``scales`` (Fig. 1/5 style);
- segmentation-aware networks (Harley et al. 2017): ``embedding`` -> ``embedding`` (its first three principal
  components as colour); ``mask/<layer>/k<k>_d<d>`` -> per query pixel ``masks_<y>_<x>``, the local attention
  masks of one layer per resolution around that pixel;
- the FLANet family (FLA, non-local, DANet, CCNet; maps on the feature ``grid``): per query pixel the figure
  ``query_<y>_<x>`` and one heat map per spatial map ``attn_<map>_q<y>_<x>``;
- any other map (B, C, h, w), e.g. the passes of recurrent refinement (``pass_probs``), Farabet's pyramid shares
  (``scale_energy``), DeconvNet's pool switches: one heat map ``attn_<name>`` for C = 1 or C > 8 (the mean over
  channels), else one per channel ``attn_<name>_<i>`` (pass i + 1, level i), titled by what the channel is.

Pictures that belong to a query pixel are made only for the queries given (the image centre when none is given);
``query_only=True`` makes only those, which is what the web page asks for when a pixel is clicked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .attention_maps import (
    QUERY_KEYS,
    check_query,
    map_name,
    query_attention_figure,
    query_attention_maps,
    query_heatmap,
)
from .local_masks import embedding_pca_colours, local_mask_figure, parse_mask_key
from .overlay import blend_heatmap, overlay, scale_attention_figure

#: per-channel titles of the generic maps the models document (``{i}`` is the channel, ``{n}`` i + 1)
CHANNEL_TITLES = {"pass_probs": "pass {n}: max class probability (recurrent refinement)",
                  "scale_energy": "pyramid level {i}: share of the energy (Farabet)",
                  "base_pass_probs": "pass {n}: max class probability"}
MAX_CHANNEL_PICTURES = 8


@dataclass
class Picture:
    """One named picture. ``name`` is file-safe (``attnseg predict`` writes ``<stem>_<name>.png``)."""
    name: str
    title: str
    image: np.ndarray                    # (h, w, 3) uint8
    query: tuple[int, int] | None = None  # the image pixel (y, x) it was drawn for
    animation: bytes | None = None        # an animated GIF of the same content (written as ``<stem>_<name>.gif``)

    def to_pil(self) -> Image.Image:
        return Image.fromarray(self.image)


def _one(a):
    """The first image's map as a float tensor/array (maps keep the batch dimension)."""
    a = a[0]
    return a.float() if hasattr(a, "float") else np.asarray(a, np.float32)


def _np(a) -> np.ndarray:
    return a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)


def needs_query(att: dict) -> bool:
    """Whether some of these maps are drawn per query pixel (the FLANet family, segmentation-aware masks)."""
    return any(parse_mask_key(k) for k in att) or (("grid" in att) and any(k in att for k in QUERY_KEYS[1:]))


def attention_pictures(att: dict, image: np.ndarray, ids: np.ndarray, spec, *, scales=None, queries=(),
                       query_only: bool = False, model_name: str = "the model") -> tuple[list[Picture], list[str]]:
    """Pictures of the attention maps of one image (batch index 0 of each map).

    Args:
        att: ``model(x, return_attention=True)["attention"]`` (tensors or arrays with a leading batch dimension).
        image: (H, W, 3) uint8, the full-resolution input; ids: (H, W) its predicted class ids.
        spec: the LabelSpec (colours of the per-scale predictions).
        scales: attention to scale's scales (titles and names); default 0, 1, ...
        queries: image pixels (y, x) for the per-query pictures; none: the image centre.
        query_only: only the pictures that belong to a query pixel.
    Returns:
        (pictures, notes): notes are sentences for the user (no maps, centre used, ...).
    """
    H, W = image.shape[:2]
    queries = [check_query(q, (H, W)) for q in queries]
    att = dict(att)
    pictures: list[Picture] = []
    notes: list[str] = []
    if not att:
        notes.append(f"model {model_name} returns no attention maps (FCN, DeconvNet without switches and LargeFOV "
                     "are attention-free baselines)")
        return pictures, notes
    if needs_query(att) and not queries:
        queries = [(H // 2, W // 2)]
        notes.append(f"no query pixel given: drawing the attention of the image centre {queries[0]}; give a query "
                     "(--query Y,X, image pixels, repeatable) for other pixels")
    if "scale_weights" in att and "scale_logits" in att:
        weights, logits = att.pop("scale_weights"), att.pop("scale_logits")
        if not query_only:
            pictures += _scale_pictures(_np(_one(weights)), _one(logits), image, ids, spec, scales)
    if "embedding" in att:
        one = {name: _one(a) for name, a in att.items() if name == "embedding" or parse_mask_key(name)}
        for name in one:
            att.pop(name)
        if not query_only:
            emb = Image.fromarray(embedding_pca_colours(one["embedding"])).resize((W, H), Image.NEAREST)
            pictures.append(Picture("embedding", "embedding: first three principal components as colour",
                                    np.asarray(emb)))
        if len(one) > 1:
            for y, x in queries:
                fig = local_mask_figure(image, one, (y, x))
                pictures.append(Picture(f"masks_{y}_{x}", f"local attention masks around ({y}, {x})",
                                        np.asarray(fig.convert("RGB")), (y, x)))
    if "grid" in att:
        pictures += _query_pictures(att, image, queries, model_name, notes)
        for name in QUERY_KEYS:
            att.pop(name, None)
    if not query_only:
        for name, a in att.items():
            pictures += _generic_pictures(name, _np(_one(a)), image)
    return pictures, notes


def _scale_pictures(weights, logits, image, ids, spec, scales) -> list[Picture]:
    """weights (S, h, w); logits (S, K, h, w) tensor -> per-scale weight maps and predictions, and the figure."""
    import torch

    from ..models.base import resize_to
    H, W = image.shape[:2]
    logits = torch.as_tensor(logits).float()
    scale_ids = resize_to(logits, (H, W)).argmax(1).cpu().numpy().astype("uint8")     # (S, H, W)
    scales = list(scales) if scales else list(range(len(weights)))
    out = []
    for s, w, p in zip(scales, weights, scale_ids):
        out.append(Picture(f"attn_scale_{s:g}", f"scale {s:g}: attention weight (0 to 1)",
                           blend_heatmap(image, w, 0.75, vmin=0.0, vmax=1.0)))
        out.append(Picture(f"pred_scale_{s:g}", f"scale {s:g}: its prediction alone", overlay(image, p, spec)))
    fig = scale_attention_figure(image, ids, weights, scale_ids, spec, scales)
    out.append(Picture("scales", "attention to scale: weights and predictions per scale", np.asarray(fig)))
    return out


def _query_pictures(att, image, queries, model_name, notes) -> list[Picture]:
    H, W = image.shape[:2]
    if set(att) == {"grid"}:
        notes.append(f"model {model_name} returns no attention maps (its head has no attention block)")
        return []
    out = []
    for y, x in queries:
        maps = query_attention_maps(att, (y, x), (H, W))
        fig = query_attention_figure(image, maps, (y, x))
        out.append(Picture(f"query_{y}_{x}", f"what pixel ({y}, {x}) attends to", np.asarray(fig.convert("RGB")),
                           (y, x)))
        for title, kind, values in maps:
            if kind == "spatial":
                out.append(Picture(f"attn_{map_name(title)}_q{y}_{x}", title,
                                   query_heatmap(image, values, (y, x)), (y, x)))
    return out


def _generic_pictures(name: str, a: np.ndarray, image) -> list[Picture]:
    """A (C, h, w) or (h, w) map: one heat map, or one per channel for 1 < C <= 8."""
    safe = name.replace("/", "_")
    while a.ndim > 3:
        a = a.mean(0)
    if a.ndim == 3 and 1 < a.shape[0] <= MAX_CHANNEL_PICTURES:
        template = CHANNEL_TITLES.get(name, name + " [{i}]")
        return [Picture(f"attn_{safe}_{i}", template.format(i=i, n=i + 1), blend_heatmap(image, c, 0.6))
                for i, c in enumerate(a)]
    if a.ndim == 3:
        a = a.mean(0)
    return [Picture(f"attn_{safe}", name, blend_heatmap(image, a, 0.6))]
