"""Experiment configuration: one flat dataclass, short YAML files, ``key=value`` overrides.

A YAML experiment file lists only what differs from the defaults below (a few lines); ``key=value`` pairs on
the command line override it, values parsed as YAML (``lr=0.01``, ``crop=[180,240]``, ``model_kwargs={variant: 8s}``).
The resolved config is saved as ``config.yaml`` in the run directory.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .precision import PRECISIONS


@dataclass
class TrainConfig:
    # what
    model: str = "fcn8s_resnet18"
    model_kwargs: dict = field(default_factory=dict)
    data: str = "synthetic:"              # dataset spec "kind:root" (see attnseg.data.READERS)
    val_data: str | None = None           # default: same as data
    train_split: str = "train"
    val_split: str = "val"
    run_dir: str = "runs/default"
    # data pipeline
    base_scale: float = 1.0               # training images are first resized by this factor (0.5 = half res)
    scale_range: tuple = (0.5, 2.0)       # random scale, relative to base_scale
    crop: tuple = (360, 480)              # training crop (H, W), ignore-padded when larger than the image
    flip: bool = True
    jitter: bool = True
    cat_max_ratio: float = 1.0
    cache: bool = True                    # keep decoded images in memory
    workers: int = 2
    # optimisation
    batch_size: int = 8                   # per process
    iters: int = 2000                     # optimiser steps (ignored for the schedule when time_budget is set)
    time_budget: float | None = None      # minutes; when set, training stops then and the schedule follows time
    optimizer: str = "adamw"              # adamw | adam (L2 weight decay, as TensorFlow's l2_loss) | sgd
    adam_eps: float = 1e-8                # Adam / AdamW ε (Ren & Zemel: 1e-7)
    lr: float = 2e-3
    lr_schedule: str = "poly"             # poly (warmup, poly decay) | staircase (lr_decay every lr_decay_steps)
    lr_decay: float = 0.8
    lr_decay_steps: int = 5000
    weight_decay: float = 1e-4
    momentum: float = 0.9
    warmup_iters: int = 100
    warmup_ratio: float = 0.1
    poly_power: float = 0.9
    min_lr: float = 0.0
    grad_clip: float | None = 10.0
    grad_clip_value: float | None = None  # clip every gradient element to [−v, v] (Ren & Zemel: 1), before grad_clip
    init_from: str | None = None          # weights (.safetensors / .pt) to start from; matching names and shapes load
    class_weights: str | list | None = None   # None | "median_freq" | list of K floats
    class_weight_power: float = 1.0           # weights are raised to this power (0.5 softens median_freq)
    aux_weight: float = 0.4
    label_smoothing: float = 0.0
    embedding_weight: float = 1.0         # embedding loss of models that return an embedding (segmentation-aware)
    # precision: "auto" = bf16 autocast where the CPU has native bf16 (or on CUDA), else fp32
    precision: str = "auto"               # auto | fp32 | bf16 | fp16
    channels_last: bool | None = None     # None = auto (on for CPU and CUDA)
    # evaluation: the same code as `attnseg eval`
    eval_mode: str = "whole"              # whole | slide
    eval_crop: tuple | None = None        # slide window (default: crop scaled by base_scale... see inference)
    eval_stride: tuple | None = None
    eval_scales: tuple = (1.0,)           # relative to test_scale; several = multi-scale
    eval_flip: bool = False
    test_scale: float | None = None       # resize factor at test time; None = base_scale
    # instance models (task "instances"): validation and inference tile images with a side above tile_max_side
    tile_max_side: int = 1024
    tile_size: int = 512
    tile_overlap: int = 96                # should exceed the largest object's diameter
    val_metric: str | None = None         # best.safetensors by: None = mIoU (semantic) or DSB (instances)
    val_interval: int = 500               # steps; 0 = only at the end
    val_max_images: int | None = None     # None = the whole split
    # bookkeeping
    log_interval: int = 20
    ckpt_interval: int = 500
    seed: int = 0
    deterministic: bool = False
    resume: bool = True                   # continue from run_dir/checkpoints/last.pt when it exists
    tensorboard: bool = False
    device: str = "auto"                  # auto | cpu | cuda
    progress: bool = True

    def __post_init__(self):
        """Types are enforced: every value is converted to its field's type (``"1e-3"`` -> 0.001, ``[180, 240]``
        -> (180, 240)) or rejected with the key, the value and what was expected; then ranges are checked."""
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _coerce(f.name, getattr(self, f.name), f.type))
        validate(self)


class ConfigError(ValueError):
    """A config value of the wrong type or out of range: the message names the key, the value and what is expected."""


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
_NONE = ("null", "none", "~", "")
# tuple fields: (element type, length or None for any length >= 1)
_TUPLES = {"crop": (int, 2), "scale_range": (float, 2), "eval_crop": (int, 2), "eval_stride": (int, 2),
           "eval_scales": (float, None)}
CHOICES = {"optimizer": ("adamw", "adam", "sgd"), "lr_schedule": ("poly", "staircase"), "precision": PRECISIONS,
           "eval_mode": ("whole", "slide")}


def _bad(key, value, expected: str) -> ConfigError:
    return ConfigError(f"config key {key}: {value!r} is not {expected}")


def _to_int(key, v):
    if isinstance(v, bool):
        raise _bad(key, v, "an integer")
    if isinstance(v, int):
        return v
    try:
        f = float(v)  # "1e4" (YAML 1.1 reads it as a string), 2000.0
    except (TypeError, ValueError):
        raise _bad(key, v, "an integer") from None
    if not f.is_integer():
        raise _bad(key, v, "an integer")
    return int(f)


def _to_float(key, v):
    if isinstance(v, bool):
        raise _bad(key, v, "a number")
    try:
        return float(v)  # also "1e-3": YAML 1.1 reads exponents without a dot as strings
    except (TypeError, ValueError):
        raise _bad(key, v, "a number (for example 0.002 or 2e-3)") from None


def _to_bool(key, v):
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in _TRUE + _FALSE:
        return v.strip().lower() in _TRUE
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    raise _bad(key, v, "true or false")


def _to_str(key, v):
    if isinstance(v, str):
        return v
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return str(v)
    raise _bad(key, v, "a string")


def _to_tuple(key, v):
    etype, n = _TUPLES[key]
    if isinstance(v, str):  # crop=180,240 or 180x240
        v = [x for x in v.replace("x", ",").split(",") if x.strip()]
    elif isinstance(v, (int, float)) and not isinstance(v, bool) and n is None:
        v = [v]
    if not isinstance(v, (list, tuple)) or not v or (n is not None and len(v) != n):
        shape = f"{n} numbers" if n else "one or more numbers"
        raise _bad(key, v, f"{shape} (for example {key}=[{', '.join(['180', '240'][:n or 1])}])")
    conv = _to_int if etype is int else _to_float
    return tuple(conv(key, x) for x in v)


def _coerce(key: str, value, ftype: str):
    """Convert ``value`` to the field's declared type (a string, as the module uses postponed annotations)."""
    optional = "None" in ftype
    if value is None or (optional and isinstance(value, str) and value.strip().lower() in _NONE):
        if optional:
            return None
        raise ConfigError(f"config key {key}: may not be empty (null); expected {ftype}")
    if key == "class_weights":
        if isinstance(value, str):
            return value
        if isinstance(value, (list, tuple)):
            return [_to_float(key, x) for x in value]
        raise _bad(key, value, 'null, "median_freq" or a list of one weight per class')
    base = ftype.replace("| None", "").strip()
    if key in _TUPLES:
        return _to_tuple(key, value)
    if base == "dict":
        if not isinstance(value, dict):
            raise _bad(key, value, "a mapping (for example model_kwargs={variant: 8s})")
        # YAML 1.1 reads 1e-3 as a string: numbers written with an exponent become floats here too
        return {k: float(v) if isinstance(v, str) and _EXPONENT.fullmatch(v.strip()) else v for k, v in value.items()}
    return {"int": _to_int, "float": _to_float, "bool": _to_bool, "str": _to_str}[base](key, value)


