"""Attention to Scale on the synthetic scenes: single scale vs average / max / attention fusion of 3 scales, each
with and without extra supervision (E-Supv), under one training budget, scored overall and by object size.

    python benchmarks/scale_synthetic.py --out runs/bench/scale_synthetic.json        # ~37 min on 2 CPU cores
    python benchmarks/scale_synthetic.py --iters 5 --seeds 0 --variants single,attention_esupv --size 64x80

Variants (``--variants``, comma list): ``single`` (the base model itself), ``avg``, ``avg_esupv``, ``max``,
``max_esupv``, ``attention``, ``attention_esupv`` (``attention_to_scale`` over the base, ``--scales`` 1,0.75,0.5).
Every variant and seed gets the same budget: iterations, batch, crop, learning rate and schedule, taken from
``configs/synthetic_fcn8s_resnet18.yaml`` with this script's options on top. Seeds change the initialisation,
the data order and the augmentation; the scenes (scene seed 0) are the same for every run. Each run is an
ordinary ``attnseg train`` run (``engine.trainer.Trainer``) in ``--run-root/<variant>/seed<k>``.

Size buckets. Every object instance of a validation scene carries its radius in pixels of the generated image
(``SyntheticScenes.instances``: circle radius or polygon circumradius, log-uniform in [3, 32] px; a line's radius
is its half-length, >= 8 px; a ring's is >= 4 px; a texture region's >= 12 px). Buckets:

    small   r < 8 px        (discs, boxes, triangles, rings only: lines and textures are never this small)
    medium  8 <= r < 16 px
    large   r >= 16 px

For a bucket, the confusion matrix counts the pixels of the visible instances of that bucket (the per-pixel
instance map after occlusion) plus every background pixel; pixels of the other buckets' instances are ignored.
A bucket's mIoU is the mean IoU over the classes present in its ground truth (a class only predicted there lowers
the IoU of the true classes through their false negatives but does not count as a class of its own).
``object_acc`` is the fraction of the bucket's object pixels predicted as their class. Overall ``miou`` is the
engine's validation mIoU (all val pixels, ``ConfusionMatrix`` convention). Val images are scored at their
generated resolution (whole-image inference, the engine's ``infer``).

Sizing: the defaults (96x128 scenes = training crop, batch 8, 300 iterations, 300 train / 100 val scenes, the
config's AdamW lr 3e-3 with 50 warm-up steps) were timed on the 2-core development CPU (fp32 + channels_last, 2
threads, 1 loader worker): 0.24 s per step for the single scale, 0.48-0.60 s for 3 scales (avg < max < attention;
E-Supv adds ~0.02 s), ~10 s of set-up and evaluation per run: about 6.8 s per iteration of all 14 runs, 34 min of
training and 37 min in all. At 128x160 (the scenes' default size) the same budget is ~220 iterations.

Resuming: a run directory with ``bench_result.json`` written by the same settings is reused without training; a
run interrupted during training resumes from its ``checkpoints/last.pt`` (the engine's resume). A run directory
left by different settings stops the script (use another ``--run-root`` or delete it).

Prints one JSON document on stdout (``--out`` also writes it); progress and a markdown table go to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from attnseg.engine.checkpoint import atomic_write_text  # noqa: E402
from attnseg.engine.config import TrainConfig, config_to_dict, load_config  # noqa: E402
from attnseg.engine.distributed import cleanup  # noqa: E402
from attnseg.engine.inference import infer  # noqa: E402
from attnseg.engine.trainer import Trainer  # noqa: E402
from attnseg.metrics import ConfusionMatrix  # noqa: E402
from attnseg.metrics.segmentation import metrics_from_confusion  # noqa: E402

FUSION_VARIANTS = {f"{fusion}{suffix}": (fusion, suffix == "_esupv")
                   for fusion in ("avg", "max", "attention") for suffix in ("", "_esupv")}
VARIANTS = ("single", *FUSION_VARIANTS)
SIZE_BUCKETS = {"small": (0.0, 8.0), "medium": (8.0, 16.0), "large": (16.0, math.inf)}
BUCKET_DEFINITION = (
    "instance radius r in px of the generated image (SyntheticScenes.instances): small r < 8, medium 8 <= r < 16, "
    "large r >= 16. Per bucket: confusion matrix over the pixels of that bucket's visible instances plus all "
    "background pixels (other buckets' instance pixels ignored); mIoU over the classes present in that ground "
    "truth; object_acc = correct / all object pixels of the bucket.")
RESULT_FILE = "bench_result.json"
# settings that must match for a run directory to be reused or resumed
RESUME_KEYS = ("model", "model_kwargs", "data", "crop", "scale_range", "batch_size", "iters", "time_budget", "lr",
               "weight_decay", "warmup_iters", "seed", "precision", "class_weights", "class_weight_power")


# --------------------------------------------------------------------------------------------------- shared

def jsonable(value):
    """Plain JSON: NaN and infinities -> None, tuples -> lists, numpy scalars -> Python."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def emit(doc: dict, out: str | None) -> None:
    text = json.dumps(jsonable(doc), indent=1)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")


