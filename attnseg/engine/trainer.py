"""The training loop: one process or many (torchrun), resumable, evaluated through ``engine.inference``.

Reproducibility: the data order of epoch e is a permutation drawn from (seed, e); the augmentation of sample i in
epoch e is drawn from (seed, e, i) (``data.sample_seed``); dropout draws from the torch RNG, saved in the
checkpoint. A run resumed from ``last.pt`` therefore continues on exactly the batches it would have seen.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..data import build_dataset, task_of
from ..data.labels import LabelSpec
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transforms, train_transforms
from ..losses import class_pixel_stats, median_frequency_weights, segmentation_loss
from ..models import create_model, model_task
from . import checkpoint as ckpt_io
from .classification import evaluate_classification
from .config import TrainConfig, config_to_dict, save_config
from .distributed import all_reduce_mean, barrier, cleanup, init_distributed, wrap_model
from .inference import InferenceConfig, evaluate
from .instance_inference import InstanceInferenceConfig, evaluate_instances
from .precision import Precision, resolve_device

log = logging.getLogger("attnseg")


class NonFiniteLoss(FloatingPointError):
    """Training stopped on NaN/Inf; the message says which step the kept checkpoint holds."""


class EpochBatchSampler(torch.utils.data.Sampler):
    """Yields this rank's share of each global batch of epoch ``epoch``, starting at global batch ``start``.

    Global batch b = perm[b*G:(b+1)*G] with G = batch_size * world; rank r takes its r-th slice of batch_size.
    A 1-process run with batch_size G therefore sees the same global batches as N processes of G/N each.
    """

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1, start: int = 0):
        self.n, self.bs, self.rank, self.world, self.start = n, batch_size, rank, world, start
        g = torch.Generator().manual_seed(seed * 100003 + epoch)
        self.perm = torch.randperm(n, generator=g).tolist()
        self.global_bs = batch_size * world
        if n < self.global_bs:
            raise ValueError(f"the training set has {n} images, fewer than one global batch of {self.global_bs}; "
                             "lower batch_size")

    def __len__(self):
        return self.n // self.global_bs - self.start

    def __iter__(self):
        for b in range(self.start, self.n // self.global_bs):
            g = self.perm[b * self.global_bs:(b + 1) * self.global_bs]
            yield g[self.rank * self.bs:(self.rank + 1) * self.bs]


def lr_at(cfg: TrainConfig, step: int, progress: float) -> float:
    """Linear warmup from warmup_ratio*lr over warmup_iters steps, then poly decay by ``progress`` in [0, 1]; or
    (``lr_schedule=staircase``) lr · lr_decay^floor(step / lr_decay_steps), after the same warmup."""
    if cfg.lr_schedule == "staircase":
        lr = cfg.lr * cfg.lr_decay ** (step // cfg.lr_decay_steps)
    else:
        lr = (cfg.lr - cfg.min_lr) * max(0.0, 1.0 - progress) ** cfg.poly_power + cfg.min_lr
    if step < cfg.warmup_iters:
        lr *= cfg.warmup_ratio + (1 - cfg.warmup_ratio) * step / cfg.warmup_iters
    return lr


def build_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """No weight decay on biases and normalisation parameters (1-D tensors)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, eps=cfg.adam_eps)
    if cfg.optimizer == "adam":  # weight decay added to the gradient (L2), as TensorFlow's wd · l2_loss
        return torch.optim.Adam(groups, lr=cfg.lr, eps=cfg.adam_eps)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    raise ValueError(f"optimizer {cfg.optimizer!r} unknown; choose adamw, adam or sgd")


def inference_config(cfg: TrainConfig) -> InferenceConfig:
    test_scale = cfg.test_scale if cfg.test_scale is not None else cfg.base_scale
    crop = cfg.eval_crop or (cfg.crop if cfg.eval_mode == "slide" else None)
    return InferenceConfig(mode=cfg.eval_mode, crop=crop, stride=cfg.eval_stride, scales=tuple(cfg.eval_scales),
                           flip=cfg.eval_flip, test_scale=test_scale)


#: what best.safetensors may be selected by (|DiC|, AvgFP and AvgFN: lower is better)
SEMANTIC_VAL_METRICS = ("mIoU", "aAcc", "mAcc")
CLASSIFICATION_VAL_METRICS = ("accuracy", "mAcc")
INSTANCE_VAL_METRICS = ("DSB", "SBD", "|DiC|", "fgDice", "PQ", "AP", "AP50", "AP75", "mAP", "mAP50", "MWCov",
                        "MUCov")