def _check(cond: bool, key: str, value, must: str) -> None:
    if not cond:
        raise ConfigError(f"config key {key}: {value!r} is not allowed; {must}")


def validate(cfg: TrainConfig) -> TrainConfig:
    """Reject nonsense values before any work starts (each message names the key, the value and the rule)."""
    c = cfg
    _check(c.batch_size >= 1, "batch_size", c.batch_size, "it must be an integer >= 1 (images per step and process)")
    _check(c.iters >= 0, "iters", c.iters, "it must be >= 0 (optimiser steps)")
    _check(c.time_budget is None or c.time_budget > 0, "time_budget", c.time_budget,
           "it must be > 0 minutes, or null for a budget of iters steps")
    _check(all(v >= 1 for v in c.crop), "crop", list(c.crop), "both sides must be >= 1 pixel, e.g. crop=[180,240]")
    _check(all(v > 0 for v in c.scale_range), "scale_range", list(c.scale_range),
           "both factors must be > 0, e.g. scale_range=[0.5,2.0]")
    _check(c.scale_range[0] <= c.scale_range[1], "scale_range", list(c.scale_range), "it must be [low, high]")
    _check(c.base_scale > 0, "base_scale", c.base_scale, "it must be > 0 (1.0 = full resolution)")
    _check(c.test_scale is None or c.test_scale > 0, "test_scale", c.test_scale, "it must be > 0 or null")
    _check(all(v > 0 for v in c.eval_scales), "eval_scales", list(c.eval_scales), "every scale must be > 0")
    for key in ("eval_crop", "eval_stride"):
        v = getattr(c, key)
        _check(v is None or all(x >= 1 for x in v), key, v and list(v), "both sides must be >= 1 pixel, or null")
    _check(0 < c.cat_max_ratio <= 1, "cat_max_ratio", c.cat_max_ratio, "it must be in (0, 1]")
    _check(c.workers >= 0, "workers", c.workers, "it must be >= 0 (0 = load in the main process)")
    _check(c.lr > 0 and math.isfinite(c.lr), "lr", c.lr, "it must be a finite number > 0")
    for key in ("time_budget", "grad_clip", "test_scale", "weight_decay", "base_scale"):
        v = getattr(c, key)
        _check(v is None or math.isfinite(v), key, v, "it must be finite")
    _check(bool(c.run_dir.strip()), "run_dir", c.run_dir, "name a folder for the run, e.g. run_dir=runs/x")
    for key in ("weight_decay", "min_lr", "poly_power", "aux_weight", "embedding_weight", "class_weight_power"):
        _check(getattr(c, key) >= 0, key, getattr(c, key), "it must be >= 0")
    _check(0 <= c.momentum < 1, "momentum", c.momentum, "it must be in [0, 1)")
    _check(0 <= c.warmup_ratio <= 1, "warmup_ratio", c.warmup_ratio, "it must be in [0, 1]")
    _check(c.warmup_iters >= 0, "warmup_iters", c.warmup_iters, "it must be >= 0")
    _check(0 <= c.label_smoothing < 1, "label_smoothing", c.label_smoothing, "it must be in [0, 1)")
    _check(c.grad_clip is None or c.grad_clip > 0, "grad_clip", c.grad_clip, "it must be > 0, or null for none")
    _check(c.grad_clip_value is None or (c.grad_clip_value > 0 and math.isfinite(c.grad_clip_value)),
           "grad_clip_value", c.grad_clip_value, "it must be a finite number > 0, or null for none")
    _check(c.adam_eps > 0, "adam_eps", c.adam_eps, "it must be > 0")
    _check(0 < c.lr_decay <= 1, "lr_decay", c.lr_decay, "it must be in (0, 1] (the factor per lr_decay_steps)")
    _check(c.lr_decay_steps >= 1, "lr_decay_steps", c.lr_decay_steps, "it must be >= 1 step")
    _check(c.val_interval >= 0, "val_interval", c.val_interval, "it must be >= 0 (0 = validate only at the end)")
    _check(c.val_max_images is None or c.val_max_images >= 1, "val_max_images", c.val_max_images,
           "it must be >= 1, or null for the whole split")
    _check(c.log_interval >= 1, "log_interval", c.log_interval, "it must be >= 1")
    _check(c.tile_size >= 16, "tile_size", c.tile_size, "it must be >= 16 pixels")
    _check(0 <= c.tile_overlap < c.tile_size, "tile_overlap", c.tile_overlap, "it must be in [0, tile_size)")
    _check(c.tile_max_side >= c.tile_size, "tile_max_side", c.tile_max_side, "it must be >= tile_size")
    _check(c.ckpt_interval >= 0, "ckpt_interval", c.ckpt_interval, "it must be >= 0 (0 = save only at the end)")
    for key, choices in CHOICES.items():
        _check(getattr(c, key) in choices, key, getattr(c, key), f"choose one of {', '.join(choices)}")
    _check(isinstance(c.class_weights, (list, type(None))) or c.class_weights == "median_freq", "class_weights",
           c.class_weights, 'use null, "median_freq" or a list of one weight per class')
    _check(isinstance(c.class_weights, (str, type(None))) or len(c.class_weights) > 0, "class_weights",
           c.class_weights, "give one weight per class")
    _check(bool(c.model), "model", c.model, "name a model (attnseg models lists them)")
    _check(bool(c.data), "data", c.data, "name a dataset, e.g. data=camvid:../shared/data/camvid")
    _check(c.device == "auto" or c.device == "cpu" or c.device.startswith("cuda"), "device", c.device,
           "choose auto, cpu, cuda or cuda:N")
    return cfg


