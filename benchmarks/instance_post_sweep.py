"""Tune an instance model's post-processing on training images (never on the split it is reported on): the
network runs once per image, then every setting of the grid groups the same maps.

    python benchmarks/instance_post_sweep.py RUN [--data dsb2018:PATH] [--split train] [--images 60]
        [--grid seed_threshold=0.5,0.6,0.7,0.8 boundary_threshold=0.2,0.3,0.4,0.5] [--metric DSB]
        [--out runs/bench/post_sweep.json]

Images: ``--images`` drawn from ``--split`` with a fixed seed (default the run's training data and split); those
tiled at inference (a side above the model's ``max_side``) are skipped and listed. The
grid is the product of the values given per setting (the model's ``post`` names, e.g. ``fg_threshold``,
``seed_threshold``, ``boundary_threshold``, ``min_size`` for the watershed; ``bandwidth``, ``fg_threshold`` for
mean shift). Prints one row per setting (DSB, SBD, |DiC|, AP50 over the images) and the best by ``--metric``,
with the ``attnseg eval ... --post`` flag that applies it. JSON on stdout (and in ``--out``).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, machine_info, set_threads  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run")
    p.add_argument("--data")
    p.add_argument("--split")
    p.add_argument("--images", type=int, default=60)
    p.add_argument("--grid", nargs="+", default=["seed_threshold=0.5,0.6,0.7,0.8",
                                                 "boundary_threshold=0.2,0.3,0.4,0.5"])
    p.add_argument("--metric", default="DSB")
    p.add_argument("--threads", type=int)
    p.add_argument("--out")
    args = p.parse_args(argv)
    set_threads(args.threads)
    import attnseg
    from attnseg.data import build_dataset
    from attnseg.engine.instance_inference import infer_instances
    from attnseg.metrics.instance import InstanceMetrics, coco_mask_ap
    pred = attnseg.load(args.run)
    cfg = pred.meta.get("config") or {}
    data, split = args.data or cfg.get("data"), args.split or cfg.get("train_split", "train")
    ds = build_dataset(data, split)
    rng = np.random.default_rng(0)
    pick = sorted(rng.choice(len(ds), size=min(args.images, len(ds)), replace=False).tolist())
    grid = {}
    for g in args.grid:
        key, _, values = g.partition("=")
        grid[key] = [float(v) if "." in v else int(v) for v in values.split(",")]
    model = pred.model
    saved = dict(model.post)
    model.set_post(**{k: v[0] for k, v in grid.items()})           # names checked before the long part
    cache, skipped = [], []
    t0 = time.time()
    for i in pick:
        image, gt = ds.load(i)
        if max(image.shape[:2]) * pred.inference.test_scale > pred.inference.max_side:
            skipped.append(ds.sample_name(i))          # tiled at inference: no whole-image maps to regroup
            continue
        res = infer_instances(model, pred.normalize(image), pred.inference, pred.precision, return_maps=True)
        cache.append((res["maps"], gt))
    forward_s = time.time() - t0
    rows = []
    for values in itertools.product(*grid.values()):
        setting = dict(zip(grid, values))
        model.set_post(**{**saved, **setting})
        metrics, ap_in = InstanceMetrics(), []
        t = time.time()
        for maps, gt in cache:
            ids, scores = model.group(maps)
            metrics.update(ids, gt)
            ap_in.append((ids, scores, gt))
        m = metrics.compute()
        row = {**setting, "DSB": m["DSB"], "SBD": m["SBD"], "|DiC|": m["|DiC|"], "AP50": coco_mask_ap(ap_in)["AP50"],
               "group_s_per_image": (time.time() - t) / len(cache)}
        rows.append(row)
        print(" ".join(f"{k}={v}" for k, v in setting.items()) + f": DSB {row['DSB']:.3f} SBD {100 * row['SBD']:.1f} "
              f"|DiC| {row['|DiC|']:.2f} AP50 {row['AP50']:.3f}", file=sys.stderr, flush=True)
    lower_better = args.metric in ("|DiC|",)
    best = min(rows, key=lambda r: r[args.metric]) if lower_better else max(rows, key=lambda r: r[args.metric])
    flag = "--post " + ",".join(f"{k}={best[k]}" for k in grid)
    doc = {"benchmark": "instance_post_sweep", "run": args.run, "model": pred.name, "data": data, "split": split,
           "images": len(cache), "skipped_tiled": skipped, "forward_s": forward_s, "metric": args.metric,
           "default": saved, "rows": rows,
           "best": best, "apply": f"attnseg eval {args.run} --data {data} {flag}", "machine": machine_info("cpu")}
    emit(doc, args.out)
    return doc


if __name__ == "__main__":
    main()