def instance_inference_config(cfg: TrainConfig) -> InstanceInferenceConfig:
    test_scale = cfg.test_scale if cfg.test_scale is not None else cfg.base_scale
    return InstanceInferenceConfig(test_scale=test_scale, max_side=cfg.tile_max_side, tile=cfg.tile_size,
                                   overlap=cfg.tile_overlap)


def instance_augment(cfg: TrainConfig):
    """The instance training pipeline: random scale (relative to base_scale), crop (instances cut below 8 px
    dropped), with ``flip`` one of the eight flips/rotations (nuclei and leaves have no up), with ``jitter``
    brightness/contrast."""
    from ..data import instance_transforms as it
    ts = [it.RandomScale(cfg.scale_range[0] * cfg.base_scale, cfg.scale_range[1] * cfg.base_scale),
          it.RandomCrop(tuple(cfg.crop))]
    if cfg.flip:
        ts.append(it.RandomD4())
    if cfg.jitter:
        ts.append(it.Photometric())
    return it.Compose(ts)


def git_hash() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


class JsonLog:
    def __init__(self, path: Path | None):
        self.path = path

    def write(self, record: dict):
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def rewind(self, step: int, final_val_follows: bool = False) -> int:
        """Drop the records of steps after ``step`` (logged after the checkpoint a resume starts from, so they will
        be logged again) and any half-written last line; returns how many records were dropped. Without this, a
        resumed run's learning curve would loop back. ``final_val_follows``: the run is complete and its final
        validation runs again, so a val record at ``step`` is dropped too."""
        if self.path is None or not self.path.is_file():
            return 0
        keep, dropped = [], 0
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill
                dropped += 1
                continue
            kind, at = rec.get("kind"), rec.get("step", 0)
            if (kind == "train" and at > step) or (kind == "val" and (at > step or (final_val_follows and at == step))):
                dropped += 1
            else:
                keep.append(line)
        if dropped:
            ckpt_io.atomic_write_text(self.path, "".join(k + "\n" for k in keep))
        return dropped


def class_weights_for(cfg: TrainConfig, dataset, run_dir: Path) -> np.ndarray | None:
    if cfg.class_weights is None:
        return None
    K = dataset.spec.num_classes
    if isinstance(cfg.class_weights, (list, tuple)):
        if len(cfg.class_weights) != K:
            raise ValueError(f"class_weights has {len(cfg.class_weights)} values but the dataset has {K} classes")
        return np.asarray(cfg.class_weights, np.float64) ** cfg.class_weight_power
    if cfg.class_weights != "median_freq":
        raise ValueError(f"class_weights {cfg.class_weights!r} unknown; use median_freq or a list of {K} floats")
    counts, pix = class_pixel_stats((dataset.load(i)[1] for i in range(len(dataset))), K, dataset.spec.ignore_index)
    w = median_frequency_weights(counts, pix) ** cfg.class_weight_power
    (run_dir / "class_weights.json").write_text(json.dumps(dict(zip(dataset.spec.names, w.round(4).tolist()))))
    return w


