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
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402  (the helpers shared by the benchmark scripts)
    BUCKET_DEFINITION,
    FUSION_VARIANTS,
    RESUME_KEYS,
    SIZE_BUCKETS,
    bucket_index,
    emit,
    machine_info,
    parse_size,
    parse_sweep_args,
    pct,
    run_or_reuse,
    set_threads,
)
from common import scale_variant_model as variant_model  # noqa: E402

from attnseg.engine.config import TrainConfig, config_to_dict, load_config  # noqa: E402
from attnseg.engine.inference import infer  # noqa: E402
from attnseg.metrics import ConfusionMatrix  # noqa: E402
from attnseg.metrics.segmentation import metrics_from_confusion  # noqa: E402

VARIANTS = ("single", *FUSION_VARIANTS)


# ---------------------------------------------------------------------------------------- size buckets


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