def config_from_dict(d: dict) -> TrainConfig:
    names = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise KeyError(f"unknown config keys {unknown}; valid keys: {', '.join(sorted(names))}")
    return TrainConfig(**d)


def _yaml_value(key: str, raw: str):
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"override {key}={raw!r} cannot be read as a YAML value ({getattr(e, 'problem', e)}); "
                          f"quote it or write lists as [a,b]") from None


def parse_overrides(pairs: list[str]) -> dict:
    out = {}
    for p in pairs:
        key, sep, raw = p.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {p!r} is not key=value (for example lr=0.01)")
        if "." in key:  # model_kwargs.variant=8s
            head, _, sub = key.partition(".")
            if not isinstance(out.setdefault(head, {}), dict):
                raise ConfigError(f"override {key}= sets a field of {head}, but {head}= was given a plain value; "
                                  f"give either {head}={{...}} or {head}.<name>=...")
            out[head][sub] = _yaml_value(key, raw)
        else:  # given twice: the last one wins, as later overrides win over earlier ones everywhere
            out[key] = _yaml_value(key, raw)
    return out


def read_yaml_config(path: Path) -> dict:
    """A config file's mapping; malformed YAML names the file, the line and the column."""
    try:
        d = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"config file {path}{where}: {what}; each line must be `key: value` "
                          "(see configs/ for examples)") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not a text file; give a YAML file (see configs/)") from None
    d = d or {}
    if not isinstance(d, dict):
        raise ConfigError(f"config file {path} must hold a mapping of `key: value` lines, not a {type(d).__name__}")
    return d