class Trainer:
    def __init__(self, cfg: TrainConfig, command: str | None = None):
        self.cfg = cfg
        self.command = command or " ".join(sys.argv)
        device = resolve_device(cfg.device)
        self.rank, self.local_rank, self.world, device = init_distributed(device)
        self.main = self.rank == 0
        self.prec = Precision.resolve(device, cfg.precision, cfg.channels_last)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.manual_seed(cfg.seed)
        self.task = model_task(cfg.model)
        self.train_set = build_dataset(cfg.data, cfg.train_split, cache=cfg.cache, seed=cfg.seed)
        if task_of(self.train_set) != self.task:
            raise ValueError(f"model {cfg.model} predicts {self.task} but {cfg.data} is a {task_of(self.train_set)} "
                             "dataset; pick a model of that task (attnseg models) or another dataset")
        if self.task == "instances":
            self._setup_instance_data()
        elif self.task == "classification":
            self._setup_classification_data()
        else:
            self._setup_semantic_data()
        self.num_params = sum(p.numel() for p in self.model.parameters())
        self.optimizer = build_optimizer(cfg, self.model)
        # fp16 (CUDA only) needs loss scaling against gradient underflow; bf16 and fp32 do not
        self.scaler = torch.amp.GradScaler(self.prec.device.type, enabled=self.prec.dtype == torch.float16)
        self.step, self.epoch, self.batch_in_epoch, self.elapsed = 0, 0, 0, 0.0
        self.best = -1e18  # below any score (|DiC| is negated)
        self.last_metrics = None
        self.saved_step = None  # the step that last.pt holds (None: no checkpoint written or found yet)
        self.refused_step = None  # the last step whose non-finite state save() refused
        self.log = JsonLog(self.run_dir / "log.jsonl" if self.main else None)
        self.git = git_hash()
        if not self._maybe_resume() and cfg.init_from:
            self._init_from(cfg.init_from)
        self.model = self.prec.model(self.model)
        self.ddp_model = wrap_model(self.model, self.prec.device, self.world)
        if self.main:
            save_config(cfg, self.run_dir / "config.yaml")
        self.tb = None
        if cfg.tensorboard and self.main:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(self.run_dir / "tb"))
            except ImportError:
                log.warning("tensorboard is not installed (pip install attnseg[tensorboard]); "
                            "logging to log.jsonl only")

    def _setup_semantic_data(self):
        cfg = self.cfg
        self.spec = self.train_set.spec
        self.train_set.transform = train_transforms(
            cfg.crop, cfg.scale_range, cfg.base_scale, self.spec.ignore_index, cfg.flip, cfg.jitter,
            cfg.cat_max_ratio, IMAGENET_MEAN, IMAGENET_STD)
        self.val_set = build_dataset(cfg.val_data or cfg.data, cfg.val_split, transform=eval_transforms(),
                                     cache=cfg.cache, seed=cfg.seed)
        if self.val_set.spec.names != self.spec.names:
            raise ValueError(f"train and val datasets have different classes: {self.spec.names} vs "
                             f"{self.val_set.spec.names}")
        # the model before any file is written and before minutes of decoding: a wrong name or option fails at once
        self.model = create_model(cfg.model, num_classes=self.spec.num_classes, **cfg.model_kwargs)
        self.run_dir = Path(cfg.run_dir)
        (self.run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        # decode and check every sample once before training (and before workers fork; fills the caches when
        # cache=true): a bad file or an all-ignore training split stops here, not at step 900 or at validation
        self.train_set.check_labels(require_classes=True)
        self.val_set.check_labels()
        self.class_weights = class_weights_for(cfg, self.train_set, self.run_dir)
        self.infer_cfg = inference_config(cfg)
        self.val_metric = cfg.val_metric or "mIoU"
        if self.val_metric not in SEMANTIC_VAL_METRICS:
            raise ValueError(f"val_metric {self.val_metric!r} is not computed for semantic models; choose one of "
                             f"{', '.join(SEMANTIC_VAL_METRICS)}")

    def _setup_instance_data(self):
        """Instance datasets: id-keeping augmentation, the model's own loss, instance metrics at validation."""
        cfg = self.cfg
        names = self.train_set.class_names
        # instance class k is spec class k; class 0 is the background (as in the semantic label maps)
        self.spec = LabelSpec(["background", *names])
        self.train_set.augment = instance_augment(cfg)
        from ..data.transforms import Normalize
        self.train_set.transform = Normalize(IMAGENET_MEAN, IMAGENET_STD)
        self.val_set = build_dataset(cfg.val_data or cfg.data, cfg.val_split, cache=cfg.cache, seed=cfg.seed)
        if task_of(self.val_set) != "instances" or self.val_set.class_names != names:
            raise ValueError(f"train and val datasets must both hold instances of the same classes: {names} vs "
                             f"{getattr(self.val_set, 'class_names', 'a semantic dataset')}")
        self.val_set.transform = Normalize(IMAGENET_MEAN, IMAGENET_STD)
        self.model = create_model(cfg.model, num_classes=len(names), **cfg.model_kwargs)
        self.run_dir = Path(cfg.run_dir)
        (self.run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        self.train_set.check_labels(require_instances=True)
        self.val_set.check_labels()
        self.class_weights = None
        self.infer_cfg = instance_inference_config(cfg)
        self.val_metric = cfg.val_metric or "DSB"
        if self.val_metric not in INSTANCE_VAL_METRICS:
            raise ValueError(f"val_metric {self.val_metric!r} is not an instance metric; choose one of "
                             f"{', '.join(INSTANCE_VAL_METRICS)}")
        semantic = [k for k, default in (("eval_mode", "whole"), ("eval_scales", (1.0,)), ("eval_flip", False),
                                         ("eval_crop", None), ("eval_stride", None))
                    if getattr(cfg, k) != default]
        if semantic:
            raise ValueError(f"{', '.join(semantic)} set the semantic inference modes; {cfg.model} is an instance "
                             "model: it tiles large images by tile_max_side, tile_size and tile_overlap")

    def _setup_classification_data(self):
        """Classification datasets (digits) draw their own translations, distortions and clutter per epoch: the image
        pipeline keys of the segmentation tasks do not apply and are refused when changed."""
        cfg = self.cfg
        names = self.train_set.class_names
        self.spec = LabelSpec(names)
        self.val_set = build_dataset(cfg.val_data or cfg.data, cfg.val_split, cache=cfg.cache, seed=cfg.seed)
        if task_of(self.val_set) != "classification" or self.val_set.class_names != names:
            raise ValueError(f"train and val datasets must both be classification datasets of the same classes: "
                             f"{names} vs {getattr(self.val_set, 'class_names', 'a ' + task_of(self.val_set))}")
        if self.val_set.size != self.train_set.size:
            raise ValueError(f"train images are {self.train_set.size} but val images {self.val_set.size}; a classifier "
                             "is validated at its training size")
        defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
        pipeline = [k for k in ("crop", "scale_range", "base_scale", "flip", "jitter", "cat_max_ratio", "eval_mode",
                                "eval_scales", "eval_flip", "eval_crop", "eval_stride", "test_scale",
                                "class_weights", "aux_weight", "label_smoothing", "embedding_weight")
                    if getattr(cfg, k) != defaults[k]]
        if pipeline:
            raise ValueError(f"{', '.join(pipeline)} set the segmentation image pipeline or loss; {cfg.model} is a "
                             f"classifier with its own loss and {cfg.data} draws its own augmentation (see "
                             "attnseg.data.digits)")
        self.model = create_model(cfg.model, num_classes=len(names), **cfg.model_kwargs)
        size = getattr(self.model, "expected_size", None)   # a model built for one input size (flatten_size, ...)
        if size is not None and tuple(size) != tuple(self.train_set.size):
            raise ValueError(f"{cfg.model} was built for {size[0]}x{size[1]} images ({self.model.size_option}) but "
                             f"{cfg.data} holds {self.train_set.size[0]}x{self.train_set.size[1]} images; set "
                             f"model_kwargs.{self.model.size_option.split('=')[0]} to match")
        self.run_dir = Path(cfg.run_dir)
        (self.run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        self.train_set.check_labels()
        self.val_set.check_labels()
        self.class_weights = None
        self.infer_cfg = None
        self.val_metric = cfg.val_metric or "accuracy"
        if self.val_metric not in CLASSIFICATION_VAL_METRICS:
            raise ValueError(f"val_metric {self.val_metric!r} is not a classification metric; choose one of "
                             f"{', '.join(CLASSIFICATION_VAL_METRICS)}")

    # -- state -------------------------------------------------------------------------------------------------
    def meta(self) -> dict:
        if self.task == "classification":
            pre = {"mean": [0.0], "std": [1.0], "range": [0, 1]}   # size and channels: meta["inference"]
        else:
            pre = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "base_scale": self.cfg.base_scale,
                   "test_scale": self.infer_cfg.test_scale}
        return {
            "model": self.cfg.model, "model_kwargs": self.cfg.model_kwargs, "classes": self.spec.to_dict(),
            "preprocessing": pre,
            "task": self.task,
            "inference": self._inference_meta(),
            "config": config_to_dict(self.cfg), "num_params": self.num_params, "command": self.command,
            "step": self.step, "elapsed_s": round(self.elapsed, 1), "metrics": self.last_metrics,
            "precision": self.prec.name, "world_size": self.world, "git": self.git,
            "versions": {"attnseg": __import__("attnseg").__version__, "torch": torch.__version__,
                         "python": platform.python_version()},
        }

    def _inference_meta(self) -> dict:
        c = self.infer_cfg
        if self.task == "classification":
            return {"input_size": list(self.train_set.size), "channels": self.model.in_channels}
        if self.task == "instances":
            return {"test_scale": c.test_scale, "max_side": c.max_side, "tile": c.tile, "overlap": c.overlap}
        return {"mode": c.mode, "crop": c.crop, "stride": c.stride, "scales": list(c.scales), "flip": c.flip,
                "test_scale": c.test_scale}

    def _init_from(self, source: str) -> None:
        """Start from the weights of another run (e.g. Ren & Zemel's box-network pre-training): every tensor whose
        name and shape match loads; the rest keeps its initialisation. Refuses a source that shares nothing."""
        sd, meta = ckpt_io.read_checkpoint(source)
        own = self.model.state_dict()
        fits = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
        if not fits:
            raise ValueError(f"init_from={source}: none of its {len(sd)} tensors fits {self.cfg.model} (names or "
                             "shapes differ); start it from a run of the same model")
        self.model.load_state_dict(fits, strict=False)
        fresh = sorted(set(own) - set(fits))
        if self.main:
            print(f"init_from {source} ({meta.get('model', '?')}): {len(fits)} of {len(own)} tensors loaded"
                  + (f"; {len(fresh)} start fresh ({', '.join(fresh[:4])}{', ...' if len(fresh) > 4 else ''})"
                     if fresh else ""), flush=True)

    def _maybe_resume(self) -> bool:
        """Continue from run_dir's last.pt when it exists (and resume is on); True when it did."""
        path = self.run_dir / "checkpoints" / "last.pt"
        if not (self.cfg.resume and path.is_file()):
            if self.main and (self.run_dir / "log.jsonl").is_file():
                why = ("resume=false" if not self.cfg.resume else
                       f"no checkpoint was written there yet ({path} does not exist)")
                dropped = self.log.rewind(0)
                print(f"starting from step 0 in {self.run_dir}, which holds an earlier log: {why}"
                      + (f"; its {dropped} step records are dropped from log.jsonl" if dropped else ""), flush=True)
            return False
        state = ckpt_io.load_training_state(path)
        if state["meta"].get("model") != self.cfg.model:
            raise ValueError(f"{path} holds a {state['meta'].get('model')} run but the config asks for "
                             f"{self.cfg.model}; use another run_dir or resume=false")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.batch_in_epoch, self.elapsed = int(state["batch_in_epoch"]), float(state["elapsed"])
        self.best = float(state.get("best", -1.0))
        self.last_metrics = state["meta"].get("metrics")
        torch.set_rng_state(state["rng_cpu"])
        if "rng_cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        self.saved_step = self.step
        if self.main:
            dropped = self.log.rewind(self.step, final_val_follows=self.done())
            print(f"resumed from {path} at step {self.step} (epoch {self.epoch}, batch {self.batch_in_epoch})"
                  + (f"; {dropped} log records after step {self.step} are dropped and will be logged again"
                     if dropped else ""), flush=True)
        return True

    def save(self) -> bool:
        """Write last.pt; refuses (returns False) when the model or optimiser holds NaN/Inf, so that last.pt always
        holds the last finite state."""
        if not self.main:
            return True
        if self.refused_step == self.step:  # this step's state was refused already (the NaN stop asks again)
            return False
        state = {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                 "elapsed": self.elapsed, "best": self.best}
        if self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()
        try:
            ckpt_io.save_training_state(self.run_dir / "checkpoints" / "last.pt", self.model, self.optimizer, state,
                                        self.meta())
        except ckpt_io.NonFiniteStateError as e:
            log.warning("not saving step %d: %s", self.step, e)
            self.refused_step = self.step
            return False
        self.saved_step = self.step
        return True

    def save_weights(self, name: str) -> None:
        try:
            ckpt_io.save_weights(self.run_dir / "checkpoints" / name, self.model, self.meta())
        except ckpt_io.NonFiniteStateError:
            raise NonFiniteLoss(f"the weights hold NaN/Inf at step {self.step} (with a finite loss); {name} is not "
                                f"written. Lower lr or set precision=fp32. {self.kept_state()}") from None

    def kept_state(self) -> str:
        """Where the last finite state is, for the messages of a stopped run."""
        path = self.run_dir / "checkpoints" / "last.pt"
        if self.saved_step is None:
            return "No checkpoint was written yet: the same command starts again from step 0."
        return f"{path} holds step {self.saved_step}, the last finite state: the same command resumes from it."

    # -- loop --------------------------------------------------------------------------------------------------
    def done(self) -> bool:
        if self.cfg.time_budget is not None:
            return self.elapsed >= self.cfg.time_budget * 60
        return self.step >= self.cfg.iters

    def progress(self) -> float:
        if self.cfg.time_budget is not None:
            return min(1.0, self.elapsed / (self.cfg.time_budget * 60))
        return min(1.0, self.step / self.cfg.iters)

    def loader(self):
        self.train_set.set_epoch(self.epoch)
        sampler = EpochBatchSampler(len(self.train_set), self.cfg.batch_size, self.cfg.seed, self.epoch, self.rank,
                                    self.world, self.batch_in_epoch)
        # the loader's own generator: creating it must not draw from the global RNG that dropout uses
        gen = torch.Generator().manual_seed(self.cfg.seed * 7919 + self.epoch)
        return torch.utils.data.DataLoader(self.train_set, batch_sampler=sampler, num_workers=self.cfg.workers,
                                           generator=gen,
                                           pin_memory=self.prec.device.type == "cuda",
                                           prefetch_factor=4 if self.cfg.workers else None)

    def train_step(self, batch) -> tuple[float, dict]:
        cfg = self.cfg
        lr = lr_at(cfg, self.step, self.progress())
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        x = self.prec.images(batch["image"])
        if self.task == "instances":
            y = batch["instances"].to(self.prec.device, non_blocking=True)
            # recurrent models teacher-force the ground truth on a schedule of the training step
            extra = {"targets": y} if self.model.uses_targets else {}
            if self.model.uses_classes:   # proposal models classify their instances (1..K per instance pixel)
                extra["classes"] = batch["classes"].to(self.prec.device, non_blocking=True)
            self.model.set_training_step(self.step)
            with self.prec.autocast():
                out = self.ddp_model(x, **extra)
            loss, parts = self.model.loss(out, y)  # the model owns its loss (computed in float32)
        elif self.task == "classification":
            y = batch["label"].to(self.prec.device, non_blocking=True)
            with self.prec.autocast():
                out = self.ddp_model(x)
            loss, parts = self.model.loss(out, y)  # cross-entropy; RAM adds REINFORCE and its baseline
        else:
            y = batch["label"].to(self.prec.device, non_blocking=True)
            with self.prec.autocast():
                out = self.ddp_model(x)
            loss, parts = segmentation_loss(out, y, self.spec.ignore_index, self.class_weights, cfg.aux_weight,
                                            cfg.label_smoothing, cfg.embedding_weight)
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"the loss became {loss.item()} at step {self.step}; lower lr (now {lr:.2e}) or set "
                                "precision=fp32.")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if cfg.grad_clip or cfg.grad_clip_value:
            self.scaler.unscale_(self.optimizer)
        if cfg.grad_clip_value:
            torch.nn.utils.clip_grad_value_(self.model.parameters(), cfg.grad_clip_value)
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return lr, {"loss": loss.detach(), **parts}

    def validate(self, final: bool = False) -> tuple[dict, object]:
        if self.task == "instances":
            return self.validate_instances(final)
        if self.task == "classification":
            return self.validate_classification(final)
        limit = None if final else self.cfg.val_max_images
        t = time.time()
        metrics, cm = evaluate(self.model, self.val_set, self.infer_cfg, self.prec, limit, self.rank, self.world)
        metrics["eval_s"] = round(time.time() - t, 1)
        if self.main:
            rec = {"kind": "val", "step": self.step, "epoch": self.epoch, "elapsed": round(self.elapsed, 1),
                   "mode": self.infer_cfg.describe(), "images": min(len(self.val_set), limit or 10**9),
                   **{k: metrics[k] for k in ("aAcc", "mIoU", "mAcc")}, "IoU": metrics["IoU"]}
            self.log.write(rec)
            if self.tb:
                self.tb.add_scalar("val/mIoU", metrics["mIoU"], self.step)
            print(f"[val] step {self.step} {self.elapsed / 60:.1f} min: mIoU {100 * metrics['mIoU']:.2f} "
                  f"aAcc {100 * metrics['aAcc']:.2f} mAcc {100 * metrics['mAcc']:.2f} ({rec['images']} images, "
                  f"{rec['mode']}, {metrics['eval_s']} s)", flush=True)
        self.last_metrics = {k: metrics[k] for k in ("aAcc", "mIoU", "mAcc", "IoU", "Acc")}
        if self.main and metrics[self.val_metric] > self.best:
            self.best = metrics[self.val_metric]
            self.save_weights("best.safetensors")
        return metrics, cm

    def validate_instances(self, final: bool = False) -> tuple[dict, list]:
        limit = None if final else self.cfg.val_max_images
        t = time.time()
        summary, rows = evaluate_instances(self.model, self.val_set, self.infer_cfg, self.prec, limit, self.rank,
                                           self.world)
        summary["eval_s"] = round(time.time() - t, 1)
        if self.val_metric not in summary:   # AP needs pycocotools
            raise ValueError(f"val_metric {self.val_metric!r} was not computed ({summary.get('AP_note', '')}); "
                             "choose DSB or SBD")
        keys = [k for k in ("DSB", "AP", "AP50", "SBD", "|DiC|", "fgDice", "PQ") if k in summary]
        if self.main:
            rec = {"kind": "val", "step": self.step, "epoch": self.epoch, "elapsed": round(self.elapsed, 1),
                   "mode": self.infer_cfg.describe(), "images": summary["images"],
                   **{k: summary[k] for k in keys}, "s_per_image": summary["s_per_image"]}
            self.log.write(rec)
            if self.tb:
                self.tb.add_scalar(f"val/{self.val_metric}", summary[self.val_metric], self.step)
            shown = " ".join(f"{k} {summary[k]:.3f}" for k in keys)
            print(f"[val] step {self.step} {self.elapsed / 60:.1f} min: {shown} ({summary['images']} images, "
                  f"{summary['eval_s']} s)", flush=True)
        self.last_metrics = {k: v for k, v in summary.items() if isinstance(v, (int, float))}
        score = summary[self.val_metric] * (-1 if self.val_metric in ("|DiC|", "AvgFP", "AvgFN") else 1)
        if self.main and score > self.best:
            self.best = score
            self.save_weights("best.safetensors")
        return summary, rows

    def validate_classification(self, final: bool = False) -> tuple[dict, None]:
        limit = None if final else self.cfg.val_max_images
        t = time.time()
        s = evaluate_classification(self.model, self.val_set, self.prec, limit, self.rank, self.world)
        s["eval_s"] = round(time.time() - t, 1)
        if self.main:
            rec = {"kind": "val", "step": self.step, "epoch": self.epoch, "elapsed": round(self.elapsed, 1),
                   "images": s["samples"], "accuracy": s["accuracy"], "error": s["error"], "mAcc": s["mAcc"]}
            self.log.write(rec)
            if self.tb:
                self.tb.add_scalar("val/accuracy", s["accuracy"], self.step)
            print(f"[val] step {self.step} {self.elapsed / 60:.1f} min: accuracy {100 * s['accuracy']:.2f} % "
                  f"(error {100 * s['error']:.2f} %, {s['samples']} samples, {s['eval_s']} s)", flush=True)
        self.last_metrics = {k: s[k] for k in ("accuracy", "error", "mAcc")}
        if self.main and s[self.val_metric] > self.best:
            self.best = s[self.val_metric]
            self.save_weights("best.safetensors")
        return s, None

    def fit(self) -> dict:
        cfg = self.cfg
        bar = None
        if self.main and cfg.progress:
            from tqdm import tqdm
            total = cfg.iters if cfg.time_budget is None else int(cfg.time_budget * 60)
            bar = tqdm(total=total, initial=self.step if cfg.time_budget is None else int(self.elapsed),
                       unit="it" if cfg.time_budget is None else "s", dynamic_ncols=True,
                       mininterval=1.0 if sys.stderr.isatty() else 30.0, desc="train")
        stop = {"flag": False}
        old_handler = None
        if self.main and threading_is_main():
            old_handler = signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))
        window_t, window_n = time.time(), 0
        self.log.write({"kind": "start", "step": self.step, "seed": cfg.seed, "deterministic": cfg.deterministic,
                        "precision": self.prec.name, "device": str(self.prec.device), "world_size": self.world,
                        "train_images": len(self.train_set), "val_images": len(self.val_set),
                        "num_params": self.num_params, "torch": torch.__version__, "git": self.git,
                        "threads": torch.get_num_threads(), "command": self.command})
        if self.main:
            print(f"{cfg.model}: {self.num_params / 1e6:.2f}M parameters, {len(self.train_set)} training images, "
                  f"{self.prec.name} on {self.prec.device}, seed {cfg.seed}, world size {self.world}", flush=True)
        try:
            while not self.done() and not stop["flag"]:
                for batch in self.loader():
                    t0 = time.time()
                    lr, parts = self.train_step(batch)
                    self.step += 1
                    self.batch_in_epoch += 1
                    dt = time.time() - t0
                    self.elapsed += dt
                    window_n += batch["image"].shape[0] * self.world
                    if self.step % cfg.log_interval == 0 or self.step == 1:
                        now = time.time()
                        img_s = window_n / max(now - window_t, 1e-9)
                        window_t, window_n = now, 0
                        names = list(parts)
                        values = all_reduce_mean(torch.stack([parts[k].float() for k in names]).cpu())
                        rec = {"kind": "train", "step": self.step, "epoch": self.epoch, "lr": lr,
                               "elapsed": round(self.elapsed, 2), "img_s": round(img_s, 2),
                               **{k: round(float(v), 6) for k, v in zip(names, values)}}
                        self.log.write(rec)
                        if self.tb:
                            self.tb.add_scalar("train/loss", rec["loss"], self.step)
                        if bar is not None:
                            bar.set_postfix(loss=f"{rec['loss']:.3f}", lr=f"{lr:.1e}", img_s=f"{img_s:.1f}")
                    if bar is not None:
                        bar.update(1 if cfg.time_budget is None else int(self.elapsed) - bar.n)
                    if cfg.ckpt_interval and self.step % cfg.ckpt_interval == 0 and not self.save():
                        raise NonFiniteLoss(f"the weights or optimiser state hold NaN/Inf after step {self.step}; "
                                            f"lower lr (now {lr:.2e}) or set precision=fp32.")
                    if cfg.val_interval and self.step % cfg.val_interval == 0 and not self.done():
                        self.validate()
                    if self.done() or stop["flag"]:
                        break
                else:  # the epoch ran to its end (a break means the budget is spent or a stop was asked)
                    self.epoch += 1
                    self.batch_in_epoch = 0
        except NonFiniteLoss as e:
            # the weights may already be broken: save only a finite state, never over the last good one
            self.save()
            raise NonFiniteLoss(f"{e}. {self.kept_state()}") from None
        except (KeyboardInterrupt, Exception):
            # keep the work done so far: the state after the last completed step is consistent
            self.save()
            raise
        finally:
            if bar is not None:
                bar.close()
            if old_handler is not None:
                signal.signal(signal.SIGTERM, old_handler)
        if not self.save():
            raise NonFiniteLoss(f"the weights or optimiser state hold NaN/Inf at the end (step {self.step}); "
                                f"lower lr or set precision=fp32. {self.kept_state()}")
        if stop["flag"]:
            print(f"stopped by SIGTERM at step {self.step}; resume with the same command", flush=True)
            return {}
        metrics, cm = self.validate(final=True)
        if self.main:
            self.save()
            self.save_weights("model.safetensors")
            self.write_report(metrics, cm)
        barrier()
        if self.tb:
            self.tb.close()
        return metrics

    def write_instance_pictures(self) -> list[Path]:
        return _instance_pictures(self)

    def write_report(self, metrics: dict, cm) -> None:
        if self.task == "classification":
            from ..metrics.classification import format_classification, save_classification
            save_classification(self.run_dir, metrics, self.spec.names, extra={
                "step": self.step, "elapsed_s": round(self.elapsed, 1), "precision": self.prec.name,
                "num_params": self.num_params, "model": self.cfg.model, "data": self.cfg.val_data or self.cfg.data,
                "split": self.cfg.val_split})
            text = format_classification(metrics, self.spec.names)
            (self.run_dir / "metrics.txt").write_text(text + "\n")
            print(text, flush=True)
            _glimpse_pictures(self)
            return
        if self.task == "instances":
            from ..metrics.report import format_instance_table, save_instance_metrics
            save_instance_metrics(self.run_dir, metrics, cm, extra={
                "step": self.step, "elapsed_s": round(self.elapsed, 1), "precision": self.prec.name,
                "inference": self.infer_cfg.describe(), "num_params": self.num_params, "model": self.cfg.model,
                "data": self.cfg.val_data or self.cfg.data, "split": self.cfg.val_split})
            (self.run_dir / "metrics.txt").write_text(format_instance_table(metrics) + "\n")
            print(format_instance_table(metrics), flush=True)
            self.write_instance_pictures()
            return
        from .report import write_run_report
        write_run_report(self.run_dir, self.model, self.val_set, self.spec, metrics, cm, self.infer_cfg, self.prec,
                         extra={"step": self.step, "elapsed_s": round(self.elapsed, 1), "precision": self.prec.name,
                                "inference": self.infer_cfg.describe(), "num_params": self.num_params})


