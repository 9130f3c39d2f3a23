"""Models: one file per method; a plain dict registry and ``create_model``.

Every builder takes ``num_classes`` and keyword options and returns a ``SegmentationModel``.
"""

from __future__ import annotations

import inspect
import re
from functools import partial

from .attention_to_scale import attention_to_scale
from .base import SegmentationModel
from .classifier_base import ClassifierModel
from .cnn_classifier import cnn_classifier
from .deconvnet import deconvnet_vgg16
from .deeplab_largefov import deeplab_largefov_vgg16
from .discriminative_embedding import discriminative_embedding
from .draw_classifier import draw_classifier
from .farabet import farabet
from .fcn import fcn_resnet, fcn_vgg16
from .fg_boundary_watershed import fg_boundary_watershed
from .flanet import flanet
from .instance_base import InstanceModel
from .mnc import mnc
from .ram import ram
from .recurrent_attention import recurrent_attention
from .recurrent_refinement import recurrent_refinement
from .segaware import segaware, segaware_crf
from .st_cnn import st_cnn

MODELS = {
    "fcn32s_resnet18": partial(fcn_resnet, variant="32s", depth=18),
    "fcn16s_resnet18": partial(fcn_resnet, variant="16s", depth=18),
    "fcn8s_resnet18": partial(fcn_resnet, variant="8s", depth=18),
    "fcn8s_resnet34": partial(fcn_resnet, variant="8s", depth=34),
    "fcn8s_resnet50": partial(fcn_resnet, variant="8s", depth=50),
    "fcn32s_vgg16": partial(fcn_vgg16, variant="32s"),
    "fcn16s_vgg16": partial(fcn_vgg16, variant="16s"),
    "fcn8s_vgg16": partial(fcn_vgg16, variant="8s"),
    "deconvnet_vgg16": deconvnet_vgg16,
    "deconvnet_vgg16_w025": partial(deconvnet_vgg16, width=0.25),
    "deeplab_largefov_vgg16": deeplab_largefov_vgg16,
    "deeplab_largefov_vgg16_w05": partial(deeplab_largefov_vgg16, width=0.5),
    "farabet": farabet,
    "farabet_2layer": partial(farabet, classifier_hidden=1024),
    "recurrent_refinement": recurrent_refinement,
    "rcnn2_fcn8s_resnet18": partial(recurrent_refinement, passes=2),
    "rcnn3_fcn8s_resnet18": partial(recurrent_refinement, passes=3),
    "attention_to_scale": attention_to_scale,
    "attention_to_scale_largefov": partial(attention_to_scale, base="deeplab_largefov_vgg16"),
    "flanet": flanet,
}
# FLANet at the three depths of the issue, and its peers: the same network with another block in the head
for _d in (18, 50, 101):
    MODELS[f"flanet_resnet{_d}"] = partial(flanet, depth=_d, attention="fla")
    for _b in ("none", "nonlocal", "danet", "ccnet", "channel"):
        MODELS[f"dilated_resnet{_d}_{_b}"] = partial(flanet, depth=_d, attention=_b)
# Segmentation-aware networks (Harley et al. 2017): every stride-1 convolution gated by local attention masks,
# optionally with the segmentation-aware CRF; and that CRF as a refinement stage on any registered network
MODELS["segaware"] = segaware
MODELS["segaware_crf"] = segaware_crf
for _name, _base, _ew in (("deeplab_largefov_vgg16", "deeplab_largefov_vgg16", 1.0),
                          ("deeplab_largefov_vgg16_w05", "deeplab_largefov_vgg16_w05", 0.5),
                          ("dilated_resnet18", "dilated_resnet18_none", 0.5),
                          ("dilated_resnet50", "dilated_resnet50_none", 1.0)):
    MODELS[f"segaware_{_name}"] = partial(segaware, base=_base, embedding_width=_ew)
    MODELS[f"segaware_{_name}_crf"] = partial(segaware, base=_base, embedding_width=_ew, crf=True)
# Proposal-free instance baselines (task "instances"): a U-Net with foreground + boundary heads and watershed
# (the DSB2018 winners' recipe), and with a discriminative embedding and mean shift (De Brabandere et al. 2017)
MODELS["unet_watershed"] = fg_boundary_watershed
MODELS["unet_watershed_w16"] = partial(fg_boundary_watershed, width=16)
MODELS["unet_discriminative"] = discriminative_embedding
MODELS["unet_discriminative_w16"] = partial(discriminative_embedding, width=16)
# Ren & Zemel's recurrent attention (one object per step: box network, segmentation inside the box, score, canvas);
# the CVPPP column of their table, and attnseg's configuration for nuclei tiles (128x128, K = 24)
MODELS["recurrent_attention"] = recurrent_attention
MODELS["recurrent_attention_nuclei"] = partial(recurrent_attention, image_size=(128, 128), layout="nuclei",
                                               filter_size=24)