def machine_info(device: str) -> dict:
    info = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "cpu": platform.processor() or platform.machine()}
    if device != "cpu" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def check_resumable(cfg: TrainConfig) -> None:
    """Refuse to resume a run directory that was started with other settings."""
    path = Path(cfg.run_dir) / "config.yaml"
    if not path.is_file():
        return
    old = yaml.safe_load(path.read_text()) or {}
    new = config_to_dict(cfg)
    diff = [k for k in RESUME_KEYS if jsonable(old.get(k)) != jsonable(new.get(k))]
    if diff:
        raise SystemExit(f"{cfg.run_dir} holds a run with other settings ({', '.join(diff)}: "
                         f"{[old.get(k) for k in diff]} vs {[new.get(k) for k in diff]}); use another --run-root "
                         "or delete that directory")


def run_or_reuse(cfg: TrainConfig, settings: dict, score, label: str, prune: bool = False) -> dict:
    """Train ``cfg`` with the engine (resuming an interrupted run) and return ``score(trainer, metrics)`` plus
    timings, or the stored result of a finished run with the same ``settings``.

    The result is stored in ``run_dir/bench_result.json``. ``train_seconds`` is the engine's training-step time
    (validation and set-up excluded, summed over resumes); ``wall_seconds`` the wall time of this call.
    """
    run_dir = Path(cfg.run_dir)
    settings = jsonable(settings)
    path = run_dir / RESULT_FILE
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("settings") == settings:
            print(f"[{label}] reusing the finished run in {run_dir}", file=sys.stderr, flush=True)
            return {**stored["result"], "reused": True}
        raise SystemExit(f"{path} was written with other settings; use another --run-root or delete {run_dir}")
    check_resumable(cfg)
    print(f"[{label}] training {cfg.model} {cfg.model_kwargs or ''} in {run_dir}", file=sys.stderr, flush=True)
    t0 = time.time()
    with contextlib.redirect_stdout(sys.stderr):  # the engine's messages; stdout carries only the JSON
        trainer = Trainer(cfg, command=f"{Path(sys.argv[0]).name} [{label}]")
        try:
            metrics = trainer.fit()
        finally:
            cleanup()
        if not metrics:
            raise SystemExit(f"[{label}] training was stopped (SIGTERM); rerun the same command to resume")
        result = score(trainer, metrics)
    steps = trainer.step
    result.update({"iters": steps, "train_seconds": round(trainer.elapsed, 1),
                   "wall_seconds": round(time.time() - t0, 1),
                   "train_img_s": round(steps * cfg.batch_size / max(trainer.elapsed, 1e-9), 2),
                   "num_params": trainer.num_params, "precision": trainer.prec.name,
                   "device": str(trainer.prec.device)})
    atomic_write_text(path, json.dumps(jsonable({"settings": settings, "result": result}), indent=1))
    if prune:  # the final weights (model.safetensors) stay
        for name in ("last.pt", "best.safetensors"):
            (run_dir / "checkpoints" / name).unlink(missing_ok=True)
    print(f"[{label}] done: {trainer.elapsed:.0f} s training, {time.time() - t0:.0f} s wall", file=sys.stderr,
          flush=True)
    return {**result, "reused": False}


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def pct(x) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{100 * x:.1f}"


# ---------------------------------------------------------------------------------------- size buckets

def bucket_index(radius: float) -> int:
    for j, (lo, hi) in enumerate(SIZE_BUCKETS.values()):
        if lo <= radius < hi:
            return j
    raise ValueError(f"radius {radius} falls in no bucket")


def bucket_metrics(mat: np.ndarray, names: list[str]) -> dict:
    m = metrics_from_confusion(mat)
    gt = mat.sum(1)
    present = gt > 0
    iou = np.asarray(m["IoU"], np.float64)
    objects = gt[1:].sum()  # class 0 is the background
    return {
        "miou": float(iou[present].mean()) if present.any() else float("nan"),
        "object_acc": float(np.diag(mat)[1:].sum() / objects) if objects else float("nan"),
        "object_pixels": int(objects),
        "iou": {n: float(iou[c]) for c, n in enumerate(names) if present[c]},
    }