def _instance_pictures(trainer: Trainer, count: int = 4) -> list[Path]:
    """``pictures/<name>.png`` for the first ``count`` val images: image | ground truth | prediction."""
    from PIL import Image

    from ..viz.instances import comparison_panel
    from .instance_inference import infer_instances
    out = trainer.run_dir / "pictures"
    out.mkdir(exist_ok=True)
    written = []
    for i in range(min(count, len(trainer.val_set))):
        image, gt = trainer.val_set.get(i)
        res = infer_instances(trainer.model, trainer.val_set[i]["image"], trainer.infer_cfg, trainer.prec)
        path = out / f"{trainer.val_set.sample_name(i).replace('/', '_')}.png"
        Image.fromarray(comparison_panel(image, gt, res["ids"])).save(path)
        written.append(path)
    return written


def _glimpse_pictures(trainer: Trainer, count: int = 4) -> list[Path]:
    """``pictures/<name>.png`` for the first ``count`` val samples: the glimpses step by step."""
    from PIL import Image

    from ..viz.glimpses import glimpse_strip
    from .classification import classify
    out = trainer.run_dir / "pictures"
    out.mkdir(exist_ok=True)
    written = []
    for i in range(min(count, len(trainer.val_set))):
        item = trainer.val_set[i]
        res = classify(trainer.model, item["image"][None], trainer.prec, glimpses=True)
        image = (item["image"][0].numpy() * 255).astype(np.uint8)
        pred = int(res["probs"][0].argmax())
        title = f"true {trainer.spec.names[int(item['label'])]}, predicted {trainer.spec.names[pred]}"
        path = out / f"{trainer.val_set.sample_name(i)}.png"
        Image.fromarray(glimpse_strip(image, res["glimpses"][0], title)).save(path)
        written.append(path)
    return written


def threading_is_main() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


def train(cfg: TrainConfig, command: str | None = None) -> dict:
    trainer = Trainer(cfg, command)
    try:
        return trainer.fit()
    finally:
        cleanup()