def budget_rule(d: dict, ov: dict) -> str:
    """One rule for ``iters`` against ``time_budget``: the command line wins over the file, and setting both on
    the command line is an error. Edits ``d`` (the merged values) and returns a line saying which budget holds."""
    cli_iters, cli_time = "iters" in ov, ov.get("time_budget") is not None
    if cli_iters and cli_time:
        raise ConfigError("iters= and time_budget= are both given on the command line; give one "
                          "(iters = optimiser steps, time_budget = minutes)")
    if cli_iters and d.get("time_budget") is not None:
        note = (f"budget: {d['iters']} steps (iters= on the command line overrides the config file's "
                f"time_budget={d['time_budget']} min)")
        d["time_budget"] = None
        return note
    if d.get("time_budget") is not None:
        src = "command line" if cli_time else "config file"
        extra = " (iters is ignored: the schedule follows time)" if "iters" in d else ""
        return f"budget: {d['time_budget']} min from the {src}{extra}"
    return f"budget: {d.get('iters', TrainConfig.iters)} steps"


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None,
                notes: list[str] | None = None) -> TrainConfig:
    """File values, then command-line overrides, converted to each field's type and validated. ``notes`` (a list)
    receives the line saying which training budget is in force."""
    d = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist; see configs/ for examples")
        d = read_yaml_config(path)
    ov = overrides if isinstance(overrides, dict) else parse_overrides(overrides or [])
    for k, v in ov.items():
        if isinstance(v, dict) and isinstance(d.get(k), dict):
            d[k] = {**d[k], **v}
        else:
            d[k] = v
    note = budget_rule(d, ov)
    if notes is not None:
        notes.append(note)
    return config_from_dict(d)


def config_to_dict(cfg: TrainConfig) -> dict:
    d = dataclasses.asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