@torch.no_grad()
def size_bucket_eval(model, dataset, infer_cfg, prec) -> dict:
    """Overall and per-size-bucket metrics of ``model`` on a ``SyntheticScenes`` split (see the module doc)."""
    spec = dataset.spec
    K, ignore = spec.num_classes, spec.ignore_index
    overall = ConfusionMatrix(K, ignore)
    per_bucket = [ConfusionMatrix(K, ignore) for _ in SIZE_BUCKETS]
    instances_per_bucket = np.zeros(len(SIZE_BUCKETS), np.int64)
    was_training = model.training
    model.eval()
    for i in range(len(dataset)):
        item = dataset[i]
        scores = infer(model, item["image"][None].to(prec.device), infer_cfg, K, prec.autocast(), prec.channels_last)
        pred = scores.argmax(1)[0].cpu()
        label = item["label"]
        instances, instance_map = dataset.instances(i)
        bucket_of = np.full(len(instances) + 1, -1, np.int64)  # id 0 = background -> -1
        for inst in instances:
            bucket_of[inst["id"]] = bucket_index(inst["radius"])
            if inst["area"] > 0:
                instances_per_bucket[bucket_of[inst["id"]]] += 1
        pixel_bucket = torch.from_numpy(bucket_of[instance_map])  # (H, W)
        overall.update(pred, label)
        for j, cm in enumerate(per_bucket):
            keep = (pixel_bucket == j) | (pixel_bucket == -1)
            cm.update(pred, torch.where(keep, label, torch.full_like(label, ignore)))
    model.train(was_training)
    total = overall.compute()
    by_size = {}
    for j, name in enumerate(SIZE_BUCKETS):
        by_size[name] = {**bucket_metrics(per_bucket[j].mat.numpy(), spec.names),
                         "instances": int(instances_per_bucket[j])}
    return {"miou": total["mIoU"], "aacc": total["aAcc"], "iou": dict(zip(spec.names, total["IoU"])),
            "miou_by_size": {k: v["miou"] for k, v in by_size.items()}, "by_size": by_size,
            "val_images": len(dataset)}


# ------------------------------------------------------------------------------------------------ sweep

def variant_model(variant: str, base: str, scales: tuple) -> tuple[str, dict]:
    if variant == "single":
        return base, {}
    fusion, esupv = FUSION_VARIANTS[variant]
    return "attention_to_scale", {"base": base, "scales": list(scales), "fusion": fusion,
                                  "extra_supervision": esupv}


def make_config(args, variant: str, seed: int) -> TrainConfig:
    model, model_kwargs = variant_model(variant, args.base, args.scales)
    H, W = args.size
    data = f"synthetic:train={args.train_scenes},val={args.val_scenes},size={H}x{W},seed={args.scene_seed}"
    overrides = {"model": model, "model_kwargs": model_kwargs, "data": data, "crop": [H, W], "iters": args.iters,
                 "time_budget": None, "batch_size": args.batch, "seed": seed, "device": args.device,
                 "precision": args.precision, "workers": args.workers, "val_interval": 0,
                 "ckpt_interval": max(50, args.iters // 4), "log_interval": 20, "progress": args.progress,
                 "run_dir": str(Path(args.run_root) / variant / f"seed{seed}")}
    if args.lr is not None:
        overrides["lr"] = args.lr
    cfg = load_config(args.config, overrides)
    cfg.model_kwargs = model_kwargs  # replace, not merge into, the config file's kwargs
    return cfg


def summarise(runs: list[dict], variants: list[str]) -> dict:
    summary = {}
    for v in variants:
        rs = sorted((r for r in runs if r["variant"] == v), key=lambda r: r["seed"])
        if not rs:
            continue
        row = {"seeds": [r["seed"] for r in rs]}
        for key, get in [("miou", lambda r: r["miou"])] + [
                (b, lambda r, b=b: r["miou_by_size"][b]) for b in SIZE_BUCKETS]:
            values = [get(r) for r in rs]
            finite = [x for x in values if x is not None and math.isfinite(x)]
            row[key] = {"mean": float(np.mean(finite)) if finite else None, "per_seed": values}
        row["train_seconds"] = {"mean": float(np.mean([r["train_seconds"] for r in rs])),
                                "per_seed": [r["train_seconds"] for r in rs]}
        summary[v] = row
    if "single" in summary:
        ref = summary["single"]
        for row in summary.values():
            row["delta_vs_single"] = {k: None if row[k]["mean"] is None or ref[k]["mean"] is None
                                      else row[k]["mean"] - ref[k]["mean"] for k in ("miou", *SIZE_BUCKETS)}
    return summary


def markdown(summary: dict) -> str:
    lines = ["| variant | mIoU | small | medium | large | train s |", "|---|---|---|---|---|---|"]
    for v, row in summary.items():
        cells = []
        for k in ("miou", *SIZE_BUCKETS):
            per = ", ".join(pct(x) for x in row[k]["per_seed"])
            cells.append(f"{pct(row[k]['mean'])} ({per})" if len(row[k]["per_seed"]) > 1 else pct(row[k]["mean"]))
        lines.append(f"| {v} | " + " | ".join(cells) + f" | {row['train_seconds']['mean']:.0f} |")
    return "\n".join(lines)


def parse_sweep_args(p: argparse.ArgumentParser, argv, run_root: str, variants) -> argparse.Namespace:
    """The options every sweep shares (run root, pruning, progress bar, JSON file), then parse and check
    ``--variants`` against ``variants``."""
    p.add_argument("--run-root", default=run_root)
    p.add_argument("--prune", action="store_true", help="delete last.pt and best.safetensors of finished runs")
    p.add_argument("--progress", action="store_true", help="the engine's tqdm bar")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in variants]
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {', '.join(variants)}")
    return args


