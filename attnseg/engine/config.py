"""Experiment configuration: one flat dataclass, short YAML files, ``key=value`` overrides.

A YAML experiment file lists only what differs from the defaults below (a few lines); ``key=value`` pairs on
the command line override it, values parsed as YAML (``lr=0.01``, ``crop=[180,240]``, ``model_kwargs={variant: 8s}``).
The resolved config is saved as ``config.yaml`` in the run directory.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml


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
    optimizer: str = "adamw"              # adamw | sgd
    lr: float = 2e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    warmup_iters: int = 100
    warmup_ratio: float = 0.1
    poly_power: float = 0.9
    min_lr: float = 0.0
    grad_clip: float | None = 10.0
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


def _coerce(name: str, value, ftype):
    if isinstance(value, list) and name in ("crop", "scale_range", "eval_crop", "eval_stride", "eval_scales"):
        return tuple(value)
    return value


def config_from_dict(d: dict) -> TrainConfig:
    names = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise KeyError(f"unknown config keys {unknown}; valid keys: {', '.join(sorted(names))}")
    return TrainConfig(**{k: _coerce(k, v, names[k].type) for k, v in d.items()})


def parse_overrides(pairs: list[str]) -> dict:
    out = {}
    for p in pairs:
        key, sep, raw = p.partition("=")
        if not sep or not key:
            raise ValueError(f"override {p!r} is not key=value (for example lr=0.01)")
        if "." in key:  # model_kwargs.variant=8s
            head, _, sub = key.partition(".")
            out.setdefault(head, {})[sub] = yaml.safe_load(raw)
        else:
            out[key] = yaml.safe_load(raw)
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> TrainConfig:
    d = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist; see configs/ for examples")
        d = yaml.safe_load(path.read_text()) or {}
        if not isinstance(d, dict):
            raise ValueError(f"config file {path} must hold a mapping of key: value lines")
    ov = overrides if isinstance(overrides, dict) else parse_overrides(overrides or [])
    for k, v in ov.items():
        if isinstance(v, dict) and isinstance(d.get(k), dict):
            d[k] = {**d[k], **v}
        else:
            d[k] = v
    return config_from_dict(d)


def config_to_dict(cfg: TrainConfig) -> dict:
    d = dataclasses.asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