# Proposal-based instances: Multi-task Network Cascades (RPN boxes -> RoI-warped masks -> mask-pooled categories,
# end to end, 5-stage cascade at inference) on ResNet conv4 or a small FPN level, and the SDS-style two-step
# ablation (the same stages, gradients stopped between them)
MODELS["mnc_resnet18"] = mnc
MODELS["mnc_resnet18_fpn"] = partial(mnc, neck="fpn", anchor_sizes=(12, 24, 48))
MODELS["mnc_resnet50_fpn"] = partial(mnc, depth=50, neck="fpn", anchor_sizes=(12, 24, 48))
MODELS["sds_resnet18_fpn"] = partial(mnc, neck="fpn", anchor_sizes=(12, 24, 48), end_to_end=False)
INSTANCE_MODELS = ("unet_watershed", "unet_watershed_w16", "unet_discriminative", "unet_discriminative_w16",
                   "recurrent_attention", "recurrent_attention_nuclei", "mnc_resnet18", "mnc_resnet18_fpn",
                   "mnc_resnet50_fpn", "sds_resnet18_fpn")
# Attention over locations (task "classification", digits): a plain CNN, a CNN behind a spatial transformer
# (affine, or scale + translation), RAM's hard glimpses trained by REINFORCE (RNN or LSTM core), and the recurrent
# classifier reading through DRAW's Gaussian filter bank; the number of glimpses is a model option
MODELS["cnn_classifier"] = cnn_classifier
MODELS["st_cnn"] = st_cnn
MODELS["st_cnn_scale"] = partial(st_cnn, mode="attention")
MODELS["ram"] = ram
MODELS["ram_lstm"] = partial(ram, core="lstm")
MODELS["draw_read"] = draw_classifier
CLASSIFICATION_MODELS = ("cnn_classifier", "st_cnn", "st_cnn_scale", "ram", "ram_lstm", "draw_read")


def model_task(name: str) -> str:
    """"semantic", "instances" or "classification": what a registered model predicts."""
    if name in INSTANCE_MODELS:
        return "instances"
    return "classification" if name in CLASSIFICATION_MODELS else "semantic"


def create_model(name: str, num_classes: int, **kwargs) -> SegmentationModel:
    """Build a registered model. Unknown names fail with the list of valid ones; ``None`` kwargs are dropped."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    check_kwargs(name, kwargs)
    try:
        return MODELS[name](num_classes=num_classes, **kwargs)
    except TypeError as e:  # a keyword passed on by a wrapper (``base_kwargs``...) that the inner builder lacks
        arg = re.search(r"unexpected keyword argument '(\w+)'", str(e))
        if arg:
            raise KeyError(f"model {name!r} has no option {arg.group(1)} ({e}); remove it from model_kwargs or see "
                           "the builder's docstring for the options") from None
        if kwargs:  # most often an option of the wrong type ("0.5" for a number)
            raise ValueError(f"model {name!r} could not be built with the options {kwargs} ({e}); check the types "
                             "of model_kwargs (numbers unquoted, true/false for switches)") from None
        raise


def model_options(name: str) -> list[str] | None:
    """The keyword options of a registered model's builder, or None when it takes any keyword (``**kwargs``)."""
    sig = inspect.signature(MODELS[name])
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return None
    return sorted(k for k, p in sig.parameters.items()
                  if k != "num_classes" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))


def check_kwargs(name: str, kwargs: dict) -> None:
    """Reject keyword options the builder of ``name`` does not take, naming them and the valid ones."""
    valid = model_options(name)
    unknown = sorted(set(kwargs) - set(valid)) if valid is not None else []
    if unknown:
        raise KeyError(f"model {name!r} has no option {', '.join(unknown)} (model_kwargs); its options are: "
                       f"{', '.join(valid) or 'none'}")


def list_models() -> list[str]:
    return sorted(MODELS)


__all__ = ["MODELS", "INSTANCE_MODELS", "CLASSIFICATION_MODELS", "ClassifierModel", "InstanceModel", "model_task",
           "create_model", "list_models", "model_options", "check_kwargs", "SegmentationModel"]