def parse_size(text: str) -> tuple[int, int]:
    h, _, w = text.lower().partition("x")
    return int(h), int(w or h)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--seeds", default="0,1", help="comma list of training seeds")
    p.add_argument("--iters", type=int, default=300, help="optimiser steps per run (all variants)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=parse_size, default=(96, 128), help="scene size = training crop, HxW")
    p.add_argument("--lr", type=float, default=None, help="default: the config's (0.003)")
    p.add_argument("--base", default="fcn8s_resnet18")
    p.add_argument("--scales", default="1,0.75,0.5", type=lambda s: tuple(float(x) for x in s.split(",")))
    p.add_argument("--train-scenes", type=int, default=300)
    p.add_argument("--val-scenes", type=int, default=100)
    p.add_argument("--scene-seed", type=int, default=0)
    p.add_argument("--config", default=str(ROOT / "configs" / "synthetic_fcn8s_resnet18.yaml"))
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--precision", default="auto", help="auto | fp32 | bf16 | fp16 (CUDA)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--workers", type=int, default=1, help="data loader workers")
    args = parse_sweep_args(p, argv, "runs/bench/scale_synthetic", VARIANTS)
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    return args


def main(argv=None):
    args = parse_args(argv)
    set_threads(args.threads)
    t0 = time.time()
    runs = []
    for seed in args.seeds:  # seed-major: a stopped sweep already has one complete seed of every variant
        for variant in args.variants:
            cfg = make_config(args, variant, seed)
            settings = {k: v for k, v in config_to_dict(cfg).items() if k in RESUME_KEYS}
            settings.update(val_data=cfg.val_data, eval="size_buckets_v1")
            label = f"{variant} seed {seed}"
            r = run_or_reuse(cfg, settings, lambda tr, _m: size_bucket_eval(tr.model, tr.val_set, tr.infer_cfg,
                                                                             tr.prec), label, args.prune)
            runs.append({"variant": variant, "seed": seed, "run_dir": cfg.run_dir, **r})
            print(f"[{label}] mIoU {pct(r['miou'])}, by size " + ", ".join(
                f"{b} {pct(r['miou_by_size'][b])}" for b in SIZE_BUCKETS), file=sys.stderr, flush=True)
    summary = summarise(runs, args.variants)
    first = make_config(args, args.variants[0], args.seeds[0])
    doc = {
        "benchmark": "scale_synthetic",
        "settings": {"base": args.base, "scales": list(args.scales), "iters": args.iters, "batch": args.batch,
                     "size": list(args.size), "crop": list(first.crop), "lr": first.lr,
                     "weight_decay": first.weight_decay, "warmup_iters": first.warmup_iters,
                     "scale_range": list(first.scale_range), "data": first.data, "config": args.config,
                     "precision": args.precision, "device": args.device, "workers": args.workers,
                     "seeds": args.seeds, "variants": args.variants, "run_root": args.run_root},
        "size_buckets": {"small": "r < 8", "medium": "8 <= r < 16", "large": "r >= 16",
                         "definition": BUCKET_DEFINITION},
        "runs": runs,
        "summary": summary,
        "wall_seconds": round(time.time() - t0, 1),
        "machine": machine_info(args.device),
    }
    print("\n" + markdown(summary) + "\n", file=sys.stderr, flush=True)
    emit(doc, args.out)


if __name__ == "__main__":
    main()
